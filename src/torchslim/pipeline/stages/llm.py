"""Stages that compress a language model from calibration text (the causal-lm task): `prune_llm` (magnitude, Wanda,
SparseGPT), `weight_only` (RTN, GPTQ, AWQ, SmoothQuant) and `export_int4` (the weight-only model in ONNX Runtime's
MatMulNBits).

Calibration rows come from the run's own training split: ``calibration: {batches: 16, batch_size: 8}`` draws
16 × 8 = 128 windows of ``data.block_size`` tokens at random (seeded by the stage's seed), without replacement.
The records these stages report (`llm_pruning`, `weight_only`, `int4_export`) are defined here, beside the stages.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from torchslim.artifact import Artifact
from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.export.onnx import OnnxVerification
from torchslim.pipeline.stages.base import STAGES, RunState, Stage, current_artifact
from torchslim.prune.llm import (LLM_PRUNERS, LLMPruneConfig, LLMPruneResult, check_nm_widths, prune_llm_,
                                 target_linears)
from torchslim.quant.weight_only import (QuantizedWeight, WeightOnlyConfig, WeightOnlyResult, _check_groups,
                                         quantize_weights_)
from torchslim.records import DASH, Record, Table, as_info, number, percent, register

NBITS_BITS = (2, 4, 8)  # the code widths MatMulNBits reads (torchslim.quant.nbits_onnx)


# --------------------------------------------------------------------------------------------------- calibration
class LLMCalibration(Config):
    """How much of the training split calibrates: `batches` batches of `batch_size` windows (of data.block_size
    tokens each), drawn at random without replacement, seeded by the stage."""

    batches: int = Field(16, ge=1, le=100_000, description="calibration batches")
    batch_size: int = Field(8, ge=1, le=100_000, description="training windows per batch")

    @property
    def windows(self) -> int:
        return self.batches * self.batch_size

    def rows(self, state: RunState, seed: int) -> list[torch.Tensor]:
        """The calibration batches: token ids, each (batch_size, block_size)."""
        x = state.data.train.tensors[0]
        self.check(state)
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: self.windows]
        return list(x[pick].split(self.batch_size))

    def check(self, state: RunState) -> None:
        n = len(state.data.train)
        if self.windows > n:
            raise TorchslimError(f"calibration: {self.batches} batches × {self.batch_size} windows = {self.windows} "
                                 f"windows, but the training split has {n:,}; valid: batches × batch_size ≤ {n:,}")

    def describe(self, state: RunState) -> dict:
        length = state.data.train.tensors[0].shape[1]
        return {"windows": self.windows, "batches": self.batches, "batch_size": self.batch_size,
                "tokens_per_window": int(length), "tokens": self.windows * int(length), "split": "train"}


class _LLMStage(Stage):
    """What the language-model stages share: the causal-lm check and the fresh model `torchslim validate` checks."""

    def uses_calibration(self) -> bool:
        return False

    def check_task(self, state: RunState) -> None:
        if state.task.name != "causal-lm":
            raise TorchslimError(f"{self.type} compresses a language model (the causal-lm task: data tinyshakespeare "
                                 f"or text-file), and the data is {state.task.name}; use prune, ptq or quantize")
        if self.uses_calibration():
            self.calibration.check(state)

    def fresh_model(self, state: RunState) -> nn.Module | None:
        """An untrained model of the kind this stage starts from (the student once a stage made one, else the
        teacher): its layers' widths are the ones the stage will see, unless structured pruning changes them."""
        stages = list(state.recipe.stages)
        here = next((i for i, s in enumerate(stages) if s is self), len(stages))
        spec = state.recipe.student if any(s.makes_student for s in stages[:here]) else state.recipe.teacher
        if spec is None or getattr(spec, "onnx", None):
            return None
        with torch.random.fork_rng(devices=[]):  # the run's random stream must not depend on this check
            return state.create(spec)

    def calibration_rows(self, state: RunState, seed: int) -> list[torch.Tensor] | None:
        return self.calibration.rows(state, seed) if self.uses_calibration() else None


# ------------------------------------------------------------------------------------------------------ prune_llm
@STAGES.register("prune_llm", help="prune a language model's Linear layers from calibration text: magnitude, Wanda "
                                   "or SparseGPT, unstructured or N:M (2:4)")
