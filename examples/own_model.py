"""Your own model through the whole chain, with nothing imported from torchslim's internals.

A small depthwise-separable CNN with residual blocks (defined here, not in torchslim's zoo) on Fashion-MNIST:
teacher → distilled student at half width → 70% of its weights pruned (fine-tuned with the zeros held) → static int8
in ONNX Runtime, then one table from `evaluate` measuring all four the same way.

    python examples/own_model.py --out runs/own-model                 # all 55,000 training rows, 6 epochs per step
    python examples/own_model.py --epochs 4 --limit-train 20000       # ~10 minutes on 2 cores: bench/results/own-model.md
    python examples/own_model.py --epochs 1 --limit-train 2000        # a quick look
    torchslim run examples/own_model.yaml                              # the same chain as a recipe (factory:)
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

import torchslim as ts


class Block(nn.Module):
    """Depthwise 3×3 then pointwise 1×1 convolution, each with batch norm, added to the input (a residual)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.bn2(self.pointwise(self.relu1(self.bn1(self.depthwise(x))))))


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DSCNN(nn.Module):
    """Stem, then three resolutions (width, 2·width, 4·width channels) of one residual block each, pooled, linear."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), Block(width),
            _down(width, 2 * width), Block(2 * width),
            _down(2 * width, 4 * width), Block(4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), width: int = 32) -> DSCNN:
    """The factory a recipe names (`factory: examples.own_model:build`): torchslim passes the number of classes and
    the input shape from the data; `width` comes from the recipe's `args`."""
    return DSCNN(width=width, num_classes=num_classes, in_channels=input_shape[0])


def main(argv: list[str] | None = None) -> ts.Evaluation:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/own-model")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N rows only")
    p.add_argument("--limit-test", type=int, default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)

    data = ts.load_dataset("fashion-mnist", limit_train=args.limit_train, limit_test=args.limit_test)
    train = ts.TrainConfig(epochs=args.epochs, lr=2e-3, schedule="cosine")

    teacher = DSCNN(width=32)
    ts.train(teacher, data, train)

    student = DSCNN(width=16)  # half the width: about a quarter of the weights and MACs
    ts.distill(student, teacher, data, ts.KDConfig(temperature=4, alpha=0.5), train)

    pruned = copy.deepcopy(student)
    ts.prune_(pruned, ts.MagnitudePruneConfig(sparsity=0.7, scope="global"))
    # Fine-tuning after prune_ holds the pruned weights at zero (the masks travel with the model).
    ts.train(pruned, data, ts.TrainConfig(epochs=max(1, args.epochs // 2), lr=5e-4, schedule="cosine"))

    int8 = ts.quantize(pruned, ts.StaticInt8Config(calibration_batches=16), data, out / "student-pruned.int8.onnx")

    result = ts.evaluate({"teacher": teacher, "student": student, "pruned": pruned, "int8": int8}, data,
                         latency=ts.LatencyConfig(threads=1, batch_sizes=(1, 64), max_seconds=0.5))
    print(result.table())
    return result


if __name__ == "__main__":
    main()
