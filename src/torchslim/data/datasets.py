"""Data sets, read from their published files, split, turned into tensors and cached in-process.

A loader (registered in :data:`DATASETS`) reads raw uint8 pixels and labels (the image sets here and in
image_folder.py) or texts and labels (text.py, whose loaders are marked ``kind = "text"``); :func:`load_dataset` does
what every data set of a kind shares: the validation split, zero padding and per-channel normalisation for images,
the tokenizer for text, and the limits for fast tests.

Example:
    >>> from torchslim.data import load_dataset
    >>> data = load_dataset("digits")
    >>> data.input_shape, data.num_classes, len(data.train), len(data.val), len(data.test)
    ((1, 8, 8), 10, 1293, 144, 360)
"""
from __future__ import annotations

import builtins
import codecs
import functools
import gzip
import inspect
import io
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim.data.base import (  # noqa: F401  (DataBundle, RawDataset, resolve_data_root: part of this module's API)
    _ROOT_HINT, DATASETS, SPLIT_SEED, DataBundle, RawDataset, _holdout_indices, _missing, _split_indices, _val_count,
    resolve_data_root,
)
from torchslim.data.lm_text import lm_bundle
from torchslim.data.text import text_bundle
from torchslim.errors import TorchslimError

_DIGITS_CLASSES = [str(d) for d in range(10)]
_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_size: int | float | None = None,
    pad_to: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    text_column: str | int | None = None,
    label_column: str | int | None = None,
    tokenizer: str | os.PathLike = "word",
    max_length: int | None = None,
    max_vocab: int | None = None,
    min_freq: int = 1,
    lowercase: bool = True,
    image_size: int | Sequence[int] | None = None,
    block_size: int | None = None,
    stride: int | None = None,
) -> DataBundle:
    """Load a registered data set, split off a validation set, and turn it into tensors: images padded and
    normalised, texts tokenized.

    Every data set: ``val_size`` is a count (int) or a fraction of the train split (float); 0 means no validation
    set, None the data set's default. ``limit_train``/``limit_test`` keep the first N samples after splitting;
    statistics (normalisation, the tokenizer's vocabulary) always come from the whole train split, so a limited
    load sees the same numbers as a full one. Splits use a fixed seed of their own, never the training seed.

    Images (digits, mnist, fashion-mnist, cifar10, image-folder): ``pad_to`` zero-pads images to
    ``pad_to``×``pad_to`` in pixel space (28×28 MNIST to the 32×32 of LeNet-5-classic). image-folder also takes
    ``path`` (a folder of class folders) and ``image_size`` (resize to an int or [h, w]).

    Text (sst2, sms_spam, csv): ``tokenizer`` is "word", "char" or the path of a local Hugging Face tokenizer.json,
    built from the training split only (``max_vocab`` ids at most, pad and unknown included; tokens seen fewer than
    ``min_freq`` times are unknown; ``lowercase``). ``max_length`` is the sequence length L of the int64 N×L id
    tensors (0 = padding); by default the 99th percentile of training lengths rounded up to a multiple of 8, at most
    256. csv also takes ``path`` (.csv, .tsv, .jsonl), ``text_column``/``label_column`` (names from the header row,
    or 0-based indices for a file without one; default "text" and "label") and ``test_path`` (else a fixed 20%).

    Plain text for language models (tinyshakespeare, text-file with ``path``: a .txt), character-level: blocks of
    ``block_size`` tokens (default 128), training windows every ``stride`` characters (default ``block_size``); the
    text's first 90% trains, the next 5% validates (``val_size``: a fraction of the text or a count of characters),
    the last 5% tests (see :mod:`torchslim.data.lm_text`).

    Example:
        >>> data = load_dataset("digits", val_size=0, limit_train=100)
        >>> x, y = data.train.tensors
        >>> tuple(x.shape), x.dtype, data.val is None
        ((100, 1, 8, 8), torch.float32, True)
        >>> reviews = load_dataset("csv", path="reviews.csv", text_column="review")  # doctest: +SKIP
        >>> reviews.train.tensors[0].dtype, reviews.task.vocab_size                 # doctest: +SKIP
        (torch.int64, 20000)
    """
    loader = DATASETS.get(name)
    kind = getattr(loader, "kind", "image")
    for arg, value in (("limit_train", limit_train), ("limit_test", limit_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TorchslimError(f"{arg} must be a positive whole number or None, got {value!r}")
    # Options of one kind of data set given to the other are mistakes (a recipe that mixes up two data sets); say so
    # rather than ignore them. Defaults are not "given", so a plain call never trips this.
    kind_options = {
        "image": {"pad_to": pad_to is not None},
        "text": {"tokenizer": tokenizer != "word", "max_length": max_length is not None,
                 "max_vocab": max_vocab is not None, "min_freq": min_freq != 1, "lowercase": lowercase is not True},
        "lm": {"block_size": block_size is not None, "stride": stride is not None},
    }
    loader_options = {key: value for key, value in (
        ("path", path), ("test_path", test_path), ("text_column", text_column), ("label_column", label_column),
        ("image_size", image_size)) if value is not None}
    own = [p for p in inspect.signature(loader).parameters if p != "root"]
    valid = ["val_size", "limit_train", "limit_test", *kind_options[kind], *own]
    given = [key for options in kind_options.values() for key, is_given in options.items() if is_given]
    for key in [*given, *loader_options]:
        if key not in valid:
            raise TorchslimError(f"option '{key}' does not apply to dataset '{name}' ({kind}); its options: "
                                 f"{', '.join(valid)}")
    raw = loader(root, **loader_options)
    if kind == "lm":
        return lm_bundle(name, raw, val_size=val_size, limit_train=limit_train, limit_test=limit_test,
                         block_size=block_size, stride=stride)
    if kind == "text":
        return text_bundle(name, raw, val_size=val_size, limit_train=limit_train, limit_test=limit_test,
                           tokenizer=tokenizer, max_length=max_length, max_vocab=max_vocab, min_freq=min_freq,
                           lowercase=lowercase)

    n_val = _val_count(name, val_size, raw.default_val, len(raw.train_y))
    train_idx, val_idx = _split_indices(len(raw.train_y), n_val)
    train_x = raw.train_x[train_idx]
    # Statistics come from the unpadded train split, so that padding changes the border only, not the values a
    # model sees inside the image.
    mean, std = _channel_stats(train_x, raw.pixel_max)

    def tensors(x: np.ndarray, y: np.ndarray, limit: int | None) -> TensorDataset:
        x, y = x[:limit], y[:limit]
        x = _normalize(_pad(x, pad_to, name), raw.pixel_max, mean, std)
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(np.array(y, dtype=np.int64)))

    train = tensors(train_x, raw.train_y[train_idx], limit_train)
    val = tensors(raw.train_x[val_idx], raw.train_y[val_idx], None) if n_val else None
    test = tensors(raw.test_x, raw.test_y, limit_test)

    description = f"pixels/{raw.pixel_max:g}, then (x-mean)/std with train-set statistics"
    if pad_to is not None:
        description += (
            f"; zero-padded to {pad_to}×{pad_to} in pixel space before normalising"
            " (statistics from the unpadded images)"
        )
    c, h, w = train.tensors[0].shape[1:]
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        input_shape=(int(c), int(h), int(w)),
        num_classes=len(raw.classes),
        classes=list(raw.classes),
        normalization={"mean": mean.tolist(), "std": std.tolist(), "description": description},
        source=raw.source,
    )


