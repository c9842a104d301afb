"""The runnable example (a user's own model through the whole chain, nothing from internals) and its recipe twin."""
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from torchslim.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _example():
    spec = importlib.util.spec_from_file_location("own_model", ROOT / "examples" / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_model_example_runs_teacher_to_int8_and_prints_one_table(tmp_path, capsys):
    result = _example().main(["--epochs", "1", "--limit-train", "600", "--limit-test", "300",
                              "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    by_name = {r["name"]: r for r in result}
    assert list(by_name) == ["teacher", "student", "pruned", "int8"]
    assert all(name in printed for name in by_name) and "speedup @1" in printed
    # The student is half as wide: about a quarter of the teacher's weights.
    assert by_name["student"]["params"] < 0.3 * by_name["teacher"]["params"]
    # 70% of the prunable weights stayed zero through the fine-tuning that followed prune_ (BN parameters and
    # biases are not pruned, so a little more than 30% of all parameters are nonzero).
    pruned = by_name["pruned"]
    assert 0.28 < pruned["nonzero_params"] / pruned["params"] < 0.36
    assert by_name["int8"]["runtime"] == "onnxruntime" and (tmp_path / "student-pruned.int8.onnx").is_file()
    assert by_name["int8"]["accuracy"] > 0.10  # ran: ten classes, better than chance after one epoch


def test_own_model_recipe_names_the_factory_and_runs_the_same_chain(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the factory module is found from the working directory, as documented
    out = tmp_path / "run"
    code = main(["run", "examples/own_model.yaml", "--out", str(out), "--quiet",
                 "--set", "data.limit_train=500", "--set", "data.limit_test=200", "--set", "teacher.train.epochs=1",
                 "--set", "stages.distill.train.epochs=1", "--set", "stages.prune.train.epochs=1",
                 "--set", "evaluate.max_seconds=0.02", "--set", "evaluate.batch_sizes=[1]"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == ["teacher", "distill", "prune", "int8"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["student"]["factory"] == "examples.own_model:build"
    prune = report["artifacts"][2]
    assert prune["nonzero_params"] < 0.36 * prune["params"]
