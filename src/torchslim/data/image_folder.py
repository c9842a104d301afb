"""Your own images: a folder of class folders, read with Pillow into the same raw form as the published sets.

Layouts (class names are the folder names, sorted; files are read in name order)::

    photos/cat/1.png  photos/dog/2.png ...              a fixed, stratified 20% is held out for test
    photos/train/cat/1.png ...  photos/test/cat/9.png   train/ and test/ as given

All images are converted to one mode (grey "L" when every file is grey, else "RGB") and resized to ``image_size``
when given; :func:`~torchslim.data.load_dataset` then splits, pads and normalises them like any image data set.

Example:
    >>> from torchslim.data import load_dataset
    >>> data = load_dataset("image-folder", path="photos", image_size=32)   # doctest: +SKIP
    >>> data.input_shape, data.classes                                      # doctest: +SKIP
    ((3, 32, 32), ['cat', 'dog'])
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.data.base import DATASETS, RawDataset, _holdout_indices
from torchslim.errors import TorchslimError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # Pillow modes with one intensity channel (alpha is dropped)
_TEST_FRACTION = 0.2
_LAYOUT_HINT = "expected <path>/<class>/<image> or <path>/train/<class>/<image> and <path>/test/<class>/<image>"


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise TorchslimError("dataset 'image-folder' needs Pillow to read images: pip install pillow") from None
    return Image


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = [image_size, image_size] if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
    if (not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise TorchslimError(f"image_size must be a positive whole number or [height, width], got {image_size!r}")
    return int(size[0]), int(size[1])


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """(classes, files, labels) of a folder of class folders; ``classes`` fixes the names (a test folder)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))
    if not found:
        raise TorchslimError(f"{folder} holds no class folders; {_LAYOUT_HINT}")
    if classes is None:
        if len(found) < 2:
            raise TorchslimError(f"{folder} holds a single class folder ({found[0]}); classification needs at least "
                                 f"two; {_LAYOUT_HINT}")
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise TorchslimError(f"{folder} has class folder(s) {', '.join(extra)} that train/ lacks; "
                                 f"train classes: {', '.join(classes)}")
    files, labels = [], []
    for name in found:
        images = sorted(p for p in (folder / name).iterdir()
                        if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise TorchslimError(f"class folder {folder / name} holds no images (extensions: "
                                 f"{', '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [classes.index(name)] * len(images)
    return classes, files, labels


def _read_images(files: list[Path], image_size: tuple[int, int] | None) -> np.ndarray:
    """uint8 N×C×H×W: C = 1 when every file is grey, else 3 (RGB)."""
    Image = _import_pil()
    headers = []  # (mode, (h, w)) from each file's header, before decoding any pixels
    for f in files:
        try:
            with Image.open(f) as im:
                headers.append((im.mode, (im.height, im.width)))
        except (OSError, SyntaxError, ValueError) as e:  # Pillow's UnidentifiedImageError is an OSError
            raise TorchslimError(f"cannot read image {f}: {e}") from None
    mode = "L" if all(m in _GREY_MODES for m, _ in headers) else "RGB"
    if image_size is None:
        first = headers[0][1]
        for f, (_, size) in zip(files, headers):
            if size != first:
                raise TorchslimError(
                    f"images differ in size: {files[0]} is {first[0]}×{first[1]} and {f} is {size[0]}×{size[1]} "
                    f"(height×width); set image_size to resize all, e.g. image_size={first[0]} or "
                    f"[{first[0]}, {first[1]}]"
                )
        h, w = first
    else:
        h, w = image_size
    out = np.empty((len(files), 1 if mode == "L" else 3, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if im.size != (w, h):  # Pillow sizes are (width, height)
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                pixels = np.asarray(im, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise TorchslimError(f"cannot read image {f}: {e}") from None
        out[i] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
    return out


@DATASETS.register("image-folder")
def _load_image_folder(
    root: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
) -> RawDataset:
    """Your own images: `path` = a folder of class folders (or train/ and test/ of them); `image_size` resizes."""
    if path is None:
        raise TorchslimError(f"dataset 'image-folder' needs path=... (a folder of class folders); {_LAYOUT_HINT}")
    size = _check_image_size(image_size)
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise TorchslimError(f"image folder not found: {folder}")
    has_train, has_test = (folder / "train").is_dir(), (folder / "test").is_dir()
    if has_train != has_test:
        raise TorchslimError(f"{folder} has {'train/' if has_train else 'test/'} but not "
                             f"{'test/' if has_train else 'train/'}; {_LAYOUT_HINT}")
    if has_train:
        classes, train_files, train_labels = _scan(folder / "train")
        _, test_files, test_labels = _scan(folder / "test", classes)
        x = _read_images(train_files + test_files, size)  # one pass, so train and test share one mode and size
        train_x, test_x = x[: len(train_files)], x[len(train_files):]
        train_y, test_y = np.array(train_labels, dtype=np.int64), np.array(test_labels, dtype=np.int64)
        source = f"{folder} (train/ and test/)"
    else:
        classes, files, labels = _scan(folder)
        y = np.array(labels, dtype=np.int64)
        train_idx, test_idx = _holdout_indices(y, _TEST_FRACTION)
        if len(test_idx) == 0:
            raise TorchslimError(f"{folder} holds {len(y)} images, too few for a {_TEST_FRACTION:.0%} test split; "
                                 f"add images or use train/ and test/ folders")
        x = _read_images(files, size)
        train_x, train_y, test_x, test_y = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        source = f"{folder} (test: a fixed stratified 20%)"
    return RawDataset(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes,
                      pixel_max=255.0, default_val=0.1, source=source)
