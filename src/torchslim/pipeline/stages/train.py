"""Stages that train on labels: `train` (a fresh student, the baseline distillation must beat) and `finetune`."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from torchslim.artifact import Artifact
from torchslim.pipeline.stages.base import STAGES, RunState, Stage
from torchslim.records import TrainingRecord
from torchslim.training import TrainConfig, fit


@STAGES.register("train", help="train the student on labels alone")
class TrainStage(Stage):
    """Train the student on labels alone (the baseline a distilled student must beat)."""

    type: Literal["train"]
    train: TrainConfig = Field(default_factory=TrainConfig)
    every_rank = True
    fresh_student = True

    def run(self, state: RunState, seed: int) -> Artifact:
        torch.manual_seed(seed)
        model = self.start_model(state)
        fitted = fit(model, state.data.train, state.data.val, self.train, seed=seed,
                     checkpoint=state.checkpoint(self.label), stage=self.label, log=state.log)
        return self.pytorch_artifact(state, model, TrainingRecord.of(fitted))


@STAGES.register("finetune", help="train the current model further on labels, keeping its zeros")
class FinetuneStage(Stage):
    """Train the current model further on labels (sparsity, if any, is kept)."""

    type: Literal["finetune"]
    train: TrainConfig = Field(default_factory=TrainConfig)
    every_rank = True

    def run(self, state: RunState, seed: int) -> Artifact:
        from torchslim.prune import hold_zeros
        from torchslim.prune.schedules import SparsityRecord

        model = self.start_model(state)
        masks = hold_zeros(model)  # None for a dense model: it has no zeros worth holding
        fitted = fit(model, state.data.train, state.data.val, self.train, seed=seed,
                     after_step=masks.apply if masks else None, extra_state=masks.masks if masks else None,
                     checkpoint=state.checkpoint(self.label), stage=self.label, log=state.log)
        held = SparsityRecord.of(masks) if masks else None
        return self.pytorch_artifact(state, model, TrainingRecord.of(fitted), held)
