"""What the report shows: each artifact against its own source (speedup, compression, flags), the sparse-aware size
as the headline, plots at every batch size that stay readable, and artifact sections as tables rather than JSON."""
from __future__ import annotations

import copy
import re
import types

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from torchslim.artifact import Artifact
from torchslim.evaluation import LatencyConfig, add_baselines, add_sources, build_report, evaluate, memory_sizes
from torchslim.evaluation.report import (_plots, _scatter_figure, _sections, _table, overlapping_labels, render_html,
                                         render_markdown)
from torchslim.prune import MagnitudePruneConfig, prune_
from torchslim.quant.export import QuantizationRecord
from torchslim.records import as_info

FAST = LatencyConfig(warmup=1, min_runs=3, max_runs=30, max_seconds=0.02, batch_sizes=(1, 4), rounds=2)


def _rec(name: str, runtime: str, p50: dict, size: int, lzma: int, acc: float, **extra) -> dict:
    return {"name": name, "stage": extra.pop("stage", "x"), "runtime": runtime, "path": f"{name}.bin",
            "accuracy": acc, "errors": round((1 - acc) * 360), "params": 4810, "nonzero_params": 1021, "macs": 4740,
            "file_bytes": size, "file_bytes_lzma": lzma, "threads": 1, "vs_student": None, "info": {},
            "latency_ms": {b: {"p50": v, "p90": 1.1 * v, "runs": 50} for b, v in p50.items()}, **extra}


def _pipeline_records() -> list[dict]:
    """A teacher, a pruned student, its fp32 ONNX export and an int8 ONNX file that is slower than that export at
    batch 1 (as on the digits demo)."""
    records = [
        _rec("teacher", "pytorch", {"1": 0.06, "64": 0.29}, 669_192, 615_596, 0.975, stage="teacher"),
        _rec("prune", "pytorch", {"1": 0.024, "64": 0.035}, 19_560, 5_300, 0.958, stage="prune"),
        _rec("onnx-fp32", "onnxruntime", {"1": 0.0072, "64": 0.0137}, 19_831, 5_484, 0.958, stage="export",
             source="prune"),
        _rec("int8", "onnxruntime", {"1": 0.0091, "64": 0.0133}, 9_278, 3_272, 0.958, stage="quantize",
             source="prune", info=as_info(QuantizationRecord(mode="static", config={"per_channel": True}))),
    ]
    return add_sources(add_baselines(records, teacher="teacher"))


def _report(records: list[dict]) -> dict:
    data = types.SimpleNamespace(name="fake", input_shape=(1, 8, 8), train=None, test=list(range(360)))
    return build_report(records, recipe={}, data=data, threads=1, meta={}, latency=LatencyConfig(batch_sizes=(1, 64)))


# ------------------------------------------------------------------------------------------- vs its own source


def test_speedup_over_the_source_is_the_ratio_of_the_two_p50s():
    t, prune, onnx, int8 = _pipeline_records()
    assert int8["vs_source"]["speedup"]["64"] == pytest.approx(0.035 / 0.0133)
    assert onnx["vs_source"]["speedup"]["1"] == pytest.approx(0.024 / 0.0072)
    assert int8["vs_source"]["compression_lzma"] == pytest.approx(5_300 / 3_272)
    assert (t["vs_source"], prune["vs_source"]) == (None, None)  # no source named: nothing to compare with
    headers, rows = _table(_report([t, prune, onnx, int8]))
    cell = dict(zip(headers, rows[3]))
    assert cell["made from"] == "prune"
    assert cell["speedup vs source @1 / @64"] == f"{0.024 / 0.0091:.2f}× / {0.035 / 0.0133:.2f}×"
    assert cell["compression vs source"] == f"{5_300 / 3_272:.2f}×"


