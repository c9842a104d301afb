"""Tests for torchslim.evaluation: the counts, the runners, the latency protocol, the ratios and the report files."""
from __future__ import annotations

import json
import lzma
import re
import types

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune as torch_prune

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError
from torchslim.export.onnx import OnnxVerification
from torchslim.prune.schedules import SparsityRecord
from torchslim.evaluation import (
    LatencyConfig,
    accuracy,
    add_baselines,
    build_report,
    compare,
    count_macs,
    count_params,
    evaluate,
    file_sizes,
    latency,
    make_runner,
    measure_latencies,
    print_table,
    render_markdown,
    write_report,
)

INPUT_SHAPE = (1, 8, 8)
FAST = LatencyConfig(warmup=1, min_runs=3, max_runs=30, max_seconds=0.02, batch_sizes=(1, 4), rounds=2)
RECORD_KEYS = {
    "name", "stage", "runtime", "path", "accuracy", "errors", "params", "nonzero_params", "macs", "file_bytes",
    "file_bytes_lzma", "latency_ms", "threads", "vs_teacher", "vs_student", "info",
    "metrics", "primary_metric", "size_source", "source", "vs_source", "flags",
}


def _model(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 3)
    ).eval()


def _data(n: int = 150) -> types.SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *INPUT_SHAPE, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return types.SimpleNamespace(
        name="fake",
        source="generated in the test",
        input_shape=INPUT_SHAPE,
        normalization={"mean": [0.5], "std": [0.25]},
        train=torch.utils.data.TensorDataset(x[:50], y[:50]),
        test=torch.utils.data.TensorDataset(x, y),
    )


def _torch_artifact(tmp_path, name: str, model: nn.Module, **info) -> Artifact:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Artifact(name, "train", "pytorch", path, model, dict(info))


def _onnx_artifact(tmp_path, name: str, model: nn.Module, keep_model: bool = True) -> Artifact:
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, torch.zeros(1, *INPUT_SHAPE), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
    )
    return Artifact(name, "export", "onnxruntime", path, model if keep_model else None)


class AlwaysZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 0] = 1.0
        return logits


# ------------------------------------------------------------------------------------------------ counts


def test_macs_of_linear_and_conv_match_hand_count():
    assert count_macs(nn.Linear(4, 3), (4,)) == 4 * 3
    assert count_macs(nn.Linear(4, 3), (5, 4)) == 5 * 4 * 3  # leading (sequence) dimension counts
    # 3→8 channels, 3×3 kernel, padding 1 on 8×8: output 8×8×8 elements, each 3·3·3 MACs.
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8)) == 8 * 8 * 8 * 3 * 3 * 3
    # groups=2, stride 2, no padding on 4×9×9: output 8×4×4, each (4/2)·3·3 MACs.
    assert count_macs(nn.Conv2d(4, 8, 3, stride=2, groups=2), (4, 9, 9)) == 8 * 4 * 4 * 2 * 9
    # BN, ReLU and Flatten add nothing; conv + linear add up.
    assert count_macs(_model(), INPUT_SHAPE) == 4 * 64 * 9 + 4 * 64 * 3


def test_count_macs_restores_training_mode():
    model = _model().train()
    count_macs(model, INPUT_SHAPE)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0]._forward_hooks


def test_nonzero_params_after_zeroing_and_after_torch_prune():
    layer = nn.Linear(4, 3)  # 12 weights + 3 biases
    with torch.no_grad():
        layer.weight[0].zero_()
    assert count_params(layer) == (15, 11)
    pruned = nn.Linear(4, 3)
    torch_prune.l1_unstructured(pruned, "weight", amount=6)  # weight_orig stays dense, the mask zeroes 6
    assert count_params(pruned) == (15, 9)


def test_shared_parameters_count_once():
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, shared)) == (20, 20)


