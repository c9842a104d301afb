"""Small reference models, built by name: ``create_model("lenet5", num_classes=10)``.

Every model is made of standard ``torch.nn`` modules (one ``nn.ReLU`` instance per use, nothing in place), so forward
hooks, ONNX export and pruning by module work on all of them.

Example:
    >>> from torchslim.models import create_model, list_models
    >>> list_models("lenet*")
    ['lenet-300-100', 'lenet5', 'lenet5-classic', 'lenet5-half']
    >>> sum(p.numel() for p in create_model("lenet5").parameters())
    431080
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from torchslim.errors import TorchslimError, did_you_mean
from torchslim.models import hf as _hf  # noqa: F401 - registers `bert` (transformers is imported when it is built)
from torchslim.models.cnn import PlainCNN
from torchslim.models.gpt import GPT, GPTConfig, generate, keep_layers
from torchslim.models.lenet import LeNet5, LeNet5Classic
from torchslim.models.mlp import MLP
from torchslim.models.registry import MODELS
from torchslim.models.resnet_cifar import BasicBlock, ResNetCifar
from torchslim.models.text import BiLSTMClassifier, TextCNN


def create_model(
    name: str, *, num_classes: int = 10, input_shape: Sequence[int] | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model; ``kwargs`` are the model's own arguments (see ``list_models`` and its help).

    Image models take ``input_shape`` (C, H, W; default (1, 28, 28)); text models take ``vocab_size`` instead.

    Example:
        >>> import torch
        >>> m = create_model("mlp", input_shape=(1, 8, 8), widths=[32], dropout=0.1)
        >>> m(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    builder = MODELS.get(name)
    valid = list(inspect.signature(builder).parameters)
    for key in kwargs:
        if key not in valid:
            raise TorchslimError(
                f"model '{name}' has no argument '{key}'{did_you_mean(key, valid)}; valid arguments: {', '.join(valid)}"
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise TorchslimError(f"num_classes must be a positive whole number, got {num_classes!r}")
    if "input_shape" in valid:
        input_shape = (1, 28, 28) if input_shape is None else input_shape
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) and not isinstance(input_shape, str) else ()
        if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise TorchslimError(f"input_shape must be three positive whole numbers (C, H, W), got {input_shape!r}")
        kwargs["input_shape"] = shape
    elif input_shape is not None:
        raise TorchslimError(f"model '{name}' takes no input_shape (it is not an image model)")
    return builder(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted.

    Example:
        >>> list_models("resnet*")
        ['resnet-cifar', 'resnet20', 'resnet32', 'resnet56', 'resnet8']
    """
    return MODELS.names(pattern)


__all__ = [
    "MODELS", "MLP", "BasicBlock", "BiLSTMClassifier", "LeNet5", "LeNet5Classic", "PlainCNN", "ResNetCifar", "TextCNN",
    "create_model", "list_models", "GPT", "GPTConfig", "generate", "keep_layers",
]
