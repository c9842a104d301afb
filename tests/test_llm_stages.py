"""The language-model stages from a recipe (`prune_llm`, `weight_only`, `export_int4`) on gpt-nano and 8,000
characters of tinyshakespeare: a run through the CLI with every artifact judged by perplexity, the 2:4 pattern in the
saved weights (and kept by GPTQ), ONNX Runtime's MatMulNBits file against the fake-quant model, `--resume` of AWQ and
SmoothQuant models, and one-line `torchslim validate` errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from torchslim.cli import main
from torchslim.quant.weight_only import gptq_quantize_weight
from torchslim.records import split_info

SHAKESPEARE = Path(os.environ.get("TORCHSLIM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "tinyshakespeare" / "input.txt"
BLOCK = 32
LINEARS = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path) -> Path:
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:8000]
    else:  # no data folder: seeded lines of a few words
        rng = np.random.default_rng(0)
        words = ["the", "king", "shall", "speak", "and", "we", "hear", "him", "now", "lord", "my", "good"]
        text = "\n".join(" ".join(rng.choice(words, size=6)).capitalize() + "." for _ in range(300))[:8000]
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _recipe(tmp_path: Path, corpus: Path, stages: list[dict], **args) -> Path:
    recipe = {
        "data": {"name": "text-file", "path": str(corpus), "block_size": BLOCK, "stride": 16},
        "teacher": {"model": "gpt-nano", "args": {"block_size": BLOCK, **args},
                    "train": {"epochs": 1, "lr": 0.003, "batch_size": 16}},
        "stages": stages,
        "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]},
    }
    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


CAL = {"batches": 4, "batch_size": 8}
STAGES = [{"type": "prune_llm", "method": "wanda", "pattern": "2:4", "calibration": CAL},
          {"type": "weight_only", "method": "gptq", "bits": 4, "group_size": 64, "calibration": CAL},
          {"type": "export_int4"}]


def _two_of_four(w: torch.Tensor) -> bool:
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def test_prune_quantize_and_int4_export_run_from_a_recipe(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    argv = ["run", str(_recipe(tmp_path, corpus, STAGES)), "--out", str(out), "--quiet",
            "--set", "stages.weight_only.group_size=32"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert list(arts) == ["teacher", "prune_llm", "weight_only", "export_int4"]
    ppl = {n: a["metrics"]["perplexity"] for n, a in arts.items()}
    assert all(1 < p < report["data"]["task"]["vocab_size"] for p in ppl.values()), ppl
    assert ppl["export_int4"] == pytest.approx(ppl["weight_only"], rel=1e-4)  # the same weights, in ONNX Runtime

    pruned = load_file(str(out / "prune_llm.safetensors"))
    assert all(_two_of_four(pruned[f"{n}.weight"]) for n in LINEARS)  # 2 of every 4 consecutive inputs
    quantized = load_file(str(out / "weight_only.safetensors"))
    assert all((quantized[f"{n}.weight"][pruned[f"{n}.weight"] == 0] == 0).all() for n in LINEARS)  # GPTQ kept them

    pruning = split_info(arts["prune_llm"]["info"])[0][0]
    assert (pruning.kind, pruning.method, pruning.pattern) == ("llm_pruning", "wanda", "2:4")
    assert pruning.overall_sparsity == pytest.approx(0.5) and set(pruning.layers) == set(LINEARS)
    assert pruning.calibration["windows"] == 32 and pruning.calibration["tokens"] == 32 * BLOCK
    wo = split_info(arts["weight_only"]["info"])[0][0]
    assert (wo.method, wo.bits, wo.group_size, wo.layers) == ("gptq", 4, 32, 8)  # group size from --set
    assert 0 < wo.packed_bytes < wo.float_bytes / 6
    int4 = split_info(arts["export_int4"]["info"])[0][0]
    assert int4.nodes == 8 and int4.kernels["MatMulNBits"] == 8 and int4.verification.max_abs_diff < 1e-3
    assert int4.verification.top1_agreement == 1.0 and arts["export_int4"]["source"] == "weight_only"

    md = (out / "report.md").read_text()
    assert "wanda, 2:4: 50.00 % of the pruned layers’ weights are zero" in md
    assert "gptq, 4-bit weights, groups of 32 inputs" in md and "| packed weights KB |" in md
    assert "8 Linear layers as MatMulNBits, 4-bit, blocks of 32" in md


def test_awq_and_smoothquant_models_resume_from_their_files(tmp_path, corpus, capsys):
    """AWQ leaves unfoldable scalings and SmoothQuant int8 activations in ScaledInputLinear layers: a resumed run
    rebuilds them from the saved files and measures the same perplexities."""
    stages = [{"type": "weight_only", "method": "awq", "bits": 3, "group_size": 32, "calibration": CAL},
              {"type": "weight_only", "name": "w8a8", "method": "smoothquant", "activation": "per_tensor",
               "calibration": CAL}]
    out, recipe = tmp_path / "run", _recipe(tmp_path, corpus, stages)
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    first = {a["name"]: a["metrics"]["perplexity"] for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert any(k.endswith(".input_scale") for k in load_file(str(out / "weight_only.safetensors")))
    (out / "report.json").unlink()
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0, capsys.readouterr().err
    again = {a["name"]: a["metrics"]["perplexity"] for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert again == pytest.approx(first, rel=1e-6) and set(again) == {"teacher", "weight_only", "w8a8"}


def test_gptq_keeps_the_zeros_of_a_pruned_weight():
    torch.manual_seed(0)
    x, w = torch.randn(256, 64), torch.randn(16, 64)
    w[:, ::2] = 0  # half the inputs pruned
    for act_order in (False, True):
        q = gptq_quantize_weight(w, 2 * x.T @ x / 256, bits=3, group_size=16, act_order=act_order).dequantize()
        assert torch.equal(q[:, ::2], torch.zeros(16, 32)) and (q[:, 1::2] != 0).float().mean() > 0.8


@pytest.mark.parametrize("stages, args, message", [
    ([{"type": "weight_only", "group_size": 48}], {},
     "stages[0] (weight_only): group_size 48 does not divide the input width 64 of layer "
     "'transformer.h.0.attn.c_attn'; valid group sizes: -1 (per channel), 8, 16, 32, 64"),
    ([{"type": "prune_llm", "pattern": "2:4"}], {"n_embd": 66},
     "stages[0] (prune_llm): prune_llm: pattern 2:4 needs an input width that is a multiple of 4, and layer "
     "'transformer.h.0.attn.c_attn' has 66 inputs"),
    ([{"type": "prune_llm", "calibration": {"batches": 100, "batch_size": 8}}], {},
     "calibration: 100 batches × 8 windows = 800 windows, but the training split has"),
    ([{"type": "prune_llm", "pattern": 124}], {},  # what YAML makes of an unquoted 2:4
     "stages[0].pattern: pattern 124 is a number: YAML reads an unquoted N:M as base 60; quote it, e.g. "
     "pattern: \"2:4\""),
    ([{"type": "weight_only", "bits": 3}, {"type": "export_int4"}], {},
     "stages[1] (export_int4): 'weight_only' has 3-bit weights, and MatMulNBits takes 2, 4, 8-bit codes"),
    ([{"type": "prune_llm"}, {"type": "export_int4"}], {},
     "stages[1] (export_int4): exports the model a weight_only stage made, and the model before it comes from "
     "'prune_llm'"),
])
def test_validate_names_the_problem_in_one_line(tmp_path, corpus, capsys, stages, args, message):
    assert main(["validate", str(_recipe(tmp_path, corpus, stages, **args))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_stages_need_a_language_model(tmp_path, capsys):
    recipe = {"data": {"name": "digits"}, "teacher": {"model": "mlp"}, "stages": [{"type": "weight_only"}]}
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(tmp_path / "digits.yaml")]) == 2
    assert "weight_only compresses a language model (the causal-lm task" in capsys.readouterr().err


def test_the_records_round_trip_through_json_and_show_text():
    from torchslim.export.onnx import OnnxVerification
    from torchslim.pipeline.stages.llm import Int4ExportRecord, LLMPruningRecord, WeightOnlyRecord
    from torchslim.records import record_type

    samples = [LLMPruningRecord("sparsegpt", "unstructured", 0.5, 0.5, {"h.0.fc": 0.5}, {"windows": 128, "batches": 16,
                                "batch_size": 8, "tokens_per_window": 64, "tokens": 8192, "split": "train"}, True, 1.5),
               WeightOnlyRecord("awq", 3, 128, layers=4, packed_bytes=1000, float_bytes=9000, folded=2),
               Int4ExportRecord(4, 32, 8, 400_000, 62_000, OnnxVerification(1e-6, 1.0, 8), {"MatMulNBits": 8})]
    for rec in samples:
        data = json.loads(json.dumps(rec.to_json()))
        assert record_type(rec.kind) is type(rec) and type(rec).from_json(data) == rec
        assert rec.summary() and all(isinstance(k, str) and isinstance(v, str) for k, v in rec.summary())


def test_the_report_says_whether_int4_or_int8_is_faster_here():
    from torchslim.evaluation.report import speed_notes

    def art(name, stage, p50):
        return {"name": name, "stage": stage, "runtime": "onnxruntime", "latency_ms": {"1": {"p50": p50}}}

    slow_int4 = [art("export_int4", "export_int4", 2.3), art("int8", "quantize", 1.5)]
    notes = [n for n in speed_notes({"artifacts": slow_int4}) if "MatMulNBits" in n]
    assert notes == ["int4 MatMulNBits vs int8 at batch 1: export_int4 2.300 ms, int8 1.500 ms p50; int8 (int8) is "
                     "faster here (onnxruntime issue 23004 reports int4 slower than int8 on many CPUs: int4 saves "
                     "file size, not necessarily time)."]
    fast_int4 = [art("export_int4", "export_int4", 1.0), art("int8", "quantize", 1.5)]
    assert "int4 (export_int4) is faster here" in " ".join(speed_notes({"artifacts": fast_int4}))
    assert not [n for n in speed_notes({"artifacts": fast_int4[:1]}) if "MatMulNBits" in n]  # nothing to compare
