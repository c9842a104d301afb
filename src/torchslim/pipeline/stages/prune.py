"""Stages that make the model sparser or smaller: `prune` (weights), `prune_channels` (whole channels),
`prune_ffn` and `prune_heads` (transformer blocks) and `share` (Deep Compression's k-means weight sharing)."""
from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from torchslim.artifact import Artifact
from torchslim.distillation import KDConfig, kd_loss_fn
from torchslim.errors import TorchslimError
from torchslim.pipeline.stages.base import STAGES, RunState, Stage
from torchslim.prune import (ChannelPruneConfig, CodebookConfig, PruneConfig, finetune_codebooks,
                             prune_channels_to_target, prune_with_schedule, reinitialize_, share_weights_)
from torchslim.prune.schedules import pruning_records
from torchslim.prune.structured import ChannelPruningRecord
from torchslim.records import TrainingRecord
from torchslim.training import TrainConfig


DISTILL_HELP = ("fine-tune by distilling from the model as it was before this stage (Hinton KD: temperature, "
                "alpha = the weight of the labels); default: the labels alone")


def _check_distill(kd: KDConfig | None) -> None:
    if kd is not None and (kd.losses or kd.teacher_weights):
        raise ValueError("distill takes temperature and alpha only: the teacher is the model before pruning")


def _from_unpruned(state: RunState, kd: KDConfig | None):
    """`fit`'s loss: KD from a frozen copy of the model before this stage, or None (cross-entropy)."""
    return kd_loss_fn(copy.deepcopy(state.model).eval(), kd.temperature, kd.alpha) if kd else None


@STAGES.register("prune", help="pruning by a registered criterion: one-shot, iterative, gradual (AGP) or lottery "
                               "ticket, with masked fine-tuning")
class PruneStage(Stage, PruneConfig):
    """Prune the current model (a registered criterion; unstructured or N:M); fine-tune after each round with the
    masks held. ``schedule: gradual`` prunes during the fine-tuning; ``schedule: lottery`` retrains the current
    architecture from a fresh initialization (seeded by the stage), rewinding between rounds."""

    type: Literal["prune"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0))
    every_rank = True

    @model_validator(mode="after")
    def _schedule_trains(self) -> PruneStage:
        if self.schedule in ("gradual", "lottery") and self.train.epochs < 1:
            raise ValueError(f"schedule '{self.schedule}' prunes while it trains: set train.epochs to 1 or more")
        if self.schedule == "lottery" and self.rewind_epoch > self.train.epochs:
            raise ValueError(f"rewind_epoch {self.rewind_epoch} is after the last epoch of a round (train.epochs "
                             f"{self.train.epochs}); choose 0 (initialization) to {self.train.epochs}")
        return self

    def run(self, state: RunState, seed: int) -> Artifact:
        model, info = prune_with_schedule(
            self.start_model(state), self, state.data, self.train, seed=seed, stage=self.label, log=state.log,
            checkpoint=state.checkpoint(self.label), round_checkpoint=state.round_checkpoint(self.label),
            fresh_init=lambda s: self._fresh_model(state, s))
        return self.pytorch_artifact(state, model, *pruning_records(info))

    @staticmethod
    def _fresh_model(state: RunState, seed: int) -> tuple[nn.Module, str]:
        """A new initialization of the current model's architecture, drawn from `seed` (a lottery ticket's θ_0):
        from the recipe's model section when it builds the same architecture (its own init, e.g. He init for
        ResNets), else PyTorch's default init of a copy, e.g. after structured pruning changed the widths."""
        spec = state.recipe.student if state.student else state.recipe.teacher
        if spec is not None and not getattr(spec, "from_teacher", False):  # a copy of the teacher is no fresh init
            torch.manual_seed(seed)
            fresh = state.create(spec)
            if {k: v.shape for k, v in fresh.state_dict().items()} == \
                    {k: v.shape for k, v in state.model.state_dict().items()}:
                return fresh, f"{spec.model or spec.factory or spec.hf} factory, seed {seed}"
        return reinitialize_(copy.deepcopy(state.model), seed), f"reset_parameters of the current model, seed {seed}"


@STAGES.register("prune_channels", help="structured pruning: remove whole channels down to a MACs or a measured "
                                        "latency target (Torch-Pruning's dependency graph), fine-tuning after each "
                                        "round")
