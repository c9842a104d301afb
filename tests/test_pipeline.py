"""The embedded default recipe end to end, and the errors that only show up while running."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from torchslim.cli import main
from torchslim.errors import TorchslimError
from torchslim.training import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"name", "stage", "runtime", "path", "accuracy", "errors", "params", "nonzero_params", "macs",
            "file_bytes", "file_bytes_lzma", "latency_ms"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    torch.set_num_threads(1)  # module-scoped: runs before the autouse fixture; float sums depend on thread count
    code = main(["run", str(ROOT / "recipes/digits.yaml"), "--out", str(out), "--quiet",
                 "--set", "evaluate.max_seconds=0.05"])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_digits_report_has_every_artifact_measured(digits_run):
    out, report = digits_run
    assert {"torchslim_version", "recipe", "threads", "artifacts"} <= report.keys()
    names = [a["name"] for a in report["artifacts"]]
    assert names == ["teacher", "student", "distill", "prune", "onnx-fp32", "int8"]
    for a in report["artifacts"]:
        assert REQUIRED <= a.keys()
        assert Path(a["path"]).is_file() and a["file_bytes"] == Path(a["path"]).stat().st_size
        assert 0.85 < a["accuracy"] <= 1.0
        assert a["errors"] == round((1 - a["accuracy"]) * 360)
        for b in ("1", "64"):
            assert 0 < a["latency_ms"][b]["p50"] <= a["latency_ms"][b]["p90"]


def test_digits_stages_did_what_they_say(digits_run):
    out, report = digits_run
    art = {a["name"]: a for a in report["artifacts"]}
    assert art["prune"]["nonzero_params"] < 0.3 * art["distill"]["nonzero_params"]
    assert art["prune"]["info"]["pruning"]["overall_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert art["onnx-fp32"]["info"]["onnx_verification"]["max_abs_diff"] < 1e-4
    assert art["onnx-fp32"]["accuracy"] == art["prune"]["accuracy"]
    assert art["int8"]["file_bytes"] < 0.5 * art["onnx-fp32"]["file_bytes"]
    assert abs(art["int8"]["accuracy"] - art["prune"]["accuracy"]) <= 0.02
    assert art["distill"]["vs_teacher"]["compression"] > 10


def test_run_dir_keeps_the_resolved_recipe_and_no_temp_files(digits_run):
    out, report = digits_run
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["stages"][1]["temperature"] == 4.0 and resolved["stages"][1]["train"]["batch_size"] == 64
    assert resolved == report["recipe"]
    assert {"report.json", "report.md", "report.html", "teacher.safetensors", "int8.onnx"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _tiny_recipe(tmp_path, **teacher):
    r = {"data": {"name": "digits"}, "teacher": {"model": "mlp", "args": {"widths": [8]}, **teacher},
         "stages": [], "evaluate": {"max_seconds": 0.01}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_corrupt_teacher_checkpoint_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"garbage, not a safetensors file")
    assert main(["run", str(_tiny_recipe(tmp_path, checkpoint=str(bad))), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and err.count("\n") == 1


def test_checkpoint_of_another_shape_is_exit_2(tmp_path, capsys):
    from torchslim.io import save_checkpoint
    from torchslim.models import create_model

    ckpt = save_checkpoint(create_model("mlp", widths=[16], input_shape=(1, 8, 8)), tmp_path / "t.safetensors")
    assert main(["run", str(_tiny_recipe(tmp_path, checkpoint=str(ckpt))), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model: 'fc1.weight' has shape (16, 64), model expects (8, 64)" in err


def test_missing_data_root_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TORCHSLIM_DATA", raising=False)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"data": {"name": "mnist"}, "teacher": {"model": "lenet5"}}))
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "TORCHSLIM_DATA" in err and err.count("\n") == 1


def test_nan_loss_names_stage_epoch_and_batch():
    x = torch.randn(64, 4)
    x[:] = float("nan")
    data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
    with pytest.raises(TorchslimError, match=r"stage 'teacher': loss became nan at epoch 1, batch 1"):
        fit(torch.nn.Linear(4, 2), data, None, TrainConfig(epochs=1, batch_size=16), stage="teacher",
            log=lambda m: None, seed=0)


def _without_timings(node):
    """The report minus what a clock or the run folder decides: latency, speedups, seconds, dates and paths."""
    if isinstance(node, dict):
        return {k: _without_timings(v) for k, v in node.items()
                if k not in {"latency_ms", "speedup", "seconds", "stage_seconds", "created", "path", "flags"}}
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


def test_same_seed_gives_identical_report(digits_run, tmp_path):
    out, first = digits_run
    assert main(["run", str(ROOT / "recipes/digits.yaml"), "--out", str(tmp_path / "again"), "--quiet",
                 "--set", "evaluate.max_seconds=0.05"]) == 0
    second = json.loads((tmp_path / "again" / "report.json").read_text())
    assert _without_timings(first) == _without_timings(second)
    assert first["artifacts"][1]["info"]["training"]["history"][0]["loss"] > 0  # it covered the training curves


def test_ptq_and_qat_stages_export_int8_onnx_that_matches_the_fake_quant_model(tmp_path):
    recipe = {"data": {"name": "digits"}, "teacher": {"model": "resnet8", "train": {"epochs": 2, "lr": 0.003}},
              "stages": [{"type": "ptq", "name": "w8a8"},
                         {"type": "qat", "name": "w4a4", "weight": {"bits": 4, "per_channel": True},
                          "activation": {"bits": 4, "symmetric": False}, "train": {"epochs": 1, "lr": 5e-4}}],
              "evaluate": {"max_seconds": 0.01}}
    p = tmp_path / "q.yaml"
    p.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    art = {a["name"]: a for a in json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"]}
    for name in ("w8a8", "w4a4"):
        assert art[name]["runtime"] == "onnxruntime"
        quantization = art[name]["info"]["quantization"]
        assert quantization["verification"]["top1_agreement"] >= 0.995
        assert quantization["kernels"].get("QLinearConv", 0) > 0  # ONNX Runtime really runs int8 convolutions
    assert abs(art["w8a8"]["accuracy"] - art["teacher"]["accuracy"]) <= 0.02
    assert art["w4a4"]["info"]["training"]["history"]  # it trained


def test_mixed_stage_fits_its_budget_and_records_bits_per_layer(tmp_path):
    recipe = {"data": {"name": "digits"}, "teacher": {"model": "resnet8", "train": {"epochs": 2, "lr": 0.003}},
              "stages": [{"type": "mixed", "budget": 0.6, "weight": {"bits": 4, "per_channel": True}}],
              "evaluate": {"max_seconds": 0.01}}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    info = json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"][1]["info"]
    mixed = info["mixed_precision"]
    assert mixed["weight_bytes"] <= 0.6 * mixed["int8_weight_bytes"] + 1e-6
    assert set(mixed["bits"].values()) <= {2, 4, 8, 32} and len(mixed["bits"]) == 10  # resnet8: 9 convs + fc
    assert info["quantization"]["verification"]["top1_agreement"] >= 0.995


def test_deep_compression_chain_ships_a_file_with_the_same_accuracy(tmp_path):
    recipe = {"data": {"name": "digits"},
              "teacher": {"model": "mlp", "args": {"widths": [128]}, "train": {"epochs": 5, "lr": 0.003}},
              "stages": [{"type": "prune", "sparsity": 0.8, "train": {"epochs": 2, "lr": 0.001}},
                         {"type": "share", "bits": 4, "train": {"epochs": 1, "lr": 1e-4}},
                         {"type": "export", "name": "dc", "format": "compressed"}],
              "evaluate": {"max_seconds": 0.01}}
    p = tmp_path / "dc.yaml"
    p.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    art = {a["name"]: a for a in json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"]}
    assert art["dc"]["path"].endswith(".tsdc")
    assert art["dc"]["accuracy"] == art["share"]["accuracy"]  # lossless: measured on the model loaded from the file
    assert art["dc"]["file_bytes"] * 10 < art["teacher"]["file_bytes"]
    assert all(b == 4 for b in art["share"]["info"]["bits"].values())