def test_file_sizes_are_bytes_and_xz_9e(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(1000) + np.random.default_rng(0).bytes(1000)
    path.write_bytes(data)
    size, size_lzma = file_sizes(path)
    assert size == 2000
    assert size_lzma == len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    assert 1000 < size_lzma < 2000
    with pytest.raises(TorchslimError, match="not found"):
        file_sizes(tmp_path / "missing.onnx")


# ------------------------------------------------------------------------------------------------ runners


def test_pytorch_and_onnx_artifacts_agree(tmp_path):
    data, model = _data(), _model()
    a = accuracy(make_runner(_torch_artifact(tmp_path, "fp32", model), threads=1), data.test, batch_size=64)
    b = accuracy(make_runner(_onnx_artifact(tmp_path, "onnx", model), threads=1), data.test, batch_size=64)
    assert a[2].shape == (150, 3)
    np.testing.assert_allclose(a[2], b[2], atol=1e-5)
    assert a[:2] == b[:2]
    assert a[1] == int((a[2].argmax(1) != data.test.tensors[1].numpy()).sum())


def test_constant_model_accuracy_is_share_of_class_zero(tmp_path):
    data = _data()
    labels = data.test.tensors[1]
    acc, errors, _ = accuracy(make_runner(Artifact("zero", "x", "pytorch", tmp_path, AlwaysZero()), 1), data.test, 32)
    assert acc == pytest.approx(float((labels == 0).float().mean()))
    assert errors == int((labels != 0).sum())


def test_accuracy_on_a_generic_dataset_matches_tensor_dataset(tmp_path):
    data, model = _data(), _model()
    run = make_runner(_torch_artifact(tmp_path, "m", model), 1)
    as_list = [data.test[i] for i in range(len(data.test))]  # a plain list goes through the DataLoader path
    assert accuracy(run, as_list, 40)[:2] == accuracy(run, data.test, 40)[:2]


def test_unknown_runtime_and_missing_model_are_user_errors(tmp_path):
    with pytest.raises(TorchslimError, match="valid choices: onnxruntime, pytorch"):
        make_runner(Artifact("a", "x", "tflite", tmp_path / "a.tflite", _model()), 1)
    with pytest.raises(TorchslimError, match="no model"):
        make_runner(Artifact("a", "x", "pytorch", tmp_path / "a.safetensors"), 1)


# ------------------------------------------------------------------------------------------------ latency


def test_latency_reports_ordered_percentiles_and_respects_min_runs(tmp_path):
    run = make_runner(_torch_artifact(tmp_path, "m", _model()), 1)
    lat = latency(run, INPUT_SHAPE, 2, warmup=1, min_runs=7, max_runs=50, max_seconds=0.01)
    assert set(lat) == {"p50", "p90", "runs"}
    assert 0 < lat["p50"] <= lat["p90"]
    assert 7 <= lat["runs"] <= 50
    capped = latency(run, INPUT_SHAPE, 1, warmup=0, min_runs=2, max_runs=5, max_seconds=60)
    assert capped["runs"] == 5  # max_runs ends the loop long before the time budget


def test_artifacts_are_timed_interleaved_in_rotating_rounds():
    calls: list[int] = []
    runners = [lambda x, i=i: calls.append(i) or np.zeros((len(x), 3), np.float32) for i in range(2)]
    cfg = LatencyConfig(warmup=1, min_runs=3, max_runs=3, max_seconds=10, batch_sizes=(1,), rounds=3)
    (a, b) = measure_latencies(runners, INPUT_SHAPE, cfg)
    assert a["1"]["runs"] == b["1"]["runs"] == 3
    # warm-up; then per round each artifact gets one re-warm call and its timed call, the first artifact rotating.
    assert calls == [0, 1] + [0, 0, 1, 1] + [1, 1, 0, 0] + [0, 0, 1, 1]


def test_latency_config_rejects_bad_values():
    with pytest.raises(TorchslimError, match="latency.min_runs = 0"):
        LatencyConfig(min_runs=0)
    with pytest.raises(TorchslimError, match="max_runs"):
        LatencyConfig(min_runs=10, max_runs=5)
    with pytest.raises(TorchslimError, match="batch_sizes"):
        LatencyConfig(batch_sizes=())
    assert LatencyConfig(batch_sizes=[1, 8]).batch_sizes == (1, 8)


# ------------------------------------------------------------------------------------------------ evaluate


def _record(name: str, p50: dict, size: int, size_lzma: int, acc: float) -> dict:
    return {
        "name": name, "latency_ms": {b: {"p50": v, "p90": v * 1.1} for b, v in p50.items()},
        "file_bytes": size, "file_bytes_lzma": size_lzma, "accuracy": acc,
    }


def test_ratios_against_baselines_on_hand_made_records():
    teacher = _record("teacher", {"1": 2.0, "64": 30.0}, 4000, 3000, 0.99)
    student = _record("student", {"1": 0.5, "64": 10.0}, 1000, 600, 0.97)
    int8 = _record("int8", {"1": 0.25, "64": 4.0}, 250, 200, 0.96)
    vs = compare(int8, teacher)
    assert vs["speedup"] == {"1": pytest.approx(8.0), "64": pytest.approx(7.5)}
    assert vs["compression"] == pytest.approx(16.0)
    assert vs["compression_lzma"] == pytest.approx(15.0)
    assert vs["accuracy_delta"] == pytest.approx(-0.03)

    records = add_baselines([teacher, student, int8], teacher="teacher", student="student")
    assert records[0]["vs_teacher"] == {
        "speedup": {"1": 1.0, "64": 1.0}, "compression": 1.0, "compression_lzma": 1.0, "accuracy_delta": 0.0,
    }
    assert records[2]["vs_student"]["speedup"]["1"] == pytest.approx(2.0)
    assert records[2]["vs_student"]["compression"] == pytest.approx(4.0)
    assert add_baselines([teacher, int8], teacher="nope", student=None)[1]["vs_teacher"] is None


def test_evaluate_records(tmp_path):
    data = _data()
    teacher, student = _model(0, width=8), _model(1, width=2)
    arts = [
        _torch_artifact(tmp_path, "teacher", teacher, sparsity=SparsityRecord({"0": 0.0}, 0.0)),
        _torch_artifact(tmp_path, "student", student),
        _onnx_artifact(tmp_path, "student-onnx", student, keep_model=False),
    ]
    threads = torch.get_num_threads()
    records = evaluate(arts, data, latency=FAST, student="student")
    assert torch.get_num_threads() == threads  # the process-wide setting is restored

    assert [r["name"] for r in records] == ["teacher", "student", "student-onnx"]
    for r in records:
        assert set(r) == RECORD_KEYS
        assert set(r["latency_ms"]) == {"1", "4"}
        assert all(0 < e["p50"] <= e["p90"] and e["runs"] >= FAST.min_runs for e in r["latency_ms"].values())
        assert r["threads"] == 1
        assert isinstance(r["path"], str)
    t, s, o = records
    assert t["info"] == {"sparsity": SparsityRecord({"0": 0.0}, 0.0)}  # the stage's records, passed through
    assert (t["params"], t["macs"]) == (count_params(teacher)[0], count_macs(teacher, INPUT_SHAPE))
    assert (o["params"], o["nonzero_params"], o["macs"]) == (None, None, None)  # no module: nothing to count
    assert o["file_bytes"] == (tmp_path / "student-onnx.onnx").stat().st_size
    assert (s["accuracy"], s["errors"]) == (o["accuracy"], o["errors"])
    assert s["errors"] == round((1 - s["accuracy"]) * 150)
    assert t["vs_teacher"]["speedup"] == {"1": 1.0, "4": 1.0}
    assert s["vs_teacher"]["speedup"]["4"] == pytest.approx(t["latency_ms"]["4"]["p50"] / s["latency_ms"]["4"]["p50"])
    assert s["vs_teacher"]["compression"] == pytest.approx(t["file_bytes"] / s["file_bytes"])
    assert s["vs_teacher"]["accuracy_delta"] == pytest.approx(s["accuracy"] - t["accuracy"])
    assert o["vs_student"]["accuracy_delta"] == 0.0


def test_evaluate_rejects_duplicate_names(tmp_path):
    art = _torch_artifact(tmp_path, "m", _model())
    with pytest.raises(TorchslimError, match="repeated: m"):
        evaluate([art, art], _data(), latency=FAST)


# ------------------------------------------------------------------------------------------------ report


def _report(tmp_path) -> dict:
    records = [
        _record("teacher", {"1": 2.0, "64": 30.0}, 400_000, 300_000, 0.99),
        _record("student|pruned", {"1": 0.5, "64": 10.0}, 100_000, 40_000, 0.97),
        _record("int8", {"1": 0.25, "64": 4.0}, 30_000, 20_000, 0.965),
    ]
    for r, runtime, info in zip(
        records,
        ["pytorch", "pytorch", "onnxruntime"],
        [{}, {"sparsity": SparsityRecord({"conv1": 0.5, "fc": 0.9})},
         {"onnx_verification": OnnxVerification(np.float32(2e-6), 1.0)}],
    ):
        r.update(
            stage="x", runtime=runtime, path=str(tmp_path / r["name"]), errors=round((1 - r["accuracy"]) * 1000),
            params=61_706, nonzero_params=12_000, macs=416_520, threads=1, info=info, vs_student=None,
        )
        for e in r["latency_ms"].values():
            e["runs"] = 200
    add_baselines(records, teacher="teacher")
    return build_report(
        records, recipe={"stages": ["train"]}, data=_data(), threads=1, meta={"seed": 0, "command": "torchslim run"},
        latency=LatencyConfig(warmup=3, rounds=4),
    )


def test_build_report_has_required_fields(tmp_path):
    report = _report(tmp_path)
    assert {"torchslim_version", "created", "recipe", "data", "threads", "machine", "artifacts", "seed", "command"} <= set(report)
    assert report["data"] == {
        "name": "fake", "source": "generated in the test", "normalization": {"mean": [0.5], "std": [0.25]},
        "sizes": {"train": 50, "test": 150},
    }
    assert {"platform", "processor", "cpu_count", "python", "torch", "onnxruntime"} <= set(report["machine"])
    assert report["latency_protocol"]["batch_sizes"] == [1, 64] and "threads" not in report["latency_protocol"]
    assert build_report([], recipe={}, data=_data(), threads=1, meta={})["latency_protocol"] is None
    with pytest.raises(TorchslimError, match="artifacts"):
        build_report([], recipe={}, data=_data(), threads=1, meta={"artifacts": []})


def test_write_report_files(tmp_path):
    out = tmp_path / "run"
    paths = write_report(_report(tmp_path), out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]  # no temp files left
    assert paths["json"] == out / "report.json"

    loaded = json.loads(paths["json"].read_text())
    verification = loaded["artifacts"][2]["info"]["onnx_verification"]  # the record under its kind
    assert verification["max_abs_diff"] == pytest.approx(2e-6) and type(verification["max_abs_diff"]) is float
    assert set(loaded["artifacts"][1]["vs_teacher"]) == {"speedup", "compression", "compression_lzma", "accuracy_delta"}

    md = paths["md"].read_text()
    assert "| artifact | runtime | accuracy % |" in md
    assert "student\\|pruned" in md  # a pipe in a name does not break the table
    assert "| 96.50 |" in md and "| 0.250 | 4.000 |" in md
    assert "8.00× / 7.50×" in md and "| 15.00× |" in md  # int8 vs teacher: 2/0.25, 30/4; lzma 300000/20000
    assert "| fc | 90.00 |" in md  # per-layer sparsity of the pruned student
    assert "top-1 agreement: 100.00 %" in md
    assert "200 timed calls per artifact and batch size, after 3 warm-up calls" in md and "in 4 rounds" in md

    page = paths["html"].read_text()
    assert page.count('<img alt="') == 2
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)  # self-contained: nothing fetched
    assert "<script" not in page and "<link" not in page
    assert "student|pruned" in page and "fc" in page


def test_render_markdown_without_teacher_or_protocol(tmp_path):
    report = _report(tmp_path)
    for r in report["artifacts"]:
        r["vs_teacher"] = None
    report["latency_protocol"] = None
    md = render_markdown(report)
    assert "| — / — | — |" in md
    assert "after warm-up." in md  # no protocol given: no made-up warm-up count


def test_print_table(tmp_path):
    console = Console(record=True, width=250)
    print_table(_report(tmp_path), console=console)
    text = console.export_text()
    assert "student|pruned" in text and "8.00×" in text and "15.00×" in text  # lzma: 300000 / 20000
    assert "1 thread; times are medians" in text
