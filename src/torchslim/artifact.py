"""An artifact: one model as it would ship, plus the runtime it runs in and what made it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

Runtime = Literal["pytorch", "onnxruntime"]


@dataclass
class Artifact:
    """A deployable model.

    ``path`` is the file a user would ship (``.safetensors`` for PyTorch, ``.onnx`` for ONNX Runtime); None for a
    PyTorch model held only in memory (evaluation then measures its safetensors serialization in memory).
    ``model`` is the PyTorch module: the one that runs for ``runtime="pytorch"``, and the module the ONNX file was
    made from otherwise (used for parameter and MAC counts, which do not change on export).
    ``info`` holds stage-specific facts for the report (per-layer sparsity, ONNX verification, quantization config).
    """

    name: str
    stage: str
    runtime: Runtime
    path: Path | None
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
