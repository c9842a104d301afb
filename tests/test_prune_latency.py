"""Structured pruning to a latency budget: latency tables keyed by machine and runtime and cached on disk, snapping
to kernel steps, the greedy width planner on synthetic latency models, the pruning loop with an injected timer
(budget met, resume without timing, a missed budget as one line), and the recipe stage with real PyTorch timings.

Real timings on this shared machine are only checked for being recorded, never for their values."""
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune import (ChannelPruneConfig, LatencyTable, latency_key, layer_latency_curves, plan_widths,
                             plot_latency_curves, prune_channels_, prune_channels_to_target, snap_width)
from torchslim.prune import latency as latency_module
from torchslim.training import TrainConfig

SHAPE = (1, 8, 8)


def _net(seed: int = 0) -> nn.Module:
    """Three convs (32, 64, 32 channels) with BN and ReLU on 8×8 inputs, then a classifier."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                        nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 1.0)
    return net.eval()


class FakeTimer:
    """A synthetic machine: a module costs 1 µs per (16-channel block of inputs × 16-channel block of outputs ×
    kernel element × output pixel) of its Conv/Linear layers, plus 10 µs per call. The blocks make steps of 16, like
    ONNX Runtime's AVX-512 kernels; cells and whole models follow the same law, so the prediction is exact.
    ``slow_models`` makes every whole model cost the same (a machine where pruning buys nothing)."""

    def __init__(self, slow_models: bool = False) -> None:
        self.cells = 0
        self.models = 0
        self.slow_models = slow_models

    @staticmethod
    def cost(module: nn.Module, input_shape: tuple[int, ...]) -> float:
        total, x = 0.0, torch.zeros(1, *input_shape)
        hooks = []

        def hook(m, args, out):
            nonlocal total
            if isinstance(m, nn.Conv2d):
                blocks = math.ceil(m.in_channels / 16) * math.ceil(m.out_channels / 16)
                total += blocks * m.kernel_size[0] * m.kernel_size[1] * out.shape[2] * out.shape[3] * 1e-3
            else:
                total += math.ceil(m.in_features / 16) * math.ceil(m.out_features / 16) * 1e-3

        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        with torch.no_grad():
            module.eval()(x)
        for h in hooks:
            h.remove()
        return total + 0.01

    def __call__(self, modules, input_shape, seconds):
        whole = [len(list(m.modules())) > 4 for m in modules]  # a cell is a Sequential of ≤ 3 modules
        self.models += sum(whole)
        self.cells += len(modules) - sum(whole)
        return [1.0 if (w and self.slow_models) else self.cost(m, input_shape) for m, w in zip(modules, whole)]


def _table(tmp_path, timer=None, runtime="pytorch", threads=1, batch_size=1):
    return LatencyTable(runtime, threads, batch_size, cache_dir=tmp_path / "cache", timer=timer or FakeTimer())


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g))
    return SimpleNamespace(train=train, val=None)


# ------------------------------------------------------------------------------------------------------- the tables
def test_keys_differ_by_runtime_threads_batch_and_cpu(monkeypatch):
    base = latency_key("pytorch", 1, 1)
    assert base["cpu"] and base["cores"] and base["version"].startswith("torch ")
    assert latency_key("onnxruntime", 1, 1)["version"].startswith("onnxruntime ")
    others = [latency_key("onnxruntime", 1, 1), latency_key("pytorch", 2, 1), latency_key("pytorch", 1, 64)]
    monkeypatch.setattr(latency_module, "_cpu_name", lambda: "Some Other CPU @ 3.0GHz")
    others.append(latency_key("pytorch", 1, 1))
    assert all(k != base for k in others) and len({json.dumps(k, sort_keys=True) for k in others}) == 4
    with pytest.raises(TorchslimError, match=r"unknown latency runtime 'tvm'; valid choices: onnxruntime, pytorch"):
        latency_key("tvm", 1, 1)


def test_a_second_build_reuses_the_cache_and_a_different_key_misses(tmp_path, monkeypatch):
    first = FakeTimer()
    curves = layer_latency_curves(_net(), torch.zeros(1, *SHAPE), _table(tmp_path, first))
    assert first.cells > 0 and set(curves) == {"0", "3", "6"}  # the classifier's outputs stay: no group
    assert sorted(curves["3"]) == [8, 16, 24, 32, 40, 48, 56, 64]

    again = FakeTimer()
    table = _table(tmp_path, again)
    assert layer_latency_curves(_net(), torch.zeros(1, *SHAPE), table) == curves
    assert again.cells == 0 and table.measured == 0 and table.loaded == first.cells  # nothing timed twice

    for kwargs in ({"threads": 2}, {"batch_size": 8}):
        other = FakeTimer()
        layer_latency_curves(_net(), torch.zeros(1, *SHAPE), _table(tmp_path, other, **kwargs))
        assert other.cells == first.cells, kwargs  # another key: every cell timed again
    monkeypatch.setattr(latency_module, "_cpu_name", lambda: "Some Other CPU @ 3.0GHz")
    other = FakeTimer()
    table = _table(tmp_path, other)
    layer_latency_curves(_net(), torch.zeros(1, *SHAPE), table)
    assert other.cells == first.cells and table.loaded == 0

    # A file under the right name whose stored key is another machine's is a miss too (never trusted by name).
    monkeypatch.undo()
    table = _table(tmp_path, FakeTimer())
    for path in (tmp_path / "cache").glob("*.json"):
        data = json.loads(path.read_text())
        if data["key"] == table.key:
            data["key"] = {**data["key"], "cpu": "edited"}
            path.write_text(json.dumps(data))
    layer_latency_curves(_net(), torch.zeros(1, *SHAPE), table)
    assert table.loaded == 0 and table.measured == first.cells


def test_cells_are_the_layer_with_its_bn_and_activation_at_its_input_shape(tmp_path):
    from torchslim.models import create_model

    layout = latency_module._layout(create_model("resnet8", input_shape=SHAPE).eval(), torch.zeros(1, *SHAPE))
    layers = {layer.name: layer for layer in layout.layers}
    inner = json.loads(layers["layer1.0.conv1"].signature)
    assert (inner["bn"], inner["act"], inner["input"], inner["kernel"]) == ("BatchNorm2d", "ReLU", [8, 8], [3, 3])
    assert json.loads(layers["layer1.0.conv2"].signature)["act"] is None  # the add comes before its ReLU
    assert json.loads(layers["layer2.0.conv1"].signature)["stride"] == [2, 2]
    # The stem's group is the first stage's residual stream: it sets conv1's outputs and layer1.0.conv1's inputs.
    assert layers["conv1"].out_group == layers["layer1.0.conv1"].in_group == layers["layer1.0.conv2"].out_group
    assert layers["fc"].out_group is None and layers["fc"].cout == 10


def test_real_pytorch_cells_are_timed_and_plotted(tmp_path):
    table = LatencyTable("pytorch", 1, 1, cache_dir=False, cell_seconds=0.002)
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    curves = layer_latency_curves(net, torch.zeros(1, 1, 8, 8), table)
    assert list(curves) == ["0"] and sorted(curves["0"]) == [8, 16] and all(v > 0 for v in curves["0"].values())
    assert table.measured == 4 and table.seconds > 0
    path = plot_latency_curves(curves, tmp_path / "latency.png", chosen={"0": 8})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -------------------------------------------------------------------------------------------------------- planning
def test_snap_width_picks_the_widest_width_of_a_step():
    steps = {8: 1.0, 16: 1.0, 24: 2.0, 32: 2.0, 40: 3.0, 48: 3.0}
    assert snap_width(steps, 17) == 32  # 17 runs as 24 (the next grid point up) and so does 32
    assert snap_width(steps, 24) == 32 and snap_width(steps, 33) == 48 and snap_width(steps, 8) == 16
    assert snap_width({8: 1.0, 16: 1.02, 24: 2.0}, 8, tolerance=0.05) == 16  # within the timing noise


def test_plan_widths_meets_a_synthetic_budget_exactly_and_cuts_what_is_expensive_per_importance():
    grid = list(range(8, 65, 8))
    choices = {"cheap": grid, "dear": grid}

    def predict(w):  # "dear" costs 3 units per channel, "cheap" 1: an additive synthetic machine
        return w["cheap"] + 3 * w["dear"] + 10

    scores = {"cheap": [1.0] * 64, "dear": [1.0] * 64}  # equal importance: the time decides
    steps = []
    widths = plan_widths({"cheap": 64, "dear": 64}, choices, predict, 10 + 64 + 3 * 40, scores=scores, steps=steps)
    assert widths == {"cheap": 64, "dear": 40} and predict(widths) == 10 + 64 + 3 * 40  # exactly on the budget
    assert all(s["group"] == "dear" for s in steps) and len(steps) == 3  # one grid step at a time

    # Importance outweighs time: "dear"'s channels matter 10× more, so "cheap" goes first, to its floor of 16.
    scores = {"cheap": [1.0] * 64, "dear": [10.0] * 64}
    widths = plan_widths({"cheap": 64, "dear": 64}, choices, predict, predict({"cheap": 16, "dear": 56}),
                         scores=scores, floors={"cheap": 16})
    assert widths == {"cheap": 16, "dear": 56}
    # The lowest-scored channels go first: a group whose worst 8 channels are worthless is cut first.
    scores = {"cheap": [0.0] * 8 + [5.0] * 56, "dear": [1.0] * 64}
    widths = plan_widths({"cheap": 64, "dear": 64}, choices, predict, predict({"cheap": 56, "dear": 64}),
                         scores=scores)
    assert widths == {"cheap": 56, "dear": 64}


def test_plan_widths_jumps_to_the_top_of_the_next_lower_step():
    def predict(w):  # kernel steps of 16: 40 and 48 cost the same, so 40 is never worth choosing
        return math.ceil(w["a"] / 16) * 16.0

    assert plan_widths({"a": 64}, {"a": list(range(8, 65, 8))}, predict, 50) == {"a": 48}
    assert plan_widths({"a": 64}, {"a": list(range(8, 65, 8))}, predict, 40) == {"a": 32}
    with pytest.raises(TorchslimError, match=r"predicts 32 ms at best .* above the target 10 ms"):
        plan_widths({"a": 64}, {"a": list(range(8, 65, 8))}, predict, 10, floors={"a": 24})


def test_the_loss_cost_simulates_the_cut_exactly_and_dead_channels_cost_nothing():
    from torchslim.models import create_model
    from torchslim.prune.structured import CHANNEL_IMPORTANCE

    data = _data(128)
    batches = latency_module._loss_batches(data, 1)
    for model, group, width in ((_net(), "3", 40), (create_model("resnet8", input_shape=SHAPE).eval(), "conv1", 8)):
        x = torch.zeros(1, *SHAPE)
        layout = latency_module._layout(model, x)
        scores = latency_module._scores(layout, CHANNEL_IMPORTANCE.get("l1")(model))
        cost = latency_module._LossCost(model, layout, scores, batches)
        simulated = cost.loss({**layout.groups, group: width})
        pruned = copy.deepcopy(model)
        layout2 = latency_module._layout(pruned, x)
        latency_module._apply(layout2, {group: width}, scores)
        with torch.no_grad():
            real = float(nn.functional.cross_entropy(pruned(batches[0][0]), batches[0][1]))
        assert simulated == pytest.approx(real, rel=1e-5), group  # masking = removing (a residual stream too)

    model = _net()
    bn = model[7]  # group "6"'s batch norm: half its channels dead (γ = β = 0, so ReLU gives 0 whatever comes in)
    with torch.no_grad():
        bn.weight[:16] = 0
        bn.bias[:16] = 0
    layout = latency_module._layout(model, torch.zeros(1, *SHAPE))
    scores = latency_module._scores(layout, CHANNEL_IMPORTANCE.get("bn_scale")(model))
    cost = latency_module._LossCost(model, layout, scores, batches)
    assert cost("6", layout.groups, 16) == pytest.approx(0, abs=1e-6) and cost("3", layout.groups, 32) != 0


# ---------------------------------------------------------------------------------------------- the pruning loop
def test_prune_to_latency_meets_the_budget_records_it_and_resumes_without_timing(tmp_path):
    cfg = ChannelPruneConfig(target="latency", latency_reduction=1.6, latency_runtime="pytorch", rounds=2)
    timer = FakeTimer()
    model = _net()
    x = torch.zeros(1, *SHAPE)
    macs_seen = []
    info = prune_channels_to_target(model, cfg, _data(), TrainConfig(epochs=1, batch_size=32), example_inputs=x,
                                    checkpoint=lambda k: tmp_path / f"round-{k}.pt", log=macs_seen.append,
                                    latency_table=_table(tmp_path, timer))
    lat = info["latency"]
    dense = FakeTimer.cost(_net(), SHAPE)
    assert lat["dense_ms"] == pytest.approx(dense) and lat["target_ms"] == pytest.approx(dense / 1.6)
    assert lat["measured_ms"] == pytest.approx(FakeTimer.cost(model, SHAPE))  # what was timed is this model
    assert lat["measured_reduction"] >= 1.6 and lat["predicted_ms"] == pytest.approx(lat["measured_ms"])
    assert len(info["rounds"]) == 2 and all(r["measured_ms"] <= r["target_ms"] * (1 + 1e-9) for r in info["rounds"])
    assert all(w[1] % 8 == 0 for w in lat["widths"].values()) and lat["table"]["measured_cells"] > 0
    assert set(lat["curves"]) == {"0", "3", "6"} and info["macs_after"] < info["macs_before"]
    assert info["prune_channels"]["target"] == "latency" and any("predicted" in m for m in macs_seen)
    json.dumps(info)

    # Resumed (each round's plan file beside its checkpoint): the same shapes, not a single timing.
    resumed, again = _net(), FakeTimer()
    info2 = prune_channels_to_target(resumed, cfg, _data(), TrainConfig(epochs=0), example_inputs=x,
                                     checkpoint=lambda k: tmp_path / f"round-{k}.pt", log=lambda s: None,
                                     latency_table=_table(tmp_path, again))
    assert again.cells == again.models == 0
    assert info2["channels"] == info["channels"] and info2["latency"]["measured_ms"] == lat["measured_ms"]
    assert {k: v.shape for k, v in resumed.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


class BusyFirstTimer(FakeTimer):
    """Cells of 64 channels come out 3× too slow the first time they are timed (a busy moment on the machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def __call__(self, modules, input_shape, seconds):
        out = []
        for m, ms in zip(modules, super().__call__(modules, input_shape, seconds)):
            key = (repr(m), tuple(input_shape))
            busy = key not in self.seen and len(list(m.modules())) <= 4 and (64 in input_shape or "64" in repr(m))
            self.seen.add(key)
            out.append(3 * ms if busy else ms)
        return out


def test_a_miss_times_the_cells_again_and_the_correction_meets_the_budget(tmp_path):
    cfg = ChannelPruneConfig(target="latency", latency_reduction=1.5, latency_runtime="pytorch")
    model, timer = _net(), BusyFirstTimer()
    info = prune_channels_to_target(model, cfg, _data(), TrainConfig(epochs=0), example_inputs=torch.zeros(1, *SHAPE),
                                    log=lambda s: None, latency_table=_table(tmp_path, timer))
    (round1,) = info["rounds"]
    assert round1["corrections"] >= 1 and round1["retimed_cells"] > 0
    first = round1["passes"][0]
    assert first["measured_ms"] > first["predicted_ms"] * 1.05  # the busy cells made the first plan too optimistic
    assert info["latency"]["measured_reduction"] >= 1.5 and info["latency"]["measured_ms"] == pytest.approx(
        FakeTimer.cost(model, SHAPE))


def test_a_measured_miss_is_a_one_line_error_with_the_numbers(tmp_path):
    cfg = ChannelPruneConfig(target="latency", latency_reduction=1.5, latency_runtime="pytorch")
    with pytest.raises(TorchslimError) as err:
        prune_channels_to_target(_net(), cfg, _data(), TrainConfig(epochs=0), example_inputs=torch.zeros(1, *SHAPE),
                                 log=lambda s: None, latency_table=_table(tmp_path, FakeTimer(slow_models=True)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("prune_channels: measured 1 ms (1.00x faster than the dense 1 ms) in pytorch, "
                              "1 thread(s), batch 1, misses latency_reduction 1.5 (target 0.6667 ms, predicted ")


def test_latency_configs_are_checked_and_the_mac_mode_is_untouched(tmp_path):
    from torchslim.recipe import validate_recipe

    assert ChannelPruneConfig().model_dump()["macs_reduction"] == 2.0 and ChannelPruneConfig().threads is None
    cfg = ChannelPruneConfig(target="latency", latency_ms=3.0)
    assert (cfg.latency_reduction, cfg.latency_runtime, cfg.threads, cfg.batch_size, cfg.latency_cost) == \
        (None, "onnxruntime", 1, 1, "loss")
    assert ChannelPruneConfig.model_validate(cfg.model_dump()) == cfg  # a resolved recipe validates again
    with pytest.raises(TorchslimError, match="target latency times the model between rounds"):
        prune_channels_(_net(), ChannelPruneConfig(target="latency"), torch.zeros(1, *SHAPE))
    table = _table(tmp_path, runtime="pytorch", threads=2)
    with pytest.raises(TorchslimError, match=r"the latency table times pytorch, 2 thread\(s\), batch 1; the config "
                                             r"asks for pytorch, 1 thread\(s\)"):
        prune_channels_to_target(_net(), ChannelPruneConfig(target="latency", latency_runtime="pytorch"), _data(),
                                 TrainConfig(epochs=0), example_inputs=torch.zeros(1, *SHAPE), latency_table=table)

    bad = {
        "latency_reduction: 1.0": r"stages\[0\]\.latency_reduction: .*greater than 1",
        "latency_ms: 0": r"stages\[0\]\.latency_ms: .*greater than 0",
        "latency_runtime: tvm": r"stages\[0\]\.latency_runtime: .*'onnxruntime' or 'pytorch'",
        "latency_cost: accuracy": r"stages\[0\]\.latency_cost: .*'loss' or 'importance'",
        "threads: 0": r"stages\[0\]\.threads: .*greater than or equal to 1",
        "macs_reduction: 2.0": r"`macs_reduction` is a target: macs setting, and target is 'latency'",
        "scope: uniform": r"scope 'uniform' is for target macs",
        "latency_ms: 2.0, latency_reduction: 2.0": r"give latency_reduction \(2.0\) or latency_ms \(2.0\), not both",
    }
    for fields, message in bad.items():
        stage = {"type": "prune_channels", "target": "latency", **yaml.safe_load("{" + fields + "}")}
        with pytest.raises(TorchslimError, match=message):
            validate_recipe({"teacher": {"model": "resnet8"}, "stages": [stage]})
    with pytest.raises(TorchslimError, match=r"`batch_size` is a target: latency setting, and target is 'macs'"):
        validate_recipe({"teacher": {"model": "resnet8"}, "stages": [{"type": "prune_channels", "batch_size": 64}]})


def test_the_record_shows_latency_and_its_plot():
    from torchslim.prune.structured import ChannelPruningRecord

    rec = ChannelPruningRecord(1000, 500, 2.0, 100, 50, {"conv": [16, 8]}, rounds=[
        {"target_ms": 1.0, "predicted_ms": 0.9, "measured_ms": 0.95, "corrections": 0, "macs": 500}],
        latency={"runtime": "onnxruntime", "threads": 1, "batch_size": 1, "latency_reduction": 2.0, "dense_ms": 2.0,
                 "predicted_ms": 0.9, "measured_ms": 0.95, "measured_reduction": 2.105,
                 "table": {"measured_cells": 12, "cached_cells": 3, "seconds": 1.5, "cache": "/c"},
                 "curves": {"conv": {"8": 0.5, "16": 0.9}}, "widths": {"conv": [16, 8]}})
    rows = dict(rec.summary())
    assert rows["latency"].startswith("2 ms → measured 0.95 ms (2.10× faster), predicted 0.9 ms; target 2× faster")
    assert rows["latency table"].startswith("12 cells timed in 1.5 s, 3 from the cache (/c)")
    assert rec.tables()[1][0][:4] == ["round", "target ms", "predicted ms", "measured ms"]
    (figure,) = rec.figures("pruned")
    assert figure.slug == "latency-widths" and figure.render()[:4] == b"\x89PNG"
    assert ChannelPruningRecord.from_json(rec.to_json()) == rec


@pytest.mark.slow
def test_stage_end_to_end_with_real_pytorch_timings(tmp_path, capsys, data_root):
    """The recipe stage on ResNet-8 and a few hundred MNIST rows, timed for real in PyTorch: predicted and measured
    latency land in the report (their values are this loaded machine's business, not the test's). 28×28 rather than
    8×8 digits: there the convolutions, not the per-op overhead, make the time, so 1.2× stays within reach even when
    a timing lands on a busy moment."""
    from torchslim.cli import main

    recipe = {"data": {"name": "mnist", "root": str(data_root), "limit_train": 300, "limit_test": 100},
              "student": {"model": "resnet8"},
              "stages": [{"type": "train", "train": {"epochs": 1, "lr": 0.003}},
                         {"type": "prune_channels", "target": "latency", "latency_reduction": 1.2,
                          "latency_runtime": "pytorch", "latency_seconds": 0.1, "latency_tolerance": 1.0,
                          "latency_cache": str(tmp_path / "cache"), "train": {"epochs": 1}}],
              "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    art = {a["name"]: a for a in json.loads((tmp_path / "run" / "report.json").read_text())["artifacts"]}
    lat = art["prune_channels"]["info"]["channel_pruning"]["latency"]
    assert lat["predicted_ms"] > 0 and lat["measured_ms"] > 0 and lat["dense_ms"] > 0
    assert lat["table"]["measured_cells"] > 0 and list(tmp_path.joinpath("cache").glob("*.json"))
    assert art["prune_channels"]["params"] < art["train"]["params"]
    assert (tmp_path / "run" / "prune_channels-latency-widths.png").is_file()
    assert "measured" in (tmp_path / "run" / "report.md").read_text()
