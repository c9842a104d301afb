"""Tokenizers: text → token ids (int64, 0 = padding), built from the training texts and saved as plain JSON.

Three kinds share one small protocol (:class:`Tokenizer`): :class:`WordTokenizer` (lowercased words and punctuation),
:class:`CharTokenizer` (characters) and :class:`HFTokenizer` (a Hugging Face ``tokenizer.json`` on disk; needs the
optional ``tokenizers`` package, never downloads). Ids 0 and 1 of the first two are padding and unknown.

Saved tokenizers are JSON (never a pickle), so loading one cannot run code; a saved :class:`HFTokenizer` embeds the
whole ``tokenizer.json``, so the file is all a shipped model needs.

Example:
    >>> tok = build_tokenizer("word", ["a good film", "a bad film"])
    >>> tok.encode(["a good day"], max_length=5).tolist()
    [[2, 5, 1, 0, 0]]
    >>> tok.vocab_size, tok.pad_id
    (6, 0)
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_json

PAD_ID = 0
UNK_ID = 1
_PAD, _UNK = "<pad>", "<unk>"
_FORMAT = "torchslim-tokenizer"
_VERSION = 1
# A word is a run of letters/digits, with inner apostrophes kept ("don't"); any other non-space character is a
# token of its own, so punctuation carries signal ("!" in spam, "?" in questions).
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
# The pad tokens of common Hugging Face tokenizers, checked when tokenizer.json sets no padding.
_HF_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "[pad]")


@runtime_checkable
class Tokenizer(Protocol):
    """What torchslim needs from a tokenizer: ids for texts, a vocabulary size, and a JSON file to ship.

    ``pad_id`` is always 0: models mask padding by ``input_ids == 0`` and embeddings use ``padding_idx=0``.
    """

    kind: str
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def ids(self, text: str) -> list[int]:
        """The ids of one text, neither truncated nor padded."""
        ...

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """int64 N×max_length: each text's ids, truncated to max_length, then padded with 0 at the end."""
        ...

    def save(self, path: str | os.PathLike) -> Path: ...

    def describe(self) -> dict[str, Any]: ...


def _check_max_length(max_length: Any) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise TorchslimError(f"max_length must be a positive whole number, got {max_length!r}")
    return max_length


def _pad_rows(rows: Iterable[Sequence[int]], n: int, max_length: int) -> torch.Tensor:
    out = np.zeros((n, max_length), dtype=np.int64)  # 0 = padding
    for i, row in enumerate(rows):
        row = row[:max_length]
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):  # a lone string would be encoded character by character as N texts
        raise TorchslimError("encode takes a list of texts, got a single string; wrap it: [text]")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TorchslimError(f"text {i} is a {type(t).__name__}, not a string")
    return texts


