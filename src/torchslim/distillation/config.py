from __future__ import annotations

from typing import Literal

from pydantic import Field

from torchslim.config import Config


class KDConfig(Config):
    """Hinton logit distillation: loss = α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T)).

    Example:
        >>> KDConfig(temperature=20, alpha=0.1).temperature
        20.0
    """

    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the hard-label term")
    cache_teacher: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: cache teacher logits once unless inputs are augmented (jitter)")
