"""Pruning schedules: the AGP and lottery math, gradual pruning (targets, held masks, resume), lottery rounds (exact
rewinding, re-initialization control) and recipes with every schedule on digits."""
import copy
import json
import re

import pytest
import torch
import yaml

from torchslim.cli import main
from torchslim.data import load_dataset
from torchslim.errors import TorchslimError
from torchslim.models import create_model
from torchslim.prune import PruneConfig, attached_masks, prunable_layers
from torchslim.prune.schedules import (GradualPruner, agp_sparsity, agp_update_steps, gradual_prune, iterative_prune,
                                       iterative_targets, lottery_rates, lottery_sparsity, lottery_ticket, ramp_steps,
                                       prune_with_schedule, steps_per_epoch)
from torchslim.recipe import validate_recipe
from torchslim.training import TrainConfig, fit

QUIET = {"log": lambda s: None}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _mlp(seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 8, 8), widths=[32])


# ---------------------------------------------------------------------------------------------------- schedule math
def test_agp_starts_at_initial_ends_at_final_rises_monotonically_and_follows_the_cube():
    s_i, s_f, t0, span = 0.1, 0.9, 20, 80
    assert agp_sparsity(t0, s_f, s_i, start=t0, span=span) == s_i
    assert agp_sparsity(0, s_f, s_i, start=t0, span=span) == s_i  # before t_0
    assert agp_sparsity(t0 + span, s_f, s_i, start=t0, span=span) == pytest.approx(s_f)
    assert agp_sparsity(10_000, s_f, s_i, start=t0, span=span) == pytest.approx(s_f)
    values = [agp_sparsity(t, s_f, s_i, start=t0, span=span) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # At a quarter of the ramp: s_f + (s_i − s_f)(1 − 1/4)³.
    assert agp_sparsity(t0 + 20, s_f, s_i, start=t0, span=span) == pytest.approx(0.9 - 0.8 * 0.75 ** 3)


def test_update_steps_ramp_and_steps_per_epoch():
    assert agp_update_steps(10, 4) == [0, 4, 8, 10]
    assert agp_update_steps(8, 4) == [0, 4, 8]
    assert agp_update_steps(3, 100) == [0, 3]  # Δt longer than the ramp: start and end only
    assert ramp_steps(100, 0.75) == 75 and ramp_steps(3, 0.1) == 1 and ramp_steps(10, 1.0) == 10
    from torchslim.training.loop import batch_indices

    for n, world in [(1293, 1), (130, 2), (129, 2), (130, 4), (128, 1)]:  # 129 / 2: a last batch of 1 row is dropped
        steps = len(list(batch_indices(n, 64, torch.Generator().manual_seed(0), 0, world)))
        assert steps_per_epoch(n, 64, world) == steps, (n, world)


def test_iterative_and_lottery_targets():
    t = iterative_targets(0.9, 3)
    assert t[-1] == pytest.approx(0.9) and (1 - t[1]) / (1 - t[0]) == pytest.approx(1 - t[0])
    assert lottery_sparsity(0.2, 0) == 0 and lottery_sparsity(0.2, 3) == pytest.approx(1 - 0.8 ** 3)
    assert lottery_rates(["a", "b", "c"], 0.2, 0.1, "c") == {"a": 0.2, "b": 0.2, "c": 0.1}


# ------------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "gradual", "lottery"])
def test_each_schedule_fills_its_defaults_and_its_dump_validates_again(schedule):
    cfg = PruneConfig(schedule=schedule)
    assert PruneConfig(**cfg.model_dump()) == cfg  # a resolved recipe (every default written out) loads back
    used = {name for name, value in cfg.model_dump().items() if value is not None}
    expected = {"oneshot": {"sparsity"}, "iterative": {"sparsity", "rounds"},
                "gradual": {"sparsity", "initial_sparsity", "update_every", "ramp"},
                "lottery": {"rounds", "lottery_rate", "lottery_output_rate", "rewind_epoch", "reinit"}}[schedule]
    schedule_fields = {"sparsity", "rounds", "initial_sparsity", "update_every", "ramp", "lottery_rate",
                       "lottery_output_rate", "rewind_epoch", "reinit"}
    assert used & schedule_fields == expected
    if schedule == "lottery":
        assert (cfg.lottery_output_rate, cfg.scope) == (0.1, "layerwise")  # Frankle & Carbin's LeNet setting


@pytest.mark.parametrize("fields,message", [
    ({"ramp": 0.5}, "`ramp` is a gradual setting, and schedule is 'oneshot'; remove it or set schedule: gradual"),
    ({"schedule": "iterative", "reinit": True}, "`reinit` is a lottery setting, and schedule is 'iterative'"),
    ({"schedule": "gradual", "rounds": 3}, "`rounds` is a iterative/lottery setting, and schedule is 'gradual'"),
    ({"schedule": "lottery", "sparsity": 0.9}, "schedule 'lottery' takes no `sparsity`"),
    ({"schedule": "gradual", "initial_sparsity": 0.6, "sparsity": 0.5}, "gradual: initial_sparsity 0.6 is above the final sparsity 0.5; the ramp only rises"),
    ({"schedule": "lottery", "pattern": "2:4"}, "schedule 'lottery' prunes unstructured weights"),
])
def test_fields_of_another_schedule_are_one_line_errors(fields, message):
    with pytest.raises(TorchslimError, match="^" + re.escape(f"recipe: stages[0]: {message}")):
        validate_recipe({"teacher": {"model": "mlp"}, "stages": [{"type": "prune", **fields}]})


def test_gradual_and_lottery_stages_must_train():
    for schedule in ("gradual", "lottery"):
        with pytest.raises(TorchslimError, match=f"schedule '{schedule}' prunes while it trains: set train.epochs"):
            validate_recipe({"teacher": {"model": "mlp"}, "stages": [{"type": "prune", "schedule": schedule}]})
    with pytest.raises(TorchslimError, match="rewind_epoch 3 is after the last epoch of a round"):
        validate_recipe({"teacher": {"model": "mlp"}, "stages": [
            {"type": "prune", "schedule": "lottery", "rewind_epoch": 3, "train": {"epochs": 2}}]})


# --------------------------------------------------------------------------------------------------------- gradual
def test_gradual_pruner_follows_the_agp_targets_then_holds(digits):
    model = _mlp()
    cfg = PruneConfig(schedule="gradual", sparsity=0.8, initial_sparsity=0.2, update_every=3, ramp=0.5)
    pruner = GradualPruner(model, cfg, total_steps=20, data=digits)
    assert pruner.ramp_end == 10 and pruner.updates == [0, 3, 6, 9, 10]
    pruner.start()
    seen = [pruner.masks.overall()]
    for _ in range(20):
        with torch.no_grad():  # stand-in for an optimizer step: weights move, zeros included
            for layer in pruner.masks.layers.values():
                layer.weight.add_(0.01)
        pruner()
        seen.append(pruner.masks.overall())
    tol = 1 / sum(m.weight.numel() for m in pruner.masks.layers.values())
    for t in range(21):
        last_update = max(u for u in pruner.updates if u <= t)
        assert seen[t] == pytest.approx(pruner.target(last_update), abs=tol), t
    assert seen[-1] == pytest.approx(0.8, abs=tol) and int(pruner.step) == 20


def test_gradual_stage_ends_at_the_target_with_its_masks_held(digits):
    model = _mlp()
    cfg = PruneConfig(schedule="gradual", sparsity=0.9, update_every=5, ramp=0.5)
    masks, fitted = gradual_prune(model, cfg, digits, TrainConfig(epochs=2, lr=3e-3), **QUIET)
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert masks.overall() == pytest.approx(0.9, abs=1 / total)
    for name, layer in layers.items():
        assert torch.equal(layer.weight == 0, masks.masks[name] == 0)
    assert fitted.history[-1]["val_accuracy"] > 0.5


def test_gradual_keep_best_never_returns_a_less_sparse_epoch(digits):
    # ramp 1.0: only the last epoch ends at the target; an earlier, denser epoch often validates better.
    model = _mlp()
    cfg = PruneConfig(schedule="gradual", sparsity=0.95, update_every=2, ramp=1.0)
    masks, fitted = gradual_prune(model, cfg, digits, TrainConfig(epochs=3, lr=3e-3, keep="best"), **QUIET)
    assert fitted.best_epoch == 3
    assert masks.overall() == pytest.approx(0.95, abs=1e-3)


class _Killed(Exception):
    pass


def test_gradual_resume_after_an_interruption_gives_the_same_weights_and_masks(digits, tmp_path):
    cfg = PruneConfig(schedule="gradual", sparsity=0.8, update_every=4, ramp=0.9)
    train = TrainConfig(epochs=3, lr=3e-3, keep="last")
    full = _mlp()
    full_masks, _ = gradual_prune(full, cfg, digits, train, seed=5, checkpoint=tmp_path / "full.pt", **QUIET)

    def die_in_epoch_2(msg):
        if "epoch   2/3" in msg:  # logged before the epoch's checkpoint is written: the file holds epoch 1
            raise _Killed

    part = _mlp()
    with pytest.raises(_Killed):
        gradual_prune(part, cfg, digits, train, seed=5, checkpoint=tmp_path / "part.pt", log=die_in_epoch_2)
    assert torch.load(tmp_path / "part.pt", weights_only=True)["extra_state"]["@gradual_step"] == 21
    resumed = _mlp()
    lines = []
    resumed_masks, fitted = gradual_prune(resumed, cfg, digits, train, seed=5, checkpoint=tmp_path / "part.pt",
                                          log=lines.append)
    assert "resumed from" in lines[0] and "after epoch 1" in lines[0]
    assert [h["epoch"] for h in fitted.history] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    for name in full_masks.masks:
        assert torch.equal(full_masks.masks[name], resumed_masks.masks[name])


# --------------------------------------------------------------------------------------------------------- lottery
def _lottery(digits, **kw):
    model = _mlp(seed=1)
    theta0 = copy.deepcopy(model.state_dict())
    cfg = PruneConfig(schedule="lottery", rounds=2, **kw)
    result = lottery_ticket(model, cfg, digits, TrainConfig(epochs=2, lr=3e-3, schedule="constant"), seed=3, **QUIET)
    return model, theta0, result


def test_lottery_rewinds_survivors_exactly_and_keeps_pruned_weights_zero(digits):
    model, theta0, result = _lottery(digits)
    for name, mask in result.masks.masks.items():
        keep = mask.bool()
        ticket = result.ticket[f"{name}.weight"]
        assert torch.equal(ticket[keep], theta0[f"{name}.weight"][keep])  # survivors back at θ_0, bit for bit
        assert (ticket[~keep] == 0).all() and (model.get_submodule(name).weight[~keep] == 0).all()
        assert torch.equal(result.ticket[f"{name}.bias"], theta0[f"{name}.bias"])
    # 20% of each layer's remaining weights per round, 10% for the output layer (fc2): kept 0.8² and 0.9².
    kept = result.rounds[-1]["kept"]
    assert kept["fc1"] == pytest.approx(0.64, abs=1e-3) and kept["fc2"] == pytest.approx(0.81, abs=1e-2)
    assert [r["round"] for r in result.rounds] == [0, 1, 2] and result.rounds[0]["sparsity"] == 0


def test_lottery_rewind_epoch_is_the_first_rounds_weights_after_that_epoch(digits):
    _, _, result = _lottery(digits, rewind_epoch=1)
    model = _mlp(seed=1)
    fit(model, digits.train, digits.val, TrainConfig(epochs=1, lr=3e-3, schedule="constant"), seed=3, **QUIET)
    for k, v in model.state_dict().items():
        assert torch.equal(result.rewind_state[k], v), k


def test_lottery_reinit_keeps_the_masks_and_draws_new_weights(digits):
    _, theta0, rewound = _lottery(digits)
    _, _, reinit = _lottery(digits, reinit=True)
    for name, mask in rewound.masks.masks.items():
        assert torch.equal(mask, reinit.masks.masks[name])  # the same masks: rounds before the last are identical
        keep = mask.bool()
        w = reinit.ticket[f"{name}.weight"]
        assert not torch.equal(w[keep], theta0[f"{name}.weight"][keep]) and (w[~keep] == 0).all()


def test_lottery_resume_inside_a_later_round_replays_the_finished_ones(digits, tmp_path):
    cfg = PruneConfig(schedule="lottery", rounds=2, rewind_epoch=1)
    train = TrainConfig(epochs=2, lr=3e-3)

    def run(log, name):
        model = _mlp(seed=1)
        result = lottery_ticket(model, cfg, digits, train, seed=3, log=log,
                                checkpoint=lambda k: tmp_path / f"{name}-round-{k}.pt")
        return model, result

    full, _ = run(lambda s: None, "full")

    def die_in_round_2(msg):
        if msg.startswith("[lottery round 2] epoch   2/2"):
            raise _Killed

    with pytest.raises(_Killed):
        run(die_in_round_2, "part")
    lines = []
    resumed, result = run(lines.append, "part")
    assert sum("resumed from" in line for line in lines) == 3  # rounds 0 and 1 replayed, round 2 continued
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------------------ oneshot and iterative
def test_iterative_prune_reaches_each_round_target_and_fine_tuning_keeps_the_zeros(digits, tmp_path):
    model = _mlp()
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    cfg = PruneConfig(sparsity=0.8, schedule="iterative", rounds=2)
    seen = []

    def checkpoint(k):
        seen.append(k)
        return tmp_path / f"round-{k}.pt"

    info = iterative_prune(model, cfg, digits, TrainConfig(epochs=1, lr=3e-3), seed=4, checkpoint=checkpoint,
                           **QUIET)
    targets = iterative_targets(0.8, 2)
    assert [r["target"] for r in info["rounds"]] == targets and seen == [1, 2]
    for r in info["rounds"]:  # each round's level is measured after its fine-tuning, masks held
        assert r["sparsity"] == pytest.approx(r["target"], abs=1 / total) and len(r["history"]) == 1
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    assert zeros / total == pytest.approx(0.8, abs=1 / total) == info["overall_sparsity"]
    assert info["sparsity"] == {n: pytest.approx((m.weight == 0).float().mean().item()) for n, m in layers.items()}
    assert info["prune"] == cfg.model_dump() and (tmp_path / "round-2.pt").is_file()
    assert attached_masks(model) is not None and attached_masks(model).masks.keys() == layers.keys()
    json.dumps(info)  # a report records it as is

    # The same as the loop it replaced: prune_, then fit(seed + k) holding the masks, round after round.
    from torchslim.prune import prune_

    by_hand = _mlp()
    for k, target in enumerate(targets, start=1):
        masks = prune_(by_hand, cfg, sparsity=target, data=digits)
        fit(by_hand, digits.train, digits.val, TrainConfig(epochs=1, lr=3e-3), seed=4 + k, after_step=masks.apply,
            **QUIET)
    for (k, a), b in zip(model.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), k


def test_iterative_prune_records_the_sensitivity_plan_and_the_n_m_storage(digits):
    model = _mlp()
    cfg = PruneConfig(sparsity=0.6, scope="sensitivity", sensitivity_sparsities=[0.3, 0.6, 0.9])
    info = iterative_prune(model, cfg, digits, TrainConfig(epochs=0), **QUIET)
    plan = info["sensitivity"]
    assert plan["target"] == 0.6 and info["sparsity"] == pytest.approx(plan["sparsities"], abs=1e-2)
    assert info["overall_sparsity"] == pytest.approx(0.6, abs=1e-2) and "history" not in info["rounds"][0]

    nm = iterative_prune(_mlp(), PruneConfig(pattern="2:4"), digits, TrainConfig(epochs=0), **QUIET)
    assert nm["overall_sparsity"] == 0.5 and nm["nm_storage"]["pattern"] == "2:4"
    assert nm["nm_storage"]["packed_bytes"] < nm["nm_storage"]["dense_bytes"]
    json.dumps(info), json.dumps(nm)


def test_iterative_prune_refuses_the_schedules_it_does_not_run(digits):
    with pytest.raises(TorchslimError, match="iterative_prune runs the schedules oneshot and iterative, not 'gradual'"):
        iterative_prune(_mlp(), PruneConfig(schedule="gradual"), digits, TrainConfig(epochs=1), **QUIET)


# ------------------------------------------------------------------------------------------------------ dispatcher
KEYS = {
    "oneshot": {"sparsity", "overall_sparsity", "rounds", "prune"},
    "iterative": {"sparsity", "overall_sparsity", "rounds", "prune"},
    "gradual": {"sparsity", "overall_sparsity", "prune", "history", "best_epoch", "best_val_accuracy"},
    "lottery": {"sparsity", "overall_sparsity", "init", "rounds", "prune", "history", "best_epoch",
                "best_val_accuracy"},
}


@pytest.mark.parametrize("schedule", list(KEYS))
def test_prune_with_schedule_runs_the_named_schedule_and_records_its_keys(digits, schedule):
    fields = {"oneshot": {"sparsity": 0.5}, "iterative": {"sparsity": 0.5, "rounds": 2},
              "gradual": {"sparsity": 0.5, "update_every": 5}, "lottery": {"rounds": 1}}[schedule]

    class Stage(PruneConfig):  # a recipe stage is a PruneConfig with fields of its own; only the config is recorded
        label: str = "a stage"

    cfg = Stage(schedule=schedule, **fields)
    model = _mlp()
    incoming = copy.deepcopy(model.state_dict())
    made = []

    def fresh_init(seed):
        made.append(seed)
        return _mlp(seed=seed), f"mlp, seed {seed}"

    pruned, info = prune_with_schedule(model, cfg, digits, TrainConfig(epochs=1, lr=3e-3), seed=7,
                                       fresh_init=fresh_init, **QUIET)
    assert set(info) == KEYS[schedule]
    assert info["prune"] == PruneConfig(schedule=schedule, **fields).model_dump()
    assert attached_masks(pruned) is not None  # later training keeps the zeros
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(pruned).values())
    assert info["overall_sparsity"] == zeros / sum(m.weight.numel() for m in prunable_layers(pruned).values())
    if schedule == "lottery":  # retrained from fresh_init(seed); the incoming model is left alone
        assert pruned is not model and made == [7] and info["init"] == "mlp, seed 7"
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in incoming.items())
    else:
        assert pruned is model and info["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    json.dumps(info)


# --------------------------------------------------------------------------------------------------------- recipes
def test_a_recipe_with_every_schedule_validates_and_runs(tmp_path):
    stages = [
        {"type": "prune", "name": "apoz", "criterion": "apoz", "exclude": ["fc2"], "sparsity": 0.3,
         "train": {"epochs": 1}},
        {"type": "prune", "name": "oneshot", "sparsity": 0.5, "criterion": "han", "train": {"epochs": 1}},
        {"type": "prune", "name": "iterative", "schedule": "iterative", "sparsity": 0.7, "rounds": 2,
         "train": {"epochs": 1}},
        {"type": "prune", "name": "gradual", "schedule": "gradual", "sparsity": 0.8, "update_every": 5,
         "criterion": "taylor", "train": {"epochs": 2}},
        {"type": "prune", "name": "gradual-sensitivity", "schedule": "gradual", "scope": "sensitivity",
         "sparsity": 0.85, "update_every": 10, "sensitivity_sparsities": [0.5, 0.8, 0.9, 0.95], "train": {"epochs": 1}},
        {"type": "prune", "name": "lottery", "schedule": "lottery", "rounds": 2,
         "train": {"epochs": 1, "lr": 0.003}},
    ]
    recipe = {"data": {"name": "digits"}, "teacher": {"model": "mlp", "args": {"widths": [32]},
                                                       "train": {"epochs": 2, "lr": 0.003}},
              "stages": stages, "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    art = {a["name"]: a for a in json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"]}
    pruning = {name: a["info"]["pruning"] for name, a in art.items() if name != "teacher"}
    sparsity = {name: pruning[name]["overall_sparsity"] for name in ("oneshot", "iterative", "gradual")}
    assert sparsity == pytest.approx({"oneshot": 0.5, "iterative": 0.7, "gradual": 0.8}, abs=1e-3)
    plan = pruning["gradual-sensitivity"]["sensitivity"]["sparsities"]  # each layer ends at its own level
    assert pruning["gradual-sensitivity"]["sparsity"] == pytest.approx(plan, abs=1e-3)
    lottery = pruning["lottery"]
    assert "mlp factory" in lottery["init"] and len(lottery["rounds"]) == 3
    assert art["lottery"]["info"]["training"]["history"] == lottery["rounds"][-1]["history"]  # the last training
    # fc1 (2048 weights) keeps 0.8², the output layer fc2 (320) 0.9².
    assert lottery["overall_sparsity"] == pytest.approx(1 - (2048 * 0.8 ** 2 + 320 * 0.9 ** 2) / 2368, abs=1e-3)
    assert pruning["apoz"]["overall_sparsity"] == pytest.approx(0.3, abs=1e-3)  # of fc1, the layer it prunes
    fc1 = pruning["apoz"]["sparsity"]
    assert list(fc1) == ["fc1"]
    # The resolved recipe written next to the run loads back (no field of another schedule is filled in).
    assert main(["validate", str(tmp_path / "o" / "recipe.yaml")]) == 0
