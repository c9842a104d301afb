"""Quantization: post-training static and dynamic int8 for ONNX Runtime."""
from torchslim.quant.config import DynamicInt8Config, StaticInt8Config
from torchslim.quant.ort import quantize, quantize_dynamic_int8, quantize_static_int8

__all__ = ["quantize", "StaticInt8Config", "DynamicInt8Config", "quantize_static_int8", "quantize_dynamic_int8"]
