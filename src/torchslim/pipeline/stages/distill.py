"""Stages that learn from a teacher: `distill` (Hinton KD or a list of feature/relation losses, one teacher or
several) and `datafree` (no training images)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from torchslim.artifact import Artifact
from torchslim.distillation import KDConfig, build_objective, distill
from torchslim.distillation.datafree import DataFreeConfig, check_data_free, distill_data_free, few_data_indices
from torchslim.distillation.kd import TeacherAgreement
from torchslim.errors import TorchslimError, did_you_mean
from torchslim.pipeline.stages.base import STAGES, RunState, Stage
from torchslim.records import Record, TrainingRecord, json_text, percent, register
from torchslim.training import TrainConfig, dist


@STAGES.register("distill", help="train the student from the teacher(s): Hinton KD, or a list of losses "
                                 "(`torchslim list losses`)")
class DistillStage(Stage, KDConfig):
    """Train the student from the teacher's soft targets (Hinton KD), or from a list of `losses` (feature, relation
    and contrastive terms; `torchslim list losses`), from one teacher or several."""

    type: Literal["distill"]
    train: TrainConfig = Field(default_factory=TrainConfig)
    init: Literal["fresh", "current"] = Field("fresh", description="fresh: a new student; current: continue from "
                                                                   "the current model (FitNets' second stage)")
    teachers: list[str] | None = Field(None, description="names of the teachers to distill from (default: all; "
                                                         "`teacher:` is named 'teacher')")
    every_rank = True

    @property
    def makes_student(self) -> bool:
        return self.init == "fresh"

    def run(self, state: RunState, seed: int) -> Artifact:
        torch.manual_seed(seed)
        model = self.start_model(state)
        teachers = {name: state.teachers[name] for name in self.teachers or state.teachers}
        fitted = distill(model, teachers, state.data, self, self.train, seed=seed,
                         checkpoint=state.checkpoint(self.label), stage=self.label, log=state.log)
        facts = {"kd": self.model_dump(include=set(KDConfig.model_fields)), "teachers": list(teachers)}
        if not self.makes_student:
            facts["init_from"] = next((a.name for a in reversed(state.artifacts)
                                       if a.runtime == "pytorch" and a.model is state.model), None)
        agreement = None
        if dist.is_main() and state.task.num_classes > 0:  # embeddings have no top-1 to agree on
            # Top-1 agreement with the teacher(s) on the test set: how much of the teacher's function was transferred.
            agreement = TeacherAgreement.measure(model, teachers, state.test_inputs(), self)
            state.log(f"[{self.label}] top-1 agreement with the teacher on the test set: "
                      f"{100 * agreement.combined:.2f}%")
        return self.pytorch_artifact(state, model, TrainingRecord.of(fitted), agreement, **facts)

    def check_recipe(self, recipe, where: str, made_model: bool) -> None:
        names = recipe.teacher_names()
        if not names:
            raise ValueError(f"{where} (distill): needs a `teacher:` section to distill from")
        if recipe.data.task == "sentence-embedding" and not self.losses:
            raise ValueError(f"{where} (distill): sentence embeddings have no logits for Hinton KD; give losses: "
                             f"[{{name: embedding}}] (the teacher's embeddings, each batch), or use a `train` stage "
                             f"(its embeddings computed once)")
        for name in self.teachers or []:
            if name not in names:
                raise ValueError(f"{where}.teachers: unknown teacher '{name}'{did_you_mean(name, names)}; "
                                 f"valid choices: {', '.join(names)}")
        used = self.teachers or names
        if self.teacher_weights is not None and len(self.teacher_weights) != len(used):
            raise ValueError(f"{where}.teacher_weights: {len(self.teacher_weights)} weights for {len(used)} teachers "
                             f"({', '.join(used)})")
        for k, spec in enumerate(self.losses):
            if spec.from_teacher is not None and spec.from_teacher not in used:
                raise ValueError(f"{where}.losses[{k}].from_teacher: unknown teacher '{spec.from_teacher}'"
                                 f"{did_you_mean(spec.from_teacher, used)}; this stage's teachers: {', '.join(used)}")
        if self.init == "current" and not made_model:
            raise ValueError(f"{where}.init: 'current' continues from the model of an earlier stage, but this is the "
                             f"first stage; use init: fresh")

    def check(self, state: RunState) -> None:
        """Build the objective on untrained models and a few training rows: unknown module names (with a
        did-you-mean) and features that cannot be matched show up before any training."""
        names = self.teachers or state.recipe.teacher_names()
        if not (self.losses or len(names) > 1):
            return
        x, y = state.data.train.tensors[:2]
        with torch.random.fork_rng(devices=[]):  # the run's random stream must not depend on this check
            teachers = {n: state.create(state.recipe.teacher_spec(n)).eval() for n in names}
            build_objective(state.create(state.recipe.student), teachers, self, x[:8], y)


@STAGES.register("datafree", help="distill the teacher without training images: DAFL generator, DeepInversion, "
                                  "few-data VAE, or Gaussian noise (the baseline)")
class DataFreeStage(Stage, DataFreeConfig):
    """Distill the teacher into a fresh student without training images: a DAFL generator, DeepInversion (BN
    teachers), a VAE fitted to `vae.few_data` real images, or Gaussian noise (the baseline). The validation split is
    only evaluated; no training image reaches the student. Defaults: DAFL's MNIST budget (200 × 120 steps of 512)."""

    type: Literal["datafree"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=200, batch_size=512, lr=2e-3))
    every_rank = True
    fresh_student = True

    def run(self, state: RunState, seed: int) -> Artifact:
        torch.manual_seed(seed)
        model = self.start_model(state)
        idx = few_data_indices(len(state.data.train), self.vae.few_data, seed) if self.method == "vae" else None
        # The guard, by construction: besides the teacher, the function receives the validation split (evaluated
        # only) and, for vae alone, those few images (their labels stay behind). The training split is never passed.
        info = distill_data_free(model, state.teacher, self, self.train, input_shape=state.data.input_shape,
                                 num_classes=state.data.num_classes, val=state.data.val,
                                 few_data=None if idx is None else state.data.train.tensors[0][idx], seed=seed,
                                 checkpoint=state.checkpoint(self.label), stage=self.label, log=state.log)
        few = None if idx is None else idx.tolist()
        return self.pytorch_artifact(state, model, DataFreeRecord.from_json({**info, "few_data_indices": few}))

    def check_recipe(self, recipe, where: str, made_model: bool) -> None:
        if recipe.teacher is None:
            raise ValueError(f"{where} (datafree): needs a `teacher:` section to distill from (data-free uses "
                             f"`teacher:`)")

    def check(self, state: RunState) -> None:
        """A setup that cannot work (deepinversion without BatchNorm, a DAFL feature layer the teacher lacks, an
        input size the generator cannot make, more few-data images than the training split) fails here, before
        the teacher is trained."""
        if state.task.name != "image-classification":
            raise TorchslimError(f"datafree synthesizes images; the data is {state.task.name}")
        with torch.random.fork_rng(devices=[]):
            teacher = state.create(state.recipe.teacher)
        check_data_free(self, teacher, state.data.input_shape, n_train=len(state.data.train),
                        teacher_name=state.recipe.teacher.model or state.recipe.teacher.factory)


