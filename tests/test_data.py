"""Data sets: splits, normalisation, padding, the IDX and CIFAR readers (corrupt, malicious files), random_shift."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.data import DATASETS, load_dataset, random_shift, resolve_data_root
from torchslim.data import datasets as datasets_module
from torchslim.errors import TorchslimError


def pixels(data: torch.Tensor, normalization: dict, pixel_max: float) -> np.ndarray:
    """Undo the normalisation: the original integer pixel values."""
    mean = np.asarray(normalization["mean"]).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"]).reshape(1, -1, 1, 1)
    return np.rint((data.numpy().astype(np.float64) * std + mean) * pixel_max).astype(np.int64)


# --- synthetic files ---------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, cut: int = 0) -> None:
    header = (magic or bytes([0, 0, 0x08, array.ndim])) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload[: len(payload) - cut]))


def make_idx_dataset(root: Path, name: str = "mnist", n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    (root / name).mkdir(parents=True)
    for filename, array in arrays.items():
        write_idx(root / name / filename, array)
    return arrays


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def make_cifar(folder: Path, *, n: int = 4, protocol: int = 2, bytes_keys: bool = False) -> dict[str, np.ndarray]:
    """Six batches in the published format (dict with 'data' N×3072 uint8 and 'labels'), n images each."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    written = {}
    for filename in CIFAR_FILES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        if filename == "test_batch":
            # Image 0 has flat red, green and blue planes, to check the R, G, B plane order of the rows.
            data[0] = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 1024)
        key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
        # Python 2 wrote plain int labels; numpy ints exercise the scalar reconstruction path.
        batch = {key("data"): data, key("labels"): list(labels) if bytes_keys else labels.tolist()}
        (folder / filename).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[filename] = data
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return written


# --- digits ------------------------------------------------------------------------------------------------------


def test_digits_splits_and_normalization() -> None:
    data = load_dataset("digits")
    assert (len(data.train), len(data.val), len(data.test)) == (1293, 144, 360)  # 20% test, then 10% of the rest
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.source == "scikit-learn digits"
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # Normalised with the train split's own statistics: mean 0, std 1 there.
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    assert data.normalization["description"].startswith("pixels/16")
    # Undoing the normalisation gives back integer pixels in 0..16.
    original = (x.numpy() * data.normalization["std"][0] + data.normalization["mean"][0]) * 16
    assert np.allclose(original, np.rint(original), atol=1e-3) and original.min() > -1e-3 and original.max() < 16.001
    # The test split is stratified: each class holds its 20% share (to rounding).
    test_counts = np.bincount(data.test.tensors[1].numpy(), minlength=10)
    total_counts = np.bincount(np.concatenate([t.tensors[1].numpy() for t in (data.train, data.val, data.test)]))
    assert np.all(np.abs(test_counts - 0.2 * total_counts) <= 1)


def test_splits_do_not_depend_on_the_global_seed() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_dataset("digits", val_size=100)
    torch.manual_seed(2)
    np.random.seed(2)
    second = load_dataset("digits", val_size=100)
    for a, b in [(first.train, second.train), (first.val, second.val), (first.test, second.test)]:
        assert all(torch.equal(ta, tb) for ta, tb in zip(a.tensors, b.tensors))
    # The test set does not move when the validation split changes.
    other = load_dataset("digits", val_size=0)
    assert np.array_equal(
        pixels(first.test.tensors[0], first.normalization, 16), pixels(other.test.tensors[0], other.normalization, 16)
    )


@pytest.mark.parametrize(("val_size", "n_val"), [(100, 100), (0.25, 359), (0, 0), (0.0, 0)])
def test_val_size_count_fraction_and_zero(val_size: int | float, n_val: int) -> None:
    data = load_dataset("digits", val_size=val_size)
    assert (len(data.val) if data.val is not None else 0) == n_val
    assert (data.val is None) == (n_val == 0)
    # Train and val partition the same 1,437 samples: as multisets of images they add up to the val_size=0 train.
    full = load_dataset("digits", val_size=0)
    parts = [pixels(data.train.tensors[0], data.normalization, 16)]
    if data.val is not None:
        parts.append(pixels(data.val.tensors[0], data.normalization, 16))
    rows = np.concatenate(parts).reshape(1437, -1)
    full_rows = pixels(full.train.tensors[0], full.normalization, 16).reshape(1437, -1)
    assert np.array_equal(rows[np.lexsort(rows.T)], full_rows[np.lexsort(full_rows.T)])


