"""Text classification data sets: SST-2, SMS Spam, and a user's own csv/tsv/jsonl file, as token-id tensors.

A loader (registered in :data:`~torchslim.data.DATASETS`, marked ``kind = "text"``) reads texts and labels and fixes
the test split; :func:`~torchslim.data.load_dataset` then splits off validation rows, builds the tokenizer from the
training rows only and encodes every split to int64 N×L (0 = padding).

Example:
    >>> from torchslim.data import load_dataset
    >>> data = load_dataset("sst2", "/work/shared/data", max_length=32)   # doctest: +SKIP
    >>> data.input_shape, data.classes, len(data.train), len(data.val), len(data.test)   # doctest: +SKIP
    ((32,), ['negative', 'positive'], 66477, 872, 872)
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim.data.base import (
    DATASETS, DataBundle, _holdout_indices, _missing, _split_indices, _val_count, resolve_data_root,
)
from torchslim.data.tokenizers import build_tokenizer
from torchslim.errors import TorchslimError, did_you_mean
from torchslim.tasks import TextClassification

_TEST_FRACTION = 0.2  # held out for test when a data set has no test file of its own
_MAX_DEFAULT_LENGTH = 256
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_FORMATS = ".csv, .tsv, .jsonl"
_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class RawText:
    """What a text loader returns: texts and integer labels, the test split fixed, before the val split."""

    train_texts: list[str]
    train_y: np.ndarray  # int64, N
    test_texts: list[str]
    test_y: np.ndarray
    classes: list[str]
    default_val: int | float  # a count, or a fraction of the train split
    source: str


def _text_loader(loader: Callable[..., RawText]) -> Callable[..., RawText]:
    """Mark a registered loader as text, so load_dataset can check options before reading any file."""
    loader.kind = "text"  # type: ignore[attr-defined]
    return loader


# --- reading files -----------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TorchslimError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _column_error(path: Path, column: Any, columns: Sequence[str], role: str) -> TorchslimError:
    found = ", ".join(repr(c) for c in columns)
    return TorchslimError(
        f"{path} has no {role} column {column!r}{did_you_mean(str(column), columns)}; columns found: {found} "
        f"(set {role}_column to one of them, or to a 0-based index for a file without a header row)"
    )


def _check_column(column: Any, role: str) -> str | int:
    if isinstance(column, bool) or not isinstance(column, (str, int)) or (isinstance(column, int) and column < 0):
        raise TorchslimError(f"{role}_column must be a column name or a 0-based index, got {column!r}")
    return column


def _table_rows(path: Path, header: bool) -> tuple[list[str] | None, list[tuple[int, list[Any]]]]:
    """(column names or None, [(line number, cells)]) of a csv/tsv/jsonl file; jsonl rows may be dicts."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TorchslimError(f"{path} line {number} is not JSON: {e.msg}") from None
        return None, rows
    lines = _read_lines(path)
    # TSV files are read without quote handling, as TSV means (a sentence may start with a quote mark); csv files
    # follow RFC 4180 quoting.
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=_DELIMITERS[suffix], quoting=quoting)
    rows = []
    try:
        for cells in reader:
            if cells:
                rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise TorchslimError(f"{path} line {reader.line_num} is not valid csv: {e}") from None
    if header:
        if not rows:
            raise TorchslimError(f"{path} is empty: expected a header row and at least one row of data")
        return [c.strip() for c in rows[0][1]], rows[1:]
    return None, rows


