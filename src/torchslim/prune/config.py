"""PruneConfig: what to prune (layers, criterion, pattern) and on which schedule, with each schedule's defaults.

Example:
    >>> PruneConfig(schedule="iterative", sparsity=0.875, rounds=3).round_targets()
    [0.5, 0.75, 0.875]
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import Config


class PruneConfig(Config):
    """Unstructured (or N:M) pruning of Conv/Linear weights, by magnitude or another registered criterion.

    ``scope="global"`` ranks all weights of all pruned layers together (layers end with different sparsities);
    ``"layerwise"`` prunes each layer to ``sparsity``; ``"sensitivity"`` first prunes each layer alone to each of
    ``sensitivity_sparsities`` and measures the validation accuracy, then gives every layer the sparsity one shared
    accuracy-drop tolerance allows, so that the layers together reach ``sparsity`` (see `prune.sensitivity`).
    ``schedule="iterative"`` reaches ``sparsity`` in ``rounds`` steps, pruning the same fraction of the remaining
    weights each round: s_k = 1 − (1 − s)^(k/rounds).
    ``schedule="gradual"`` (Zhu & Gupta's AGP) raises the sparsity from ``initial_sparsity`` to ``sparsity`` while
    fine-tuning, recomputing the masks every ``update_every`` steps over the first ``ramp`` of the steps.
    ``schedule="lottery"`` (Frankle & Carbin) trains from an initialization, prunes ``lottery_rate`` of each layer's
    remaining weights, rewinds the survivors to epoch ``rewind_epoch`` and retrains, ``rounds`` times; its sparsity
    follows from the rounds, so it takes no ``sparsity``. See `prune.schedules`.

    Fields that belong to one schedule (SCHEDULE_FIELDS) are an error with any other; left out, they get the
    schedule's default (SCHEDULE_DEFAULTS), so a resolved recipe shows the values used.

    Example:
        >>> PruneConfig(sparsity=0.9, scope="global").sparsity
        0.9
    """

    sparsity: float | None = Field(None, ge=0, lt=1, description="fraction of weights set to zero (default 0.5; "
                                                                  "not with schedule=lottery)")
    scope: Literal["global", "layerwise", "sensitivity"] = "global"
    norm: Literal["l1", "l2"] = Field("l1", description="|w| or w²: the same ranking for single weights")
    schedule: Literal["oneshot", "iterative", "gradual", "lottery"] = "oneshot"
    rounds: int | None = Field(None, ge=1, le=100, description="iterative: prune/fine-tune rounds; lottery: "
                                                               "prune/rewind/retrain rounds (default 3)")
    initial_sparsity: float | None = Field(None, ge=0, lt=1, description="gradual: s_i, the sparsity at the first "
                                                                         "step (default 0)")
    update_every: int | None = Field(None, ge=1, le=1_000_000, description="gradual: Δt, optimizer steps between "
                                                                           "mask updates (default 100)")
    ramp: float | None = Field(None, gt=0, le=1, description="gradual: fraction of the stage's steps over which the "
                                                             "sparsity rises; then the masks are held (default 0.75)")
    lottery_rate: float | None = Field(None, gt=0, lt=1, description="lottery: fraction of each layer's remaining "
                                                                     "weights pruned per round (default 0.2)")
    lottery_output_rate: float | None = Field(None, ge=0, lt=1, description="lottery: the same for the output "
                                                                            "layer (default lottery_rate / 2)")
    rewind_epoch: int | None = Field(None, ge=0, le=10_000, description="lottery: survivors rewind to their "
                                                                        "weights after this many epochs of round 0 "
                                                                        "(0 = initialization, the default)")
    reinit: bool | None = Field(None, description="lottery: train the final masks from a fresh random init instead "
                                                  "(the random re-initialization control; default false)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left dense")
    criterion: str = Field("magnitude", description="how weights are scored: see `torchslim list criteria`")
    criterion_batches: int = Field(8, ge=1, le=10_000, description="training batches (of 128) for the gradient and "
                                                                   "activation criteria")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M' (e.g. 2:4): keep the N best of "
                                                     "every M consecutive weights along the input dimension")
    sensitivity_sparsities: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
        description="scope=sensitivity: sparsities each layer is tried at, alone (the curve's points)")
    sensitivity_batches: int | None = Field(None, ge=1, le=10_000, description="scope=sensitivity: validation "
                                                                                "batches of 256 per trial (None: all)")

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

    @field_validator("sensitivity_sparsities")
    @classmethod
    def _valid_levels(cls, levels: list[float]) -> list[float]:
        if not levels or any(not 0 < s < 1 for s in levels):
            raise ValueError(f"sensitivity_sparsities must be one or more fractions strictly between 0 and 1, "
                             f"got {levels}")
        return sorted(set(levels))

    @model_validator(mode="after")
    def _sensitivity_is_unstructured(self):
        if self.scope == "sensitivity" and self.pattern != "unstructured":
            raise ValueError(f"scope 'sensitivity' chooses a sparsity per layer; pattern {self.pattern!r} fixes it "
                             f"at 1 − N/M everywhere; use scope 'layerwise' or 'global' with an N:M pattern")
        return self

    @model_validator(mode="before")
    @classmethod
    def _schedule_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        schedule = data.get("schedule") or "oneshot"
        data = dict(data)
        for name, default in SCHEDULE_DEFAULTS.items():
            if schedule in SCHEDULE_FIELDS[name] and data.get(name) is None:
                data[name] = default
        if schedule == "lottery":
            if data.get("lottery_output_rate") is None and isinstance(data["lottery_rate"], (int, float)):
                data["lottery_output_rate"] = data["lottery_rate"] / 2  # Frankle & Carbin: 20% per round, 10% output
            if data.get("scope") is None:
                data["scope"] = "layerwise"  # Frankle & Carbin prune LeNet layer by layer
        return data

    @model_validator(mode="after")
    def _schedule_fields(self):
        if self.schedule == "lottery" and self.sparsity is not None:
            raise ValueError("schedule 'lottery' takes no `sparsity`: each layer ends at 1 − (1 − lottery_rate)^rounds; "
                             "remove it and choose rounds and lottery_rate")
        for name, schedules in SCHEDULE_FIELDS.items():
            if getattr(self, name) is not None and self.schedule not in schedules:
                raise ValueError(f"`{name}` is a {'/'.join(schedules)} setting, and schedule is '{self.schedule}'; "
                                 f"remove it or set schedule: {schedules[-1]}")
        if self.schedule in ("gradual", "lottery") and self.pattern != "unstructured":
            raise ValueError(f"schedule '{self.schedule}' prunes unstructured weights; pattern {self.pattern!r} fixes "
                             f"the sparsity at 1 − N/M (use schedule oneshot or iterative)")
        if self.schedule == "lottery" and self.scope not in ("layerwise", "global"):
            raise ValueError(f"schedule 'lottery' prunes each layer at its rate (scope layerwise) or all but the "
                             f"output layer together (global), not scope '{self.scope}'")
        if self.schedule == "gradual" and self.initial_sparsity > self.sparsity:
            raise ValueError(f"gradual: initial_sparsity {self.initial_sparsity} is above the final sparsity "
                             f"{self.sparsity}; the ramp only rises")
        return self

    @property
    def n_m(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def round_targets(self) -> list[float]:
        """Sparsity to reach after each prune/fine-tune round (an N:M pattern fixes it at 1 − N/M, in one round).

        For oneshot and iterative; a gradual schedule ends at [sparsity], a lottery one is defined by its rounds
        (`prune.schedules.lottery_sparsity`) and has no overall target.
        """
        if self.n_m is not None:
            return [1 - self.n_m[0] / self.n_m[1]]
        if self.schedule == "iterative":
            return iterative_targets(self.sparsity, self.rounds)
        return [] if self.sparsity is None else [self.sparsity]


def iterative_targets(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each of `rounds` rounds, each pruning the same fraction of what remains: 1 − (1 − s)^(k/R).

    Example:
        >>> [round(s, 3) for s in iterative_targets(0.875, 3)]
        [0.5, 0.75, 0.875]
    """
    return [1 - (1 - sparsity) ** (k / rounds) for k in range(1, rounds + 1)]


# Which schedules use which field (the last one is named in errors), and the defaults they get when left out.
SCHEDULE_FIELDS: dict[str, tuple[str, ...]] = {
    "sparsity": ("oneshot", "iterative", "gradual"),
    "rounds": ("iterative", "lottery"),
    **dict.fromkeys(("initial_sparsity", "update_every", "ramp"), ("gradual",)),
    **dict.fromkeys(("lottery_rate", "lottery_output_rate", "rewind_epoch", "reinit"), ("lottery",)),
}
SCHEDULE_DEFAULTS: dict[str, object] = {
    "sparsity": 0.5, "rounds": 3, "initial_sparsity": 0.0, "update_every": 100, "ramp": 0.75,
    "lottery_rate": 0.2, "rewind_epoch": 0, "reinit": False,
}

MagnitudePruneConfig = PruneConfig  # the name of the magnitude-only first version; same class
