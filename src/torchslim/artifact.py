"""An artifact: one model as it would ship, plus the runtime it runs in and what made it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from torch import nn

from torchslim.records import Record, split_info

Runtime = Literal["pytorch", "onnxruntime"]
R = TypeVar("R", bound=Record)


@dataclass
class Artifact:
    """A deployable model.

    ``path`` is the file a user would ship (``.safetensors`` for PyTorch, ``.onnx`` for ONNX Runtime); None for a
    PyTorch model held only in memory (evaluation then measures its safetensors serialization in memory).
    ``model`` is the PyTorch module: the one that runs for ``runtime="pytorch"``, and the module the ONNX file was
    made from otherwise (used for parameter and MAC counts, which do not change on export).
    ``info`` is what the stage that made it reports: typed records (:mod:`torchslim.records`) under their kind —
    ``info["training"]``, ``info["pruning"]``, ``info["quantization"]``, ... (build it with
    :func:`torchslim.records.as_info`) — and free-form facts under other keys (``opset``, ``teachers``, ...).
    ``source`` is the name of the artifact this one was made from — the float model that an export, a quantization,
    a pruning or a fine-tuning started from — so that the report can compare it with its own source; None for a
    model trained afresh or loaded (a teacher, a `train` student). Evaluation falls back to the artifact whose model
    this one's model is (an ONNX file made from an in-memory model).

    Example:
        >>> from torchslim.records import TrainingRecord, as_info
        >>> art = Artifact("student", "train", "pytorch", None, info=as_info(TrainingRecord(best_epoch=3)))
        >>> art.record(TrainingRecord).best_epoch
        3
    """

    name: str
    stage: str
    runtime: Runtime
    path: Path | None
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def records(self) -> list[Record]:
        """The typed records in ``info``, in order."""
        return split_info(self.info)[0]

    def record(self, kind: type[R]) -> R | None:
        """The record of type `kind` in ``info``, or None."""
        return next((r for r in self.records if isinstance(r, kind)), None)
