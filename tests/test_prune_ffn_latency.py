"""Feed-forward neurons pruned to a measured latency target: real timings in ONNX Runtime and PyTorch, the same
latency tables (and cache) as channel pruning, and the recipe stage."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from torchslim import TorchslimError
from torchslim.cli import main
from torchslim.models import create_model
from torchslim.prune import ffn_layers, prune_ffn_to_latency_

pytest.importorskip("transformers")


def tiny_bert(intermediate=1024):
    torch.manual_seed(0)
    return create_model("bert", num_classes=2, vocab_size=300, layers=2, hidden=128, heads=2,
                        intermediate=intermediate, max_length=64)


def test_bert_ffn_pruned_to_a_latency_target_in_onnxruntime(tmp_path):
    model = tiny_bert()
    ids = torch.randint(5, 300, (1, 64), generator=torch.Generator().manual_seed(0))
    calibration = [torch.randint(5, 300, (8, 64), generator=torch.Generator().manual_seed(1))]
    info = prune_ffn_to_latency_(model, example_inputs=ids, calibration=calibration, latency_reduction=1.3,
                                 runtime="onnxruntime", cache_dir=tmp_path / "cache", seconds=0.3, tolerance=0.3)
    kept = info["kept"]
    assert 64 <= kept < 1024 and kept % 64 == 0
    assert all(down.in_features == kept and ups[0].out_features == kept for ups, down in ffn_layers(model))
    assert model.model.config.intermediate_size == kept  # a saved directory still loads
    assert info["measured_ms"] <= info["target_ms"] * 1.3  # the tolerance given: the machine may be loaded
    assert info["target_ms"] == pytest.approx(info["base_ms"] / 1.3)
    # The prediction is monotone in the width (the table reads cells as a monotone envelope).
    widths = sorted(info["predicted_ms_by_width"])
    assert all(info["predicted_ms_by_width"][a] <= info["predicted_ms_by_width"][b] for a, b in zip(widths, widths[1:]))
    assert info["table"]["measured_cells"] > 0
    # A second model of the same shapes times no cell: the cache holds them.
    again = prune_ffn_to_latency_(tiny_bert(), example_inputs=ids, calibration=calibration, latency_reduction=1.3,
                                  runtime="onnxruntime", cache_dir=tmp_path / "cache", seconds=0.3, tolerance=0.3)
    assert again["table"]["measured_cells"] == 0 and again["table"]["cached_cells"] > 0
    with torch.no_grad():
        assert model(ids).shape == (1, 2)


def test_a_target_out_of_reach_of_the_ffn_layers_is_one_line(tmp_path):
    ids = torch.randint(5, 300, (1, 64), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TorchslimError, match="out of reach of the feed-forward layers: with 64 of 1024 neurons"):
        prune_ffn_to_latency_(tiny_bert(), example_inputs=ids, latency_reduction=20, runtime="pytorch",
                              cache_dir=tmp_path / "cache", seconds=0.1)
    with pytest.raises(TorchslimError, match="exactly one of latency_reduction"):
        prune_ffn_to_latency_(tiny_bert(), example_inputs=ids, runtime="pytorch", cache_dir=False)


def _recipe(tmp_path, stage: dict) -> str:
    raw = {"version": 1, "seed": 0,
           "data": {"name": "tinyshakespeare", "block_size": 32, "limit_train": 256, "limit_test": 32},
           "teacher": {"model": "gpt", "args": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32},
                       "train": {"epochs": 1, "batch_size": 32}},
           "stages": [stage], "evaluate": {"threads": 1, "batch_sizes": [1], "max_seconds": 0.02}}
    path = tmp_path / "ffn.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_prune_ffn_stage_in_a_recipe(tmp_path):
    # A small reduction and a wide tolerance: this tiny model's feed-forward share of the time is small, and the test
    # must hold on a loaded machine (it checks the stage's plumbing; the latency path is checked above).
    stage = {"type": "prune_ffn", "latency_reduction": 1.04, "latency_tolerance": 0.5, "latency_runtime": "pytorch",
             "step": 32,
             "latency_cache": str(tmp_path / "cache"), "train": {"epochs": 1, "batch_size": 32}}
    out = tmp_path / "run"
    assert main(["run", _recipe(tmp_path, stage), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][-1]
    info = art["info"]["ffn_pruning"]
    assert art["stage"] == "prune_ffn" and info["kept"] < 256 and info["width"] == 256
    assert art["params"] < report["artifacts"][0]["params"]


@pytest.mark.parametrize("stage, message", [
    ({"type": "prune_ffn", "keep": 64, "latency_reduction": 2.0},
     "give exactly one of keep (feed-forward neurons per block), latency_reduction or latency_ms (got keep, latency_reduction)"),
    ({"type": "prune_ffn"}, "give exactly one of keep"),
    ({"type": "prune_ffn", "latency_reduction": 0.5}, "latency_reduction"),
])
def test_bad_prune_ffn_stages_are_one_line(tmp_path, capsys, stage, message):
    assert main(["validate", _recipe(tmp_path, stage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchslim: error:") and "\n" not in err and message in err, err