class PruneChannelsStage(Stage, ChannelPruneConfig):
    """Structured pruning: remove whole channels (following residual and batch-norm couplings) until the model has
    `macs_reduction`× fewer MACs, in `rounds` rounds with `train` fine-tuning after each. The model really shrinks.
    ``target: latency`` prunes to a time budget measured in `latency_runtime` instead (``latency_reduction`` or
    ``latency_ms``, at `batch_size` with `threads`); the record holds predicted and measured latency and the plot of
    latency vs width per layer group."""

    type: Literal["prune_channels"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0))
    distill: KDConfig | None = Field(None, description=DISTILL_HELP)
    every_rank = True

    @model_validator(mode="after")
    def _distill_fields(self) -> PruneChannelsStage:
        _check_distill(self.distill)
        return self

    def check(self, state: RunState) -> None:
        x = state.example_inputs(1)
        if self.target == "latency" and not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TorchslimError(f"prune_channels: target latency times image-like models (one float input); the "
                                 f"{state.task.name} task's inputs are not: use target macs")

    def run(self, state: RunState, seed: int) -> Artifact:
        model = self.start_model(state)
        # Pruning is deterministic, so a resumed run rebuilds the same shapes before its round checkpoint loads.
        info = prune_channels_to_target(model, self, state.data, self.train, example_inputs=state.example_inputs(1),
                                        seed=seed, checkpoint=state.round_checkpoint(self.label), stage=self.label,
                                        log=state.log, loss_fn=_from_unpruned(state, self.distill))
        return self.pytorch_artifact(state, model, ChannelPruningRecord.from_json(info))