def test_a_slower_or_larger_compressed_artifact_is_flagged_and_a_faster_one_is_not():
    t, prune, onnx, int8 = _pipeline_records()
    # int8 beats its PyTorch source, but ONNX Runtime runs it slower than the fp32 file of the same source
    assert int8["flags"] == [f"slower than onnx-fp32 at batch 1 ({0.0072 / 0.0091:.2f}× its speed)"]
    assert onnx["flags"] == []  # an fp32 export 3 % larger (lzma) than its source is a format change, not a finding
    slow = _rec("int8", "onnxruntime", {"1": 0.05, "64": 0.035}, 30_000, 6_000, 0.95, stage="quantize",
                source="prune")
    flags = add_sources([copy.deepcopy(prune), slow])[1]["flags"]
    assert flags == ["slower than prune at batch 1 (0.48× its speed)", "larger than prune (1.13× its lzma size)"]
    noise = _rec("int8", "onnxruntime", {"1": 0.0245, "64": 0.0352}, 19_560, 5_310, 0.95, stage="quantize",
                 source="prune")
    assert add_sources([copy.deepcopy(prune), noise])[1]["flags"] == []  # within the timing and lzma noise
    md = render_markdown(_report([t, prune, onnx, int8]))
    assert "int8 is slower than onnx-fp32 at batch 1" in md and "| flags |" in md.splitlines()[2]


def test_the_tables_show_what_the_readme_promises_vs_teacher_and_vs_student():
    records = _pipeline_records()
    add_baselines(records, teacher="teacher", student="prune")
    headers, rows = _table(_report(records))
    for label in ("teacher", "student", "source"):
        assert f"speedup vs {label} @1 / @64" in headers and f"compression vs {label}" in headers
    assert dict(zip(headers, rows[3]))["compression vs student"] == f"{5_300 / 3_272:.2f}×"


def test_pipeline_stages_record_the_artifact_they_start_from(tmp_path):
    from torchslim.pipeline.stages.base import current_artifact
    from torchslim.pipeline.state import RunState

    teacher, pruned = nn.Linear(4, 2), nn.Linear(4, 2)
    state = RunState(recipe=None, out=tmp_path, data=None, log=print, model=pruned)
    state.artifacts = [Artifact("teacher", "teacher", "pytorch", None, teacher),
                       Artifact("prune", "prune", "pytorch", None, pruned),
                       Artifact("onnx", "export", "onnxruntime", tmp_path / "m.onnx", pruned)]
    assert current_artifact(state) == "prune"  # not the ONNX file that holds the same module


def test_evaluate_finds_the_source_of_a_file_made_from_a_model_beside_it(tmp_path):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    path = tmp_path / "s.onnx"
    torch.onnx.export(student, torch.zeros(1, 1, 8, 8), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,))
    data = types.SimpleNamespace(input_shape=(1, 8, 8), test=torch.utils.data.TensorDataset(x, y))
    onnx = Artifact("onnx", "export", "onnxruntime", path, student)
    records = evaluate([Artifact("student", "train", "pytorch", None, student), onnx], data, latency=FAST)
    assert [r["source"] for r in records] == [None, "student"]
    s, o = records
    assert o["vs_source"]["speedup"]["4"] == pytest.approx(s["latency_ms"]["4"]["p50"] / o["latency_ms"]["4"]["p50"])


# ------------------------------------------------------------------------------------------- sizes


