"""Export a fake-quant model as a QDQ ONNX model that keeps torchslim's own grids (no re-calibration).

Every weight is stored as an int8 (or uint8) initializer feeding a DequantizeLinear (per-channel scales on axis 0);
every activation quantizer becomes QuantizeLinear→DequantizeLinear at the same place; biases become int32
initializers with scale s_input·s_weight, as ONNX Runtime's integer kernels expect. ONNX Runtime then fuses the
pattern into QLinearConv / QGemm / QLinearMatMul / QLinearAdd and runs int8 arithmetic.

Widths below 8 bits use the 8-bit containers: weights simply hold values in the clamped range; an activation grid
narrower than its container is clamped by Q→DQ→Clip→Q→DQ (the Clip lies on grid points, so the second Q is exact and
both stay fusable), so the file computes what the fake-quant model computes.

:func:`export_qdq_verified` also runs the file in ONNX Runtime and records how well it agrees with the fake-quant model
and with the float model, and which kernels ONNX Runtime chose. :class:`QuantizationRecord` is what a quantizing
stage reports: that check, the config, and why the artifact may not be faster than its float source.

Example:
    >>> qmodel = ptq(model, QuantConfig(), data.train.tensors[0])                 # doctest: +SKIP
    >>> export_qdq(qmodel, "runs/x/int8.onnx", data.input_shape)                # doctest: +SKIP
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.export.onnx import INPUT_NAME, OUTPUT_NAME, OnnxVerification
from torchslim.io import atomic_path
from torchslim.quant.fakequant import FakeQuant, effective_scale, fake_quantize
from torchslim.quant.prepare import ACTIVATIONS, INT32_MAX, INT32_MIN, QuantConv2d, QuantLinear, _QuantLayer
from torchslim.records import Record, json_text, register

# Node types of ONNX Runtime's integer kernels, as they appear in an optimized graph.
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool")
# Float compute ops as they appear in ONNX Runtime's optimized graph: a layer left in float runs as one of these.
FLOAT_KERNELS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NhwcConv")
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


class _QuantizeDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, lo: float, hi: float, narrow: bool):
        return fake_quantize(x, scale, zero_point.to(torch.int32), qmin, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, lo, hi, narrow):
        y = g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)
        if narrow:
            y = g.op("Clip", y, g.op("Constant", value_t=torch.tensor(lo, dtype=torch.float32)),
                     g.op("Constant", value_t=torch.tensor(hi, dtype=torch.float32)))
            y = g.op("DequantizeLinear", g.op("QuantizeLinear", y, scale, zero_point), scale, zero_point)
        return y


class _Dequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, scale, zero_point, axis: int):
        if scale.dim():
            shape = [1] * q.dim()
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        return (q.to(torch.float32) - zero_point.to(torch.float32)) * scale

    @staticmethod
    def symbolic(g, q, scale, zero_point, axis):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)


class _Gemm(torch.autograd.Function):
    """x @ wᵀ + b as one Gemm node reading the dequantized weight directly (no Transpose between DQ and Gemm,
    which would hide the pattern from ONNX Runtime's fusion)."""

    @staticmethod
    def forward(ctx, x, w, b):
        return F.linear(x, w, b)

    @staticmethod
    def symbolic(g, x, w, b):
        return g.op("Gemm", x, w, transB_i=1) if b is None else g.op("Gemm", x, w, b, transB_i=1)


def _container(fq: FakeQuant) -> torch.dtype:
    return torch.int8 if fq.spec.signed else torch.uint8


class _QDQ(nn.Module):
    """An activation FakeQuant as it is exported: QuantizeLinear→DequantizeLinear with the same grid."""

    def __init__(self, fq: FakeQuant) -> None:
        super().__init__()
        spec, dtype = fq.spec, _container(fq)
        self.register_buffer("scale", effective_scale(fq).detach().float().reshape(()))
        self.register_buffer("zero_point", fq.zero_point.detach().reshape(()).to(dtype))
        self.qmin, self.qmax = spec.qmin, spec.qmax
        info = torch.iinfo(dtype)
        self.narrow = (spec.qmin, spec.qmax) != (info.min, info.max)
        # The grid's end points computed as DequantizeLinear computes them, so that Clip keeps exact grid values.
        zp = self.zero_point.to(torch.float32)
        self.lo = float((torch.tensor(float(spec.qmin)) - zp) * self.scale)
        self.hi = float((torch.tensor(float(spec.qmax)) - zp) * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizeDequantize.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, self.lo, self.hi,
                                         self.narrow)


class _DequantizedLayer(nn.Module):
    """A quantized Conv2d/Linear as it is exported: integer weight and bias initializers behind DequantizeLinear."""

    def __init__(self, layer: _QuantLayer, source: FakeQuant | None) -> None:
        super().__init__()
        # ONNX Runtime fuses only DequantizeLinear→layer; between the quantizer and this layer a flatten or max-pool
        # would hide it, so the same grid is applied again right here (an exact no-op on values already on it).
        self.requantize = _QDQ(source) if source is not None and not layer.input_direct else None
        layer.refresh_weight_grid()
        fq = layer.weight_fake_quant
        spec, dtype = fq.spec, _container(fq)
        scale = effective_scale(fq).detach().float()
        zero_point = fq.zero_point.detach()
        shape = [-1] + [1] * (layer.weight.dim() - 1) if spec.per_channel else []
        w = layer.weight.detach()
        q = torch.clamp(torch.round(w / scale.reshape(shape)) + zero_point.reshape(shape), spec.qmin, spec.qmax)
        self.register_buffer("weight_q", q.to(dtype))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point.to(dtype))
        # Biases become int32 in the accumulator's unit (s_input·s_weight), rounded as the fake-quant model rounds
        # them; ONNX Runtime fuses only layers whose bias comes through such a DequantizeLinear.
        bias_scale = layer.bias_scale() if layer.bias is not None else None
        self.quantized_bias = bias_scale is not None
        if self.quantized_bias:
            bias_q = torch.clamp(torch.round(layer.bias.detach() / bias_scale), INT32_MIN, INT32_MAX)
            self.register_buffer("bias_q", bias_q.to(torch.int32))
            self.register_buffer("bias_scale", bias_scale.float())
            self.register_buffer("bias_zero_point", torch.zeros_like(bias_scale, dtype=torch.int32))
        else:  # no grid on the input (an excluded layer feeds it): a float bias, as in the fake-quant model
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if isinstance(layer, QuantConv2d):
            if layer.padding_mode != "zeros":
                raise TorchslimError(f"export_qdq: Conv2d padding_mode '{layer.padding_mode}' is not supported; "
                                     f"valid: zeros")
            self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        else:
            self.conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.requantize is not None:
            x = self.requantize(x)
        w = _Dequantize.apply(self.weight_q, self.weight_scale, self.weight_zero_point, 0)
        b = (_Dequantize.apply(self.bias_q, self.bias_scale, self.bias_zero_point, 0) if self.quantized_bias
             else self.bias)
        if self.conv is not None:
            return F.conv2d(x, w, b, **self.conv)
        if x.dim() == 2:
            return _Gemm.apply(x, w, b)
        return F.linear(x, w, b)


