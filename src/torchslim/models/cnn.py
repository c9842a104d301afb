"""A plain CNN whose widths a recipe (or a search) can choose: the small student for 28×28 images."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS


class PlainCNN(nn.Sequential):
    """Per width: conv 3×3 (padding 1) → BatchNorm → ReLU → max-pool 2×2 while the map is at least 4 wide; then global
    average pooling, and a linear classifier (with a hidden layer of `hidden` units when it is > 0)."""

    def __init__(self, channels: Sequence[int], num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = 0) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c, size = input_shape[0], min(input_shape[1:])
        for i, width in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(c, width, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if size >= 4:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                size //= 2
            c = width
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        if hidden:
            layers["fc1"] = nn.Linear(c, hidden)
            layers["relu_fc"] = nn.ReLU()
            c = hidden
        layers["fc"] = nn.Linear(c, num_classes)
        super().__init__(layers)


@MODELS.register("cnn")
def cnn(*, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28),
        channels: Sequence[int] = (16, 32, 64), hidden: int = 0) -> PlainCNN:
    """Plain CNN: conv3×3-BN-ReLU-maxpool per entry of `channels` (default 16-32-64), global average pool, linear
    (`hidden` units first when > 0); the searchable student for small images."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in channels):
        raise TorchslimError(f"cnn channels must be a non-empty list of positive whole numbers, got {channels!r}")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
        raise TorchslimError(f"cnn hidden must be a whole number >= 0, got {hidden!r}")
    return PlainCNN(list(channels), num_classes, tuple(input_shape), hidden)
