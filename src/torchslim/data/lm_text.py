"""Plain text for language models: tinyshakespeare and any local ``.txt`` file, character-level, in blocks of tokens.

The vocabulary is every character of the text, sorted (nanoGPT's ``shakespeare_char``: 65 for tinyshakespeare), so
every split encodes without unknown characters. Splits are contiguous, in the text's order: the first 90% is train,
then 5% val, then the last 5% test (nanoGPT's last 10% of validation text, cut in two so that a test split stays
untouched). ``val_size`` changes the val part (a fraction of the text, or a count of characters; 0: none).

A training row is a window of ``block_size`` tokens and its targets, the same window shifted by one character:
``(ids[o : o+T], ids[o+1 : o+T+1])``, for offsets o = 0, stride, 2·stride, ... (``stride`` default ``block_size``:
non-overlapping, one pass over the training text per epoch; smaller strides overlap, and training shuffles the
windows every epoch). Validation and test use non-overlapping windows (stride ``block_size``): every character after
a window's first is scored once, with 0 to T−1 characters of context; the tail shorter than a window is left out.

Example:
    >>> from torchslim.data import load_dataset
    >>> data = load_dataset("tinyshakespeare", "/work/shared/data", block_size=128)   # doctest: +SKIP
    >>> data.task.vocab_size, data.train.tensors[0].shape, len(data.val), len(data.test)  # doctest: +SKIP
    (65, torch.Size([7842, 128]), 435, 435)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim.data.base import DATASETS, DataBundle, _missing, resolve_data_root
from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_json
from torchslim.tasks import CausalLM, Task

TEST_SHARE = 0.05  # the last 5% of the text
VAL_SHARE = 0.05  # the 5% before it
DEFAULT_BLOCK_SIZE = 128
_PROMPT_CHARS = 64  # at most this much of the test split's first line prompts the report's sample
_FORMAT = "torchslim-tokenizer"  # the saved-tokenizer format of torchslim.data.tokenizers, one more kind
_VERSION = 1


@dataclass(frozen=True)
class RawCorpus:
    """What a language-model loader returns: the whole text, before the vocabulary and the splits."""

    text: str
    source: str


def _lm_loader(loader: Callable[..., RawCorpus]) -> Callable[..., RawCorpus]:
    """Mark a registered loader as plain text for language models (load_dataset's kind "lm")."""
    loader.kind = "lm"  # type: ignore[attr-defined]
    return loader


class CharVocabulary:
    """Characters ↔ token ids for a character-level language model: id i is the i-th character of ``chars``.

    Unlike the classification tokenizers it has no padding and no unknown id (a language model's blocks are never
    padded, and the vocabulary comes from the whole text). Saved as JSON beside the model (``tokenizer.json``,
    kind ``lm-char``); :func:`~torchslim.data.load_tokenizer` reads it back.

    Example:
        >>> vocab = CharVocabulary.from_text("hello")
        >>> vocab.chars, vocab.encode("hole").tolist(), vocab.decode([3, 0])
        (['e', 'h', 'l', 'o'], [1, 3, 2, 0], 'oe')
    """

    kind = "lm-char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TorchslimError("a character vocabulary is a non-empty list of single characters")
        if len(set(chars)) != len(chars):
            raise TorchslimError("a character vocabulary lists a character twice")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharVocabulary:
        """Every character of ``text``, sorted (by code point, as nanoGPT's ``sorted(set(text))``)."""
        if not text:
            raise TorchslimError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """The ids of ``text``, int64, one per character."""
        if not isinstance(text, str):
            raise TorchslimError(f"encode takes a string, got {type(text).__name__}")
        # Code points looked up in the sorted code points of the vocabulary: a megabyte of text in milliseconds.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        order = np.argsort(self._codes)
        found = np.searchsorted(self._codes, codes, sorter=order).clip(0, len(order) - 1)
        ids = order[found]
        if len(codes) and not np.array_equal(self._codes[ids], codes):
            unknown = sorted({c for c in text if c not in self._index})
            raise TorchslimError(f"characters {unknown!r} are not in the vocabulary of {self.vocab_size} "
                                 f"characters the model was trained on")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``."""
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        path = Path(path)
        atomic_write_json(path, {"format": _FORMAT, "version": _VERSION, "kind": self.kind, "vocab": self.chars})
        return path

    def describe(self) -> dict[str, Any]:
        return {"kind": "char (language model: no padding)", "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"CharVocabulary(vocab_size={self.vocab_size})"


class TextBlocks(TensorDataset):
    """Windows of one token sequence as ``(x, y)`` rows: ``x = ids[o : o+T]``, ``y = ids[o+1 : o+T+1]`` for
    o = 0, ``stride``, 2·``stride``, ... (views of ``ids``: no copy). ``task`` is the task the rows belong to:
    :func:`~torchslim.training.fit` trains with its loss and keeps the epoch best by its metric.

    Example:
        >>> rows = TextBlocks(torch.arange(10), block_size=4, stride=3)
        >>> rows.tensors[0].tolist(), rows.tensors[1][0].tolist()
        ([[0, 1, 2, 3], [3, 4, 5, 6]], [1, 2, 3, 4])
    """

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int, task: Task | None = None,
                 limit: int | None = None) -> None:
        windows = ids.unfold(0, block_size + 1, stride)[:limit]  # n × (T+1)
        super().__init__(windows[:, :-1], windows[:, 1:])
        self.block_size = block_size
        self.stride = stride
        self.task = task


def _whole(name: str, value: Any, default: int) -> int:
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TorchslimError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _val_chars(val_size: Any, n: int) -> int:
    if val_size is None:
        return round(VAL_SHARE * n)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size < 0:
        raise TorchslimError(f"val_size must be a fraction of the text in [0, 0.5) or a count of characters, "
                             f"got {val_size!r}")
    if isinstance(val_size, float):
        if val_size >= 0.5:
            raise TorchslimError(f"val_size={val_size} is not a fraction in [0, 0.5) of the text")
        return round(val_size * n)
    return val_size


def lm_bundle(
    name: str,
    raw: RawCorpus,
    *,
    val_size: int | float | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    block_size: int | None = None,
    stride: int | None = None,
) -> DataBundle:
    """Build the character vocabulary, cut the text into train / val / test (90 / 5 / 5 by default, in order) and
    each part into windows of ``block_size`` (see the module docstring). ``limit_train`` / ``limit_test`` keep the
    first windows. Used by :func:`~torchslim.data.load_dataset`, which is what a user calls.

    Example:
        >>> data = lm_bundle("example", RawCorpus("abcd" * 300, "example"), block_size=8)
        >>> data.task.vocab_size, tuple(data.test.tensors[0].shape)
        (4, (7, 8))
    """
    block_size = _whole("block_size", block_size, DEFAULT_BLOCK_SIZE)
    stride = _whole("stride", stride, block_size)
    vocab = CharVocabulary.from_text(raw.text)
    ids = vocab.encode(raw.text)
    n = len(ids)
    n_test = round(TEST_SHARE * n)
    n_val = _val_chars(val_size, n)
    n_train = n - n_test - n_val
    parts = {"train": ids[:n_train], "val": ids[n_train:n - n_test], "test": ids[n - n_test:]}
    if n_val == 0:
        del parts["val"]
    shortest = min(parts, key=lambda p: len(parts[p]))
    if len(parts[shortest]) < block_size + 1:
        most = len(parts[shortest]) - 1
        valid = f"block_size ≤ {most}" if most >= 1 else "a longer text"
        raise TorchslimError(
            f"{raw.source}: the {shortest} split holds {len(parts[shortest]):,} of the text's {n:,} characters, "
            f"shorter than one block of block_size + 1 = {block_size + 1} characters (a block and its next-character "
            f"targets); valid for this text: {valid}"
            + (f", or a longer text (at least {20 * (block_size + 1):,} characters for block_size {block_size})"
               if most >= 1 else "")
        )
    text_from = n - n_test
    test_text = raw.text[text_from:text_from + 4 * _PROMPT_CHARS]
    line_start = test_text.find("\n") + 1
    line = test_text[line_start:].split("\n", 1)[0]
    prompt = (line[:_PROMPT_CHARS] + "\n") if line.strip() else test_text[:min(_PROMPT_CHARS, block_size)]
    task = CausalLM(vocab_size=vocab.vocab_size, block_size=block_size, eval_stride=block_size, tokenizer=vocab,
                    prompt=prompt[-block_size:])
    train = TextBlocks(parts["train"], block_size, stride, task, limit_train)
    val = TextBlocks(parts["val"], block_size, block_size, task) if "val" in parts else None
    test = TextBlocks(parts["test"], block_size, block_size, task, limit_test)
    shares = f"first {n_train:,} characters train, next {n_val:,} val, last {n_test:,} test"
    return DataBundle(
        name=name, train=train, val=val, test=test, input_shape=(block_size,), num_classes=vocab.vocab_size,
        classes=[], normalization=None, source=f"{raw.source} ({shares}; character vocabulary of "
                                               f"{vocab.vocab_size})", task=task,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TorchslimError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


@DATASETS.register("tinyshakespeare")
@_lm_loader
def _load_tinyshakespeare(root: str | os.PathLike | None = None) -> RawCorpus:
    """Karpathy's tinyshakespeare, 1,115,394 characters (65 distinct), from <root>/tinyshakespeare/input.txt."""
    path = resolve_data_root(root) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise _missing(path, "tinyshakespeare file input.txt", "tinyshakespeare")
    return RawCorpus(_read(path), str(path))


@DATASETS.register("text-file")
@_lm_loader
def _load_text_file(root: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None) -> RawCorpus:
    """Your own plain text for a character-level language model: `path`, a local UTF-8 .txt file."""
    if path is None:
        raise TorchslimError("dataset 'text-file' needs path=... (a local UTF-8 .txt file)")
    path = Path(path).expanduser()
    if not path.is_file():
        raise TorchslimError(f"text file not found: {path}")
    return RawCorpus(_read(path), str(path))
