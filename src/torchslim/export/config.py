from __future__ import annotations

from pydantic import Field

from torchslim.config import Config


class ExportConfig(Config):
    """Export to ONNX with a dynamic batch axis, then check the file against PyTorch on the test set."""

    opset: int = Field(17, ge=13, le=21)
    verify: bool = True
