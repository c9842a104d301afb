"""Mixed precision on a small MLP trained on digits, with one layer made fragile on purpose.

The fragile layer: hidden unit 0 of fc1 is dead (zero weights, negative bias, so ReLU always outputs 0), and fc2
reads it with a weight of 1000 in every row. The float function is unchanged, but each fc2 row's quantization range is
now set by that outlier, so at any width ≤ 8 bits its real weights round to (nearly) zero.
"""
import pytest
import torch

from torchslim.data import load_dataset
from torchslim.errors import TorchslimError
from torchslim.models import create_model
from torchslim.quant import (
    QuantConfig,
    QuantSpec,
    accuracy_aware,
    allocate_bits,
    config_for,
    layer_sensitivity,
    mixed_precision,
    plot_sensitivity,
    quantizable_layers,
    weight_bytes,
)
from torchslim.quant.export import QuantizationRecord
from torchslim.training import TrainConfig, fit
from torchslim.training.loop import predict

FRAGILE = "fc2"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting; two threads crawl on a busy CPU
    data = load_dataset("digits")
    model = create_model("mlp", input_shape=data.input_shape, widths=[48, 48])
    fit(model, data.train, data.val, TrainConfig(epochs=6, lr=3e-3), log=lambda s: None)
    x = data.test.tensors[0]
    with torch.no_grad():
        model.fc1.weight[0].zero_()
        model.fc1.bias[0] = -1.0
        before = predict(model, x)
        model.fc2.weight[:, 0] = 1000.0
    assert torch.allclose(predict(model, x), before, atol=1e-5)  # the float model did not change
    rows = layer_sensitivity(model, QuantConfig(), data, bits=(2, 3, 4, 8))
    return model, data, rows


def test_one_row_per_layer_and_width(setup):
    model, _, rows = setup
    assert [(r["layer"], r["bits"]) for r in rows] == [(n, b) for n in ("fc1", "fc2", "fc3") for b in (2, 3, 4, 8)]
    assert set(quantizable_layers(model)) == {"fc1", "fc2", "fc3"}
    for r in rows:
        assert r["kl"] >= 0 and r["drop"] == pytest.approx(100 * (r["reference_accuracy"] - r["accuracy"]))


def test_fragile_layer_ranks_most_sensitive(setup):
    _, _, rows = setup
    for bits in (2, 4, 8):
        at = [r for r in rows if r["bits"] == bits]
        assert max(at, key=lambda r: r["kl"])["layer"] == FRAGILE
    fragile_4bit = next(r for r in rows if r["layer"] == FRAGILE and r["bits"] == 4)
    assert fragile_4bit["drop"] > 20  # its real weights all round to zero


def test_allocate_bits_respects_budget_and_protects_the_fragile_layer(setup):
    model, _, rows = setup
    layers = quantizable_layers(model)
    # Room for everything at 4 bits plus the fragile layer in float, but not for all layers at 8 bits plus that.
    budget = weight_bytes(model, {FRAGILE: 32, **{n: 4 for n in layers if n != FRAGILE}}) + 100
    bits = allocate_bits(model, rows, budget)
    assert weight_bytes(model, bits) <= budget
    assert bits[FRAGILE] == 32
    assert all(bits[FRAGILE] > b for n, b in bits.items() if n != FRAGILE)
    with pytest.raises(TorchslimError, match="budget_bytes = 10 is below the smallest allocation"):
        allocate_bits(model, rows, 10)
    with pytest.raises(TorchslimError, match=r"no sensitivity for layer 'fc1' at \[6\] bits"):
        allocate_bits(model, rows, budget, choices=(6, 32))


def test_accuracy_aware_stops_within_tolerance_and_records_trials(setup, tmp_path):
    model, data, rows = setup
    cfg = QuantConfig(weight=QuantSpec(bits=2, per_channel=True), calibration_batches=4)
    best, trials = accuracy_aware(model, cfg, data, tolerance_points=1.0, sensitivity_rows=rows,
                                  export_dir=tmp_path, log=lambda s: None)
    assert trials[0]["changed"] is None and set(trials[0]["bits"].values()) == {2}
    assert trials[1]["changed"] == f"{FRAGILE} → 8"
    assert trials[-1]["within_tolerance"] and not any(t["within_tolerance"] for t in trials[:-1])
    assert trials[-1]["drop"] <= 1.0
    assert best == QuantConfig.model_validate(trials[-1]["config"])
    # The fragile layer is useless at 8 bits too, so it must end in float (excluded).
    assert FRAGILE in best.exclude
    assert [t["weight_bytes"] for t in trials] == sorted(t["weight_bytes"] for t in trials)
    assert all(t["file_bytes"] > 0 and (tmp_path / f"trial{t['trial']}.onnx").is_file() for t in trials)