@register
@dataclasses.dataclass
class DataFreeRecord(Record):
    """What a `datafree` stage reports: :func:`~torchslim.distillation.datafree.distill_data_free`'s result as it is
    (``method``, ``history`` — per epoch, the source's numbers at the top level —, ``best_epoch``,
    ``best_val_accuracy``, and in ``details`` everything else it returns: config, teacher accuracy, generator or
    transfer-set facts, ...), plus ``few_data_indices``: the training rows a ``vae`` run was given (None otherwise).
    Its JSON is that dict, flat, as the function returns it.

    Defined here, by the stage, while datafree.py is being rewritten; it belongs beside distill_data_free.
    """

    kind = "datafree"
    method: str = ""
    history: list[dict] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    few_data_indices: list[int] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        details = data.pop("details")
        few = data.pop("few_data_indices")
        return {**data, **details, **({"few_data_indices": few} if few is not None else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DataFreeRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"details"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   details={k: v for k, v in data.items() if k not in names})

    def summary(self) -> list[tuple[str, str]]:
        text = f"{self.method}; {len(self.history)} epoch{'s' if len(self.history) != 1 else ''}"
        if self.best_epoch is not None:
            text += f"; kept epoch {self.best_epoch} (val {percent(self.best_val_accuracy)})"
        rows = [("data-free distillation", text)]
        rows += [(str(k), json_text(v)) for k, v in self.details.items()]
        if self.few_data_indices is not None:
            rows.append(("few-data rows", f"{len(self.few_data_indices)} training images (indices in report.json)"))
        return rows
