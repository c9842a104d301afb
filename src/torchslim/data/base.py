"""What every data set shares: the registry of loaders, the raw and finished forms of a data set, the data folder,
and the deterministic splits.

Image loaders live in datasets.py and image_folder.py, text loaders in text.py; `load_dataset` (datasets.py) turns
what a loader returns into a :class:`DataBundle`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import TensorDataset

from torchslim.errors import TorchslimError
from torchslim.registry import Registry
from torchslim.tasks import ImageClassification, Task

# Splits use their own fixed seed, never the recipe's: changing the training seed must not move samples between
# train, val and test, or two runs would be measured on different data.
SPLIT_SEED = 0

_ROOT_HINT = "set data.root in the recipe, pass root=..., or set TORCHSLIM_DATA"


@dataclass(frozen=True)
class RawDataset:
    """What a registered loader returns: raw pixels before the val split, padding and normalisation."""

    train_x: np.ndarray  # uint8, N×C×H×W
    train_y: np.ndarray  # integer labels, N
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    pixel_max: float  # the value of a full-intensity pixel: 255, or 16 for digits
    default_val: int | float  # a count, or a fraction of the train split
    source: str


# (root, **the loader's own options) -> RawDataset for images, text.RawText for text (loaders marked kind = "text").
DatasetLoader = Callable[..., Any]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


@dataclass
class DataBundle:
    """Train/val/test tensors of one data set, already normalised, plus what a report needs to describe them."""

    name: str
    train: TensorDataset  # images: (x float32 N×C×H×W, y int64 N); text: (ids int64 N×L, y int64 N)
    val: TensorDataset | None  # None when val_size == 0
    test: TensorDataset
    input_shape: tuple[int, ...]  # images: (C, H, W) after padding; text: (L,), the sequence length
    num_classes: int
    classes: list[str]
    normalization: dict | None  # images: {"mean": [...], "std": [...], "description": "..."}; text: None
    source: str
    task: Task | None = None  # what the inputs are, how a model is called, which metrics; set by load_dataset

    def __post_init__(self) -> None:
        if self.task is None:  # a bundle built by hand from image tensors
            self.task = ImageClassification(input_shape=self.input_shape, num_classes=self.num_classes,
                                            classes=list(self.classes))


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data folder: ``root`` if given, else ``$TORCHSLIM_DATA``; absolute, and checked to exist.

    Example:
        >>> resolve_data_root("/work/shared/data")  # doctest: +SKIP
        PosixPath('/work/shared/data')
    """
    origin = "root"
    if root is None or str(root) == "":
        root = os.environ.get("TORCHSLIM_DATA", "")
        origin = "TORCHSLIM_DATA"
        if not root:
            raise TorchslimError(f"no data folder given: {_ROOT_HINT}")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise TorchslimError(f"data folder {path} (from {origin}) does not exist; {_ROOT_HINT}")
    return path


def _val_count(name: str, val_size: Any, default: int | float, n_train: int) -> int:
    given = "" if val_size is not None else f" (the default for {name})"
    val_size = default if val_size is None else val_size
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise TorchslimError(f"val_size must be a count (int), a fraction in [0, 1) (float) or None, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise TorchslimError(
                f"val_size={val_size} is not a fraction in [0, 1); give a whole number for a count of samples"
            )
        count = round(val_size * n_train)
        count = max(count, 1) if val_size > 0 else 0
    else:
        count = val_size
    if not 0 <= count < n_train:
        raise TorchslimError(
            f"val_size={val_size}{given} does not fit {name}'s train split of {n_train} samples; "
            f"valid: 0 to {n_train - 1}"
        )
    return count


def _split_indices(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random val indices; both parts keep the file's order, so 'the first N' is well defined."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _holdout_indices(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a fixed, stratified split for data sets without a test file of their own.

    round(fraction × count) samples of each class are held out, so a rare class (spam) keeps its share in both
    parts; both parts keep the file's order.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    held = [rng.permutation(np.flatnonzero(labels == c))[: round(fraction * int((labels == c).sum()))]
            for c in np.unique(labels)]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_idx), held_idx


def _missing(path: Path, what: str, dataset_folder: str) -> TorchslimError:
    return TorchslimError(
        f"missing {what}: expected {path}; point data.root or TORCHSLIM_DATA at the folder that holds {dataset_folder}/"
    )
