"""Multi-layer perceptrons: the configurable ``mlp`` and the fixed ``lenet-300-100`` of Deep Compression.

Example:
    >>> from torchslim.models.mlp import MLP
    >>> [name for name, _ in MLP(784, [300, 100], 10).named_children()]
    ['flatten', 'fc1', 'relu1', 'fc2', 'relu2', 'fc3']
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU(-Dropout) per hidden width, then a Linear classifier named ``fc{len(widths)+1}``."""

    def __init__(
        self, in_features: int, widths: Sequence[int], num_classes: int, dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        # Dropout modules are added only when used, so that eval graphs and ONNX files carry no no-op nodes.
        if input_dropout > 0:
            layers["input_drop"] = nn.Dropout(input_dropout)
        features = in_features
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(features, width)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            features = width
        layers[f"fc{len(widths) + 1}"] = nn.Linear(features, num_classes)
        super().__init__(layers)


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise TorchslimError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


@MODELS.register("mlp")
def mlp(
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    widths: Sequence[int] = (256, 128),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> MLP:
    """MLP: hidden `widths`, `dropout` after each hidden ReLU, `input_dropout` (Hinton's KD: 1200-1200, 0.5/0.2)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise TorchslimError(f"mlp widths must be a list of positive whole numbers, got {widths!r}")
    c, h, w = input_shape
    return MLP(
        c * h * w,
        list(widths),
        num_classes,
        dropout=_check_probability("dropout", dropout),
        input_dropout=_check_probability("input_dropout", input_dropout),
    )


@MODELS.register("lenet-300-100")
def lenet_300_100(*, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> MLP:
    """LeCun's LeNet-300-100 MLP (784-300-100-10 on MNIST), as pruned in Deep Compression."""
    c, h, w = input_shape
    return MLP(c * h * w, [300, 100], num_classes)