def _export_copy(fq_model: nn.Module) -> nn.Module:
    """A copy of the fake-quant model with each FakeQuant and quantized layer replaced by its export form."""
    model = copy.deepcopy(fq_model).eval()
    quantizers = getattr(model, ACTIVATIONS, None)
    fqs = [m for m in model.modules() if isinstance(m, FakeQuant)]
    if quantizers is None or not fqs:
        raise TorchslimError("export_qdq: the model has no quantizers; quantize it first with "
                             "torchslim.quant.ptq (or prepare + calibrate)")
    if not all(bool(fq.calibrated) for fq in fqs if fq.kind == "activation"):
        raise TorchslimError("export_qdq: the model is not calibrated; run torchslim.quant.calibrate first")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    for name, layer in layers.items():
        source = layer._input_fake_quant
        if source is not None and not source.enabled:
            source = None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _DequantizedLayer(layer, source))
    for key in list(quantizers.keys()):
        if quantizers[key].enabled:
            quantizers[key] = _QDQ(quantizers[key])
        else:
            quantizers[key] = nn.Identity()
    return model


def _example(input_shape: tuple[int, ...] | None, example_inputs: torch.Tensor | None, what: str) -> torch.Tensor:
    """The tensor the exporter traces with: `example_inputs` as given, or zeros of one sample of `input_shape`."""
    if (input_shape is None) == (example_inputs is None):
        raise TorchslimError(f"{what}: give exactly one of input_shape (one sample's shape, e.g. (1, 28, 28)) or "
                             f"example_inputs (a tensor with a batch axis)")
    return torch.zeros(1, *input_shape) if example_inputs is None else example_inputs


