from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from torchslim.config import Config
from torchslim.errors import did_you_mean


class LossSpec(Config):
    """One term of a distill stage's objective: a registered loss (`torchslim list losses`), its weight, the module
    names it compares, and the loss's own options as further keys (validated by that loss's `Options`).

    Example:
        >>> LossSpec(name="fitnet", student="layer2", teacher="layer3").weight      # RepDistiller's default
        100.0
        >>> LossSpec(name="kd", temperature=8).options().alpha
        0.1
    """

    # Extra keys are the loss's options; the before-validator checks each against the loss's own config, so a typo
    # is still an error (with a did-you-mean), just one raised here rather than by `extra="forbid"`.
    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())

    name: str
    weight: float | None = Field(None, ge=0, description="multiplier of this term (default: the loss's RepDistiller weight)")
    student: list[str] = Field(default_factory=list, description="student module names (fsp: two)")
    teacher: list[str] = Field(default_factory=list, description="teacher module names, as many as `student`")
    from_teacher: str | None = Field(None, description="teacher this term uses (default: the stage's combined "
                                                       "logits; for features, the stage's first teacher)")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        from torchslim.distillation.losses import LOSSES

        if isinstance(data, str):
            data = {"name": data}  # `losses: [kd, ce]` as shorthand
        if not isinstance(data, dict) or "name" not in data:
            return data  # pydantic reports the missing name / wrong type
        data = dict(data)
        name = data["name"]
        if name not in LOSSES:
            choices = LOSSES.names()
            raise ValueError(f"unknown loss {name!r}{did_you_mean(str(name), choices)}; valid choices: {', '.join(choices)}")
        loss = LOSSES.get(name)
        for key in ("student", "teacher"):
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
        if data.get("weight") is None:
            data["weight"] = loss.default_weight
        fields = set(cls.model_fields)
        options = {k: v for k, v in data.items() if k not in fields}
        valid = list(loss.Options.model_fields)
        for key in options:
            if key not in valid:
                raise ValueError(f"unknown option {key!r} of loss '{name}'{did_you_mean(key, [*valid, *fields])}; "
                                 f"valid options: {', '.join(valid) or '(none)'}; every loss also takes "
                                 f"{', '.join(sorted(fields - {'name'}))}")
        try:
            resolved = loss.Options(**options).model_dump()
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"loss '{name}' option {where}: {err['msg']} (got {err.get('input')!r})") from None
        n = loss.layers
        for key in ("student", "teacher"):
            got = data.get(key) or []
            if not isinstance(got, list):
                continue  # pydantic reports the type
            if n == 0 and got:
                what = ("finds the transformer layers itself (set them in its options)" if hasattr(loss, "attach")
                        else "compares logits, not features")
                raise ValueError(f"loss '{name}' {what}: drop `{key}:`")
            if n and len(got) != n:
                example = "student: layer2, teacher: layer3" if n == 1 else "student: [layer1, layer2], teacher: [layer1, layer2]"
                raise ValueError(f"loss '{name}' needs {'one module name' if n == 1 else f'{n} module names'} in "
                                 f"`{key}:`, got {len(got)} (e.g. {example})")
        return {**{k: v for k, v in data.items() if k in fields}, **resolved}

    def options(self) -> Config:
        """The loss's own options, validated."""
        from torchslim.distillation.losses import LOSSES

        return LOSSES.get(self.name).Options(**(self.model_extra or {}))


class KDConfig(Config):
    """How to distill. Without `losses`: Hinton logit distillation,
    loss = α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T)).
    With `losses`: the weighted sum of the listed terms (see docs/distillation.md). Several teachers are combined
    by `teacher_weights` (default equal), averaging their logits or (`teacher_combine: probs`) their softened
    probabilities at the kd temperature.

    Example:
        >>> KDConfig(temperature=20, alpha=0.1).temperature
        20.0
        >>> [s.name for s in KDConfig(losses=["kd", {"name": "fitnet", "student": "fc1", "teacher": "fc2"}]).losses]
        ['kd', 'fitnet']
    """

    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the hard-label term")
    cache_teacher: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: cache teacher logits once unless inputs are augmented (jitter)")
    losses: list[LossSpec] = Field(default_factory=list, description="terms of the objective; empty: Hinton KD "
                                                                     "from temperature and alpha")
    teacher_weights: list[float] | None = Field(None, description="one weight per teacher (default equal)")
    teacher_combine: Literal["logits", "probs"] = Field(
        "logits", description="average the teachers' logits, or their probabilities at the kd temperature")

    @model_validator(mode="after")
    def _check_weights(self) -> KDConfig:
        w = self.teacher_weights
        if w is not None and (any(v < 0 for v in w) or sum(w) <= 0):
            raise ValueError(f"teacher_weights must be ≥ 0 with a positive sum, got {w}")
        return self

    def kd_temperature(self) -> float:
        """The temperature of the soft targets: the first `kd` term's, else `temperature`."""
        return next((s.options().temperature for s in self.losses if s.name == "kd"), self.temperature)