def read_text_file(
    path: str | os.PathLike, *, text_column: str | int = "text", label_column: str | int = "label"
) -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a ``.csv``, ``.tsv`` or ``.jsonl`` file.

    Columns are named (the file's header row; jsonl keys) or 0-based indices (a csv/tsv without a header row; jsonl
    lines that are lists). The delimiter comes from the extension.

    Example:
        >>> texts, labels = read_text_file("reviews.csv", text_column="review", label_column="stars")  # doctest: +SKIP
        >>> texts[0], labels[0]                                                                        # doctest: +SKIP
        ('A fine film.', '4')
    """
    path = Path(path).expanduser()
    text_column = _check_column(text_column, "text")
    label_column = _check_column(label_column, "label")
    if path.suffix.lower() not in (*_DELIMITERS, ".jsonl"):
        raise TorchslimError(f"unsupported text file {path}: the extension must be one of {_FORMATS}")
    if not path.is_file():
        raise TorchslimError(f"text file not found: {path}")
    header = isinstance(text_column, str) or isinstance(label_column, str)
    names, rows = _table_rows(path, header)
    if not rows:
        raise TorchslimError(f"{path} has no rows of data")
    if names is not None:  # csv/tsv with a header: turn names into indices once
        index = {}
        for role, column in (("text", text_column), ("label", label_column)):
            if isinstance(column, str) and column not in names:
                raise _column_error(path, column, names, role)
            index[role] = names.index(column) if isinstance(column, str) else column
        text_column, label_column = index["text"], index["label"]

    texts, labels = [], []
    for number, row in rows:
        if isinstance(row, dict):
            keys = list(row)
            for role, column in (("text", text_column), ("label", label_column)):
                if isinstance(column, int):
                    raise TorchslimError(f"{path} line {number} is a JSON object: name its {role} column by key "
                                         f"(keys found: {', '.join(map(repr, keys))}), not by index {column}")
                if column not in row:
                    raise _column_error(path, column, keys, role)
            text, label = row[text_column], row[label_column]
        elif isinstance(row, list):
            for role, column in (("text", text_column), ("label", label_column)):
                if isinstance(column, str):
                    kind = "a JSON list" if path.suffix.lower() == ".jsonl" else "a row"
                    raise TorchslimError(f"{path} line {number} is {kind} without names: give the {role} column "
                                         f"as a 0-based index, not {column!r}")
                if column >= len(row):
                    raise TorchslimError(
                        f"{path} line {number} has {len(row)} column(s), so {role} column index {column} is out of "
                        f"range (valid: 0..{len(row) - 1}); check the delimiter ({_FORMATS} by extension)"
                    )
            text, label = row[text_column], row[label_column]
        else:
            raise TorchslimError(f"{path} line {number} is neither a JSON object nor a list")
        if not isinstance(text, str):
            raise TorchslimError(f"{path} line {number}: the text is a {type(text).__name__}, not a string")
        texts.append(text)
        labels.append(_label_name(label, path, number))
    return texts, labels


def _label_name(label: Any, path: Path, number: int) -> str:
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise TorchslimError(f"{path} line {number}: label {label!r} must be a string or a whole number")
    name = str(label).strip()
    if not name:
        raise TorchslimError(f"{path} line {number} has an empty label")
    return name


def _sorted_classes(labels: Sequence[str]) -> list[str]:
    """Sorted unique labels: by value when all are whole numbers ('2' before '10'), else as strings."""
    unique = set(labels)
    if all(_INT_RE.fullmatch(label) for label in unique):
        return [str(v) for v in sorted({int(label) for label in unique})]
    return sorted(unique)


def _label_ids(labels: Sequence[str], classes: list[str], where: str) -> np.ndarray:
    canonical = all(_INT_RE.fullmatch(c) for c in classes)  # '01' and '1' are the same whole-number class
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        key = str(int(label)) if canonical and _INT_RE.fullmatch(label) else label
        if key not in index:
            raise TorchslimError(f"label {label!r} in {where} does not occur in the training data; "
                                 f"classes: {', '.join(classes)}")
        out[i] = index[key]
    return out


def _check_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        raise TorchslimError(f"the labels of {where} hold a single class ({classes[0]!r}); classification needs at "
                             f"least two (check label_column)")


def _holdout(texts: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The fixed, stratified 20% test split of a data set without a test file of its own."""
    train_idx, test_idx = _holdout_indices(y, _TEST_FRACTION)
    if len(test_idx) == 0:
        raise TorchslimError(f"{len(y)} rows are too few for a {_TEST_FRACTION:.0%} test split; "
                             f"add rows or give a test file (test_path)")
    return [texts[i] for i in train_idx], y[train_idx], [texts[i] for i in test_idx], y[test_idx]


