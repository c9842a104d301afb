"""Knowledge distillation: Hinton KD with the teacher's logits computed once when the inputs allow it, and the
general objective (feature losses, several teachers) built by :mod:`torchslim.distillation.objective`.
:class:`TeacherAgreement` is the record of how much of the teacher's function a student took over."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.distillation.config import KDConfig
from torchslim.distillation.losses import kd_loss
from torchslim.errors import TorchslimError
from torchslim.records import Record, register
from torchslim.tasks import forward
from torchslim.training import dist
from torchslim.training.config import TrainConfig
from torchslim.training.loop import FitResult, _is_tensor_dataset, fit, predict, split_batch, split_inputs, splits


TEACHER_CACHE_ENV = "TORCHSLIM_TEACHER_CACHE"


def teacher_logits(teacher: nn.Module, x: Any) -> torch.Tensor:
    """The teacher's logits on every training input, computed once (the "soft labels first" recipe).

    When ``$TORCHSLIM_TEACHER_CACHE`` names a folder (``torchslim search`` sets it for its trials), the logits are
    also kept there under a hash of the teacher's weights and of the inputs, so that runs distilling the same teacher
    on the same data compute them once between them.
    """
    folder = os.environ.get(TEACHER_CACHE_ENV)
    if not folder or not isinstance(x, torch.Tensor):
        return predict(teacher, x)
    from safetensors.torch import load_file, save_file

    from torchslim.io import atomic_path

    path = Path(folder) / f"logits-{_content_hash(teacher, x)}.safetensors"
    if path.is_file():
        return load_file(path)["logits"]
    logits = predict(teacher, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"logits": logits.contiguous()}, tmp)
    return logits


def _content_hash(teacher: nn.Module, x: torch.Tensor) -> str:
    """What the logits depend on: the teacher's class, every weight and buffer, and the inputs."""
    h = hashlib.sha256(type(teacher).__qualname__.encode())
    for name, tensor in [*teacher.state_dict().items(), ("<inputs>", x)]:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _freeze(teacher: nn.Module) -> None:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)


def kd_loss_fn(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.1) -> Callable[..., tuple]:
    """A :func:`~torchslim.training.fit` `loss_fn` for Hinton KD from `teacher`, which runs on every batch (frozen,
    in eval mode): α·CE + (1−α)·T²·KL, as :func:`kd_loss`. For any fine-tuning loop that should follow a teacher, e.g.
    a pruned model recovering from the model as it was before pruning (which is what `prune_channels`' `distill`
    field does).

    Example:
        >>> fit(pruned, data.train, data.val, TrainConfig(epochs=3), loss_fn=kd_loss_fn(dense, 4, 0.5))  # doctest: +SKIP
    """
    _freeze(teacher)

    def loss_fn(model: nn.Module, xb: Any, yb: torch.Tensor, *extra: torch.Tensor):
        with torch.no_grad():
            tb = forward(teacher, xb)
        s = forward(model, xb)
        loss = kd_loss(s, tb, yb, temperature, alpha)
        return loss, s, {"kd": loss.detach()}
    return loss_fn