class PruneLLMStage(_LLMStage, LLMPruneConfig):
    """One-shot pruning of the current language model (`method` magnitude, wanda or sparsegpt; `sparsity`, or
    `pattern` '2:4'), block by block on `calibration` windows of the training split; no fine-tuning."""

    type: Literal["prune_llm"]
    calibration: LLMCalibration = Field(default_factory=LLMCalibration,
                                        description="windows of the training split that calibrate")
    calibration_batches: ClassVar[None] = None  # the recipe says `calibration: {batches, batch_size}` instead

    @field_validator("pattern", mode="before")
    @classmethod
    def _quoted_pattern(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads an unquoted 2:4 as 2·60 + 4
            raise ValueError(f"pattern {value} is a number: YAML reads an unquoted N:M as base 60; quote it, e.g. "
                             f"pattern: \"{value // 60}:{value % 60}\" (or 'unstructured')")
        return value

    def uses_calibration(self) -> bool:
        return LLM_PRUNERS.get(self.method).stats != "none"

    def config(self) -> LLMPruneConfig:
        return LLMPruneConfig(**self.model_dump(include=set(LLMPruneConfig.model_fields)))

    def check(self, state: RunState) -> None:
        self.check_task(state)
        model = self.fresh_model(state)
        if model is not None:
            layers = target_linears(model, self.exclude)
            if not layers:
                raise TorchslimError(f"prune_llm: the model has no nn.Linear layer left to prune (exclude: "
                                     f"{self.exclude})")
            check_nm_widths(layers, self.n_m, "prune_llm")

    def run(self, state: RunState, seed: int) -> Artifact:
        model = self.start_model(state)
        result = prune_llm_(model, self.calibration_rows(state, seed), self.config())
        record = LLMPruningRecord.of(result, self.calibration.describe(state) if self.uses_calibration() else None)
        state.log(f"[{self.label}] {result.method} {result.pattern}: {100 * result.overall:.2f}% of "
                  f"{len(result.layers)} layers' weights are zero ({result.seconds:.1f} s)")
        return self.pytorch_artifact(state, model, record)


# ---------------------------------------------------------------------------------------------------- weight_only
@STAGES.register("weight_only", help="weight-only quantization of a language model (RTN, GPTQ, AWQ; SmoothQuant "
                                     "W8A8): the fake-quant PyTorch model, its codes saved beside it")
class WeightOnlyStage(_LLMStage, WeightOnlyConfig):
    """Quantize the current language model's Linear weights to `bits` in groups of `group_size` inputs (`method`
    rtn, gptq, awq, or smoothquant for int8 weights and activations), calibrated on `calibration` windows. The
    artifact is the fake-quant PyTorch model (float weights equal to the dequantized codes), evaluated like any
    model; the codes, scales and zero points go to ``<name>.codes.safetensors`` for `export_int4`."""

    type: Literal["weight_only"]
    calibration: LLMCalibration = Field(default_factory=LLMCalibration,
                                        description="windows of the training split that calibrate")
    calibration_batches: ClassVar[None] = None  # the recipe says `calibration: {batches, batch_size}` instead

    def uses_calibration(self) -> bool:
        return self.method != "rtn"

    def config(self) -> WeightOnlyConfig:
        return WeightOnlyConfig(**self.model_dump(include=set(WeightOnlyConfig.model_fields)))

    def check(self, state: RunState) -> None:
        self.check_task(state)
        model = self.fresh_model(state)
        if model is not None:
            layers = target_linears(model, self.exclude)
            if not layers:
                raise TorchslimError(f"weight_only: the model has no nn.Linear layer left to quantize (exclude: "
                                     f"{self.exclude})")
            _check_groups(layers, self)

    def codes_path(self, state: RunState) -> Path:
        return state.out / f"{self.label}.codes.safetensors"

    def run(self, state: RunState, seed: int) -> Artifact:
        model = self.start_model(state)
        result = quantize_weights_(model, self.calibration_rows(state, seed), self.config())
        codes = save_codes(result, self.codes_path(state))
        record = WeightOnlyRecord.of(result, codes.name, self.config(),
                                     self.calibration.describe(state) if self.uses_calibration() else None)
        state.log(f"[{self.label}] {result.method} {result.bits}-bit, groups of {result.group_size}: "
                  f"{len(result.layers)} layers, {record.packed_bytes:,} bytes packed ({result.seconds:.1f} s)")
        return self.pytorch_artifact(state, model, record)

    def reload(self, state: RunState, path: Path, info: dict) -> Artifact:
        """AWQ's unfoldable input scalings and SmoothQuant's int8 activations live in ScaledInputLinear layers: wrap
        the quantized layers again as the saved weights say, then load them."""
        from torchslim.io import load_checkpoint, load_state_dict
        from torchslim.quant.weight_only import ScaledInputLinear, _replace

        model = self.start_model(state)
        saved = load_state_dict(path)
        act_bits = 8 if self.method == "smoothquant" else None
        for name in load_codes(self.codes_path(state)):
            scale = saved.get(f"{name}.input_scale")
            if scale is not None or act_bits:
                new = ScaledInputLinear.from_linear(model.get_submodule(name), input_scale=scale, act_bits=act_bits,
                                                    act_granularity=self.activation)
                if f"{name}.act_scale" in saved:
                    new.act_scale = saved[f"{name}.act_scale"]
                _replace(model, name, new)
        return Artifact(self.label, self.type, "pytorch", path, load_checkpoint(model, path).eval(), info,
                        self.source(state))


def save_codes(result: WeightOnlyResult, path: Path) -> Path:
    """Each quantized layer's uint8 codes (out, in), float32 scales and uint8 zero points (out, groups) as
    safetensors (``<layer>.codes``, ``.scales``, ``.zeros``; the bits in the metadata): what `export_int4` packs."""
    from safetensors.torch import save_file

    from torchslim.io import atomic_path

    tensors = {}
    for name, q in result.layers.items():
        tensors.update({f"{name}.codes": q.codes.contiguous(), f"{name}.scales": q.scales.float().contiguous(),
                        f"{name}.zeros": q.zeros.contiguous()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"bits": str(result.bits), "method": result.method})
    return path


def load_codes(path: Path) -> dict[str, QuantizedWeight]:
    """The layers :func:`save_codes` wrote, as QuantizedWeight (the group size from the codes' and scales' shapes)."""
    from safetensors import safe_open

    if not path.is_file():
        raise TorchslimError(f"{path.name}: the weight_only stage's codes are missing; run it again (--force)")
    with safe_open(str(path), "pt") as f:
        bits = int(f.metadata()["bits"])
        names = [k.removesuffix(".codes") for k in f.keys() if k.endswith(".codes")]
        out = {}
        for n in names:
            codes, scales, zeros = (f.get_tensor(f"{n}.{part}") for part in ("codes", "scales", "zeros"))
            out[n] = QuantizedWeight(codes, scales, zeros, bits, codes.shape[1] // scales.shape[1])
    return out


# ---------------------------------------------------------------------------------------------------- export_int4
@STAGES.register("export_int4", help="the weight_only model in ONNX Runtime with its own codes as MatMulNBits "
                                     "(int4), verified against the fake-quant PyTorch model")
class ExportInt4Stage(_LLMStage):
    """Export the model the weight_only stage before it made to ONNX (the task's inputs, dynamic batch and sequence),
    then replace each quantized layer's MatMul by ONNX Runtime's MatMulNBits fed with that layer's codes, scales and
    zero points; verified against the fake-quant PyTorch model on `verify_windows` test windows."""

    type: Literal["export_int4"]
    opset: int = Field(17, ge=14, le=21)
    verify_windows: int = Field(8, ge=1, le=10_000, description="test windows the ONNX file is verified on")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="MatMulNBits accuracy_level (4: int8 compute of the activations; left out: ONNX Runtime's "
                          "default, float)")
    stage_runtime = "onnxruntime"

    def check_recipe(self, recipe: Any, where: str, made_model: bool) -> None:
        stages = list(recipe.stages)
        here = next((i for i, s in enumerate(stages) if s is self), len(stages))
        maker = next((s for s in reversed(stages[:here]) if s.runtime == "pytorch"), None)
        if not isinstance(maker, WeightOnlyStage):
            made = f"the model before it comes from '{maker.label}' ({maker.type})" if maker is not None \
                else "no stage before it made a model"
            raise ValueError(f"{where} (export_int4): exports the model a weight_only stage made, and {made}; put it "
                             f"after a weight_only stage")
        if maker.method == "smoothquant":
            raise ValueError(f"{where} (export_int4): '{maker.label}' is smoothquant (int8 activations too), and "
                             f"MatMulNBits runs weight-only codes; use weight_only method rtn, gptq or awq")
        if maker.bits not in NBITS_BITS:
            raise ValueError(f"{where} (export_int4): '{maker.label}' has {maker.bits}-bit weights, and MatMulNBits "
                             f"takes {', '.join(map(str, NBITS_BITS))}-bit codes; valid: bits 4 (or 2, 8)")
        size = maker.group_size
        if size != -1 and (size < 16 or size & (size - 1)):
            raise ValueError(f"{where} (export_int4): '{maker.label}' has groups of {size}, and MatMulNBits needs a "
                             f"power of two of at least 16; valid group_size: 16, 32, 64, 128, 256")

    def check(self, state: RunState) -> None:
        self.check_task(state)
        stages = list(state.recipe.stages)
        here = next(i for i, s in enumerate(stages) if s is self)
        maker = next(s for s in reversed(stages[:here]) if s.runtime == "pytorch")
        model = self.fresh_model(state) if maker.group_size == -1 else None
        for name, layer in (target_linears(model, maker.exclude) if model is not None else {}).items():
            k = layer.in_features
            if k < 16 or k & (k - 1):
                raise TorchslimError(f"export_int4: group_size -1 makes each row of '{name}' one block of {k} inputs, "
                                     f"and MatMulNBits needs a power of two of at least 16; valid: group_size 16, 32, "
                                     f"64 or 128 in '{maker.label}'")

    def run(self, state: RunState, seed: int) -> Artifact:
        made_by = next((a for a in state.artifacts if a.name == current_artifact(state)), None)
        rec = made_by.record(WeightOnlyRecord) if made_by is not None else None
        if rec is None:
            raise TorchslimError(f"export_int4: the current model does not come from a weight_only stage "
                                 f"({made_by.name if made_by else 'none'}); put export_int4 after weight_only")
        path = state.out / f"{self.label}.onnx"
        record = export_int4(state.model, load_codes(state.out / rec.codes_file), path, state.task,
                             state.test_inputs()[: self.verify_windows], opset=self.opset,
                             accuracy_level=self.accuracy_level, threads=state.recipe.evaluate.threads)
        record.method, record.source_artifact = rec.method, made_by.name
        state.log(f"[{self.label}] {record.nodes} MatMulNBits nodes ({rec.bits}-bit, blocks of {rec.group_size}); "
                  f"ONNX Runtime vs fake-quant PyTorch on {record.verification.samples} test windows: max |Δlogit| "
                  f"{record.verification.max_abs_diff:.3g}, next-token agreement "
                  f"{100 * record.verification.top1_agreement:.2f}%")
        return Artifact(self.label, self.type, "onnxruntime", path, state.model, as_info(record), self.source(state))


def export_int4(model: nn.Module, layers: dict[str, QuantizedWeight], path: Path, task: Any, test: torch.Tensor, *,
                opset: int = 17, accuracy_level: int | None = None, threads: int = 1) -> Int4ExportRecord:
    """`model` (the fake-quant model whose weights are `layers`' dequantized codes) as ONNX with MatMulNBits at
    `path`, checked on the token windows `test` against `model` in PyTorch (max |Δlogit|, next-token top-1)."""
    from torchslim.export import export_onnx
    from torchslim.export.onnx import ort_logits, ort_session
    from torchslim.quant.export import ort_kernels
    from torchslim.quant.nbits_onnx import export_matmul_nbits
    from torchslim.training.loop import predict

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", task=task, opset=opset)
        info = export_matmul_nbits(fp32, layers, path, accuracy_level=accuracy_level)
    want = predict(model, test).numpy()  # N×T×V
    got = ort_logits(ort_session(path, threads), test)
    agree = float((want.argmax(-1) == got.argmax(-1)).mean())
    first = next(iter(layers.values()))
    return Int4ExportRecord(bits=first.bits, group_size=first.group_size, nodes=len(info["nodes"]),
                            weight_bytes_fp32=info["weight_bytes_before"], weight_bytes=info["weight_bytes_after"],
                            verification=OnnxVerification(float(np.abs(want - got).max()), agree, len(test)),
                            kernels=ort_kernels(path), accuracy_level=accuracy_level)


# -------------------------------------------------------------------------------------------------------- records
def _calibration_text(cal: dict | None) -> str:
    if not cal:
        return "none (the method needs no data)"
    return (f"{cal['windows']:,} windows × {cal['tokens_per_window']} tokens = {cal['tokens']:,} tokens of the "
            f"training split ({cal['batches']} batches of {cal['batch_size']}), drawn at random")


@register
@dataclasses.dataclass
class LLMPruningRecord(Record):
    """What a `prune_llm` stage reports: ``method``, ``pattern`` ('unstructured' or 'N:M'), ``target_sparsity``,
    ``overall_sparsity`` (zeros / weights over the pruned layers), ``layers`` ({layer: fraction of zeros}),
    ``calibration`` (windows and tokens; None for magnitude), ``sequential`` (block by block), ``seconds``.

    Example:
        >>> LLMPruningRecord("wanda", "2:4", 0.5, 0.5, {"h.0.fc": 0.5}).summary()[0]
        ('pruning', 'wanda, 2:4: 50.00 % of the pruned layers’ weights are zero (target 50.00 %)')
    """

    kind = "llm_pruning"
    method: str
    pattern: str
    target_sparsity: float
    overall_sparsity: float
    layers: dict[str, float] = dataclasses.field(default_factory=dict)
    calibration: dict | None = None
    sequential: bool = False
    seconds: float | None = None

    @classmethod
    def of(cls, result: LLMPruneResult, calibration: dict | None) -> LLMPruningRecord:
        return cls(result.method, result.pattern, result.sparsity, result.overall, dict(result.layers), calibration,
                   result.sequential, result.seconds)

    def summary(self) -> list[tuple[str, str]]:
        rows = [("pruning", f"{self.method}, {self.pattern}: {percent(self.overall_sparsity)} of the pruned layers’ "
                            f"weights are zero (target {percent(self.target_sparsity)})"),
                ("calibration", _calibration_text(self.calibration)
                 + (", block by block" if self.sequential else ""))]
        if number(self.seconds):
            rows.append(("pruning time", f"{self.seconds:.1f} s"))
        return rows

    def tables(self) -> list[Table]:
        return [(["layer", "sparsity %"], [[k, f"{100 * float(v):.2f}"] for k, v in self.layers.items()])] \
            if self.layers else []


@register
@dataclasses.dataclass
class WeightOnlyRecord(Record):
    """What a `weight_only` stage reports: ``method``, ``bits``, ``group_size`` (-1: per output channel),
    ``symmetric``, ``act_order``, ``layers`` (how many), ``packed_bytes`` (codes packed tightly, fp16 scales, packed
    zero points: the compressed size of those weights), ``float_bytes`` (the same layers in fp32), ``codes_file``,
    ``folded`` (layers whose AWQ/SmoothQuant scaling went into the op before them), ``calibration``, ``seconds``.

    The artifact's file holds the fake-quant float weights, so the report's size columns show a float model; the
    packed size is its own column (``packed weights KB``).

    Example:
        >>> WeightOnlyRecord("gptq", 4, 32, packed_bytes=9_000, float_bytes=65_536).columns()
        {'packed weights KB': '9.0'}
    """

    kind = "weight_only"
    quantized = True
    method: str
    bits: int
    group_size: int
    symmetric: bool = False
    act_order: bool = False
    layers: int = 0
    packed_bytes: int = 0
    float_bytes: int = 0
    codes_file: str | None = None
    folded: int = 0
    calibration: dict | None = None
    sequential: bool = False
    seconds: float | None = None
    config: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, result: WeightOnlyResult, codes_file: str, cfg: WeightOnlyConfig,
           calibration: dict | None) -> WeightOnlyRecord:
        return cls(result.method, result.bits, result.group_size, bool(cfg.symmetric), cfg.act_order,
                   len(result.layers), result.nbytes, sum(4 * q.codes.numel() for q in result.layers.values()),
                   codes_file, len(result.folded), calibration, result.sequential, result.seconds,
                   cfg.model_dump(exclude={"exclude"}))

    def _how(self) -> str:
        groups = "per output channel" if self.group_size == -1 else f"groups of {self.group_size} inputs"
        extra = [x for x, on in (("symmetric", self.symmetric), ("act_order", self.act_order)) if on]
        act = ", int8 activations (fake-quant)" if self.method == "smoothquant" else ""
        return f"{self.method}, {self.bits}-bit weights, {groups}" + "".join(f", {x}" for x in extra) + act

    def summary(self) -> list[tuple[str, str]]:
        rows = [("weight quantization", self._how())]
        if self.packed_bytes:
            ratio = self.float_bytes / self.packed_bytes
            rows.append(("packed weights", f"{self.layers} layers in {self.packed_bytes:,} bytes (codes, fp16 scales, "
                                           f"zero points) vs {self.float_bytes:,} in fp32: {ratio:.2f}× smaller; the "
                                           f"artifact file holds the fake-quant float weights"
                                           + (f"; codes in {self.codes_file}" if self.codes_file else "")))
        if self.folded:
            rows.append(("input scaling folded", f"{self.folded} layers' scales folded into the op before them"))
        rows.append(("calibration", _calibration_text(self.calibration)
                     + (", block by block" if self.sequential else "")))
        if number(self.seconds):
            rows.append(("quantization time", f"{self.seconds:.1f} s"))
        return rows

    def columns(self) -> dict[str, str]:
        return {"packed weights KB": f"{self.packed_bytes / 1000:.1f}" if self.packed_bytes else DASH}

    def speed_reasons(self) -> list[str]:
        return ["a fake-quant PyTorch model: its float weights equal the dequantized codes and run at float speed "
                "(export_int4 runs the codes in ONNX Runtime)"]


