from __future__ import annotations

from typing import Literal

from pydantic import Field

from torchslim.config import Config


class MagnitudePruneConfig(Config):
    """Unstructured magnitude pruning of Conv/Linear weights.

    ``scope="global"`` ranks all weights of all pruned layers together (layers end with different sparsities);
    ``"layerwise"`` prunes each layer to ``sparsity``. ``schedule="iterative"`` reaches ``sparsity`` in ``rounds``
    steps, pruning the same fraction of the remaining weights each round: s_k = 1 − (1 − s)^(k/rounds).

    Example:
        >>> MagnitudePruneConfig(sparsity=0.9, scope="global").sparsity
        0.9
    """

    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of weights set to zero")
    scope: Literal["global", "layerwise"] = "global"
    norm: Literal["l1", "l2"] = Field("l1", description="|w| or w²: the same ranking for single weights")
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    rounds: int = Field(1, ge=1, le=100, description="prune/fine-tune rounds for schedule=iterative")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left dense")

    def round_targets(self) -> list[float]:
        """Sparsity to reach after each round."""
        if self.schedule == "oneshot":
            return [self.sparsity]
        return [1 - (1 - self.sparsity) ** (k / self.rounds) for k in range(1, self.rounds + 1)]
