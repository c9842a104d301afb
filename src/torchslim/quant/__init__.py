"""Quantization: fake-quant PTQ and QAT with torchslim's own grids, QDQ export, mixed precision (per-layer
sensitivity, bit allocation under a size budget, accuracy-aware fallback), and ONNX Runtime's int8 quantizer; for
language models, weight-only RTN/GPTQ/AWQ and SmoothQuant W8A8 (`weight_only`) and their int4 export to ONNX
Runtime's MatMulNBits (`nbits_onnx`).

Modules, from the bottom up: `grid` (QuantSpec), `observers`, `config` (QuantConfig and ONNX Runtime's configs),
`fakequant`, `prepare` (ptq, qat), `export` (QDQ ONNX), `sensitivity` (mixed precision), `ort`, `weight_only`,
`nbits_onnx`.

Example:
    >>> from torchslim.quant import QuantConfig, QuantSpec, ptq, export_qdq          # doctest: +SKIP
    >>> qmodel = ptq(model, QuantConfig(weight=QuantSpec(bits=4, per_channel=True)), data.train.tensors[0])  # doctest: +SKIP
    >>> export_qdq(qmodel, "model.int8.onnx", data.input_shape)                      # doctest: +SKIP
"""
from torchslim.quant.config import DynamicInt8Config, QuantConfig, StaticInt8Config
from torchslim.quant.export import QuantizationRecord, export_qdq, export_qdq_verified, ort_kernels
from torchslim.quant.fakequant import FakeQuant, fake_quantize
from torchslim.quant.spec import QuantSpec
from torchslim.quant.observers import OBSERVERS, Observer, qparams_from_range
from torchslim.quant.ort import quantize, quantize_dynamic_int8, quantize_static_int8
from torchslim.quant.prepare import QuantConv2d, QuantLinear, calibrate, fold_batchnorm, prepare, ptq, qat
from torchslim.quant.sensitivity import (
    accuracy_aware,
    allocate_bits,
    config_for,
    layer_sensitivity,
    mixed_precision,
    plot_sensitivity,
    quantizable_layers,
    sensitivity_order,
    weight_bytes,
)
from torchslim.quant.weight_only import (
    WEIGHT_ONLY_METHODS,
    QuantizedWeight,
    WeightOnlyConfig,
    WeightOnlyResult,
    awq_quantize_,
    gptq_quantize_,
    quantize_groupwise,
    quantize_weights_,
    rtn_quantize_,
    smooth_activations_,
    smoothquant_,
)
from torchslim.quant.nbits_onnx import export_matmul_nbits, pack_matmul_nbits

__all__ = [
    "quantize", "StaticInt8Config", "DynamicInt8Config", "quantize_static_int8", "quantize_dynamic_int8",
    "QuantSpec", "QuantConfig", "OBSERVERS", "Observer", "qparams_from_range", "FakeQuant", "fake_quantize",
    "QuantConv2d", "QuantLinear", "fold_batchnorm", "prepare", "calibrate", "ptq", "qat", "export_qdq",
    "export_qdq_verified", "ort_kernels", "QuantizationRecord", "layer_sensitivity", "plot_sensitivity", "allocate_bits", "accuracy_aware",
    "config_for", "mixed_precision", "quantizable_layers", "sensitivity_order", "weight_bytes",
    "WeightOnlyConfig", "WeightOnlyResult", "QuantizedWeight", "WEIGHT_ONLY_METHODS", "quantize_weights_",
    "rtn_quantize_", "gptq_quantize_", "awq_quantize_", "smoothquant_", "smooth_activations_", "quantize_groupwise",
    "export_matmul_nbits", "pack_matmul_nbits",
]