def export_qdq(fq_model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None, *,
               example_inputs: torch.Tensor | None = None, opset: int = 17) -> Path:
    """Write the fake-quant model `fq_model` (from :func:`ptq`, :func:`qat` or :func:`prepare` + :func:`calibrate`)
    as a QDQ ONNX model with its own grids and int8 weights, a dynamic batch axis, atomically.

    The exporter traces the model on `example_inputs` (a tensor with a batch axis) or, instead, on zeros of one
    sample of `input_shape` (no batch axis); give one of them.

    Example:
        >>> export_qdq(ptq(model, QuantConfig(), x_train), "m.int8.onnx", (1, 8, 8))   # doctest: +SKIP
        PosixPath('m.int8.onnx')
        >>> export_qdq(qmodel, "m.int8.onnx", example_inputs=x_test[:1])               # doctest: +SKIP
        PosixPath('m.int8.onnx')
    """
    import onnx

    example = _example(input_shape, example_inputs, "export_qdq")
    if opset < 13:
        raise TorchslimError(f"export_qdq: opset {opset} has no per-channel DequantizeLinear; valid: 13 or later")
    path = Path(path)
    model = _export_copy(fq_model)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "qdq.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is the one that maps autograd Functions to our Q/DQ nodes; its deprecation
            # notice is noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(model, (example,), str(raw), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(str(raw))
    _constants_to_initializers(proto)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as dst:
        onnx.save(proto, str(dst))
    return path


