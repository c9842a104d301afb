"""He et al.'s CIFAR ResNets (depth 6n+2: 8, 20, 32, 56, ...) with projection (option B) shortcuts.

Option B (a 1×1 conv + BN where the shape changes) instead of the paper's zero-padding option A: it has a few more
parameters (ResNet-20: 272,474 instead of 269,722) but is made of plain modules that export and prune cleanly.

Example:
    >>> import torch
    >>> from torchslim.models.resnet_cifar import ResNetCifar
    >>> ResNetCifar(depth=8, num_classes=10, in_channels=3)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        # A second ReLU instance, so a hook on relu1 sees only the inner activation.
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """conv3×3 (16·width) → 3 stages of n BasicBlocks (16/32/64 · width, strides 1/2/2) → global avg pool → fc."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise TorchslimError(
                f"resnet-cifar depth must be 6n+2 with n ≥ 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
            )
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise TorchslimError(f"resnet-cifar width must be a positive multiplier, got {width!r}")
        blocks = (depth - 2) // 6
        stem, *stages = [max(1, round(c * width)) for c in (16, 16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        channels = stem
        for i, (out_channels, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(channels, out_channels, stride if b == 0 else 1))
                channels = out_channels
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            # He init for convolutions, as in the paper; BN starts as the identity.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("resnet-cifar")
def resnet_cifar(
    *, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32), depth: int = 20, width: float = 1.0
) -> ResNetCifar:
    """He et al.'s CIFAR ResNet, `depth` 6n+2 (default 20: 0.27M parameters), channel `width` multiplier."""
    return ResNetCifar(depth=depth, num_classes=num_classes, in_channels=input_shape[0], width=width)


def _fixed_depth(depth: int) -> Callable[..., ResNetCifar]:
    def build(
        *, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32), width: float = 1.0
    ) -> ResNetCifar:
        return resnet_cifar(num_classes=num_classes, input_shape=input_shape, depth=depth, width=width)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (resnet-cifar with depth={depth})."
    return build


for _depth in (8, 20, 32, 56):
    MODELS.register(f"resnet{_depth}")(_fixed_depth(_depth))
