"""Hinton knowledge distillation with the teacher's logits computed once when the inputs allow it."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchslim.distillation.config import KDConfig
from torchslim.distillation.losses import kd_loss
from torchslim.training.config import TrainConfig
from torchslim.training import dist
from torchslim.training.loop import FitResult, fit, predict


def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's logits on every training input, computed once (the "soft labels first" recipe)."""
    return predict(teacher, x)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data,
    kd: KDConfig,
    train: TrainConfig,
    *,
    seed: int = 0,
    checkpoint=None,
    stage: str = "distill",
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `student` in place on the teacher's softened outputs and the labels of `data.train`
    (validated on `data.val`, a DataBundle or anything with those two splits).

    Example:
        >>> distill(student, teacher, data, KDConfig(temperature=4), TrainConfig(epochs=5))  # doctest: +SKIP
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # Cached logits are only valid for the exact inputs they were computed on: with jitter each epoch sees new
    # inputs, so the teacher must run on the fly.
    cache = kd.cache_teacher == "always" or (kd.cache_teacher == "auto" and not train.jitter)
    x, y = data.train.tensors[:2]
    if cache:
        log(f"[{stage}] caching teacher logits on {len(x)} training inputs")
        # Under torchrun rank 0 computes them once and shares them; no rank repeats the teacher's work.
        t_logits = dist.broadcast(teacher_logits(teacher, x) if dist.is_main() else None,
                                  (len(x), teacher(x[:1]).shape[1]))
        rows = torch.utils.data.TensorDataset(x, y, t_logits)

        def loss_fn(model, xb, yb, tb):
            s = model(xb)
            return kd_loss(s, tb, yb, kd.temperature, kd.alpha), s
    else:
        rows = torch.utils.data.TensorDataset(x, y)

        def loss_fn(model, xb, yb):
            with torch.no_grad():
                tb = teacher(xb)
            s = model(xb)
            return kd_loss(s, tb, yb, kd.temperature, kd.alpha), s

    return fit(student, rows, data.val, train, loss_fn=loss_fn, seed=seed, checkpoint=checkpoint, stage=stage, log=log)
