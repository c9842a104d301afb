from __future__ import annotations

from typing import Literal

from pydantic import Field

from torchslim.config import Config


class TrainConfig(Config):
    """How to train: one config for teacher training, distillation and fine-tuning.

    Example:
        >>> TrainConfig(epochs=10, optimizer="sgd", lr=0.1, schedule="cosine").epochs
        10
    """

    epochs: int = Field(10, ge=0, description="passes over the training split; 0 skips training")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "constant"
    step_size: int = Field(10, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor for schedule=step")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    jitter: int = Field(0, ge=0, le=8, description="random shift of each input by up to this many pixels")
    keep: Literal["best", "last"] = Field("best", description="weights kept at the end: best validation epoch or last")
    bn_l1: float = Field(0.0, ge=0, le=1, description="λ·Σ|γ| over BatchNorm weights, added to the loss (network "
                                                       "slimming, Liu et al. 2017): drives unneeded channels' scales "
                                                       "to zero before bn_scale channel pruning")
