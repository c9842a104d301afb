"""Text classification: token ids N×L (int64, 0 = padding) in, logits N×classes out.

The tokenizer that made the ids travels with the task, so that a shipped model can be used on raw text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from torchslim.tasks.base import Task


@dataclass
class TextClassification(Task):
    """Token-id sequences (padded with 0 to at most `max_length`) into `num_classes` classes.

    ``latency_length`` is the sequence length of the example inputs that export and latency use (stated in the
    report); by default ``max_length``.

    Example:
        >>> TextClassification(vocab_size=100, max_length=16, num_classes=2).example_inputs(3).shape
        torch.Size([3, 16])
    """

    name: ClassVar[str] = "text-classification"
    input_names: ClassVar[list[str]] = ["input_ids"]
    vocab_size: int = 2
    max_length: int = 64
    latency_length: int | None = None
    tokenizer: Any = None  # torchslim.data.tokenizers.Tokenizer, or None for data given as ids

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        length = self.latency_length or self.max_length
        g = torch.Generator().manual_seed(seed)
        # Real tokens everywhere (no padding): the worst case a full-length input costs.
        return torch.randint(1, max(2, self.vocab_size), (batch_size, length), generator=g)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "vocab_size": self.vocab_size, "max_length": self.max_length,
               "sequence_length": self.latency_length or self.max_length}
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.describe()
        return out