def test_config_for_and_plot(setup, tmp_path):
    _, _, rows = setup
    cfg = config_for(QuantConfig(), {"fc1": 4, "fc2": 32, "fc3": 8})
    assert cfg.exclude == ["fc2"] and cfg.per_layer_bits == {"fc1": 4, "fc3": 8}
    path = plot_sensitivity(rows, tmp_path / "sens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TorchslimError, match="unknown sensitivity metric 'mse'.*valid choices: drop, kl"):
        plot_sensitivity(rows, tmp_path / "x.png", metric="mse")


def test_bad_inputs_name_the_value(setup):
    model, data, _ = setup
    with pytest.raises(TorchslimError, match=r"bits = \[1, 4\]: every width must be one of \[2, 3, 4, 5, 6, 7, 8\]"):
        layer_sensitivity(model, QuantConfig(), data, bits=(1, 4))
    with pytest.raises(TorchslimError, match="unknown split 'train'"):
        layer_sensitivity(model, QuantConfig(), data, bits=(4,), split="train")
    with pytest.raises(TorchslimError, match="unknown layer in bits 'fc9'"):
        weight_bytes(model, {"fc9": 4})


def _weight_bits(model, cfg):
    """Weight bits per layer of the model `prepare` makes from `cfg` (32: left in float)."""
    from torchslim.quant import prepare
    from torchslim.quant.prepare import _QuantLayer

    qmodel = prepare(model, cfg)
    quantized = {n: m.weight_fake_quant.spec.bits for n, m in qmodel.named_modules() if isinstance(m, _QuantLayer)}
    return {n: quantized.get(n, 32) for n in quantizable_layers(model)}


def test_mixed_precision_for_a_budget_fits_it_and_its_config_quantizes_as_recorded(setup):
    model, data, _ = setup

    class Stage(QuantConfig):  # a recipe stage: a QuantConfig with fields of its own, which are not recorded
        budget: float | None = None

    cfg, info = mixed_precision(model, Stage(budget=0.6), data, budget=0.6, choices=(2, 4, 8, 32), log=lambda s: None)
    assert set(info) == {"quant", "sensitivity", "split", "budget_bytes", "bits", "weight_bytes", "int8_weight_bytes"}
    assert info["quant"] == QuantConfig().model_dump() and info["split"] == "val" and type(cfg) is QuantConfig
    int8 = weight_bytes(model, 8)
    assert info["int8_weight_bytes"] == int8 and info["budget_bytes"] == pytest.approx(0.6 * int8)
    assert info["weight_bytes"] == weight_bytes(model, info["bits"]) <= info["budget_bytes"]
    assert {(r["layer"], r["bits"]) for r in info["sensitivity"]} == {(n, b) for n in quantizable_layers(model)
                                                                       for b in (2, 4, 8)}
    assert _weight_bits(model, cfg) == info["bits"]  # the config is the allocation
    assert set(info["bits"].values()) <= {2, 4, 8, 32}
    assert info["weight_bytes"] > weight_bytes(model, 2)  # it used the room it had


def test_mixed_precision_for_a_tolerance_returns_the_first_config_within_it(setup):
    model, data, _ = setup
    start = QuantConfig(weight=QuantSpec(bits=2, per_channel=True), calibration_batches=4)
    cfg, info = mixed_precision(model, start, data, tolerance_points=1.0, log=lambda s: None)
    assert set(info) == {"quant", "sensitivity", "split", "trials", "bits", "weight_bytes", "int8_weight_bytes"}
    chosen = info["trials"][-1]
    assert chosen["within_tolerance"] and chosen["drop"] <= 1.0 and info["bits"] == chosen["bits"]
    assert FRAGILE in cfg.exclude and _weight_bits(model, cfg) == info["bits"]


def test_mixed_precision_needs_exactly_one_goal(setup):
    model, data, _ = setup
    for goal in ({}, {"budget": 0.5, "tolerance_points": 1.0}):
        with pytest.raises(TorchslimError, match="mixed_precision: give exactly one of budget"):
            mixed_precision(model, QuantConfig(), data, **goal)


def _record(name, runtime, p50, stage="x", info=None, macs=50_000_000):
    return {"name": name, "stage": stage, "runtime": runtime, "path": f"{name}.onnx", "accuracy": 0.9, "errors": 1,
            "file_bytes": 1000, "file_bytes_lzma": 900, "macs": macs, "info": info or {},
            "latency_ms": {b: {"p50": v, "p90": v, "runs": 10} for b, v in p50.items()}}


def test_speed_notes_name_the_slow_artifacts_and_why():
    from torchslim.evaluation.report import render_markdown, speed_notes

    kernels = {"QLinearConv": 2, "Conv": 1, "Gemm": 2, "QuantizeLinear": 3, "DequantizeLinear": 3}
    report = {"artifacts": [
        _record("teacher", "pytorch", {"1": 0.5, "64": 9.0}, stage="teacher"),
        _record("student", "pytorch", {"1": 0.2, "64": 4.0}, stage="distill", macs=400_000),
        _record("student-onnx", "onnxruntime", {"1": 0.05, "64": 2.0}, stage="export", macs=400_000),
        _record("int8", "onnxruntime", {"1": 0.06, "64": 1.0}, stage="ptq",
                info={"quantization": QuantizationRecord(kernels=kernels)}, macs=400_000),
        # a record as report.json holds it: its JSON under its kind
        _record("dyn", "onnxruntime", {"1": 0.3, "64": 3.0}, stage="quantize",
                info={"quantization": {"mode": "dynamic"}}, macs=400_000),
        _record("fast", "onnxruntime", {"1": 0.01, "64": 0.5}, stage="qat",
                info={"quantization": QuantizationRecord(kernels={"QLinearConv": 3})}, macs=400_000),
    ]}
    notes = speed_notes(report)
    assert notes == [
        "int8 is not faster than student-onnx at batch 1 (0.060 vs 0.050 ms p50): 3 layers left in float (Conv, "
        "Gemm); 6 int8↔float conversions (QuantizeLinear/DequantizeLinear) around them; the model is tiny "
        "(0.4 M MACs per call), so per-call overhead dominates.",
        "dyn is not faster than student-onnx at batch 1 (0.300 vs 0.050 ms p50): dynamic quantization measures and "
        "quantizes every activation on each call; the model is tiny (0.4 M MACs per call), so per-call overhead "
        "dominates.",
        # 0.4 M MACs × 64 is no longer tiny: only the dynamic quantization is named
        "dyn is not faster than student-onnx at batch 64 (3.000 vs 2.000 ms p50): dynamic quantization measures and "
        "quantizes every activation on each call.",
    ]
    # Without an fp32 ONNX export the PyTorch source is the baseline (int8 at 0.06 ms beats student's 0.2 ms), and a
    # quantized artifact is never compared with another model's float artifacts (the teacher here).
    report["artifacts"] = [report["artifacts"][i] for i in (0, 1, 3)]
    assert speed_notes(report) == []
    report["artifacts"][2]["latency_ms"]["1"]["p50"] = 0.25
    assert speed_notes(report)[0].startswith("int8 is not faster than student at batch 1 (0.250 vs 0.200 ms p50)")
    assert "- **Speed**: int8 is not faster than student" in render_markdown({**report, "data": {}, "machine": {}})


def test_speed_notes_follow_the_source_a_record_names_and_its_float_layers():
    """A quantized PyTorch artifact (no ONNX graph) names the float model it came from and the layers it kept in
    float; it is compared with that model, not with the last float artifact before it."""
    from torchslim.evaluation.report import speed_notes

    report = {"artifacts": [
        _record("fp32", "pytorch", {"1": 0.2}, stage="train", macs=400_000),
        _record("other", "pytorch", {"1": 0.9}, stage="train", macs=400_000),
        _record("torchao", "pytorch", {"1": 0.5}, stage="quantize", macs=400_000,
                info={"quantization": QuantizationRecord(source="fp32", float_layers={"Conv2d": 2})}),
    ]}
    assert speed_notes(report) == [
        "torchao is not faster than fp32 at batch 1 (0.500 vs 0.200 ms p50): 2 layers left in float (Conv2d); the "
        "model is tiny (0.4 M MACs per call), so per-call overhead dominates."]
