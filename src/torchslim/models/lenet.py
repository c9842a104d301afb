"""LeNet-5 variants: Caffe's 20-50-500 (Deep Compression) and the classic 6-16-120-84 (DAFL's teacher and student).

Example:
    >>> import torch
    >>> from torchslim.models.lenet import LeNet5Classic
    >>> LeNet5Classic(num_classes=10, input_shape=(1, 32, 32))(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS

# Spatial ops as (kernel, stride), all unpadded: a 5×5 conv is (5, 1), a 2×2 max-pool (2, 2).
_Ops = list[tuple[int, int]]


def _output_side(side: int, ops: _Ops) -> int:
    for kernel, stride in ops:
        side = (side - kernel) // stride + 1 if side >= kernel else 0
    return side


def _check_fits(model: str, input_shape: tuple[int, int, int], ops: _Ops) -> tuple[int, int]:
    """Spatial size after ``ops``, or a clear error with the smallest input that works."""
    c, h, w = input_shape
    out_h, out_w = _output_side(h, ops), _output_side(w, ops)
    if out_h < 1 or out_w < 1:
        smallest = next(s for s in range(1, 1024) if _output_side(s, ops) >= 1)
        raise TorchslimError(
            f"input {c}×{h}×{w} is too small for {model}: it needs at least {smallest}×{smallest} "
            f"(pad the data, e.g. data.pad_to={smallest}, or choose mlp / resnet-cifar)"
        )
    return out_h, out_w


class LeNet5(nn.Sequential):
    """Caffe's LeNet-5 as in Deep Compression: conv 20 → pool → conv 50 → pool → fc 500 → ReLU → fc.

    Caffe's net has no nonlinearity after the convolutions; this keeps it so that parameter counts and pruning
    results compare with the paper (431,080 parameters on 1×28×28).
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        h, w = _check_fits("lenet5", input_shape, [(5, 1), (2, 2), (5, 1), (2, 2)])
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(input_shape[0], 20, 5),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, 5),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * h * w, 500),
            relu1=nn.ReLU(),
            fc2=nn.Linear(500, num_classes),
        ))


class LeNet5Classic(nn.Sequential):
    """LeCun's LeNet-5 with ReLUs and max-pooling (DAFL): conv c1 → pool → conv c2 → pool → conv c3 → fc f → fc.

    With ``batchnorm=True`` a BatchNorm layer follows each conv and fc1 (bn1..bn4, before the ReLU): a teacher whose
    running statistics DeepInversion can invert. Without it the module names are unchanged.
    """

    def __init__(
        self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 32, 32),
        channels: tuple[int, int, int] = (6, 16, 120), hidden: int = 84, name: str = "lenet5-classic",
        batchnorm: bool = False,
    ) -> None:
        c1, c2, c3 = channels
        h, w = _check_fits(name, input_shape, [(5, 1), (2, 2), (5, 1), (2, 2), (5, 1)])
        if not isinstance(batchnorm, bool):
            raise TorchslimError(f"{name} batchnorm must be true or false, got {batchnorm!r}")

        def bn(i: int, features: int, kind: type[nn.Module]) -> dict[str, nn.Module]:
            return {f"bn{i}": kind(features)} if batchnorm else {}

        super().__init__(OrderedDict(
            conv1=nn.Conv2d(input_shape[0], c1, 5),
            **bn(1, c1, nn.BatchNorm2d),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5),
            **bn(2, c2, nn.BatchNorm2d),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(c2, c3, 5),
            **bn(3, c3, nn.BatchNorm2d),
            relu3=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(c3 * h * w, hidden),
            **bn(4, hidden, nn.BatchNorm1d),
            relu4=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        ))


@MODELS.register("lenet5")
def lenet5(*, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> LeNet5:
    """Caffe's LeNet-5 (20-50-500, 431K parameters on MNIST), the Deep Compression baseline."""
    return LeNet5(num_classes, input_shape)


@MODELS.register("lenet5-classic")
def lenet5_classic(
    *, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 32, 32), batchnorm: bool = False
) -> LeNet5Classic:
    """Classic LeNet-5 (6-16-120-84, 62K parameters, 32×32 input), DAFL's MNIST teacher; `batchnorm` adds BN layers."""
    return LeNet5Classic(num_classes, input_shape, batchnorm=batchnorm)


@MODELS.register("lenet5-half")
def lenet5_half(*, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 32, 32)) -> LeNet5Classic:
    """LeNet-5 with half the channels (3-8-60-42, 16K parameters, 32×32 input), DAFL's MNIST student."""
    return LeNet5Classic(num_classes, input_shape, channels=(3, 8, 60), hidden=42, name="lenet5-half")
