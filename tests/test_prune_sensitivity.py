"""Pruning sensitivity: per-layer curves, per-layer sparsities derived from them, the `scope: sensitivity` stage and
its plot in the report."""
import copy
import json

import pytest
import torch
import yaml

from torchslim.cli import main
from torchslim.data import load_dataset
from torchslim.errors import TorchslimError
from torchslim.models import create_model
from torchslim.prune import PruneConfig, masks_from_scores, prunable_layers, prune_
from torchslim.prune.sensitivity import (layer_sensitivity, plot_sensitivity_curves, round_sparsities,
                                         sparsities_from_sensitivity)
from torchslim.training import TrainConfig, fit


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits", val_size=600)  # > 2 batches of 256, so `batches` can be checked
    model = create_model("mlp", input_shape=data.input_shape, num_classes=10, widths=[32])
    fit(model, data.train, None, TrainConfig(epochs=3, lr=0.01), seed=0, log=lambda m: None, progress=False)
    return model.eval(), data


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_curves_have_one_point_per_sparsity_and_every_trial_starts_from_the_same_weights(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = layer_sensitivity(model, data, sparsities=(0.9, 0.5, 0.7), batches=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model leaves exactly as it came
    assert not model.training
    assert list(result["curves"]) == ["fc1", "fc2"] and result["samples"] == 512
    assert result["params"] == {"fc1": 64 * 32, "fc2": 32 * 10}
    x, y = data.val.tensors[0][:512], data.val.tensors[1][:512]
    assert result["dense_accuracy"] == _accuracy(model, x, y)
    for name, points in result["curves"].items():
        assert [s for s, _ in points] == [0.5, 0.7, 0.9]
        for s, acc in points:
            # The same trial by hand on a fresh copy: only this layer pruned, from the original weights. Any leak
            # from an earlier trial (another layer left pruned, a lower level kept) changes this accuracy.
            alone = copy.deepcopy(model)
            layer = alone.get_submodule(name)
            mask = masks_from_scores({name: layer}, {name: layer.weight.abs()}, s, "layerwise")[name]
            with torch.no_grad():
                layer.weight.mul_(mask)
            assert acc == _accuracy(alone, x, y), (name, s)
    assert result["curves"]["fc1"][-1][1] < result["dense_accuracy"]  # 90% of fc1 gone does hurt


def test_derived_sparsities_match_a_hand_computation_and_favour_the_robust_layer():
    curves = {"robust": [(0.5, 1.00), (0.9, 0.98)], "fragile": [(0.5, 0.90), (0.9, 0.50)]}
    sizes = {"robust": 100, "fragile": 100}
    # By hand: drops are robust (0,0)-(0.5,0)-(0.9,0.02), fragile (0,0)-(0.5,0.1)-(0.9,0.5). Reaching 0.6 overall
    # needs s_r + s_f = 1.2; robust saturates at 0.9 (t ≥ 0.02), so fragile gives 0.3 = 5t: t = 0.06.
    chosen = sparsities_from_sensitivity(curves, sizes, 0.6, dense_accuracy=1.0)
    assert chosen == pytest.approx({"robust": 0.9, "fragile": 0.3}, abs=1e-9)
    # Unequal sizes: the weighted overall sparsity is what reaches the target.
    sizes = {"robust": 300, "fragile": 100}
    chosen = sparsities_from_sensitivity(curves, sizes, 0.7, dense_accuracy=1.0)
    overall = (300 * chosen["robust"] + 100 * chosen["fragile"]) / 400
    assert overall == pytest.approx(0.7, abs=0.005) and chosen["robust"] > chosen["fragile"]


def test_flat_curves_jump_together_and_land_exactly_on_the_target():
    # Neither layer loses accuracy anywhere: at tolerance 0 both jump from 0 to 0.9. Each takes the same fraction.
    curves = {"a": [(0.5, 0.95), (0.9, 0.95)], "b": [(0.5, 0.95), (0.9, 0.95)]}
    chosen = sparsities_from_sensitivity(curves, {"a": 10, "b": 30}, 0.45, dense_accuracy=0.95)
    assert chosen == pytest.approx({"a": 0.45, "b": 0.45}, abs=1e-9)
    assert sparsities_from_sensitivity(curves, {"a": 10, "b": 30}, 0.0) == {"a": 0.0, "b": 0.0}


def test_a_noisy_point_does_not_let_a_layer_skip_past_a_worse_one():
    # a measured worse at 0.7 (drop 0.10) than at 0.9 (0.05): noise. The drop curve is the running maximum, so 0.9
    # costs 0.10 too, and the tolerance that reaches 0.85 overall is 0.10 (b saturates at 0.9 from t = 0.01; a
    # reaches 0.7 at t = 0.10 and jumps along its flat part to the 0.8 the target needs), not 0.05.
    from torchslim.prune.sensitivity import _allocate

    curves = {"a": [(0.5, 1.0), (0.7, 0.9), (0.9, 0.95)], "b": [(0.5, 0.99), (0.9, 0.99)]}
    chosen, tolerance = _allocate(curves, {"a": 100, "b": 100}, 0.85, 1.0)
    assert chosen == pytest.approx({"a": 0.8, "b": 0.9}, abs=1e-9)
    assert tolerance == pytest.approx(0.10, abs=1e-9)


def test_unreachable_target_names_the_best_reachable_sparsity():
    curves = {"a": [(0.5, 0.9), (0.9, 0.5)], "b": [(0.5, 0.9)]}
    with pytest.raises(TorchslimError, match=r"target sparsity 0.8 is unreachable.*at most 0.7000 overall"):
        sparsities_from_sensitivity(curves, {"a": 100, "b": 100}, 0.8)
    with pytest.raises(TorchslimError, match=r"no curve for \['c'\]"):
        sparsities_from_sensitivity(curves, {"a": 1, "b": 1, "c": 1}, 0.5)


def test_round_sparsities_follow_the_geometric_schedule_per_layer():
    targets = PruneConfig(sparsity=0.9, schedule="iterative", rounds=3).round_targets()
    per_round = [round_sparsities({"a": 0.96, "b": 0.5}, t, 0.9) for t in targets]
    assert [r["a"] for r in per_round] == pytest.approx([1 - 0.04 ** (k / 3) for k in (1, 2, 3)])
    assert per_round[-1] == pytest.approx({"a": 0.96, "b": 0.5})


def test_sensitivity_scope_needs_per_layer_levels_and_no_n_m_pattern():
    with pytest.raises(TorchslimError, match="scope 'sensitivity' needs one sparsity per layer"):
        prune_(torch.nn.Sequential(torch.nn.Linear(4, 4)), PruneConfig(scope="sensitivity"))
    with pytest.raises(ValueError, match="scope 'sensitivity' chooses a sparsity per layer"):
        PruneConfig(scope="sensitivity", pattern="2:4")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        PruneConfig(scope="sensitivity", sensitivity_sparsities=[0.5, 1.0])
    m = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    masks = prune_(m, PruneConfig(scope="sensitivity"), sparsity={"0": 0.3, "1": 0.8})
    assert masks.sparsity() == {"0": pytest.approx(0.3), "1": pytest.approx(0.8)}


def test_plot_is_written_atomically_as_a_png(tmp_path):
    path = plot_sensitivity_curves({"fc1": [(0.5, 0.9), (0.9, 0.7)]}, tmp_path / "s.png", dense_accuracy=0.92,
                                   chosen={"fc1": 0.6})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left behind


def test_digits_recipe_with_sensitivity_scope_prunes_per_layer_and_the_report_shows_the_plot(tmp_path):
    recipe = {"data": {"name": "digits"},
              "teacher": {"model": "mlp", "args": {"widths": [32]}, "train": {"epochs": 3, "lr": 0.01}},
              "stages": [{"type": "prune", "sparsity": 0.6, "scope": "sensitivity", "schedule": "iterative",
                          "rounds": 2, "sensitivity_sparsities": [0.5, 0.8, 0.95], "train": {"epochs": 1}}],
              "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]}}
    path, out = tmp_path / "s.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    art = json.loads((out / "report.json").read_text())["artifacts"][1]
    pruning = art["info"]["pruning"]
    sens, measured = pruning["sensitivity"], pruning["sparsity"]
    assert {len(points) for points in sens["curves"].values()} == {3}
    assert sens["expected_overall"] == pytest.approx(0.6, abs=0.005)
    assert pruning["overall_sparsity"] == pytest.approx(0.6, abs=0.005)
    for name, s in sens["sparsities"].items():  # every layer reached its own level, not the overall one
        assert measured[name] == pytest.approx(s, abs=1.5 / sens["params"][name])
    assert len(set(round(s, 2) for s in sens["sparsities"].values())) > 1
    png = out / "prune-sensitivity.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "![pruning sensitivity of prune](prune-sensitivity.png)" in md and "chosen sparsity %" in md
    assert 'alt="pruning sensitivity of prune"' in html and html.count("data:image/png;base64,") == 3
    # Resuming a finished run reloads the stage's info from progress.json (plain JSON) and redraws the same report.
    png.unlink()
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
