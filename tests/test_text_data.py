"""Text data: tokenizers (vocabulary, encoding, save/load), csv/tsv/jsonl readers, splits, errors, SST-2 and SMS."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.data import (
    DATASETS, CharTokenizer, HFTokenizer, WordTokenizer, build_tokenizer, default_max_length, load_dataset,
    load_tokenizer, read_text_file,
)
from torchslim.errors import TorchslimError
from torchslim.tasks import TextClassification

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_csv(path: Path, rows: list[tuple[str, str]], header: str | None = "text,label") -> Path:
    lines = ([header] if header else []) + [f'"{t}",{y}' for t, y in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def corpus(n: int = 50) -> list[tuple[str, str]]:
    """Positive rows say 'good', negative ones 'bad'; every row also holds 'movie' and its own number."""
    return [(f"{'good' if i % 2 else 'bad'} movie number{i}", "pos" if i % 2 else "neg") for i in range(n)]


# --- tokenizers --------------------------------------------------------------------------------------------------


def test_word_vocabulary_by_frequency_with_deterministic_ties() -> None:
    texts = ["the cat sat", "The dog sat!", "a cat"]
    tok = WordTokenizer.from_texts(texts)
    # cat 2, sat 2, the 2 (lowercased), then !, a, dog once each: ties in token order.
    assert tok.vocab == ["<pad>", "<unk>", "cat", "sat", "the", "!", "a", "dog"]
    assert WordTokenizer.from_texts(list(reversed(texts))).vocab == tok.vocab  # input order does not matter
    assert WordTokenizer.from_texts(texts, max_vocab=4).vocab == ["<pad>", "<unk>", "cat", "sat"]
    assert WordTokenizer.from_texts(texts, min_freq=2).vocab == ["<pad>", "<unk>", "cat", "sat", "the"]
    assert WordTokenizer.from_texts(texts, lowercase=False).vocab[2:6] == ["cat", "sat", "!", "The"]
    with pytest.raises(TorchslimError, match="max_vocab must be a whole number ≥ 3"):
        WordTokenizer.from_texts(texts, max_vocab=2)
    with pytest.raises(TorchslimError, match="min_freq"):
        WordTokenizer.from_texts(texts, min_freq=0)


def test_encode_truncates_and_pads_with_zero_at_the_end() -> None:
    tok = WordTokenizer.from_texts(["a b c d"])
    ids = tok.encode(["a b", "d c b a e", ""], max_length=4)
    assert ids.dtype == torch.int64 and ids.shape == (3, 4)
    assert ids.tolist() == [[2, 3, 0, 0], [5, 4, 3, 2], [0, 0, 0, 0]]  # a=2 ... d=5; 'e' cut off
    assert tok.encode(["e a"], max_length=3).tolist() == [[1, 2, 0]]  # unknown = 1
    assert tok.split("Don't panic, it's 42!") == ["don't", "panic", ",", "it's", "42", "!"]
    with pytest.raises(TorchslimError, match="single string"):
        tok.encode("a b", max_length=4)  # type: ignore[arg-type]
    with pytest.raises(TorchslimError, match="max_length"):
        tok.encode(["a"], max_length=0)


@pytest.mark.parametrize("spec", ["word", "char"])
def test_save_and_load_round_trip_as_plain_json(tmp_path: Path, spec: str) -> None:
    texts = ["Hello world", "hello there, world!"]
    tok = build_tokenizer(spec, texts, max_vocab=8, lowercase=False)
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    state = json.loads(path.read_text())  # plain JSON: nothing to unpickle
    assert state["kind"] == spec and state["lowercase"] is False and state["vocab"] == tok.vocab
    again = load_tokenizer(path)
    assert type(again) is type(tok) and again.vocab == tok.vocab and again.describe() == tok.describe()
    probe = ["Hello, World", "zzz"]
    assert torch.equal(again.encode(probe, 16), tok.encode(probe, 16))
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # the atomic write left no temp file


def test_char_tokenizer_keeps_spaces() -> None:
    tok = CharTokenizer.from_texts(["ab a"])
    assert tok.vocab == ["<pad>", "<unk>", "a", " ", "b"]
    assert tok.encode(["ba z"], 5).tolist() == [[4, 2, 3, 1, 0]]


def test_load_tokenizer_refuses_foreign_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"model": {"type": "WordLevel"}}')
    with pytest.raises(TorchslimError, match="not a saved torchslim tokenizer"):
        load_tokenizer(tmp_path / "a.json")
    (tmp_path / "b.json").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(TorchslimError, match="not a saved torchslim tokenizer"):
        load_tokenizer(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"format": "torchslim-tokenizer", "version": 1, "kind": "bpe"}))
    with pytest.raises(TorchslimError, match="unknown tokenizer kind 'bpe'; valid choices: char, hf, lm-char, word"):
        load_tokenizer(tmp_path / "c.json")
    with pytest.raises(TorchslimError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_build_tokenizer_names_the_valid_specs() -> None:
    with pytest.raises(TorchslimError, match="unknown tokenizer 'wrod'; valid choices: word, char"):
        build_tokenizer("wrod", ["a"])
    with pytest.raises(TorchslimError, match="tokenizer file not found"):
        build_tokenizer("/nonexistent/tokenizer.json", ["a"])


def test_hf_tokenizer_without_the_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    with pytest.raises(TorchslimError, match="pip install tokenizers"):
        HFTokenizer('{"model": {}}')


def write_hf_tokenizer(path: Path, vocab: dict[str, int]) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.Lowercase()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_hf_tokenizer_from_a_local_file(tmp_path: Path) -> None:
    path = write_hf_tokenizer(tmp_path / "tokenizer.json", {"[PAD]": 0, "[UNK]": 1, "good": 2, "film": 3})
    tok = build_tokenizer(str(path), ["ignored: the vocabulary is the file's"])
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 4
    assert tok.encode(["Good film", "good good good bad"], 3).tolist() == [[2, 3, 0], [2, 2, 2]]
    again = load_tokenizer(tok.save(tmp_path / "saved.json"))  # embeds tokenizer.json: the original may go
    path.unlink()
    assert torch.equal(again.encode(["a good film"], 4), tok.encode(["a good film"], 4))
    with pytest.raises(TorchslimError, match="fixed vocabulary"):
        build_tokenizer(str(tmp_path / "saved.json"), [], max_vocab=10)


def test_hf_tokenizer_whose_pad_id_is_not_zero_is_refused(tmp_path: Path) -> None:
    path = write_hf_tokenizer(tmp_path / "tokenizer.json", {"[UNK]": 0, "[PAD]": 1, "good": 2})
    with pytest.raises(TorchslimError, match=r"pads with '\[PAD\]' = id 1; torchslim pads and masks with id 0"):
        build_tokenizer(path, [])
    path = write_hf_tokenizer(tmp_path / "nopad.json", {"[UNK]": 0, "good": 1})
    with pytest.raises(TorchslimError, match="has no pad token"):
        build_tokenizer(path, [])


def test_default_max_length_is_the_99th_percentile_rounded_to_8() -> None:
    assert default_max_length([10] * 99 + [500]) == 16  # the one outlier does not set the length
    assert default_max_length(list(range(1, 101))) == 104  # p99 = 99.01 → 104
    assert default_max_length([1]) == 8 and default_max_length([10_000] * 5) == 256


# --- csv / tsv / jsonl -------------------------------------------------------------------------------------------


def test_vocabulary_comes_from_the_training_rows_only(tmp_path: Path) -> None:
    rows = corpus(50)
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [("good onlyintest", "pos"), ("bad movie", "neg")])
    data = load_dataset("csv", path=train, test_path=test, val_size=10, max_length=4)
    tok = data.task.tokenizer
    assert isinstance(data.task, TextClassification) and data.task.vocab_size == tok.vocab_size
    assert data.input_shape == (4,) and data.normalization is None and data.classes == ["neg", "pos"]
    assert data.test.tensors[0][0].tolist() == [tok.vocab.index("good"), 1, 0, 0]  # 'onlyintest' is unknown
    # The 10 validation rows are not training rows: their own number-words are unknown too.
    val_ids = data.val.tensors[0]
    assert (val_ids[:, 2] == 1).all() and (data.train.tensors[0][:, 2] > 1).all()
    assert tok.vocab_size == 2 + 3 + 40  # pad, unk, good/bad/movie, one number per training row
    assert str(train) in data.source and str(test) in data.source


def test_text_splits_are_fixed_and_stratified(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", corpus(100))
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_dataset("csv", path=path, val_size=8)
    torch.manual_seed(2)
    np.random.seed(2)
    second = load_dataset("csv", path=path, val_size=8)
    for a, b in [(first.train, second.train), (first.val, second.val), (first.test, second.test)]:
        assert all(torch.equal(ta, tb) for ta, tb in zip(a.tensors, b.tensors))
    assert (len(first.train), len(first.val), len(first.test)) == (72, 8, 20)
    assert first.test.tensors[1].bincount().tolist() == [10, 10]  # 20% of each class
    # The test rows do not move when the validation split changes.
    other = load_dataset("csv", path=path, val_size=0)
    decode = first.task.tokenizer.decode
    assert [decode(r) for r in first.test.tensors[0]] == [other.task.tokenizer.decode(r) for r in other.test.tensors[0]]


def test_limits_keep_the_full_vocabulary_and_length(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", corpus(60))
    full = load_dataset("csv", path=path)
    small = load_dataset("csv", path=path, limit_train=5, limit_test=3)
    assert (len(small.train), len(small.test)) == (5, 3)
    assert small.task.tokenizer.vocab == full.task.tokenizer.vocab and small.input_shape == full.input_shape
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:5])


def test_columns_by_index_in_a_file_without_header(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    # label first, text second, no header; a quote mark at the start of a TSV text is just a character.
    path.write_text("".join(f"{y}\t\"{t}\n" for t, y in corpus(20)), encoding="utf-8")
    data = load_dataset("csv", path=path, text_column=1, label_column=0, val_size=0)
    assert data.classes == ["neg", "pos"] and len(data.train) + len(data.test) == 20
    assert '"' in data.task.tokenizer.vocab
    with pytest.raises(TorchslimError, match="2 column\\(s\\), so text column index 5 is out of range"):
        load_dataset("csv", path=path, text_column=5, label_column=0)


def test_jsonl_with_integer_labels_sorted_by_value(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"review": f"text {i % 3}", "stars": [2, 10, 3][i % 3]} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    texts, labels = read_text_file(path, text_column="review", label_column="stars")
    assert texts[:2] == ["text 0", "text 1"] and labels[:3] == ["2", "10", "3"]
    data = load_dataset("csv", path=path, text_column="review", label_column="stars", val_size=0)
    assert data.classes == ["2", "3", "10"]  # by value, not as strings ('10' < '2')
    y = torch.cat([data.train.tensors[1], data.test.tensors[1]])
    assert sorted(y.bincount().tolist()) == [10, 10, 10]


def test_csv_quoting_and_header_names(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('id,label,body\n1,spam,"win, win ""now"""\n2,ham,hello\n3,ham,hi there\n4,spam,free\n'
                    '5,ham,ok\n', encoding="utf-8")
    texts, labels = read_text_file(path, text_column="body", label_column="label")
    assert texts[0] == 'win, win "now"' and labels == ["spam", "ham", "ham", "spam", "ham"]


