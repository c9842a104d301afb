"""Text classification from a recipe, end to end: a user's csv, a word vocabulary saved beside the models, a textcnn
teacher distilled into a bilstm, ONNX export with dynamic batch and sequence axes, int8 in ONNX Runtime."""
import json

import numpy as np
import pytest
import yaml

from torchslim.cli import main

pytestmark = pytest.mark.slow

POSITIVE = ["good", "great", "lovely", "fine", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "sad"]
FILLER = ["the", "film", "was", "a", "plot", "and", "very", "acting", "it", "really"]


def _reviews(path, n=600, seed=0):
    """A csv whose label is decided by which sentiment words a review holds (learnable from words, not length)."""
    rng = np.random.default_rng(seed)
    rows = ["review,verdict"]
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=rng.integers(3, 9)))
        words += list(rng.choice(POSITIVE if label else NEGATIVE, size=2))
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'pos' if label else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _recipe(tmp_path, **changes):
    recipe = {
        "data": {"name": "csv", "path": str(_reviews(tmp_path / "reviews.csv")), "text_column": "review",
                 "label_column": "verdict", "max_length": 16},
        "teacher": {"model": "textcnn", "args": {"embed_dim": 16, "filters": 8}, "train": {"epochs": 6, "lr": 0.01, "batch_size": 16}},
        "student": {"model": "bilstm", "args": {"embed_dim": 8, "hidden": 8, "fc": 8}},
        "stages": [{"type": "distill", "temperature": 2, "train": {"epochs": 6, "lr": 0.01, "batch_size": 16}},
                   {"type": "export"}, {"type": "quantize", "mode": "dynamic"}],
        "evaluate": {"max_seconds": 0.02, "batch_sizes": [1, 4]},
    }
    recipe.update(changes)
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_text_recipe_distills_exports_and_quantizes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path)), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert list(arts) == ["teacher", "distill", "export", "quantize"]
    assert report["data"]["task"]["task"] == "text-classification"
    assert report["data"]["task"]["sequence_length"] == 16
    assert report["data"]["task"]["classes"] == ["neg", "pos"]  # the label names of the user's file
    assert "classes neg / pos" in (out / "report.md").read_text()
    assert arts["teacher"]["accuracy"] > 0.9  # the words decide the label: a working pipeline learns it
    assert arts["export"]["info"]["onnx_verification"]["max_abs_diff"] < 1e-4
    assert arts["quantize"]["info"]["quantization"]["vs_fp32"]["top1_agreement"] > 0.9
    # The shipped model is usable on raw text: the vocabulary built from the training split is saved beside it.
    from torchslim.data import load_tokenizer

    ids = load_tokenizer(out / "tokenizer.json").encode(["a great and lovely film"], 16)
    assert ids.shape == (1, 16) and int(ids[0, 0]) > 1 and int(ids[0, -1]) == 0


def test_onnx_teacher_is_distilled_from_in_onnx_runtime(tmp_path, capsys):
    """A teacher the user has only as an ONNX file: its soft labels drive a distill stage."""
    first = tmp_path / "first"
    assert main(["run", str(_recipe(tmp_path, stages=[{"type": "export"}])), "--out", str(first), "--quiet"]) == 0
    recipe = _recipe(tmp_path, teacher={"onnx": str(first / "export.onnx")},
                     stages=[{"type": "distill", "temperature": 2, "train": {"epochs": 6, "lr": 0.01, "batch_size": 16}}])
    out = tmp_path / "second"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    arts = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert arts["teacher"]["runtime"] == "onnxruntime" and arts["teacher"]["params"] is None
    assert arts["distill"]["info"]["teacher_agreement"]["combined"] > 0.9
