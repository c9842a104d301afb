"""What a task owns: how its model is called, what its inputs look like for export and latency, its metrics.

The rest of torchslim (training, distillation, pruning, quantization, export, evaluation) knows nothing about
images or text: it asks the task.

Example:
    >>> from torchslim.tasks import ImageClassification
    >>> task = ImageClassification(input_shape=(1, 8, 8), num_classes=10)
    >>> tuple(task.example_inputs(2).shape), task.input_names
    ((2, 1, 8, 8), ['input'])
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Inputs = Any  # a tensor, or a mapping of named tensors (input_ids, attention_mask, ...)


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Call `model` on a batch's inputs (a tensor, or keyword tensors) and return its logits.

    Example:
        >>> forward(nn.Linear(3, 2), torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return logits_of(out)


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, the first of a tuple, or `.logits` (Hugging Face)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    return len(inputs)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy (a fraction), the error count, and macro-F1 (the mean over classes of each class's F1)."""
    pred = logits.argmax(1)
    labels = np.asarray(labels)
    f1s = []
    for c in range(num_classes):
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
            "errors": int((pred != labels).sum()), "macro_f1": float(np.mean(f1s)) if f1s else float("nan")}


@dataclass
class Task:
    """A task: its metrics and primary metric, its model inputs, and example inputs for export and latency.

    Subclasses set ``name`` and implement :meth:`example_inputs`; everything else has a classification default.
    ``higher_is_better`` is the direction of the primary metric: training keeps the epoch that is best by it, and the
    report compares artifacts by it (perplexity: lower is better).
    """

    name: ClassVar[str] = "task"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "errors", "macro_f1")  # the keys :meth:`metrics` returns
    input_names: ClassVar[list[str]] = ["input"]

    num_classes: int = 10
    classes: list[str] = field(default_factory=list)

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> Inputs:
        raise NotImplementedError

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes of every input and of the logits: the batch axis by default."""
        return {**{n: {0: "batch"} for n in self.input_names}, "logits": {0: "batch"}}

    def model_kwargs(self) -> dict[str, Any]:
        """What `create_model` needs to know from the data (input shape, vocabulary size)."""
        return {}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The training loss of one batch (what ``fit`` minimises): cross-entropy of N×C logits with N labels."""
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return classification_metrics(logits, labels, self.num_classes)

    def check_model(self, model: nn.Module) -> None:
        """Raise a TorchslimError when `model` cannot take this task's inputs (a recipe's models are checked when
        they are built, before any training); nothing to check by default."""

    def with_teacher(self, data: Any, teacher: nn.Module) -> Any:
        """The data a run's stages see once its teacher exists: unchanged by default; a task whose labels come from
        the teacher (sentence-embedding: the teacher's embeddings) returns the data relabelled."""
        return data

    def sample_text(self, run: Any) -> dict[str, Any] | None:
        """A short text a model writes, for the report (causal-lm); None for a task that does not generate."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the report states about the inputs (shape, sequence length...) and the label names."""
        out: dict[str, Any] = {"task": self.name, "num_classes": self.num_classes}
        if self.classes:
            out["classes"] = list(self.classes)
        return out
