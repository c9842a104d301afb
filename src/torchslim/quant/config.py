"""Quantization configs: :class:`QuantConfig` (torchslim's own fake-quant PTQ/QAT of a whole model, exported as QDQ
ONNX) and the configs of ONNX Runtime's int8 quantizer (:class:`StaticInt8Config`, :class:`DynamicInt8Config`).

Example:
    >>> QuantConfig().weight.per_channel
    True
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import Config
from torchslim.errors import did_you_mean
from torchslim.quant.spec import QuantSpec
from torchslim.quant.observers import OBSERVERS


class StaticInt8Config(Config):
    """Post-training static int8 for ONNX Runtime: QDQ format, int8 weights (per-channel by default), uint8
    activations with ranges calibrated on training batches.

    Example:
        >>> StaticInt8Config(calibration_batches=32).per_channel
        True
    """

    calibration_batches: int = Field(32, ge=1, le=10_000)
    calibration_batch_size: int = Field(64, ge=1)
    per_channel: bool = True
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"


class DynamicInt8Config(Config):
    """Post-training dynamic int8 for ONNX Runtime: int8 weights, activations quantized on the fly per batch.

    `exclude` lists shell-style patterns of ONNX node names (as the exported graph names them, e.g.
    ``/model/encoder/layer.0/output/dense/MatMul``) left in float: the few layers whose int8 error matters most.
    """

    per_channel: bool = False
    exclude: list[str] = Field(default_factory=list, description="ONNX node-name globs left in float")


class QuantConfig(Config):
    """Fake quantization of a model: weights of every Conv2d/Linear, activations at layer outputs and the input.

    `observer` chooses activation ranges on calibration batches, `weight_observer` weight ranges (see
    ``OBSERVERS.names()``); `percentile` is used by the percentile observer. `learnable` makes every step size a
    parameter trained with LSQ (Esser et al., 2020). `exclude` lists glob patterns of Conv/Linear names left in fp32;
    `per_layer_bits` maps layer names (or globs) to weight bit widths, overriding ``weight.bits`` (mixed precision).
    `calibration_batches` × `calibration_batch_size` random training rows calibrate the activation ranges.

    Example:
        >>> cfg = QuantConfig(weight=QuantSpec(bits=4, per_channel=True), observer="percentile")
        >>> cfg.activation.bits, cfg.weight.bits
        (8, 4)
    """

    weight: QuantSpec = Field(default_factory=lambda: QuantSpec(bits=8, symmetric=True, per_channel=True))
    activation: QuantSpec = Field(default_factory=lambda: QuantSpec(bits=8, symmetric=False, per_channel=False))
    observer: str = "minmax"
    weight_observer: str = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    learnable: bool = False
    exclude: list[str] = Field(default_factory=list, description="glob patterns of Conv/Linear names kept in fp32")
    per_layer_bits: dict[str, int] | None = None
    linear_per_channel: bool | None = Field(
        None, description="override weight.per_channel for Linear layers; null follows weight.per_channel. "
                          "ONNX Runtime's QGemm is faster at batch 1 with per-tensor weights")
    calibration_batches: int = Field(32, ge=1, le=10_000)
    calibration_batch_size: int = Field(64, ge=1)

    @field_validator("observer", "weight_observer")
    @classmethod
    def _known_observer(cls, name: str) -> str:
        if name not in OBSERVERS:
            raise ValueError(f"unknown observer '{name}'{did_you_mean(name, OBSERVERS.names())}; "
                             f"valid choices: {', '.join(OBSERVERS.names())}")
        return name

    @field_validator("per_layer_bits")
    @classmethod
    def _bit_widths(cls, bits: dict[str, int] | None) -> dict[str, int] | None:
        for name, b in (bits or {}).items():
            if not 2 <= b <= 8:
                raise ValueError(f"per_layer_bits['{name}'] = {b}: bit widths must be between 2 and 8")
        return bits

    @model_validator(mode="after")
    def _activations_per_tensor(self) -> QuantConfig:
        # ONNX Runtime's integer kernels take one scale per activation tensor; a per-channel activation grid could
        # be simulated but never deployed.
        if self.activation.per_channel:
            raise ValueError("activation.per_channel: activations are quantized per tensor (int8 kernels take one "
                             "activation scale); set per_channel: false")
        return self