# --- errors ------------------------------------------------------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", corpus(10), header="sentence,label")
    with pytest.raises(TorchslimError) as err:
        load_dataset("csv", path=path)  # text_column defaults to 'text'
    assert "has no text column 'text'" in one_line(err) and "columns found: 'sentence', 'label'" in one_line(err)
    with pytest.raises(TorchslimError, match=r"no label column 'lable' \(did you mean 'label'\?\)"):
        load_dataset("csv", path=path, text_column="sentence", label_column="lable")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "is empty: expected a header row"),
        ("text,label\n", "has no rows of data"),
        ("text,label\na,x\nb,x\nc,x\n", "single class \\('x'\\)"),
    ],
)
def test_empty_and_single_class_files(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(TorchslimError, match=pattern) as err:
        load_dataset("csv", path=path)
    one_line(err)


def test_bad_paths_and_formats(tmp_path: Path) -> None:
    with pytest.raises(TorchslimError, match="text file not found: .*nope.csv"):
        load_dataset("csv", path=tmp_path / "nope.csv")
    with pytest.raises(TorchslimError, match="extension must be one of .csv, .tsv, .jsonl"):
        load_dataset("csv", path=tmp_path / "data.xlsx")
    with pytest.raises(TorchslimError, match="dataset 'csv' needs path="):
        load_dataset("csv")
    train = write_csv(tmp_path / "train.csv", corpus(10))
    test = write_csv(tmp_path / "test.csv", [("good", "neutral")])
    with pytest.raises(TorchslimError, match="label 'neutral' in .*test.csv does not occur in the training data; "
                                             "classes: neg, pos"):
        load_dataset("csv", path=train, test_path=test)
    with pytest.raises(TorchslimError, match="too few for a 20% test split"):
        load_dataset("csv", path=write_csv(tmp_path / "two.csv", corpus(2)))


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("csv", {"pad_to": 32}, "option 'pad_to' does not apply to dataset 'csv' \\(text\\); its options: "
                                "val_size, limit_train, limit_test, tokenizer, max_length"),
        ("digits", {"text_column": "text"}, "option 'text_column' does not apply to dataset 'digits' \\(image\\); "
                                            "its options: val_size, limit_train, limit_test, pad_to$"),
        ("digits", {"tokenizer": "char"}, "option 'tokenizer' does not apply to dataset 'digits'"),
        ("sst2", {"path": "x.csv"}, "option 'path' does not apply to dataset 'sst2'"),
        ("sms_spam", {"image_size": 32}, "option 'image_size' does not apply to dataset 'sms_spam'"),
    ],
)
def test_options_of_another_kind_of_data_set_are_refused(name: str, options: dict, pattern: str) -> None:
    with pytest.raises(TorchslimError, match=pattern):
        load_dataset(name, **options)