def _constants_to_initializers(proto) -> None:
    """Scales and zero points that the exporter left as Constant nodes become initializers, like the weights, so the
    file lists every quantization parameter in one place."""
    from onnx import numpy_helper

    keep = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
            proto.graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def ort_kernels(path: str | os.PathLike) -> dict[str, int]:
    """Node types (with counts) of the graph ONNX Runtime actually runs after its optimizations (CPU, all levels):
    whether QDQ pairs were fused into integer kernels shows here (see :data:`INT8_KERNELS`).

    Example:
        >>> kernels = ort_kernels("m.int8.onnx")                        # doctest: +SKIP
        >>> kernels["QLinearConv"]                                      # doctest: +SKIP
        2
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized)
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node))


def export_qdq_verified(qmodel: nn.Module, reference: nn.Module, path: str | os.PathLike, test_inputs: torch.Tensor, *,
                        example_inputs: torch.Tensor | None = None, input_shape: tuple[int, ...] | None = None,
                        opset: int = 17, threads: int = 1) -> dict:
    """:func:`export_qdq` the fake-quant `qmodel` to `path`, then run the file in ONNX Runtime on `test_inputs` and
    compare it with `qmodel` itself and with `reference` (the float model it was quantized from).

    `example_inputs` (a tensor with a batch axis) or `input_shape` (one sample's shape) is what the exporter traces;
    without either, the first row of `test_inputs` is. `threads` is ONNX Runtime's intra-op thread count.

    Returns (JSON-ready) ``{"verification": ..., "vs_fp32": ..., "kernels": {node type: count}}``: "verification"
    compares ONNX Runtime with the fake-quant model and "vs_fp32" with `reference`, each as ``{"max_abs_diff",
    "top1_agreement", "samples"}`` (:func:`torchslim.export.onnx.compare_logits`); "kernels" are the node types of
    the graph ONNX Runtime runs (:func:`ort_kernels`: integer kernels such as QLinearConv show that it fused the QDQ
    pairs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torchslim.quant import QuantConfig, ptq
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> qmodel = ptq(model, QuantConfig(), x)
        >>> info = export_qdq_verified(qmodel, model, "/tmp/mlp.int8.onnx", x)       # doctest: +SKIP
        >>> info["verification"]["top1_agreement"]                                   # doctest: +SKIP
        1.0
    """
    from torchslim.export.onnx import compare_logits, ort_logits, ort_session
    from torchslim.training.loop import predict

    if example_inputs is None and input_shape is None:
        example_inputs = test_inputs[:1]
    path = export_qdq(qmodel, path, input_shape, example_inputs=example_inputs, opset=opset)
    onnx_logits = ort_logits(ort_session(path, threads), test_inputs)
    return {"verification": compare_logits(predict(qmodel, test_inputs).numpy(), onnx_logits),
            "vs_fp32": compare_logits(predict(reference, test_inputs).numpy(), onnx_logits),
            "kernels": ort_kernels(path)}


def _verification(value) -> OnnxVerification | None:
    return OnnxVerification.from_json(value) if isinstance(value, dict) else value


@register
@dataclasses.dataclass
class QuantizationRecord(Record):
    """What a quantizing stage reports about its int8 artifact.

    ``mode``: ``"static"`` or ``"dynamic"`` for ONNX Runtime's quantizer (:func:`torchslim.quant.quantize`), None for
    torchslim's fake-quant model exported as QDQ. ``config``: the quantization config as a dict. ``verification``:
    ONNX Runtime against the fake-quant model that was exported (QDQ only); ``vs_fp32``: against the float model it
    was quantized from (each an :class:`~torchslim.export.onnx.OnnxVerification`). ``kernels``: the node types of the
    graph ONNX Runtime runs (:func:`ort_kernels`). ``float_layers``: for an artifact without an ONNX graph (a PyTorch
    one), the layer types it left in float, {type: count}. ``source``: the name of the float artifact it was made
    from, when that is not the last float PyTorch artifact before it.

    Example:
        >>> rec = QuantizationRecord(kernels={"QLinearConv": 2, "Gemm": 1, "QuantizeLinear": 3, "DequantizeLinear": 2})
        >>> rec.speed_reasons()
        ['1 layer left in float (Gemm)', '5 int8↔float conversions (QuantizeLinear/DequantizeLinear) around them']
    """

    kind = "quantization"
    quantized = True
    mode: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    verification: OnnxVerification | None = None
    vs_fp32: OnnxVerification | None = None
    kernels: dict[str, int] | None = None
    float_layers: dict[str, int] | None = None
    source: str | None = None

    def __post_init__(self) -> None:  # from JSON, or from export_qdq_verified's dict
        self.verification, self.vs_fp32 = _verification(self.verification), _verification(self.vs_fp32)

    @classmethod
    def qdq(cls, config: dict, verified: dict) -> QuantizationRecord:
        """The record of torchslim's own QDQ export: `config` and :func:`export_qdq_verified`'s result."""
        return cls(config=config, **verified)

    def made_from(self) -> str | None:
        return self.source

    def summary(self) -> list[tuple[str, str]]:
        how = f"ONNX Runtime's int8 quantizer, {self.mode}" if self.mode else "torchslim fake-quant model as QDQ ONNX"
        rows = [("quantization", how)]
        if self.config:
            rows.append(("quantization config", json_text(self.config)))
        if self.verification is not None:
            rows.append(("ONNX Runtime vs fake-quant model", self.verification.text()))
        if self.vs_fp32 is not None:
            rows.append(("ONNX Runtime vs fp32 PyTorch", self.vs_fp32.text()))
        if self.kernels:
            rows.append(("ONNX Runtime kernels", ", ".join(f"{op} ×{n}" for op, n in sorted(self.kernels.items()))))
        if self.float_layers:
            rows.append(("layers left in float", ", ".join(f"{op} ×{n}" for op, n in self.float_layers.items())))
        if self.source:
            rows.append(("made from", self.source))
        return rows

    def speed_reasons(self) -> list[str]:
        kernels = self.kernels or {}
        reasons = []
        # A PyTorch artifact has no ORT graph to read; its maker may list the layer types it left in float instead.
        floats = {op: n for op, n in kernels.items() if op in FLOAT_KERNELS and n} or dict(self.float_layers or {})
        if floats:
            count = sum(floats.values())
            reasons.append(f"{count} layer{'s' if count != 1 else ''} left in float ({', '.join(sorted(floats))})")
        if kernels:
            if not any(kernels.get(op) for op in INT8_KERNELS):
                reasons.append("ONNX Runtime fused no int8 kernels, so it ran float layers plus conversions")
            conversions = sum(kernels.get(op, 0) for op in CONVERSIONS)
            if conversions > 2 and floats:  # one Quantize at the input and one Dequantize at the output are inevitable
                reasons.append(f"{conversions} int8↔float conversions (QuantizeLinear/DequantizeLinear) around them")
        if self.mode == "dynamic":
            reasons.append("dynamic quantization measures and quantizes every activation on each call")
        return reasons