def distill(
    student: nn.Module,
    teacher: nn.Module | Mapping[str, nn.Module],
    data: Any,
    kd: KDConfig,
    train: TrainConfig,
    *,
    val: Any | None = None,
    seed: int = 0,
    checkpoint=None,
    stage: str = "distill",
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `student` in place from the teacher(s) and the labels of the training data.

    `data` is a DataBundle (or anything with `train` and `val` splits: trained on `data.train`, validated on
    `data.val` unless `val` is given), or a DataLoader / re-iterable of ``(inputs, labels)`` batches (validated on
    `val`), whose inputs are a tensor or a mapping of tensors (``model(**inputs)``). On a TensorDataset split the
    teacher's logits are computed once and cached when the inputs allow it (``kd.cache_teacher``); on a loader the
    teacher runs on every batch, since a loader's batches (their order, their augmentation) are its own.

    `teacher` is one model, or several by name ({"a": resnet20, "b": resnet32}) combined by `kd.teacher_weights`.
    Without `kd.losses` and with one teacher this is Hinton KD exactly as always; with `kd.losses` the objective is
    their weighted sum, and the per-epoch mean of each weighted term is in `history[i]["terms"]`.

    Example:
        >>> distill(student, teacher, data, KDConfig(temperature=4), TrainConfig(epochs=5))  # doctest: +SKIP
        >>> distill(student, teacher, train_loader, KDConfig(), TrainConfig(epochs=5), val=val_loader)  # doctest: +SKIP
        >>> kd = KDConfig(losses=["kd", {"name": "fitnet", "student": "layer2", "teacher": "layer3"}])
        >>> distill(student, {"a": t1, "b": t2}, data, kd, TrainConfig(epochs=5))  # doctest: +SKIP
    """
    teachers = dict(teacher) if isinstance(teacher, Mapping) else {"teacher": teacher}
    for t in teachers.values():
        _freeze(t)
    train_set, val_set = splits(data, val)
    rows_in_memory = _is_tensor_dataset(train_set)
    # Cached logits are only valid for the exact inputs they were computed on: with jitter each epoch sees new
    # inputs, so the teacher must run on the fly.
    cache = rows_in_memory and (kd.cache_teacher == "always" or (kd.cache_teacher == "auto" and not train.jitter))
    if not rows_in_memory and kd.cache_teacher == "always":
        log(f"[{stage}] the training data is a loader: the teacher runs on every batch (cache_teacher: always "
            f"needs a TensorDataset)")
    if kd.losses or len(teachers) > 1:
        return _distill_objective(student, teachers, train_set, val_set, kd, train, cache, seed, checkpoint, stage,
                                  log)
    teacher = next(iter(teachers.values()))
    if cache:
        x, y = train_set.tensors[:2]
        log(f"[{stage}] caching teacher logits on {len(x)} training inputs")
        # Under torchrun rank 0 computes them once and shares them; no rank repeats the teacher's work.
        with torch.no_grad():
            classes = forward(teacher, x[:1]).shape[1]
        t_logits = dist.broadcast(teacher_logits(teacher, x) if dist.is_main() else None, (len(x), classes))
        rows = torch.utils.data.TensorDataset(x, y, t_logits)

        def loss_fn(model, xb, yb, tb):
            s = forward(model, xb)
            loss = kd_loss(s, tb, yb, kd.temperature, kd.alpha)
            return loss, s, {"kd": loss.detach()}
    else:
        rows = torch.utils.data.TensorDataset(*train_set.tensors[:2]) if rows_in_memory else train_set
        loss_fn = kd_loss_fn(teacher, kd.temperature, kd.alpha)
    return fit(student, rows, val_set, train, loss_fn=loss_fn, seed=seed, checkpoint=checkpoint, stage=stage, log=log)


def _distill_objective(student, teachers, train_set, val_set, kd, train, cache, seed, checkpoint, stage, log
                       ) -> FitResult:
    from torchslim.distillation.objective import build_objective

    if not _is_tensor_dataset(train_set):
        return _distill_objective_on_loader(student, teachers, train_set, val_set, kd, train, seed, checkpoint,
                                            stage, log)
    x, y = train_set.tensors[:2]
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
                classes = forward(next(iter(teachers.values())), x[:1]).shape[1]
            rows.append(dist.broadcast(logits, (len(x), classes)))
    terms = ", ".join(f"{t.label}×{t.spec.weight:g}" for t in objective.terms)
    log(f"[{stage}] objective: {terms}; teachers: {', '.join(teachers)}")
    with objective.taps():
        return fit(objective.model, torch.utils.data.TensorDataset(*rows), val_set, train,
                   loss_fn=objective.loss_fn(cached=cache and bool(objective.sources)), seed=seed,
                   checkpoint=checkpoint, extra_state=objective.model.training_state() or None, stage=stage, log=log)


def _distill_objective_on_loader(student, teachers, loader, val_set, kd, train, seed, checkpoint, stage, log
                                 ) -> FitResult:
    """The objective on a loader's batches: every teacher runs on every batch (nothing is cached). Losses that
    address training rows by index (CRD's memory bank) need a TensorDataset, whose rows have one."""
    from torchslim.distillation.losses import LOSSES
    from torchslim.distillation.objective import build_objective

    by_index = [f"losses[{i}] ({spec.name})" for i, spec in enumerate(kd.losses or [])
                if getattr(LOSSES.get(spec.name), "needs_row_index", spec.name == "crd")]
    if by_index:
        raise TorchslimError(
            f"distill: {', '.join(by_index)} keeps a memory bank with one entry per training row, addressed by the "
            f"row's index, which a DataLoader's batches do not carry; give a DataBundle / TensorDataset, or drop it")
    first = next(iter(loader), None)
    if first is None:
        raise TorchslimError("distill: the training loader gave no batches")
    sample_x, sample_y, _ = split_batch(first)
    objective = build_objective(student, teachers, kd, split_inputs(sample_x, 64)[0], sample_y)
    loss_fn = objective.loss_fn(cached=False)
    terms = ", ".join(f"{t.label}×{t.spec.weight:g}" for t in objective.terms)
    log(f"[{stage}] objective: {terms}; teachers: {', '.join(teachers)} (run on every batch)")
    with objective.taps():
        return fit(objective.model, loader, val_set, train,
                   loss_fn=lambda net, x, y, *extra: loss_fn(net, x, y, None), seed=seed, checkpoint=checkpoint,
                   extra_state=objective.model.training_state() or None, stage=stage, log=log)


def teacher_agreement(student: nn.Module, teachers: nn.Module | Mapping[str, nn.Module], x: Any,
                      kd: KDConfig | None = None) -> dict:
    """Top-1 agreement (a fraction) of the student with its teacher on inputs `x`: ``{"combined": a}`` against
    the teachers as the stage combined them, plus one entry per teacher when there are several. `x` is a tensor, a
    mapping of tensors, or a DataLoader of ``(inputs, labels)`` batches.

    Example:
        >>> teacher_agreement(student, teacher, data.test.tensors[0])   # doctest: +SKIP
        {'combined': 0.974}
    """
    from torchslim.distillation.objective import combine_logits

    kd = kd or KDConfig()
    teachers = dict(teachers) if isinstance(teachers, Mapping) else {"teacher": teachers}
    s = predict(student, x).argmax(-1)  # classes on the last axis: a causal LM's agreement is over tokens
    each = {name: predict(t, x) for name, t in teachers.items()}
    combined = combine_logits(list(each.values()), kd.teacher_weights, kd.teacher_combine, kd.kd_temperature())
    out = {"combined": (s == combined.argmax(-1)).float().mean().item()}
    if len(each) > 1:
        out.update({name: (s == logits.argmax(-1)).float().mean().item() for name, logits in each.items()})
    return out


@register
@dataclasses.dataclass
class TeacherAgreement(Record):
    """Top-1 agreement of a student with its teachers on the test set (fractions): ``combined`` against the
    teachers as the stage combined them, and ``teachers`` ({name: agreement}) one entry per teacher when there are
    several (empty with one). The report's main table shows ``combined`` as "teacher agreement %".

    Example:
        >>> TeacherAgreement(0.97, {"a": 0.96, "b": 0.95}).summary()
        [('teacher–student top-1 agreement (test set)', '97.00 % (each: a 96.00 %, b 95.00 %)')]
    """

    kind = "teacher_agreement"
    combined: float
    teachers: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def measure(cls, student: nn.Module, teachers: nn.Module | Mapping[str, nn.Module], x: Any,
                kd: KDConfig | None = None) -> TeacherAgreement:
        """:func:`teacher_agreement` as a record."""
        each = teacher_agreement(student, teachers, x, kd)
        combined = each.pop("combined")
        return cls(combined, each)

    def summary(self) -> list[tuple[str, str]]:
        each = ", ".join(f"{name} {100 * v:.2f} %" for name, v in self.teachers.items())
        return [("teacher–student top-1 agreement (test set)",
                 f"{100 * self.combined:.2f} %" + (f" (each: {each})" if each else ""))]

    def columns(self) -> dict[str, str]:
        return {"teacher agreement %": f"{100 * self.combined:.2f}"}
