from __future__ import annotations

from typing import Literal

from pydantic import Field

from torchslim.config import Config


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
    """Post-training dynamic int8 for ONNX Runtime: int8 weights, activations quantized on the fly per batch."""

    per_channel: bool = False
