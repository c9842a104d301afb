"""Image classification: a float tensor N×C×H×W in, logits N×classes out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from torchslim.tasks.base import Task


@dataclass
class ImageClassification(Task):
    """Images of one fixed size (C, H, W) into `num_classes` classes.

    Example:
        >>> ImageClassification(input_shape=(3, 32, 32), num_classes=10).example_inputs(4).shape
        torch.Size([4, 3, 32, 32])
    """

    name: ClassVar[str] = "image-classification"
    input_shape: tuple[int, ...] = (1, 28, 28)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        # Random normal inputs: the data is normalised to mean 0 and std 1, and zeros would flatter sparse kernels.
        return torch.randn(batch_size, *self.input_shape, generator=torch.Generator().manual_seed(seed))

    def model_kwargs(self) -> dict[str, Any]:
        return {"input_shape": self.input_shape}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input_shape": list(self.input_shape)}
