"""image-folder: class folders of PNGs read into the image pipeline (modes, sizes, splits, layouts, errors)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchslim.data import load_dataset
from torchslim.errors import TorchslimError


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_grey_classes(folder: Path, per_class: int = 5, size: tuple[int, int] = (4, 6)) -> dict[str, np.ndarray]:
    """Image i of class c is flat grey 10·c + i, so every image can be told apart after loading."""
    written = {}
    for c, name in enumerate(["zebra", "ant"]):  # sorted classes are ant, zebra
        for i in range(per_class):
            pixels = np.full(size, 100 * c + 10 * i, dtype=np.uint8)
            write_png(folder / name / f"{i}.png", pixels)
            written[f"{name}/{i}"] = pixels
    return written


def pixel_values(data_x: torch.Tensor, normalization: dict) -> np.ndarray:
    mean = np.asarray(normalization["mean"]).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"]).reshape(1, -1, 1, 1)
    return np.rint((data_x.numpy() * std + mean) * 255).astype(np.int64)


def test_class_folders_with_a_fixed_stratified_test_split(tmp_path: Path) -> None:
    make_grey_classes(tmp_path / "photos")
    data = load_dataset("image-folder", path=tmp_path / "photos", val_size=0)
    assert data.classes == ["ant", "zebra"] and data.input_shape == (1, 4, 6) and data.num_classes == 2
    assert (len(data.train), len(data.test)) == (8, 2)
    assert data.test.tensors[1].tolist() == [0, 1]  # one of five per class (20%), file order kept
    # The pixels come back: each image is flat, ant images are 0, 10, ... 40 and zebra images 100 ... 140.
    values = pixel_values(torch.cat([data.train.tensors[0], data.test.tensors[0]]), data.normalization)
    labels = torch.cat([data.train.tensors[1], data.test.tensors[1]]).numpy()
    assert (values == values[:, :, :1, :1]).all()
    assert sorted(values[labels == 0, 0, 0, 0]) == [100, 110, 120, 130, 140]  # 'ant' was class 1 when written
    assert sorted(values[labels == 1, 0, 0, 0]) == [0, 10, 20, 30, 40]
    again = load_dataset("image-folder", path=tmp_path / "photos", val_size=0)
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])
    assert "20%" in data.source and data.task.input_shape == (1, 4, 6)


def test_train_and_test_folders_and_mixed_modes_become_rgb(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for part, n in (("train", 3), ("test", 1)):
        for i in range(n):
            write_png(root / part / "grey" / f"{i}.png", np.full((5, 5), 7 * i))
            write_png(root / part / "red" / f"{i}.png", np.stack([np.full((5, 5), 200), np.zeros((5, 5)),
                                                                  np.zeros((5, 5))], -1))
    data = load_dataset("image-folder", path=root, val_size=2, pad_to=7)
    assert data.input_shape == (3, 7, 7) and data.classes == ["grey", "red"]
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    test = pixel_values(data.test.tensors[0], data.normalization)[:, :, 3, 3]  # the centre, inside the padding
    assert test.tolist() == [[0, 0, 0], [200, 0, 0]]  # the grey image has three equal channels
    write_png(root / "test" / "blue" / "0.png", np.zeros((5, 5)))
    with pytest.raises(TorchslimError, match="class folder\\(s\\) blue that train/ lacks; train classes: grey, red"):
        load_dataset("image-folder", path=root)


def test_differing_sizes_name_two_files_unless_resized(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_grey_classes(root, size=(4, 6))
    write_png(root / "ant" / "big.png", np.zeros((9, 12)))
    with pytest.raises(TorchslimError) as err:
        load_dataset("image-folder", path=root)
    message = str(err.value)
    assert "ant/0.png is 4×6" in message and "ant/big.png is 9×12" in message and "image_size" in message
    data = load_dataset("image-folder", path=root, image_size=[6, 8])
    assert data.input_shape == (1, 6, 8)
    assert load_dataset("image-folder", path=root, image_size=5).input_shape == (1, 5, 5)
    with pytest.raises(TorchslimError, match="image_size must be a positive whole number or \\[height, width\\]"):
        load_dataset("image-folder", path=root, image_size=[5, 0])


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("no-path", "dataset 'image-folder' needs path="),
        ("missing", "image folder not found"),
        ("single-class", "single class folder \\(ant\\)"),
        ("empty-class", "class folder .*zebra holds no images"),
        ("corrupt", "cannot read image .*zebra/0.png"),
        ("train-only", "has train/ but not test/"),
        ("text-option", "option 'max_length' does not apply to dataset 'image-folder' \\(image\\); its options: "
                        "val_size, limit_train, limit_test, pad_to, path, image_size"),
    ],
)
def test_bad_folders(tmp_path: Path, problem: str, pattern: str) -> None:
    root = tmp_path / "photos"
    make_grey_classes(root)
    options: dict = {"path": root}
    if problem == "no-path":
        options = {}
    elif problem == "missing":
        options["path"] = tmp_path / "nope"
    elif problem == "single-class":
        for f in (root / "zebra").iterdir():
            f.unlink()
        (root / "zebra").rmdir()
    elif problem == "empty-class":
        for f in (root / "zebra").iterdir():
            f.unlink()
        (root / "zebra" / "notes.txt").write_text("not an image")
    elif problem == "corrupt":
        (root / "zebra" / "0.png").write_bytes(b"not a png")
    elif problem == "train-only":
        (root / "train").mkdir()
    else:
        options["max_length"] = 16
    with pytest.raises(TorchslimError, match=pattern) as err:
        load_dataset("image-folder", **options)
    assert "\n" not in str(err.value)


def test_without_pillow_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_grey_classes(tmp_path / "photos")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(TorchslimError, match="needs Pillow .*pip install pillow"):
        load_dataset("image-folder", path=tmp_path / "photos")
