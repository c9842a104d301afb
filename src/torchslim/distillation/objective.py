"""A distill stage's objective as something `fit` can train: the student wrapped together with the learned parts of
its loss terms (adapters, embedding heads), the feature taps on student and teachers, and the loss function.

Why a wrapper module: `fit` builds one optimizer over `model.parameters()`, wraps the model in DDP and checkpoints
`model.state_dict()`. With the adapters inside the wrapper all three just work; the wrapper's forward is the
student's, so validation accuracy is the student's. When training ends, `wrapper.student` is the model kept: its
state dict has exactly the keys of a plain student.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.distillation.config import KDConfig, LossSpec
from torchslim.distillation.losses import LOSSES, DistillLoss, LossInputs
from torchslim.distillation.taps import FeatureTaps, resolve_module
from torchslim.errors import TorchslimError, unknown_choice
from torchslim.tasks import forward


class DistillationModel(nn.Module):
    """The student plus the trainable parts of the loss terms; ``forward`` is the student's.

    Example:
        >>> wrapper = DistillationModel(student, terms)            # doctest: +SKIP
        >>> wrapper.student.state_dict().keys() == student.state_dict().keys()   # doctest: +SKIP
        True
    """

    def __init__(self, student: nn.Module, terms: Sequence[DistillLoss]) -> None:
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)
        masks = getattr(student, "_torchslim_masks", None)
        if masks is not None:  # a pruned student: `fit` finds its masks here and holds its pruned weights at zero
            self.__dict__["_torchslim_masks"] = masks

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)  # a tensor, or keyword tensors (input_ids, attention_mask...)

    def training_state(self) -> dict[str, torch.Tensor]:
        """Loss state that is neither parameter nor buffer (CRD's memory banks), for `fit`'s `extra_state`."""
        return {f"terms.{i}.{k}": v for i, term in enumerate(self.terms) for k, v in term.training_state().items()}


def combine_logits(logits: Sequence[torch.Tensor], weights: Sequence[float] | None = None, how: str = "logits",
                   temperature: float = 1.0) -> torch.Tensor:
    """One teacher from several: the weighted mean of their logits (`how="logits"`), or logits whose softmax at
    `temperature` is the weighted mean of their softened probabilities (`how="probs"`):
    T·log Σ_i w_i softmax(z_i / T), so softmax(result / T) = Σ_i w_i softmax(z_i / T) exactly.
    Weights are normalized to sum to 1 (default: equal).

    Example:
        >>> combine_logits([torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])])
        tensor([[1., 2.]])
    """
    w = torch.tensor(weights if weights is not None else [1.0] * len(logits), dtype=logits[0].dtype)
    w = w / w.sum()
    stacked = torch.stack(list(logits))  # (teachers, N, classes)
    if how == "logits":
        return (w.view(-1, 1, 1) * stacked).sum(0)
    if how == "probs":
        log_p = torch.log_softmax(stacked / temperature, dim=2) + torch.log(w).view(-1, 1, 1)
        return temperature * torch.logsumexp(log_p, dim=0)
    raise unknown_choice("teacher combination", how, ("logits", "probs"))


def _hooks_models(loss: DistillLoss) -> bool:
    """Whether a loss hooks the student and teacher itself (the transformer losses: hidden states, attention) rather
    than naming modules: it has ``attach(student, teacher)``, a context manager that holds its hooks."""
    return callable(getattr(loss, "attach", None))


@dataclass
class _Term:
    label: str  # name in the history: the loss name, `name_2` for a second term of the same loss
    spec: LossSpec
    module: DistillLoss
    source: str | None  # whose logits: None for the stage's combined teachers, else a teacher's name
    feature_teacher: str  # whose features


class Objective:
    """The loss terms of a stage, built on a sample batch. Use :func:`build_objective`."""

    def __init__(self, model: DistillationModel, terms: list[_Term], teachers: Mapping[str, nn.Module],
                 kd: KDConfig) -> None:
        self.model = model
        self.terms = terms
        self.teachers = dict(teachers)
        self.kd = kd
        self.temperature = kd.kd_temperature()  # of the probability-averaged teacher (teacher_combine: probs)
        self.student_layers = list(dict.fromkeys(n for t in terms for n in t.spec.student))
        self.teacher_layers: dict[str, list[str]] = {}  # only the teachers whose features some term reads
        for t in terms:
            if _hooks_models(t.module):  # it reads the teacher's inside: the teacher runs on every batch
                self.teacher_layers.setdefault(t.feature_teacher, [])
            for name in t.spec.teacher:
                layers = self.teacher_layers.setdefault(t.feature_teacher, [])
                if name not in layers:
                    layers.append(name)
        # Logit sources the terms read, in a fixed order (the order of the cached tensors in a training row).
        self.sources = list(dict.fromkeys(t.source for t in terms if t.module.needs_teacher_logits))
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: dict[str, FeatureTaps] = {}

    @contextlib.contextmanager
    def taps(self) -> Iterator[Objective]:
        """Hooks on the student and the teachers for the duration of training; removed on exit."""
        with contextlib.ExitStack() as stack:
            self._student_taps = stack.enter_context(FeatureTaps(self.model.student, self.student_layers, "student"))
            self._teacher_taps = {name: stack.enter_context(FeatureTaps(self.teachers[name], layers, name))
                                  for name, layers in self.teacher_layers.items()}
            for i, t in enumerate(self.terms):
                if _hooks_models(t.module):
                    try:
                        hooks = t.module.attach(self.model.student, self.teachers[t.feature_teacher])
                    except TorchslimError as e:
                        raise TorchslimError(f"losses[{i}] ({t.spec.name}): {e}") from None
                    stack.enter_context(hooks)
            try:
                yield self
            finally:
                self._student_taps, self._teacher_taps = None, {}

    def teacher_logits(self, x, source: str | None, each: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of one teacher (`source` = its name) or of the combined teachers (None), in eval mode, on inputs
        `x` (a tensor or a mapping of tensors)."""
        each = each if each is not None else {}
        if source is not None:
            return each[source] if source in each else forward(self.teachers[source], x)
        names = list(self.teachers)
        logits = [each[n] if n in each else forward(self.teachers[n], x) for n in names]
        if len(logits) == 1:
            return logits[0]
        return combine_logits(logits, self.kd.teacher_weights, self.kd.teacher_combine, self.temperature)

    def loss_fn(self, cached: bool):
        """`fit`'s loss function over rows (x, y, index, *cached logits per source); `index` is None on a loader."""
        def loss_fn(net, x, y, index, *cached_logits):
            logits = forward(net, x)  # the student's forward (through DDP when data-parallel); its taps fill now
            student_features = dict(self._student_taps.outputs) if self._student_taps else {}
            teacher_features: dict[str, dict[str, torch.Tensor]] = {}
            each: dict[str, torch.Tensor] = {}
            with torch.no_grad():
                # Feature losses need the teacher's features of this very batch: these teachers always run.
                for name, taps in self._teacher_taps.items():
                    each[name] = forward(self.teachers[name], x)
                    teacher_features[name] = dict(taps.outputs)
                if cached:
                    source_logits = dict(zip(self.sources, cached_logits))
                else:
                    source_logits = {s: self.teacher_logits(x, s, each) for s in self.sources}
            terms: dict[str, torch.Tensor] = {}
            total = torch.zeros((), dtype=logits.dtype)
            for t in self.terms:
                inputs = LossInputs(
                    student_logits=logits, teacher_logits=source_logits.get(t.source), labels=y, index=index,
                    student=[student_features[n] for n in t.spec.student],
                    teacher=[teacher_features[t.feature_teacher][n] for n in t.spec.teacher])
                value = t.spec.weight * t.module(inputs)
                terms[t.label] = value.detach()
                total = total + value
            return total, logits, terms

        return loss_fn


