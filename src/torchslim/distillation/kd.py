"""Knowledge distillation: Hinton KD with the teacher's logits computed once when the inputs allow it, and the
general objective (feature losses, several teachers) built by :mod:`torchslim.distillation.objective`."""
from __future__ import annotations

from collections.abc import Callable, Mapping

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


def _freeze(teacher: nn.Module) -> None:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)


def distill(
    student: nn.Module,
    teacher: nn.Module | Mapping[str, nn.Module],
    data,
    kd: KDConfig,
    train: TrainConfig,
    *,
    seed: int = 0,
    checkpoint=None,
    stage: str = "distill",
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `student` in place from the teacher(s) and the labels of `data.train` (validated on `data.val`, a
    DataBundle or anything with those two splits).

    `teacher` is one model, or several by name ({"a": resnet20, "b": resnet32}) combined by `kd.teacher_weights`.
    Without `kd.losses` and with one teacher this is Hinton KD exactly as always; with `kd.losses` the objective is
    their weighted sum, and the per-epoch mean of each weighted term is in `history[i]["terms"]`.

    Example:
        >>> distill(student, teacher, data, KDConfig(temperature=4), TrainConfig(epochs=5))  # doctest: +SKIP
        >>> kd = KDConfig(losses=["kd", {"name": "fitnet", "student": "layer2", "teacher": "layer3"}])
        >>> distill(student, {"a": t1, "b": t2}, data, kd, TrainConfig(epochs=5))  # doctest: +SKIP
    """
    teachers = dict(teacher) if isinstance(teacher, Mapping) else {"teacher": teacher}
    for t in teachers.values():
        _freeze(t)
    # Cached logits are only valid for the exact inputs they were computed on: with jitter each epoch sees new
    # inputs, so the teacher must run on the fly.
    cache = kd.cache_teacher == "always" or (kd.cache_teacher == "auto" and not train.jitter)
    if kd.losses or len(teachers) > 1:
        return _distill_objective(student, teachers, data, kd, train, cache, seed, checkpoint, stage, log)
    teacher = next(iter(teachers.values()))
    x, y = data.train.tensors[:2]
    if cache:
        log(f"[{stage}] caching teacher logits on {len(x)} training inputs")
        # Under torchrun rank 0 computes them once and shares them; no rank repeats the teacher's work.
        t_logits = dist.broadcast(teacher_logits(teacher, x) if dist.is_main() else None,
                                  (len(x), teacher(x[:1]).shape[1]))
        rows = torch.utils.data.TensorDataset(x, y, t_logits)

        def loss_fn(model, xb, yb, tb):
            s = model(xb)
            loss = kd_loss(s, tb, yb, kd.temperature, kd.alpha)
            return loss, s, {"kd": loss.detach()}
    else:
        rows = torch.utils.data.TensorDataset(x, y)

        def loss_fn(model, xb, yb):
            with torch.no_grad():
                tb = teacher(xb)
            s = model(xb)
            loss = kd_loss(s, tb, yb, kd.temperature, kd.alpha)
            return loss, s, {"kd": loss.detach()}

    return fit(student, rows, data.val, train, loss_fn=loss_fn, seed=seed, checkpoint=checkpoint, stage=stage, log=log)


def _distill_objective(student, teachers, data, kd, train, cache, seed, checkpoint, stage, log) -> FitResult:
    from torchslim.distillation.objective import build_objective

    x, y = data.train.tensors[:2]
    objective = build_objective(student, teachers, kd, x[: min(len(x), 64)], y)
    rows = [x, y, torch.arange(len(x))]  # the row index: CRD's memory bank is addressed by it
    if cache and objective.sources:
        log(f"[{stage}] caching teacher logits ({', '.join(s or 'combined' for s in objective.sources)}) on "
            f"{len(x)} training inputs")
        for source in objective.sources:
            logits = None
            if dist.is_main():
                each = {n: teacher_logits(t, x) for n, t in teachers.items() if source is None or n == source}
                logits = objective.teacher_logits(x, source, each)
            with torch.no_grad():
                classes = next(iter(teachers.values()))(x[:1]).shape[1]
            rows.append(dist.broadcast(logits, (len(x), classes)))
    terms = ", ".join(f"{t.label}×{t.spec.weight:g}" for t in objective.terms)
    log(f"[{stage}] objective: {terms}; teachers: {', '.join(teachers)}")
    with objective.taps():
        return fit(objective.model, torch.utils.data.TensorDataset(*rows), data.val, train,
                   loss_fn=objective.loss_fn(cached=cache and bool(objective.sources)), seed=seed,
                   checkpoint=checkpoint, extra_state=objective.model.training_state() or None, stage=stage, log=log)


def teacher_agreement(student: nn.Module, teachers: nn.Module | Mapping[str, nn.Module], x: torch.Tensor,
                      kd: KDConfig | None = None) -> dict:
    """Top-1 agreement (a fraction) of the student with its teacher on inputs `x`: ``{"combined": a}`` against
    the teachers as the stage combined them, plus one entry per teacher when there are several.

    Example:
        >>> teacher_agreement(student, teacher, data.test.tensors[0])   # doctest: +SKIP
        {'combined': 0.974}
    """
    from torchslim.distillation.objective import combine_logits

    kd = kd or KDConfig()
    teachers = dict(teachers) if isinstance(teachers, Mapping) else {"teacher": teachers}
    s = predict(student, x).argmax(1)
    each = {name: predict(t, x) for name, t in teachers.items()}
    combined = combine_logits(list(each.values()), kd.teacher_weights, kd.teacher_combine, kd.kd_temperature())
    out = {"combined": (s == combined.argmax(1)).float().mean().item()}
    if len(each) > 1:
        out.update({name: (s == logits.argmax(1)).float().mean().item() for name, logits in each.items()})
    return out