class _TransformerPruneStage(Stage):
    """What `prune_ffn` and `prune_heads` share: `keep` per block, or a measured latency target; importance from
    `calibration_batches` training batches; an optional fine-tune (with `distill`, from the model before)."""

    keep: int | float | None = Field(None, gt=0, description="kept per block (a whole number, or a fraction)")
    latency_reduction: float | None = Field(None, gt=1, le=100, description="measured time before / after")
    latency_ms: float | None = Field(None, gt=0, le=1e6, description="the time to reach instead")
    latency_runtime: Literal["onnxruntime", "pytorch"] = "onnxruntime"
    threads: int = Field(1, ge=1, le=1024, description="threads of the timed runtime")
    batch_size: int = Field(1, ge=1, le=65536, description="the batch size timed")
    latency_tolerance: float = Field(0.05, ge=0, le=1, description="how far over the target a measurement may be")
    criterion: Literal["activation", "magnitude"] = "activation"
    calibration_batches: int = Field(8, ge=1, le=10_000)
    calibration_batch_size: int = Field(16, ge=1)
    latency_cache: str | None = Field(None, description="latency table folder (default ~/.cache/torchslim/latency)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0))
    distill: KDConfig | None = Field(None, description=DISTILL_HELP)
    noun: ClassVar[str] = "feed-forward neurons"
    record: ClassVar[str] = "ffn_pruning"

    @model_validator(mode="after")
    def _one_target(self) -> _TransformerPruneStage:
        _check_distill(self.distill)
        given = [k for k in ("keep", "latency_reduction", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of keep ({self.noun} per block), latency_reduction or latency_ms"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    def check(self, state: RunState) -> None:
        model = state.model
        if model is None:  # checked before any model exists: a fresh one of the kind this stage will start from
            spec = state.recipe.student if state.recipe.student is not None else state.recipe.teacher
            if spec is None or getattr(spec, "onnx", None):
                return
            model = state.create(spec)
        self.layers(model)  # a model without such blocks: one line naming what was looked for

    def run(self, state: RunState, seed: int) -> Artifact:
        from torchslim.training import fit

        model = self.start_model(state)
        rows = state.data.train.tensors[0][: self.calibration_batches * self.calibration_batch_size]
        calibration = list(rows.split(self.calibration_batch_size))
        if self.keep is not None:
            info = self.prune(model, int(self.keep) if self.keep >= 1 else float(self.keep), calibration)
        else:
            info = self.prune_to_latency(model, calibration, latency_reduction=self.latency_reduction,
                                         latency_ms=self.latency_ms, runtime=self.latency_runtime,
                                         example_inputs=state.example_inputs(self.batch_size), threads=self.threads,
                                         tolerance=self.latency_tolerance, cache_dir=self.latency_cache)
        state.log(f"[{self.label}] kept {info['kept']} of {info.get('width', info.get('heads'))} {self.noun} per "
                  f"block" + (f", {info['measured_ms']:.4g} ms measured" if "measured_ms" in info else ""))
        trained = [TrainingRecord.of(fit(model, state.data.train, state.data.val, self.train, seed=seed,
                                         loss_fn=_from_unpruned(state, self.distill), stage=self.label,
                                         log=state.log))] if self.train.epochs else []
        return self.pytorch_artifact(state, model, *trained, **{self.record: info})


@STAGES.register("prune_ffn", help="remove feed-forward neurons of every transformer block for real (the same number "
                                   "in each): `keep` of them, or as many as a measured latency target allows; "
                                   "fine-tuning after")
class PruneFFNStage(_TransformerPruneStage):
    """Feed-forward neurons removed for real from every transformer block (:func:`torchslim.prune_ffn_`): `keep`
    neurons per block, or the widest width whose latency, predicted from the measured latency tables and then
    measured on the whole model in `latency_runtime` at `batch_size`, meets `latency_reduction` / `latency_ms`
    (:func:`torchslim.prune.prune_ffn_to_latency_`). Importance from `calibration_batches` training batches."""

    type: Literal["prune_ffn"]
    step: int = Field(64, ge=1, le=4096, description="widths tried: multiples of this")

    def layers(self, model: nn.Module) -> list:
        from torchslim.prune import ffn_layers

        return ffn_layers(model)

    def prune(self, model: nn.Module, keep: int | float, calibration: list) -> dict:
        from torchslim.prune import prune_ffn_

        return prune_ffn_(model, keep=keep, calibration=calibration, criterion=self.criterion)

    def prune_to_latency(self, model: nn.Module, calibration: list, **target) -> dict:
        from torchslim.prune import prune_ffn_to_latency_

        return prune_ffn_to_latency_(model, calibration=calibration, step=self.step, criterion=self.criterion,
                                     **target)


@STAGES.register("prune_heads", help="remove attention heads of every transformer block for real (the same number in "
                                     "each): `keep` of them, or as many as a measured latency target allows; "
                                     "fine-tuning after")
class PruneHeadsStage(_TransformerPruneStage):
    """Attention heads removed for real from every transformer block (:func:`torchslim.prune.prune_heads_`): `keep`
    heads per block, or the most heads whose latency, predicted from the measured latency tables (one cell per
    block's attention at each head count) and then measured on the whole model in `latency_runtime` at
    `batch_size`, meets `latency_reduction` / `latency_ms` (:func:`torchslim.prune.prune_heads_to_latency_`).
    Importance: what each head writes through the output layer on `calibration_batches` training batches."""

    type: Literal["prune_heads"]
    noun: ClassVar[str] = "attention heads"
    record: ClassVar[str] = "head_pruning"

    def layers(self, model: nn.Module) -> list:
        from torchslim.prune import attention_layers

        return attention_layers(model)

    def prune(self, model: nn.Module, keep: int | float, calibration: list) -> dict:
        from torchslim.prune import prune_heads_

        return prune_heads_(model, keep=keep, calibration=calibration, criterion=self.criterion)

    def prune_to_latency(self, model: nn.Module, calibration: list, **target) -> dict:
        from torchslim.prune import prune_heads_to_latency_

        return prune_heads_to_latency_(model, calibration=calibration, criterion=self.criterion, **target)


@STAGES.register("share", help="Deep Compression k-means weight sharing with centroid fine-tuning")
class ShareStage(Stage, CodebookConfig):
    """Deep Compression weight sharing: k-means codebooks per layer (zeros stay zero), centroids fine-tuned with
    shared gradients for `train.epochs`."""

    type: Literal["share"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0, lr=1e-4))
    every_rank = True

    def run(self, state: RunState, seed: int) -> Artifact:
        model = self.start_model(state)
        books = share_weights_(model, self)
        facts = {"codebook": self.model_dump(include=set(CodebookConfig.model_fields)),
                 "bits": {name: b.bits for name, b in books.items()}}
        training = None
        if self.train.epochs:
            books, fitted = finetune_codebooks(model, books, state.data.train, state.data.val, self.train, seed=seed,
                                               bias_dtype=self.bias_dtype, stage=self.label, log=state.log)
            training = TrainingRecord.of(fitted)
        state.codebooks = books
        return self.pytorch_artifact(state, model, training, **facts)