def build_objective(student: nn.Module, teachers: Mapping[str, nn.Module], kd: KDConfig, sample_x,
                    train_labels: torch.Tensor) -> Objective:
    """Resolve the module names of every loss term, run student and teachers once on `sample_x` (eval mode, no
    gradient) and build each term's learned parts from the features' shapes. Without `kd.losses`, the objective is
    Hinton KD from `kd.temperature` / `kd.alpha`. Errors name the term: ``losses[1].student: unknown module ...``.

    Example:
        >>> obj = build_objective(student, {"teacher": teacher}, KDConfig(losses=["kd"]), x[:64], y)  # doctest: +SKIP
    """
    if not teachers:
        raise TorchslimError("distillation needs at least one teacher")
    names = list(teachers)
    if kd.teacher_weights is not None and len(kd.teacher_weights) != len(names):
        raise TorchslimError(f"teacher_weights: {len(kd.teacher_weights)} weights for {len(names)} teachers "
                             f"({', '.join(names)})")
    specs = kd.losses or [LossSpec(name="kd", temperature=kd.temperature, alpha=kd.alpha, weight=1.0)]
    seen: dict[str, int] = {}
    terms = []
    for i, spec in enumerate(specs):
        where = f"losses[{i}]"
        if spec.from_teacher is not None and spec.from_teacher not in teachers:
            raise TorchslimError(f"{where}.from_teacher: " + str(unknown_choice("teacher", spec.from_teacher, names)))
        for role, model, layers in (("student", student, spec.student),
                                    ("teacher", teachers[spec.from_teacher or names[0]], spec.teacher)):
            for name in layers:
                try:
                    resolve_module(model, name, role if role == "student" else f"teacher '{spec.from_teacher or names[0]}'")
                except TorchslimError as e:
                    raise TorchslimError(f"{where}.{role}: {e}") from None
        seen[spec.name] = seen.get(spec.name, 0) + 1
        label = spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}"
        module = LOSSES.get(spec.name)(spec.options())
        terms.append(_Term(label, spec, module, spec.from_teacher, spec.from_teacher or names[0]))

    model = DistillationModel(student, [t.module for t in terms])
    objective = Objective(model, terms, teachers, kd)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), objective.taps():
            forward(student, sample_x)
            s_feats = dict(objective._student_taps.outputs)
            t_feats = {}
            for name, taps in objective._teacher_taps.items():
                forward(teachers[name], sample_x)
                t_feats[name] = dict(taps.outputs)
    finally:
        student.train(was_training)
    for i, t in enumerate(terms):
        try:
            t.module.setup([s_feats[n] for n in t.spec.student],
                           [t_feats[t.feature_teacher][n] for n in t.spec.teacher], train_labels)
        except TorchslimError as e:
            raise TorchslimError(f"losses[{i}] ({t.spec.name}): {e}") from None
    return objective
