"""Stages that quantize: `quantize` (ONNX Runtime's int8 quantizer), and torchslim's own `ptq`, `qat` and `mixed`
(fake-quant with our grids, exported as QDQ ONNX that ONNX Runtime runs with integer kernels)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from torchslim.artifact import Artifact
from torchslim.distillation import KDConfig
from torchslim.pipeline.stages.base import STAGES, RunState, Stage
from torchslim.quant import (DynamicInt8Config, QuantConfig, StaticInt8Config, export_qdq_verified, mixed_precision,
                             ptq, qat, quantize)
from torchslim.quant.export import QuantizationRecord
from torchslim.quant.sensitivity import MixedPrecisionRecord
from torchslim.records import Record, TrainingRecord, as_info
from torchslim.training import TrainConfig, dist


@STAGES.register("quantize", help="int8 post-training quantization (static QDQ or dynamic) for ONNX Runtime")
class QuantizeStage(Stage, StaticInt8Config):
    """Int8 post-training quantization of the current model, run by ONNX Runtime."""

    type: Literal["quantize"]
    mode: Literal["static", "dynamic"] = "static"
    exclude: list[str] = Field(default_factory=list, description="dynamic: ONNX node-name globs left in float (the "
                                                                "few MatMuls whose int8 error matters most)")
    stage_runtime = "onnxruntime"

    @model_validator(mode="after")
    def _exclude_is_dynamic(self) -> QuantizeStage:
        if self.exclude and self.mode != "dynamic":
            raise ValueError("exclude applies to mode: dynamic (static QDQ quantizes every layer)")
        return self

    def run(self, state: RunState, seed: int) -> Artifact:
        cfg = self if self.mode == "static" else DynamicInt8Config(per_channel=self.per_channel, exclude=self.exclude)
        art = quantize(state.model, cfg, state.data, state.out / f"{self.label}.onnx", name=self.label, seed=seed)
        art.source = self.source(state)
        v = art.record(QuantizationRecord).vs_fp32
        state.log(f"[{art.name}] int8 ({self.mode}) vs fp32 PyTorch on {v.samples} test inputs: "
                  f"top-1 agreement {100 * v.top1_agreement:.2f}%")
        return art


class _QDQStage(Stage, QuantConfig):
    """What the stages exporting torchslim's own fake-quant model share: the QDQ export and its verification."""

    opset: int = Field(17, ge=13, le=21)
    stage_runtime = "onnxruntime"

    def quantized_artifact(self, state: RunState, qmodel: nn.Module, config: dict, *records: Record | None
                           ) -> Artifact:
        """Export a fake-quant model with its own scales; check ONNX Runtime against it and against fp32."""
        path = state.out / f"{self.label}.onnx"
        quantization = QuantizationRecord.qdq(config, export_qdq_verified(
            qmodel, state.model, path, state.test_inputs(), example_inputs=state.example_inputs(1), opset=self.opset,
            threads=state.recipe.evaluate.threads))
        state.log(f"[{self.label}] ONNX Runtime vs fake-quant model: top-1 agreement "
                  f"{100 * quantization.verification.top1_agreement:.2f}%; vs fp32: "
                  f"{100 * quantization.vs_fp32.top1_agreement:.2f}%")
        return Artifact(self.label, self.type, "onnxruntime", path, state.model, as_info(quantization, *records),
                        self.source(state))

    def quant_config(self) -> dict:
        return self.model_dump(include=set(QuantConfig.model_fields))


@STAGES.register("ptq", help="torchslim's own 2-8 bit post-training quantization, exported as QDQ ONNX")
class PTQStage(_QDQStage):
    """torchslim's own post-training quantization (2-8 bit weights and activations, choice of observer), exported
    as QDQ ONNX with torchslim's scales so ONNX Runtime runs integer kernels."""

    type: Literal["ptq"]

    def run(self, state: RunState, seed: int) -> Artifact:
        qmodel = ptq(state.model, self, state.data.train.tensors[0], seed=seed)
        return self.quantized_artifact(state, qmodel, self.quant_config())


@STAGES.register("qat", help="quantization-aware training (optionally distilled), exported as QDQ ONNX")
class QATStage(_QDQStage):
    """Quantization-aware training from the current model (optionally distilled from it), exported as QDQ ONNX."""

    type: Literal["qat"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-4))
    distill: bool = Field(False, description="distill from the fp32 current model while training")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)
    every_rank = True

    def run(self, state: RunState, seed: int) -> Artifact:
        kd = KDConfig(temperature=self.temperature, alpha=self.alpha) if self.distill else None
        qmodel, fitted = qat(state.model, self, state.data, self.train, teacher=state.model if self.distill else None,
                             kd=kd, seed=seed, checkpoint=state.checkpoint(self.label), stage=self.label,
                             log=state.log)
        if not dist.is_main():  # rank 0 alone exports; the other ranks only trained alongside
            return Artifact(self.label, self.type, "onnxruntime", state.out / f"{self.label}.onnx", state.model)
        return self.quantized_artifact(state, qmodel, self.quant_config(), TrainingRecord.of(fitted))


@STAGES.register("mixed", help="mixed-precision weights from per-layer sensitivity (size budget or accuracy tolerance)")
class MixedStage(_QDQStage):
    """Mixed-precision weights from a per-layer sensitivity analysis: either the least sensitive allocation that fits
    `budget` (a fraction of the uniform int8 weight bytes), or — with `tolerance_points` — accuracy-aware fallback
    from uniform `weight.bits`, most sensitive layers first, until within the tolerance. Exported as QDQ ONNX."""

    type: Literal["mixed"]
    budget: float | None = Field(None, gt=0, le=4, description="weight bytes as a fraction of uniform int8")
    tolerance_points: float | None = Field(None, ge=0, le=100, description="accuracy-aware: allowed drop in points")
    choices: list[Literal[2, 3, 4, 8, 32]] = Field(default_factory=lambda: [2, 4, 8, 32])

    @model_validator(mode="after")
    def _one_goal(self) -> MixedStage:
        if (self.budget is None) == (self.tolerance_points is None):
            raise ValueError("mixed: give exactly one of `budget` (size) or `tolerance_points` (accuracy)")
        return self

    def run(self, state: RunState, seed: int) -> Artifact:
        cfg, info = mixed_precision(state.model, self, state.data, budget=self.budget,
                                    tolerance_points=self.tolerance_points, choices=self.choices, seed=seed,
                                    log=state.log)
        mixed = MixedPrecisionRecord.from_json(info)
        state.log(f"[{self.label}] weight bits per layer: {mixed.bits}")
        qmodel = ptq(state.model, cfg, state.data.train.tensors[0], seed=seed)
        return self.quantized_artifact(state, qmodel, self.quant_config(), mixed)