# --- SST-2 -------------------------------------------------------------------------------------------------------


def _read_sst2(path: Path) -> tuple[list[str], np.ndarray]:
    lines = _read_lines(path)
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise TorchslimError(f"{path} is not a GLUE SST-2 file: expected the header 'sentence<TAB>label'")
    texts, labels = [], []
    for number, line in enumerate(lines[1:], 2):
        text, _, label = line.rpartition("\t")  # the label is the last field; a sentence never holds a tab
        if label.strip() not in ("0", "1"):
            raise TorchslimError(f"{path} line {number}: label {label.strip()!r} is not 0 or 1")
        texts.append(text.strip())
        labels.append(int(label))
    if not texts:
        raise TorchslimError(f"{path} has a header but no rows")
    return texts, np.array(labels, dtype=np.int64)


@DATASETS.register("sst2")
@_text_loader
def _load_sst2(root: str | os.PathLike | None = None) -> RawText:
    """GLUE SST-2 sentiment, 67,349 train sentences; test = the 872-sentence dev set (GLUE's test is unlabelled)."""
    folder = resolve_data_root(root) / "sst2"
    parts = {}
    for part in ("train", "dev"):
        path = folder / f"{part}.tsv"
        if not path.is_file():
            raise _missing(path, f"SST-2 file {part}.tsv", "sst2")
        parts[part] = _read_sst2(path)
    (train_texts, train_y), (test_texts, test_y) = parts["train"], parts["dev"]
    return RawText(
        train_texts=train_texts, train_y=train_y, test_texts=test_texts, test_y=test_y,
        classes=["negative", "positive"],
        # Validation rows come from train, as many as dev holds, so that dev stays an untouched test set.
        default_val=872,
        source=f"{folder / 'train.tsv'} (train, val) and {folder / 'dev.tsv'} (test: GLUE's test.tsv has no labels)",
    )


# --- SMS Spam Collection -----------------------------------------------------------------------------------------


@DATASETS.register("sms_spam")
@_text_loader
def _load_sms_spam(root: str | os.PathLike | None = None) -> RawText:
    """SMS Spam Collection v.1, 5,574 messages (747 spam); test = a fixed, stratified 20%."""
    folder = resolve_data_root(root) / "sms_spam"
    path = folder / "SMSSpamCollection"
    if not path.is_file():
        raise _missing(path, "SMS Spam Collection file SMSSpamCollection", "sms_spam")
    classes = ["ham", "spam"]
    texts, labels = [], []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        label, _, text = line.partition("\t")  # the label is the first field; a message may hold a tab
        if label not in classes:
            raise TorchslimError(f"{path} line {number}: label {label!r} is not one of {', '.join(classes)}")
        texts.append(text.strip())
        labels.append(classes.index(label))
    if not texts:
        raise TorchslimError(f"{path} has no messages")
    train_texts, train_y, test_texts, test_y = _holdout(texts, np.array(labels, dtype=np.int64))
    return RawText(
        train_texts=train_texts, train_y=train_y, test_texts=test_texts, test_y=test_y,
        classes=classes, default_val=0.1, source=f"{path} (test: a fixed stratified 20%)",
    )


# --- a user's own file -------------------------------------------------------------------------------------------