@pytest.mark.parametrize("val_size", [1.5, -1, 1437, "10", True, -0.1])
def test_bad_val_size(val_size: object) -> None:
    with pytest.raises(TorchslimError, match="val_size"):
        load_dataset("digits", val_size=val_size)  # type: ignore[arg-type]


def test_limits_take_the_first_samples_with_full_split_statistics() -> None:
    full = load_dataset("digits")
    small = load_dataset("digits", limit_train=50, limit_test=20)
    assert (len(small.train), len(small.test), len(small.val)) == (50, 20, 144)
    assert small.normalization == full.normalization
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:50])
    assert torch.equal(small.test.tensors[1], full.test.tensors[1][:20])
    with pytest.raises(TorchslimError, match="limit_train"):
        load_dataset("digits", limit_train=0)


def test_digits_needs_no_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHSLIM_DATA", raising=False)
    assert len(load_dataset("digits").test) == 360


def test_unknown_dataset_suggests_the_close_name() -> None:
    with pytest.raises(TorchslimError, match=r"unknown dataset 'mnsit' \(did you mean 'mnist'\?\).*cifar10"):
        load_dataset("mnsit")
    assert DATASETS.names() == ["cifar10", "csv", "digits", "fashion-mnist", "image-folder", "mnist", "sms_spam", "sst2",
                                "text-file", "tinyshakespeare"]


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHSLIM_DATA", raising=False)
    with pytest.raises(TorchslimError, match="TORCHSLIM_DATA"):
        resolve_data_root(None)
    with pytest.raises(TorchslimError, match="TORCHSLIM_DATA"):
        load_dataset("mnist")
    monkeypatch.setenv("TORCHSLIM_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_root(other) == other.resolve()  # the argument wins over the environment
    with pytest.raises(TorchslimError, match="does not exist") as err:
        resolve_data_root(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


# --- IDX (MNIST format) ------------------------------------------------------------------------------------------


def test_idx_reader_and_normalization_on_synthetic_files(tmp_path: Path) -> None:
    arrays = make_idx_dataset(tmp_path)
    data = load_dataset("mnist", tmp_path, val_size=0)
    train_pixels = arrays["train-images-idx3-ubyte.gz"].astype(np.float64) / 255
    # Hand computation: population mean and std of the train pixels.
    assert data.normalization["mean"] == pytest.approx([train_pixels.mean()], rel=1e-9)
    assert data.normalization["std"] == pytest.approx([train_pixels.std()], rel=1e-9)
    test_pixels = pixels(data.test.tensors[0], data.normalization, 255)[:, 0]
    assert np.array_equal(test_pixels, arrays["t10k-images-idx3-ubyte.gz"])
    assert np.array_equal(data.train.tensors[1].numpy(), arrays["train-labels-idx1-ubyte.gz"])
    assert data.source == str((tmp_path / "mnist").resolve())
    # The returned tensors are the caller's own: writing to them must not reach the in-process cache.
    data.test.tensors[0].zero_()
    data.test.tensors[1].zero_()
    again = load_dataset("mnist", tmp_path, val_size=0)
    assert np.array_equal(again.test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte.gz"])
    assert again.test.tensors[0].abs().sum() > 0
    split = load_dataset("mnist", tmp_path, val_size=10)
    assert (len(split.train), len(split.val), len(split.test)) == (20, 10, 12)
    with pytest.raises(TorchslimError, match=r"val_size=5000 \(the default for mnist\) does not fit"):
        load_dataset("mnist", tmp_path)


def test_pad_to_pads_in_pixel_space(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    plain = load_dataset("mnist", tmp_path, val_size=5)
    padded = load_dataset("mnist", tmp_path, val_size=5, pad_to=32)
    assert padded.input_shape == (1, 32, 32) and plain.input_shape == (1, 28, 28)
    assert padded.normalization["mean"] == plain.normalization["mean"]
    x = padded.train.tensors[0]
    # The image sits in the middle, unchanged; the 2-pixel border is a normalised zero pixel.
    assert torch.equal(x[:, :, 2:30, 2:30], plain.train.tensors[0])
    zero = (0 - plain.normalization["mean"][0]) / plain.normalization["std"][0]
    border = torch.cat([x[:, :, :2], x[:, :, 30:], x[:, :, :, :2].transpose(2, 3), x[:, :, :, 30:].transpose(2, 3)], 2)
    assert torch.allclose(border, torch.full_like(border, zero), atol=1e-6)
    with pytest.raises(TorchslimError, match="pad_to"):
        load_dataset("mnist", tmp_path, val_size=5, pad_to=20)


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("bad-magic", "magic number 0x00000801"),
        ("truncated", "header says 30×28×28"),
        ("cut-gzip", "not a readable gzip"),
        ("label-count", "30 train images but 29 train labels"),
    ],
)
def test_corrupt_idx_files(tmp_path: Path, problem: str, pattern: str) -> None:
    arrays = make_idx_dataset(tmp_path)
    images = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    if problem == "bad-magic":
        write_idx(images, arrays[images.name], magic=bytes([0, 0, 0x08, 0x01]))
    elif problem == "truncated":
        write_idx(images, arrays[images.name], cut=100)
    elif problem == "cut-gzip":
        images.write_bytes(images.read_bytes()[:500])
    else:
        write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", arrays["train-labels-idx1-ubyte.gz"][:29])
    with pytest.raises(TorchslimError, match=pattern) as err:
        load_dataset("mnist", tmp_path, val_size=5)
    assert "mnist" in str(err.value) and "\n" not in str(err.value)


def test_missing_idx_file_names_the_expected_path(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, name="fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TorchslimError) as err:
        load_dataset("fashion-mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path.resolve() / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert "data.root" in message and "TORCHSLIM_DATA" in message
    with pytest.raises(TorchslimError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)  # no mnist/ folder at all


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    arrays = make_idx_dataset(tmp_path)
    first = load_dataset("mnist", tmp_path, val_size=0)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, (arrays[labels.name] + 1) % 10)
    os.utime(labels, ns=(time.time_ns(), time.time_ns() + 10**9))  # a distinct mtime even on coarse clocks
    second = load_dataset("mnist", tmp_path, val_size=0)
    assert torch.equal(second.test.tensors[1], (first.test.tensors[1] + 1) % 10)


# --- the real files ----------------------------------------------------------------------------------------------


def test_real_mnist_loads_fast_and_matches_the_published_facts(data_root: Path) -> None:
    root = data_root  # conftest: $TORCHSLIM_DATA or ../shared/data, skipped when MNIST is absent
    datasets_module._read_idx_cached.cache_clear()
    start = time.perf_counter()
    data = load_dataset("mnist", root)
    elapsed = time.perf_counter() - start
    # Generous bound (about 1 s on an idle 2-core machine): it catches a pathological reader, not a busy neighbour.
    assert elapsed < 10.0, f"loading MNIST took {elapsed:.2f} s"
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    assert data.input_shape == (1, 28, 28) and data.classes == [str(d) for d in range(10)]
    assert data.source == str((root / "mnist").resolve())
    # The well-known MNIST statistics (0.1307, 0.3081), here from 55,000 of the 60,000 training images.
    assert data.normalization["mean"][0] == pytest.approx(0.1307, abs=1e-3)
    assert data.normalization["std"][0] == pytest.approx(0.3081, abs=1e-3)
    assert data.test.tensors[1][:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(data.test.tensors[1].numpy()).tolist()[:2] == [980, 1135]
    # A second load comes from the in-process cache.
    start = time.perf_counter()
    load_dataset("mnist", root, limit_train=10, limit_test=10)
    assert time.perf_counter() - start < elapsed


def test_real_fashion_mnist_classes_and_padding(data_root: Path) -> None:
    root = data_root
    if not (root / "fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {root}; set TORCHSLIM_DATA")
    data = load_dataset("fashion-mnist", root, pad_to=32, limit_train=256, limit_test=256)
    assert data.classes[9] == "Ankle boot" and data.num_classes == 10
    assert data.input_shape == (1, 32, 32)
    assert data.test.tensors[1][:5].tolist() == [9, 2, 1, 1, 6]
    assert "zero-padded to 32×32" in data.normalization["description"]


# --- CIFAR-10 (pickles) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subfolder", "protocol", "bytes_keys"),
    [("cifar-10-batches-py", 2, False), ("", pickle.HIGHEST_PROTOCOL, False), ("cifar-10-batches-py", 4, True)],
)
def test_cifar_reader(tmp_path: Path, subfolder: str, protocol: int, bytes_keys: bool) -> None:
    written = make_cifar(tmp_path / "cifar10" / subfolder, protocol=protocol, bytes_keys=bytes_keys)
    data = load_dataset("cifar10", tmp_path, val_size=5)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 4)
    assert data.input_shape == (3, 32, 32) and data.classes[3] == "class3"
    assert len(data.normalization["mean"]) == 3
    test_pixels = pixels(data.test.tensors[0], data.normalization, 255)
    assert test_pixels[0, :, 5, 7].tolist() == [10, 20, 30]  # R, G, B planes in that order
    assert np.array_equal(test_pixels.reshape(4, 3072), written["test_batch"])


class _OpenFile:
    """Unpickling this with the standard unpickler creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (str(self.target), "w"))


class _EvalCode(_OpenFile):
    def __reduce__(self) -> tuple:
        return (eval, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.mark.parametrize(("payload", "global_name"), [(_OpenFile, "io.open"), (_EvalCode, "builtins.eval")])
def test_cifar_unpickler_refuses_a_malicious_pickle(tmp_path: Path, payload: type, global_name: str) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar(folder)
    target = tmp_path / "pwned"
    blob = pickle.dumps({"data": payload(target), "labels": []}, protocol=2)
    # The pickle really is malicious: the standard unpickler creates the file.
    loaded = pickle.loads(blob)
    if hasattr(loaded["data"], "close"):
        loaded["data"].close()
    assert target.exists()
    target.unlink()

    (folder / "data_batch_3").write_bytes(blob)
    with pytest.raises(TorchslimError, match=f"refusing to load .*data_batch_3.*'{global_name}'"):
        load_dataset("cifar10", tmp_path)
    assert not target.exists()


def test_corrupt_and_missing_cifar_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10"
    make_cifar(folder)
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(TorchslimError, match="data_batch_2 is not a valid CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}))
    with pytest.raises(TorchslimError, match="data_batch_2 is corrupt"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_2").write_bytes(good)
    (folder / "test_batch").unlink()
    with pytest.raises(TorchslimError, match="missing CIFAR-10 file test_batch") as err:
        load_dataset("cifar10", tmp_path)
    assert str((folder / "test_batch").resolve()) in str(err.value)
    with pytest.raises(TorchslimError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path / "cifar10")  # a root without cifar10/ inside


# --- random_shift ------------------------------------------------------------------------------------------------


def shift_reference(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Slicing version: out[:, i, j] = image[:, i - dy, j - dx], the image minimum elsewhere."""
    _, h, w = image.shape
    out = torch.full_like(image, image.min().item())
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_random_shift_matches_a_reference_shift_per_image() -> None:
    x = torch.randn(16, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    out = random_shift(x, 2, torch.Generator().manual_seed(1))
    found = []
    for image, shifted in zip(x, out):
        candidates = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)]
        matches = [(dx, dy) for dx, dy in candidates if torch.equal(shift_reference(image, dx, dy), shifted)]
        assert len(matches) == 1
        found.append(matches[0])
    assert len(set(found)) > 1  # each image draws its own shift


def test_random_shift_covers_the_whole_range_and_is_reproducible() -> None:
    # One bright pixel in the centre of a 9×9 image: where it lands is the shift.
    x = torch.zeros(2000, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(2000))
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    shifts = set(zip((cols - 4).tolist(), (rows - 4).tolist()))
    assert shifts == {(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)}
    assert torch.equal(out, random_shift(x, 2, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, random_shift(x, 2, torch.Generator().manual_seed(1)))


def test_random_shift_edge_cases() -> None:
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(TorchslimError, match="max_px"):
        random_shift(x, -1)
