"""Hugging Face models named in a recipe (`hf:`), students made from the teacher by layer dropping, and the one-line
errors a user meets: a directory without weights, a tokenizer that does not match the model, a sequence longer than
the model's maximum, keep_layers out of range. Tiny random BERTs with a word-level tokenizer.json, never the
packaged weights."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from torchslim.cli import main  # noqa: E402

POSITIVE = ["great", "superb", "moving", "fun"]
NEGATIVE = ["dull", "awful", "boring", "bad"]
FILLER = ["the", "film", "was", "a", "plot", "and", "very", "acting"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]


def _tokenizer_json(vocab) -> str:
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok.to_str()


def _bert_dir(path, layers=2, positions=32, vocab=VOCAB):
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=positions,
                                  num_labels=2)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    (path / "tokenizer.json").write_text(_tokenizer_json(vocab))
    return path


def _reviews(path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["review,verdict"]
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=rng.integers(2, 6))) + list(rng.choice(POSITIVE if label else NEGATIVE,
                                                                                   size=2))
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'pos' if label else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _recipe(tmp_path, bert, **changes):
    recipe = {
        "data": {"name": "csv", "path": str(_reviews(tmp_path / "reviews.csv")), "text_column": "review",
                 "label_column": "verdict", "tokenizer": str(bert), "max_length": 12},
        "teacher": {"hf": str(bert), "train": {"epochs": 3, "optimizer": "adamw", "lr": 0.003, "batch_size": 16}},
        "student": {"from_teacher": True, "keep_layers": [1]},
        "stages": [{"type": "distill", "temperature": 2, "alpha": 0.0,
                    "train": {"epochs": 2, "optimizer": "adamw", "lr": 0.003, "batch_size": 16}},
                   {"type": "export"}, {"type": "quantize", "mode": "dynamic"}],
        "evaluate": {"max_seconds": 0.02, "batch_sizes": [1]},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_fine_tunes_a_hf_teacher_and_distills_a_layer_dropped_student(tmp_path, capsys):
    bert = _bert_dir(tmp_path / "bert")
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, bert)), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert list(arts) == ["teacher", "distill", "export", "quantize"]
    assert arts["teacher"]["accuracy"] > 0.9  # the sentiment words decide the label: fine-tuning learned them
    assert arts["distill"]["accuracy"] > 0.85
    # The student is the teacher's second layer only: half the encoder layers, the same embeddings and head.
    assert arts["distill"]["params"] < arts["teacher"]["params"]
    assert arts["export"]["info"]["onnx_verification"]["max_abs_diff"] < 1e-4
    assert arts["quantize"]["info"]["quantization"]["vs_fp32"]["top1_agreement"] > 0.9
    # Each Hugging Face model is also a model directory that transformers loads as it is, tokenizer beside it.
    student_dir = out / "distill.hf"
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(student_dir, local_files_only=True)
    assert loaded.config.num_hidden_layers == 1
    assert (student_dir / "tokenizer.json").is_file()
    ids = torch.tensor([[2, 5, 9, 3, 0, 0]])
    import torchslim as ts

    ours = ts.load_hf_classifier(student_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), loaded.eval()(input_ids=ids, attention_mask=ids.ne(0).long()).logits)


def test_validate_builds_the_hf_models_and_names_the_student(tmp_path, capsys):
    bert = _bert_dir(tmp_path / "bert", layers=3)
    assert main(["validate", str(_recipe(tmp_path, bert, student={"from_teacher": True,
                                                                  "keep_layers": [0, 2]}))]) == 0
    said = capsys.readouterr().out
    assert "ok" in said.lower()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "torchslim", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case, expect", [
    ("no-weights", r"teacher.hf: .*bert holds no weights \(looked for model.safetensors"),
    ("tokenizer", r"the tokenizer does not match the model: .*'s vocabulary differs from .*bert/tokenizer.json's; set "
                  r"data.tokenizer"),
    ("word-tokenizer", r"reads ids of its own tokenizer, but the data is tokenized by the 'word' tokenizer; set "
                       r"data.tokenizer: .*bert/tokenizer.json"),
    ("too-long", r"max_length 64 is longer than the model's maximum sequence length 32 \(max_position_embeddings\); "
                 r"use max_length <= 32"),
    ("keep-range", r"keep_layers \[5\] out of range: the model has 2 layers \(valid indices 0..1\)"),
])
def test_bad_hf_input_is_one_line_and_exit_code_2(tmp_path, capsys, case, expect):
    bert = _bert_dir(tmp_path / "bert")
    changes = {}
    if case == "no-weights":
        (bert / "model.safetensors").unlink()
    elif case == "tokenizer":
        other = tmp_path / "other.json"
        other.write_text(_tokenizer_json([*VOCAB[:5], *reversed(VOCAB[5:])]))  # same words, other ids
        changes = {"data": {"tokenizer": str(other)}}
    elif case == "word-tokenizer":
        changes = {"data": {"tokenizer": "word"}}
    elif case == "too-long":
        changes = {"data": {"max_length": 64}}
    elif case == "keep-range":
        changes = {"student": {"from_teacher": True, "keep_layers": [5]}}
    recipe = str(_recipe(tmp_path, bert, **changes))
    if case == "keep-range":  # one through a real process: exit code and stderr as a shell sees them
        r = _cli("validate", recipe)
        code, err = r.returncode, r.stderr
    else:
        code, err = main(["validate", recipe]), capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expect, lines[0]), lines[0]


def test_from_teacher_needs_a_teacher_with_a_model(tmp_path, capsys):
    bert = _bert_dir(tmp_path / "bert")
    path = _recipe(tmp_path, bert)
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"] = {"onnx": str(tmp_path / "t.onnx")}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    assert "student.from_teacher: needs a `teacher:` with a model to copy (an ONNX teacher is a black box)" in \
        capsys.readouterr().err


def test_export_uses_eager_attention_and_restores_the_model(tmp_path):
    import onnx

    import torchslim as ts

    bert = _bert_dir(tmp_path / "bert")
    m = ts.load_hf_classifier(bert)
    assert m.model.config._attn_implementation == "sdpa"
    task = ts.get_task("text-classification", vocab_size=len(VOCAB), max_length=12, num_classes=2)
    path = ts.export_onnx(m, tmp_path / "m.onnx", task=task)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops  # the sdpa trace's NaN guard is gone; plain softmax attention
    assert m.model.config._attn_implementation == "sdpa"


def _encoder_recipe(tmp_path, bert, stages):
    return _recipe(tmp_path, bert, data={"task": "sentence-embedding"}, teacher={"hf": str(bert)},
                   student={"from_teacher": True, "keep_layers": [0]}, stages=stages)


def test_sentence_embedding_recipe_distils_the_teachers_embeddings_and_judges_by_cosine(tmp_path, capsys):
    bert = _bert_dir(tmp_path / "bert")
    path = _encoder_recipe(tmp_path, bert, [
        {"type": "train", "name": "embeddings", "train": {"epochs": 4, "optimizer": "adamw", "lr": 0.003,
                                                          "batch_size": 16}},
        {"type": "distill", "name": "online", "losses": [{"name": "embedding"}],
         "train": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "batch_size": 16}},
        {"type": "export"}, {"type": "quantize", "mode": "dynamic"}])
    recipe = yaml.safe_load(path.read_text())
    del recipe["teacher"]["train"]  # the teacher's embeddings are the targets: not trained
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert report["data"]["task"]["task"] == "sentence-embedding"
    assert arts["teacher"]["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)  # the reference itself
    # The one-layer copy starts below the teacher; training on the teacher's embeddings moves it towards them.
    assert 0.5 < arts["embeddings"]["metrics"]["cosine"] < 1.0
    assert arts["export"]["metrics"]["cosine"] == pytest.approx(arts["online"]["metrics"]["cosine"], abs=1e-4)
    assert arts["quantize"]["metrics"]["cosine"] > 0.9 * arts["online"]["metrics"]["cosine"]
    assert arts["embeddings"]["accuracy"] is None  # embeddings have no classes
    enc = transformers.AutoModel.from_pretrained(out / "online.hf", local_files_only=True)
    assert enc.config.num_hidden_layers == 1
    assert "cosine" in (out / "report.md").read_text()


def test_sentence_embedding_recipe_errors(tmp_path, capsys):
    bert = _bert_dir(tmp_path / "bert")
    path = _encoder_recipe(tmp_path, bert, [{"type": "distill"}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "teacher.train: with data.task sentence-embedding the teacher's embeddings are the targets" in err
    recipe = yaml.safe_load(path.read_text())
    del recipe["teacher"]["train"]
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    assert "sentence embeddings have no logits for Hinton KD; give losses: [{name: embedding}]" in \
        capsys.readouterr().err


def test_a_bert_with_pruned_heads_runs_to_onnx_without_a_directory_it_could_not_load_from(tmp_path, capsys):
    """prune_heads on a Hugging Face BERT: the stage, its safetensors, resume and the ONNX export work; the .hf/
    directory is left out (BERT's config cannot say "fewer heads of the same size") and the log says why."""
    bert = _bert_dir(tmp_path / "bert")
    recipe = _recipe(tmp_path, bert, student=None, stages=[
        {"type": "prune_heads", "keep": 1, "train": {"epochs": 1, "optimizer": "adamw", "lr": 0.003,
                                                     "batch_size": 16}},
        {"type": "export"}])
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0, capsys.readouterr().err
    log = capsys.readouterr().out
    assert "[prune_heads] no prune_heads.hf/ directory: " in log and "attention heads were pruned" in log
    assert (out / "teacher.hf").is_dir() and not (out / "prune_heads.hf").exists()
    arts = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert arts["prune_heads"]["info"]["head_pruning"]["kept"] == 1
    assert arts["prune_heads"]["params"] < arts["teacher"]["params"]
    assert arts["export"]["info"]["onnx_verification"]["max_abs_diff"] < 1e-4