def test_text_sets_are_registered() -> None:
    assert {"sst2", "sms_spam", "csv"} <= set(DATASETS.names())
    assert "unlabelled" in DATASETS.help("sst2")


# --- the real files ----------------------------------------------------------------------------------------------


@pytest.fixture
def text_root() -> Path:
    root = Path(os.environ.get("TORCHSLIM_DATA", SHARED_DATA))
    if not (root / "sst2").is_dir() or not (root / "sms_spam").is_dir():
        pytest.skip(f"sst2/ and sms_spam/ not found under {root}; set TORCHSLIM_DATA")
    return root


def test_real_sst2_sizes_and_vocabulary(text_root: Path) -> None:
    data = load_dataset("sst2", text_root)
    assert (len(data.train) + len(data.val), len(data.val), len(data.test)) == (67_349, 872, 872)
    assert data.classes == ["negative", "positive"] and data.input_shape[0] % 8 == 0
    assert data.task.max_length == data.input_shape[0] <= 256
    assert data.test.tensors[1][:2].tolist() == [1, 0]  # dev.tsv's first two labels
    tok = data.task.tokenizer
    assert tok.decode(data.test.tensors[0][0])[:6] == ["it", "'", "s", "a", "charming", "and"]
    assert "dev.tsv" in data.source and "no labels" in data.source


def test_real_sms_spam_sizes_and_split(text_root: Path) -> None:
    data = load_dataset("sms_spam", text_root, max_length=32)
    sizes = (len(data.train), len(data.val), len(data.test))
    assert sum(sizes) == 5_574 and sizes[2] == 1_114  # 20% of ham (965) and of spam (149)
    labels = torch.cat([data.train.tensors[1], data.val.tensors[1], data.test.tensors[1]])
    assert labels.bincount().tolist() == [4_827, 747] and data.classes == ["ham", "spam"]
    assert data.test.tensors[1].bincount().tolist() == [965, 149]
    assert data.train.tensors[0].shape[1] == 32