# --- shared steps ------------------------------------------------------------------------------------------------


def _channel_stats(x: np.ndarray, pixel_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 N×C×H×W pixels scaled to [0, 1], in float64."""
    n, c = x.shape[:2]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    # Chunks keep the float copy small (MNIST as float64 would be 350 MB); squares of bytes are exact in float32.
    for start in range(0, n, 8192):
        chunk = x[start : start + 8192].astype(np.float32)
        total += chunk.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq += np.square(chunk).sum(axis=(0, 2, 3), dtype=np.float64)
    count = n * x.shape[2] * x.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    mean, std = mean / pixel_max, np.sqrt(var) / pixel_max
    # A constant channel would divide by zero; leave it centred but unscaled.
    return mean, np.where(std > 0, std, 1.0)


def _pad(x: np.ndarray, pad_to: int | None, name: str) -> np.ndarray:
    if pad_to is None:
        return x
    h, w = x.shape[2:]
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < max(h, w):
        raise TorchslimError(f"pad_to={pad_to!r} must be a whole number ≥ the {h}×{w} images of {name}")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return np.pad(x, ((0, 0), (0, 0), (top, pad_to - h - top), (left, pad_to - w - left)))


def _normalize(x: np.ndarray, pixel_max: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x/pixel_max - mean)/std per channel, as one multiply-add on a fresh float32 array."""
    shape = (1, -1, 1, 1)
    out = x.astype(np.float32)
    out *= (1.0 / (pixel_max * std)).astype(np.float32).reshape(shape)
    out -= (mean / std).astype(np.float32).reshape(shape)
    return out


def _file_key(path: Path) -> tuple[str, int]:
    """(path, mtime) for the in-process caches: a file replaced on disk is read again."""
    return str(path), path.stat().st_mtime_ns


# --- digits (scikit-learn) ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # sklearn takes ~0.5 s to import: only when digits is asked for

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16, N×1×8×8
    y = bunch.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


@DATASETS.register("digits")
def _load_digits(root: str | os.PathLike | None = None) -> RawDataset:
    """scikit-learn's 8×8 handwritten digits, 1,797 images, embedded (needs no data folder)."""
    from sklearn.model_selection import train_test_split

    x, y = _digits_arrays()
    # digits has no published test split: hold out a fixed, stratified 20%.
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=SPLIT_SEED)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return RawDataset(
        train_x=x[train_idx], train_y=y[train_idx], test_x=x[test_idx], test_y=y[test_idx],
        classes=_DIGITS_CLASSES, pixel_max=16.0, default_val=0.1, source="scikit-learn digits",
    )