@DATASETS.register("csv")
@_text_loader
def _load_csv(
    root: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    text_column: str | int | None = None,
    label_column: str | int | None = None,
) -> RawText:
    """Your own texts: `path` (.csv/.tsv/.jsonl), `text_column`, `label_column`; optional `test_path`, else 20%."""
    if path is None:
        raise TorchslimError(f"dataset 'csv' needs path=... (a {_FORMATS} file of texts and labels)")
    columns = {"text_column": "text" if text_column is None else text_column,
               "label_column": "label" if label_column is None else label_column}
    path = Path(path).expanduser()
    texts, labels = read_text_file(path, **columns)
    classes = _sorted_classes(labels)
    _check_classes(classes, str(path))
    train_y = _label_ids(labels, classes, str(path))
    if test_path is None:
        train_texts, train_y, test_texts, test_y = _holdout(texts, train_y)
        source = f"{path} (test: a fixed stratified 20%)"
    else:
        test_path = Path(test_path).expanduser()
        test_texts, test_labels = read_text_file(test_path, **columns)
        train_texts, test_y = texts, _label_ids(test_labels, classes, str(test_path))
        source = f"{path} (train, val) and {test_path} (test)"
    return RawText(train_texts=train_texts, train_y=train_y, test_texts=test_texts, test_y=test_y,
                   classes=classes, default_val=0.1, source=source)


# --- encoding ----------------------------------------------------------------------------------------------------


def default_max_length(lengths: Sequence[int]) -> int:
    """The 99th percentile of token counts, rounded up to a multiple of 8 and capped at 256: 1% of texts are cut,
    and no batch pays for one very long outlier.

    Example:
        >>> default_max_length([3] * 99 + [40]), default_max_length([1000] * 10)
        (8, 256)
    """
    if len(lengths) == 0:
        return 8
    p99 = float(np.percentile(np.asarray(lengths, dtype=np.float64), 99))
    return int(min(_MAX_DEFAULT_LENGTH, max(8, 8 * math.ceil(p99 / 8))))


def text_bundle(
    name: str,
    raw: RawText,
    *,
    val_size: int | float | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    tokenizer: str | os.PathLike = "word",
    max_length: int | None = None,
    max_vocab: int | None = None,
    min_freq: int = 1,
    lowercase: bool = True,
) -> DataBundle:
    """Split off validation rows, build the tokenizer from the training rows and encode all three splits.

    The tokenizer and the default ``max_length`` see the whole training split even when ``limit_train`` keeps
    fewer rows, so a limited load (fast tests) encodes a text to the same ids as a full one. Used by
    :func:`~torchslim.data.load_dataset`, which is what a user calls.

    Example:
        >>> raw = RawText(["good", "bad", "fine"], np.array([1, 0, 1]), ["good"], np.array([1]),
        ...               ["neg", "pos"], 0, "example")
        >>> text_bundle("example", raw).train.tensors[0].tolist()
        [[4, 0, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0, 0, 0]]
    """
    n_val = _val_count(name, val_size, raw.default_val, len(raw.train_y))
    train_idx, val_idx = _split_indices(len(raw.train_y), n_val)
    train_texts = [raw.train_texts[i] for i in train_idx]
    tok = build_tokenizer(tokenizer, train_texts, max_vocab=max_vocab, min_freq=min_freq, lowercase=lowercase)
    if max_length is None:
        max_length = default_max_length([len(tok.ids(t)) for t in train_texts])
    elif isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise TorchslimError(f"max_length must be a positive whole number or None, got {max_length!r}")

    def tensors(texts: list[str], y: np.ndarray, limit: int | None) -> TensorDataset:
        texts, y = texts[:limit], y[:limit]
        return TensorDataset(tok.encode(texts, max_length), torch.from_numpy(np.array(y, dtype=np.int64)))

    train = tensors(train_texts, raw.train_y[train_idx], limit_train)
    val = tensors([raw.train_texts[i] for i in val_idx], raw.train_y[val_idx], None) if n_val else None
    test = tensors(list(raw.test_texts), raw.test_y, limit_test)
    task = TextClassification(vocab_size=tok.vocab_size, max_length=max_length, num_classes=len(raw.classes),
                              classes=list(raw.classes), tokenizer=tok)
    return DataBundle(
        name=name, train=train, val=val, test=test, input_shape=(max_length,), num_classes=len(raw.classes),
        classes=list(raw.classes), normalization=None, source=raw.source, task=task,
    )
