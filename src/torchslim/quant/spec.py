"""What to quantize and how: :class:`QuantSpec` (one tensor's grid) and :class:`QuantConfig` (a whole model).

Integer grids follow one rule, so that the fake-quant model and the exported ONNX file agree by construction:
symmetric specs use a signed grid [-2^(b-1), 2^(b-1)-1] with zero point 0 (stored in int8), asymmetric specs an
unsigned grid [0, 2^b-1] with an integer zero point (stored in uint8). Widths below 8 bits use the same containers
with the range clamped.

Example:
    >>> spec = QuantSpec(bits=4, symmetric=True)
    >>> spec.qmin, spec.qmax
    (-8, 7)
    >>> QuantConfig().weight.per_channel
    True
"""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from torchslim.config import Config


class QuantSpec(Config):
    """The integer grid of one tensor: `bits` (2-8), `symmetric` (zero point 0, signed) or asymmetric (unsigned with
    a zero point), `per_channel` (one scale per output channel, axis 0; weights only).

    Example:
        >>> QuantSpec(bits=8, symmetric=False).qmax
        255
    """

    bits: int = Field(8, ge=2, le=8)
    symmetric: bool = True
    per_channel: bool = False

    @property
    def signed(self) -> bool:
        return self.symmetric

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def with_bits(self, bits: int) -> QuantSpec:
        """The same spec at another width (per-layer bit widths, mixed precision)."""
        return self.model_copy(update={"bits": QuantSpec(bits=bits).bits})


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
        from torchslim.errors import did_you_mean
        from torchslim.quant.observers import OBSERVERS

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