# --- MNIST and Fashion-MNIST (IDX files) -------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, ndim: int) -> np.ndarray:
    try:
        data = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise TorchslimError(f"{path} is not a readable gzip file ({e}); the download is probably corrupt") from None
    # IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
    # big-endian uint32 per dimension.
    expected_magic = bytes([0, 0, 0x08, ndim])
    if data[:4] != expected_magic:
        raise TorchslimError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes: magic number 0x{data[:4].hex()}, "
            f"expected 0x{expected_magic.hex()}; the file is corrupt or not what its name says"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TorchslimError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise TorchslimError(
            f"{path} is corrupt: its header says {'×'.join(map(str, dims))} values ({expected} bytes) "
            f"but the file holds {len(data)} bytes"
        )
    # frombuffer on bytes is read-only, which protects the cached array from callers.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    return _read_idx_cached(*_file_key(path), ndim)


def _load_idx_dataset(root: str | os.PathLike | None, folder_name: str, classes: list[str]) -> RawDataset:
    folder = resolve_data_root(root) / folder_name
    arrays = {}
    for key, filename in _IDX_FILES.items():
        path = folder / filename
        if not path.is_file():
            # Also accept the files gunzipped, as some mirrors and tools leave them.
            unzipped = folder / filename.removesuffix(".gz")
            if not unzipped.is_file():
                raise _missing(path, f"{folder_name} file {filename}", folder_name)
            path = unzipped
        arrays[key] = _read_idx(path, ndim=3 if key.endswith("_x") else 1)
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if len(x) != len(y):
            raise TorchslimError(f"{folder} is corrupt: {len(x)} {part} images but {len(y)} {part} labels")
        if len(y) and int(y.max()) >= len(classes):
            raise TorchslimError(f"{folder} is corrupt: {part} label {int(y.max())} outside 0..{len(classes) - 1}")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise TorchslimError(f"{folder} is corrupt: train and test images differ in size")
    return RawDataset(
        train_x=arrays["train_x"][:, None], train_y=arrays["train_y"],
        test_x=arrays["test_x"][:, None], test_y=arrays["test_y"],
        classes=classes, pixel_max=255.0, default_val=5000, source=str(folder),
    )


