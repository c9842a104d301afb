"""The integer grid of one tensor: :class:`QuantSpec` (what observers, fake quantizers and the QDQ export share).

Integer grids follow one rule, so that the fake-quant model and the exported ONNX file agree by construction:
symmetric specs use a signed grid [-2^(b-1), 2^(b-1)-1] with zero point 0 (stored in int8), asymmetric specs an
unsigned grid [0, 2^b-1] with an integer zero point (stored in uint8). Widths below 8 bits use the same containers
with the range clamped.

Example:
    >>> spec = QuantSpec(bits=4, symmetric=True)
    >>> spec.qmin, spec.qmax
    (-8, 7)
"""
from __future__ import annotations

from pydantic import Field

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
