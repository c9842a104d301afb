from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from torchslim.config import Config


class PruneConfig(Config):
    """Unstructured (or N:M) pruning of Conv/Linear weights, by magnitude or another registered criterion.

    ``scope="global"`` ranks all weights of all pruned layers together (layers end with different sparsities);
    ``"layerwise"`` prunes each layer to ``sparsity``. ``schedule="iterative"`` reaches ``sparsity`` in ``rounds``
    steps, pruning the same fraction of the remaining weights each round: s_k = 1 − (1 − s)^(k/rounds).

    Example:
        >>> PruneConfig(sparsity=0.9, scope="global").sparsity
        0.9
    """

    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of weights set to zero")
    scope: Literal["global", "layerwise"] = "global"
    norm: Literal["l1", "l2"] = Field("l1", description="|w| or w²: the same ranking for single weights")
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    rounds: int = Field(1, ge=1, le=100, description="prune/fine-tune rounds for schedule=iterative")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left dense")
    criterion: str = Field("magnitude", description="how weights are scored: see `torchslim list criteria`")
    criterion_batches: int = Field(8, ge=1, le=10_000, description="training batches for gradient criteria")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M' (e.g. 2:4): keep the N best of "
                                                     "every M consecutive weights along the input dimension")

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, name: str) -> str:
        from torchslim.prune.criteria import CRITERIA

        CRITERIA.get(name)  # raises with the valid choices
        return name

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, pattern: str) -> str:
        m = re.fullmatch(r"(\d+):(\d+)", pattern)
        if pattern != "unstructured" and not (m and 0 < int(m[1]) < int(m[2]) <= 64):
            raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M ≤ 64 (e.g. 2:4), got {pattern!r}")
        return pattern

    @property
    def n_m(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def round_targets(self) -> list[float]:
        """Sparsity to reach after each round (an N:M pattern fixes it at 1 − N/M, in one round)."""
        if self.n_m is not None:
            return [1 - self.n_m[0] / self.n_m[1]]
        if self.schedule == "oneshot":
            return [self.sparsity]
        return [1 - (1 - self.sparsity) ** (k / self.rounds) for k in range(1, self.rounds + 1)]


MagnitudePruneConfig = PruneConfig  # the name of the magnitude-only first version; same class