@DATASETS.register("mnist")
def _load_mnist(root: str | os.PathLike | None = None) -> RawDataset:
    """MNIST, 28×28 grey digits, 60,000 train / 10,000 test, from the four IDX .gz files in <root>/mnist."""
    return _load_idx_dataset(root, "mnist", _DIGITS_CLASSES)


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(root: str | os.PathLike | None = None) -> RawDataset:
    """Fashion-MNIST, 28×28 grey clothing, 60,000 train / 10,000 test, IDX .gz files in <root>/fashion-mnist."""
    return _load_idx_dataset(root, "fashion-mnist", _FASHION_CLASSES)


# --- CIFAR-10 (python pickles) -----------------------------------------------------------------------------------


def _cifar_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle may name: numpy array reconstruction and a few inert builtins."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, 'latin1') under pickle protocol 2.
        ("_codecs", "encode"): codecs.encode,
    }
    # The published batches were written by Python 2 with numpy.core; newer numpy writes numpy._core. Both names
    # map to the live objects here, so numpy.core's deprecation shim is never imported.
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # pickle protocol 5
            allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    for name in ("bytearray", "complex", "frozenset", "set", "slice"):
        allowed[("builtins", name)] = getattr(builtins, name)
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs, so a malicious file cannot run code."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        # latin1 reads Python 2 str as text and numpy's raw bytes unchanged (numpy's advice for py2 pickles).
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _cifar_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2's module; the standard unpickler renames it the same way.
        module = "builtins" if module == "__builtin__" else module
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise TorchslimError(
                f"refusing to load {self._path}: its pickle asks for '{module}.{name}', which a CIFAR-10 batch "
                f"never needs (allowed: numpy array reconstruction and inert builtins)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise TorchslimError(f"refusing to load {self._path}: it uses pickle persistent ids, which CIFAR-10 never does")


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, LookupError, OverflowError) as e:
        raise TorchslimError(f"{path} is not a valid CIFAR-10 batch pickle ({type(e).__name__}: {e})") from None


def _str_keys(d: dict) -> dict:
    """Keys as str: Python 2 pickles read with encoding='bytes' (as the CIFAR page suggests) have bytes keys."""
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


@functools.lru_cache(maxsize=8)
def _read_cifar_batch_cached(path_str: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path_str)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise TorchslimError(f"{path} is not a CIFAR-10 batch: expected a dict, found {type(batch).__name__}")
    batch = _str_keys(batch)
    if "data" not in batch or "labels" not in batch:
        raise TorchslimError(f"{path} is not a CIFAR-10 batch: it lacks the 'data' and 'labels' entries")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = getattr(data, "shape", type(data).__name__)
        raise TorchslimError(f"{path} is corrupt: 'data' should be uint8 N×3072, found {found}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise TorchslimError(f"{path} is corrupt: {len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise TorchslimError(f"{path} is corrupt: labels outside 0..9")
    # Each row is the red plane, then green, then blue, each 32×32 row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def _cifar_folder(root: str | os.PathLike | None) -> Path:
    base = resolve_data_root(root) / "cifar10"
    for folder in (base / "cifar-10-batches-py", base):
        if (folder / "data_batch_1").is_file():
            return folder
    raise TorchslimError(
        f"missing CIFAR-10: expected {base}/cifar-10-batches-py/data_batch_1..5 and test_batch (or the same files "
        f"directly in {base}); point data.root or TORCHSLIM_DATA at the folder that holds cifar10/"
    )


@DATASETS.register("cifar10")
def _load_cifar10(root: str | os.PathLike | None = None) -> RawDataset:
    """CIFAR-10, 32×32 colour, 50,000 train / 10,000 test, python batches in <root>/cifar10 (read safely)."""
    folder = _cifar_folder(root)
    parts = []
    for filename in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        path = folder / filename
        if not path.is_file():
            raise _missing(path, f"CIFAR-10 file {filename}", "cifar10")
        parts.append(_read_cifar_batch_cached(*_file_key(path)))
    classes = _CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta)
        names = _str_keys(names).get("label_names") if isinstance(names, dict) else None
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return RawDataset(
        train_x=np.concatenate([x for x, _ in parts[:5]]), train_y=np.concatenate([y for _, y in parts[:5]]),
        test_x=parts[5][0], test_y=parts[5][1],
        classes=classes, pixel_max=255.0, default_val=5000, source=str(folder),
    )