def test_the_pruned_models_headline_size_is_smaller_than_its_dense_size(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    pruned = copy.deepcopy(dense)
    prune_(pruned, MagnitudePruneConfig(sparsity=0.9, scope="global"))
    (dense_raw, dense_lzma), (pruned_raw, pruned_lzma) = memory_sizes(dense), memory_sizes(pruned)
    assert pruned_raw == dense_raw  # the raw bytes cannot see the zeros
    assert pruned_lzma < 0.4 * dense_lzma  # the headline can
    # A model pruned by torch.nn.utils.prune counts as it ships (masked weights), not as weight_orig + weight_mask.
    masked = copy.deepcopy(dense)
    torch_prune.l1_unstructured(masked[1], "weight", 0.9)
    assert memory_sizes(masked)[0] == dense_raw and memory_sizes(masked)[1] < 0.6 * dense_lzma

    records = [_rec("dense", "pytorch", {"1": 0.01}, dense_raw, dense_lzma, 0.9),
               _rec("pruned", "pytorch", {"1": 0.01}, pruned_raw, pruned_lzma, 0.9, source="dense", stage="prune")]
    add_sources(add_baselines(records, teacher="dense"))
    headers, rows = _table(_report(records))
    compression = dict(zip(headers, rows[1]))["compression vs teacher"]
    assert float(compression.rstrip("×")) == pytest.approx(dense_lzma / pruned_lzma, rel=0.01)
    assert dense_lzma / pruned_lzma > 2.5
    assert "size KB (lzma)" in headers and "file KB" in headers  # raw bytes still shown


# ------------------------------------------------------------------------------------------- plots and sections


def test_latency_is_plotted_at_every_batch_size():
    report = _report(_pipeline_records())
    alts = [alt for alt, _ in _plots(report)]
    assert alts == ["accuracy vs lzma size", "accuracy vs latency at batch 1, 64"]
    panels = [([(r, r["latency_ms"][b]["p50"]) for r in report["artifacts"]], "ms", f"batch {b}") for b in ("1", "64")]
    fig = _scatter_figure(panels, "Accuracy vs latency")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["batch 1", "batch 64"]
    assert sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections) == 2 * 4  # every point, both panels


def test_points_on_one_another_share_a_label_and_stay_apart():
    # An fp32 export the same size and accuracy as its source: one label naming both, two visible markers.
    records = [_rec("prune", "pytorch", {"1": 1.0}, 100, 5300, 0.958), _rec("onnx", "onnxruntime", {"1": 1.0}, 100,
                                                                           5310, 0.958),
               _rec("teacher", "pytorch", {"1": 1.0}, 100, 615_000, 0.975)]
    fig = _scatter_figure([([(r, r["file_bytes_lzma"] / 1000) for r in records], "KB", "")], "size")
    ax = fig.axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["prune\nonnx", "teacher"]
    xs = [c.get_offsets()[0][0] for c in ax.collections]
    assert xs[0] != xs[1]  # nudged apart, by a few percent at most
    assert xs[1] / xs[0] == pytest.approx(5.31 / 5.3, rel=0.2)


@pytest.mark.parametrize("sizes", [[3.3, 5.3, 5.5, 18, 615], [0.9, 1.4, 2.2, 3.1], [0.0072, 0.0091, 0.024, 0.06],
                                   [12, 13, 14, 15], [1e-3, 50, 4e4]])
def test_no_two_tick_labels_overlap(sizes):
    records = [_rec(f"m{i}", "pytorch", {"1": 1.0}, 1, 1, 0.9 + 0.01 * i) for i in range(len(sizes))]
    wide = _scatter_figure([(list(zip(records, sizes)), "size (KB, log scale)", "")], "t")
    narrow = _scatter_figure([(list(zip(records, sizes)), "p50 (ms)", f"batch {b}") for b in (1, 8, 64, 256)], "t")
    assert overlapping_labels(wide) == [] and overlapping_labels(narrow) == []
    assert all(len([t for t in ax.get_xticklabels() if t.get_text()]) >= 2 for ax in wide.axes)


def test_artifact_sections_show_configs_as_tables_not_cut_json():
    config = {f"field_{i}": i for i in range(40)} | {"train": {"epochs": 3, "lr": 0.001}, "exclude": []}
    record = _rec("int8", "onnxruntime", {"1": 1.0}, 100, 90, 0.9,
                  info=as_info(QuantizationRecord(mode="static", config=config), calibration={"batches": 8}))
    blocks = dict(_sections({"artifacts": [record]}))["int8"]
    tables = {b[1][0]: dict(map(tuple, b[2])) for b in blocks if b[0] == "table"}
    assert tables["quantization config"]["field_39"] == "39"  # all 40 fields: nothing cut at 300 characters
    assert tables["quantization config"]["train.epochs"] == "3" and tables["quantization config"]["exclude"] == "(none)"
    assert tables["calibration"] == {"batches": "8"}
    page = render_html({"artifacts": [record], "data": {}, "machine": {}})
    assert "..." not in page and "{&quot;" not in page  # no JSON object shown as text
    assert re.search(r"<td>train\.lr</td><td[^>]*>0\.001</td>", page)