class _VocabTokenizer:
    """A fixed vocabulary (id → token, 0 = pad, 1 = unknown) and a rule that splits text into tokens."""

    kind = "vocab"
    pad_id = PAD_ID
    unk_id = UNK_ID

    def __init__(self, vocab: Sequence[str], lowercase: bool = True) -> None:
        vocab = list(vocab)
        if vocab[:2] != [_PAD, _UNK]:
            raise TorchslimError(f"a {self.kind} vocabulary must start with '{_PAD}', '{_UNK}' (ids 0 and 1)")
        if len(set(vocab)) != len(vocab):
            raise TorchslimError(f"a {self.kind} vocabulary lists a token twice")
        self.vocab = vocab
        self.lowercase = bool(lowercase)
        self._index = {token: i for i, token in enumerate(vocab)}

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def _normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], *, max_vocab: int | None = None, min_freq: int = 1, lowercase: bool = True
    ) -> _VocabTokenizer:
        """Count tokens in ``texts`` and keep the most frequent (ties in token order, so the vocabulary is the
        same on every machine); ``max_vocab`` counts the pad and unknown ids too."""
        if max_vocab is not None and (isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 3):
            raise TorchslimError(f"max_vocab must be a whole number ≥ 3 (pad, unknown and one token) or None, "
                                 f"got {max_vocab!r}")
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise TorchslimError(f"min_freq must be a positive whole number, got {min_freq!r}")
        splitter = cls([_PAD, _UNK], lowercase)
        counts = Counter(token for text in _check_texts(texts) for token in splitter.split(text))
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in (_PAD, _UNK)),
                        key=lambda t: (-counts[t], t))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 2]
        return cls([_PAD, _UNK, *ranked], lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        index = self._index
        return [index.get(token, UNK_ID) for token in self.split(text)]

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Example:
            >>> CharTokenizer.from_texts(["abc"]).encode(["cab", "a"], max_length=2).tolist()
            [[4, 2], [2, 0]]
        """
        max_length = _check_max_length(max_length)
        texts = _check_texts(texts)
        return _pad_rows((self.ids(t) for t in texts), len(texts), max_length)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The tokens of ``ids``, padding dropped (for reading what a model saw)."""
        return [self.vocab[int(i)] for i in ids if int(i) != PAD_ID]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON (atomically); :func:`load_tokenizer` reads it back."""
        path = Path(path)
        atomic_write_json(path, {"format": _FORMAT, "version": _VERSION, "kind": self.kind,
                                 "lowercase": self.lowercase, "vocab": self.vocab})
        return path

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "lowercase": self.lowercase,
                "pad_id": PAD_ID, "unk_id": UNK_ID}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


class WordTokenizer(_VocabTokenizer):
    """Words and punctuation marks (regex ``\\w+(?:'\\w+)*|[^\\w\\s]``), lowercased by default.

    Example:
        >>> tok = WordTokenizer.from_texts(["Don't stop!", "stop it"], max_vocab=4)
        >>> tok.vocab, tok.split("Stop, don't!")
        (['<pad>', '<unk>', 'stop', '!'], ['stop', ',', "don't", '!'])
    """

    kind = "word"

    def split(self, text: str) -> list[str]:
        return _WORD_RE.findall(self._normalize(text))


class CharTokenizer(_VocabTokenizer):
    """Every character (spaces included) is a token; lowercased by default.

    Example:
        >>> CharTokenizer.from_texts(["Aab"]).vocab
        ['<pad>', '<unk>', 'a', 'b']
    """

    kind = "char"

    def split(self, text: str) -> list[str]:
        return list(self._normalize(text))


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from a local ``tokenizer.json`` (its own normaliser, special
    tokens and truncation; never downloads). Its pad token must have id 0, the id torchslim pads and masks with.

    Example:
        >>> tok = HFTokenizer.from_file("bert-base-uncased/tokenizer.json")   # doctest: +SKIP
        >>> tok.encode(["a good film"], max_length=8).tolist()                 # doctest: +SKIP
        [[101, 1037, 2204, 2143, 102, 0, 0, 0]]
    """

    kind = "hf"
    pad_id = PAD_ID

    def __init__(self, tokenizer_json: str, source: str = "") -> None:
        hf = _import_hf_tokenizers()
        try:
            tok = hf.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001 - the Rust side raises its own exception types
            raise TorchslimError(f"{source or 'tokenizer'} is not a valid tokenizer.json: "
                                 f"{str(e).splitlines()[0][:160]}") from None
        # torchslim pads and truncates itself, so the file's own settings must not apply twice.
        padding = tok.padding
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._json = tokenizer_json
        self.source = source
        self._check_pad_id(padding)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HFTokenizer:
        path = Path(path).expanduser()
        if not path.is_file():
            raise TorchslimError(f"tokenizer file not found: {path}; give 'word', 'char' or the path of a local "
                                 f"Hugging Face tokenizer.json")
        return cls(path.read_text(encoding="utf-8"), source=str(path))

    def _check_pad_id(self, padding: dict | None) -> None:
        name = self.source or "the tokenizer"
        if padding:
            token, pad = padding.get("pad_token"), padding.get("pad_id")
        else:
            token = next((t for t in _HF_PAD_TOKENS if self._tok.token_to_id(t) is not None), None)
            pad = self._tok.token_to_id(token) if token is not None else None
        if pad is None:
            raise TorchslimError(
                f"{name} has no pad token (looked for its padding setting and {', '.join(_HF_PAD_TOKENS)}); "
                f"torchslim pads with id 0, so use a tokenizer whose pad token has id 0 (e.g. BERT's [PAD])"
            )
        if pad != PAD_ID:
            raise TorchslimError(
                f"{name} pads with '{token}' = id {pad}; torchslim pads and masks with id 0, so use a tokenizer "
                f"whose pad token has id 0 (e.g. BERT's [PAD]), or 'word' / 'char'"
            )
        self.pad_token = token

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def get_vocab(self) -> dict[str, int]:
        """Token → id, added tokens included: two tokenizers with the same vocab give the same ids."""
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        max_length = _check_max_length(max_length)
        texts = _check_texts(texts)
        # The tokenizer's own truncation keeps its special tokens ([CLS] ... [SEP]) at the ends of a cut text.
        self._tok.enable_truncation(max_length)
        try:
            rows = [e.ids for e in self._tok.encode_batch(texts)]
        finally:
            self._tok.no_truncation()
        return _pad_rows(rows, len(texts), max_length)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON that embeds the whole tokenizer.json, so the saved file stands alone."""
        path = Path(path)
        atomic_write_json(path, {"format": _FORMAT, "version": _VERSION, "kind": self.kind, "source": self.source,
                                 "tokenizer_json": self._json})
        return path

    def describe(self) -> dict[str, Any]:
        model = json.loads(self._json).get("model", {}).get("type")
        return {"kind": self.kind, "vocab_size": self.vocab_size, "model": model, "pad_token": self.pad_token,
                "pad_id": PAD_ID, "lowercase": "as the tokenizer.json normalizer says", "source": self.source}

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _import_hf_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise TorchslimError(
            "a tokenizer.json needs the Hugging Face 'tokenizers' package: pip install tokenizers "
            "(or use tokenizer 'word' or 'char')"
        ) from None
    return tokenizers


_KINDS: dict[str, type[_VocabTokenizer]] = {"word": WordTokenizer, "char": CharTokenizer}


def build_tokenizer(
    spec: str | os.PathLike,
    texts: Iterable[str],
    *,
    max_vocab: int | None = None,
    min_freq: int = 1,
    lowercase: bool = True,
) -> Tokenizer:
    """A tokenizer from its spec: ``"word"`` or ``"char"`` (vocabulary built from ``texts``, which should be the
    training texts only), or the path of a local Hugging Face ``tokenizer.json`` or of the model directory holding
    one (its own fixed vocabulary and normaliser: ``texts``, ``max_vocab``, ``min_freq`` and ``lowercase`` do not
    apply).

    Example:
        >>> build_tokenizer("char", ["hello"], lowercase=False).vocab_size
        6
    """
    if not isinstance(spec, (str, os.PathLike)) or str(spec) == "":
        raise TorchslimError(f"tokenizer must be 'word', 'char' or the path of a tokenizer.json, got {spec!r}")
    if str(spec) in _KINDS:
        if not isinstance(lowercase, bool):
            raise TorchslimError(f"lowercase must be true or false, got {lowercase!r}")
        return _KINDS[str(spec)].from_texts(texts, max_vocab=max_vocab, min_freq=min_freq, lowercase=lowercase)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():  # a Hugging Face model directory: its own tokenizer
        path = path / "tokenizer.json"
    if path.suffix != ".json":
        raise TorchslimError(f"unknown tokenizer '{spec}'; valid choices: word, char, or the path of a "
                             f"Hugging Face tokenizer.json")
    if max_vocab is not None or min_freq != 1:
        raise TorchslimError(f"max_vocab and min_freq do not apply to {path}: a tokenizer.json has a fixed vocabulary")
    return HFTokenizer.from_file(path)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer written by ``save`` (JSON only: nothing is unpickled or executed).

    Example:
        >>> tok = build_tokenizer("word", ["a b"])
        >>> load_tokenizer(tok.save("/tmp/tok.json")).vocab == tok.vocab   # doctest: +SKIP
        True
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"tokenizer file not found: {path}")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TorchslimError(f"{path} is not a saved torchslim tokenizer: not JSON ({e})") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise TorchslimError(f"{path} is not a saved torchslim tokenizer (no \"format\": \"{_FORMAT}\"); "
                             f"for a Hugging Face tokenizer.json use build_tokenizer(path, ...)")
    if state.get("version") != _VERSION:
        raise TorchslimError(f"{path} is a version {state.get('version')!r} tokenizer; this torchslim reads "
                             f"version {_VERSION}")
    kind = state.get("kind")
    if kind in _KINDS:
        vocab = state.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise TorchslimError(f"{path} is corrupt: 'vocab' must be a list of strings")
        return _KINDS[kind](vocab, lowercase=bool(state.get("lowercase", True)))
    if kind == "lm-char":  # a character language model's vocabulary (torchslim.data.lm_text)
        from torchslim.data.lm_text import CharVocabulary

        return CharVocabulary(state.get("vocab") or [])
    if kind == "hf":
        if not isinstance(state.get("tokenizer_json"), str):
            raise TorchslimError(f"{path} is corrupt: 'tokenizer_json' must be the tokenizer.json text")
        return HFTokenizer(state["tokenizer_json"], source=str(state.get("source", "")) or str(path))
    raise TorchslimError(f"{path} has unknown tokenizer kind {kind!r}; valid choices: char, hf, lm-char, word")