@register
@dataclasses.dataclass
class Int4ExportRecord(Record):
    """What an `export_int4` stage reports: ``bits``, ``group_size`` (MatMulNBits' block size), ``nodes`` (Linear
    layers now MatMulNBits), ``weight_bytes_fp32`` / ``weight_bytes`` (those layers' weights before and after),
    ``verification`` (ONNX Runtime vs the fake-quant PyTorch model on a few test windows: max |Δlogit|, next-token
    top-1 agreement), ``kernels`` (node types ONNX Runtime runs), ``method`` and ``source_artifact`` (the weight_only
    artifact), ``accuracy_level``.

    Example:
        >>> Int4ExportRecord(4, 32, 8, 400_000, 62_000).summary()[0]
        ('int4 export', '8 Linear layers as MatMulNBits, 4-bit, blocks of 32')
    """

    kind = "int4_export"
    quantized = True
    bits: int
    group_size: int
    nodes: int
    weight_bytes_fp32: int
    weight_bytes: int
    verification: OnnxVerification | None = None
    kernels: dict[str, int] | None = None
    method: str | None = None
    source_artifact: str | None = None
    accuracy_level: int | None = None

    def __post_init__(self) -> None:  # from JSON
        if isinstance(self.verification, dict):
            self.verification = OnnxVerification.from_json(self.verification)

    def summary(self) -> list[tuple[str, str]]:
        rows = [("int4 export", f"{self.nodes} Linear layers as MatMulNBits, {self.bits}-bit, blocks of "
                                f"{self.group_size}"),
                ("MatMulNBits weights", f"{self.weight_bytes:,} bytes vs {self.weight_bytes_fp32:,} in fp32 "
                                        f"({self.weight_bytes_fp32 / max(1, self.weight_bytes):.2f}× smaller)")]
        if self.source_artifact:
            rows.append(("codes from", f"{self.source_artifact} ({self.method})"))
        if self.verification is not None:
            v = self.verification
            rows.append(("ONNX Runtime vs fake-quant PyTorch", f"max |Δlogit| {v.max_abs_diff:.3g}, next-token "
                                                               f"agreement {percent(v.top1_agreement)} on "
                                                               f"{v.samples} test windows"))
        if self.kernels:
            rows.append(("ONNX Runtime kernels", ", ".join(f"{op} ×{n}" for op, n in sorted(self.kernels.items()))))
        if self.accuracy_level is not None:
            rows.append(("accuracy_level", str(self.accuracy_level)))
        return rows

    def columns(self) -> dict[str, str]:
        return {"packed weights KB": f"{self.weight_bytes / 1000:.1f}"}

    def speed_reasons(self) -> list[str]:
        matmuls = (self.kernels or {}).get("MatMul", 0) + (self.kernels or {}).get("FusedMatMul", 0)
        reasons = ["MatMulNBits dequantizes the blocks to float for a float GEMM on every call unless accuracy_level "
                   "is 4 (int8 compute), which at a small width can cost as much as the fp32 GEMM it replaces"] \
            if self.accuracy_level != 4 else ["MatMulNBits quantizes the activations to int8 on every call"]
        if matmuls:
            reasons.append(f"{matmuls} MatMul nodes stay float (attention's products and the LM head, tied to the "
                           f"token embedding)")
        return reasons


__all__ = ["ExportInt4Stage", "Int4ExportRecord", "LLMCalibration", "LLMPruningRecord", "PruneLLMStage",
           "WeightOnlyRecord", "WeightOnlyStage", "export_int4", "load_codes", "save_codes"]
