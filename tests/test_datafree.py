"""Data-free distillation: loss terms against hand computations, every method on a tiny problem, the guard that no
training image reaches the student, the recipe stage, and resume."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from torchslim.cli import main
from torchslim.data import load_dataset
from torchslim.distillation.datafree import (BNStatistics, DAFLConfig, DataFreeConfig, DeepInversionConfig,
                                             FewDataVAEConfig, check_teacher, dafl_losses, distill_data_free,
                                             few_data_indices, random_mixup, random_shift,
                                             total_variation,
                                             vae_losses)
from torchslim.errors import TorchslimError
from torchslim.models import MLP, create_model
from torchslim.training import TrainConfig, fit

SHAPE = (1, 8, 8)
QUIET = {"log": lambda m: None}
# Small enough that each method runs in well under a second on one thread.
TINY = DataFreeConfig(iterations=4, dafl=DAFLConfig(latent_dim=8, generator_width=8, student_steps=2, replay_size=32),
                      deepinversion=DeepInversionConfig(transfer_size=48, batch_size=24, iterations=5),
                      vae=FewDataVAEConfig(few_data=40, transfer_size=96, epochs=3, hidden=32, latent_dim=4))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def bn_teacher(digits):
    """resnet8 at a quarter width (BatchNorm everywhere), trained for one epoch: a teacher every method accepts."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t = create_model("resnet8", input_shape=SHAPE, width=0.25)
    fit(t, digits.train, None, TrainConfig(epochs=1, lr=3e-3), **QUIET)
    return t.eval()


def _student():
    torch.manual_seed(1)
    return create_model("mlp", input_shape=SHAPE, widths=[16])


# ----------------------------------------------------------------------------------------- hand computations
def test_dafl_losses_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits, feats = torch.randn(5, 3, generator=g) * 2, torch.randn(5, 4, generator=g)
    rows = logits.tolist()
    probs = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in rows]
    onehot = sum(-math.log(p[max(range(3), key=lambda k: r[k])]) for p, r in zip(probs, rows)) / 5
    mean_p = [sum(p[k] for p in probs) / 5 for k in range(3)]
    neg_entropy = sum(q * math.log(q) for q in mean_p)
    activation = -sum(abs(v) for r in feats.tolist() for v in r) / 20
    got = dafl_losses(logits.double(), feats.double())
    assert got["onehot"].item() == pytest.approx(onehot, rel=1e-9)
    assert got["entropy"].item() == pytest.approx(neg_entropy, rel=1e-9)
    assert got["activation"].item() == pytest.approx(activation, rel=1e-9)
    # A batch whose classes are used equally often reaches the minimum −ln(classes).
    balanced = torch.eye(3).repeat(2, 1) * 50
    assert dafl_losses(balanced, feats)["entropy"].item() == pytest.approx(-math.log(3), abs=1e-6)


def test_bn_statistics_loss_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3),
                          nn.BatchNorm1d(3)).eval()
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 1, 2, 2).double()
    model.double()

    def distance(values_per_channel, bn):  # values_per_channel: lists of floats, one list per channel
        means = [sum(v) / len(v) for v in values_per_channel]
        varis = [sum((a - m) ** 2 for a in v) / len(v) for v, m in zip(values_per_channel, means)]
        rm, rv = bn.running_mean.tolist(), bn.running_var.tolist()
        return math.sqrt(sum((m - r) ** 2 for m, r in zip(means, rm))) + \
            math.sqrt(sum((v - r) ** 2 for v, r in zip(varis, rv)))

    with torch.no_grad():
        conv_out = model[0](x)  # N×2×2×2: BN2d statistics pool batch and space
        fc_in = model[3](model[2](model[1](conv_out)))  # N×3: BN1d statistics pool the batch
    expected = distance([conv_out[:, c].flatten().tolist() for c in range(2)], model[1]) + \
        distance([fc_in[:, c].tolist() for c in range(3)], model[4])
    with BNStatistics(model) as stats:
        model(x)
        assert stats.loss().item() == pytest.approx(expected, rel=1e-9)
        assert stats.terms == []  # cleared for the next forward


def test_image_priors_and_vae_terms_match_hand_computation():
    x = torch.tensor([[[[1.0, 3.0, 0.0], [2.0, 2.0, 5.0]]]])  # 1×1×2×3
    vertical = ((2 - 1) ** 2 + (2 - 3) ** 2 + (5 - 0) ** 2) / 3
    horizontal = ((3 - 1) ** 2 + (0 - 3) ** 2 + (2 - 2) ** 2 + (5 - 2) ** 2) / 4
    assert total_variation(x).item() == pytest.approx(vertical + horizontal)
    recon, mu, logvar = torch.zeros_like(x), torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    terms = vae_losses(x, recon, mu, logvar)
    assert terms["recon"].item() == pytest.approx(0.5 * (1 + 9 + 0 + 4 + 4 + 25))
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (σ² + μ² − 1 − ln σ²)
    assert terms["kl"].item() == pytest.approx(0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4))))


# ----------------------------------------------------------------------------------------------- each method runs
@pytest.mark.parametrize("method", ["dafl", "deepinversion", "vae", "noise"])
def test_each_method_trains_the_student_and_leaves_the_teacher_alone(method, digits, bn_teacher):
    student, teacher_before = _student(), {k: v.clone() for k, v in bn_teacher.state_dict().items()}
    before = [p.detach().clone() for p in student.parameters()]
    few = digits.train.tensors[0][:40] if method == "vae" else None
    info = distill_data_free(student, bn_teacher, TINY.model_copy(update={"method": method}),
                             TrainConfig(epochs=2, batch_size=16, lr=1e-2), input_shape=SHAPE, num_classes=10,
                             val=digits.val, few_data=few, seed=0, **QUIET)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    # The teacher is frozen in eval mode: a generator or synthesis that moved its BN running statistics would
    # corrupt the very statistics DeepInversion inverts.
    assert all(torch.equal(v, bn_teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    assert all(math.isfinite(h["loss_kd"]) and 0 <= h["val_accuracy"] <= 1 for h in info["history"])
    if method == "dafl":
        assert {"loss_onehot", "loss_entropy", "loss_activation", "loss_generator"} <= info["history"][0].keys()
        assert info["feature_layer"] == "input of fc"  # resnet's pooled features, the input of its last Linear
    if method in ("deepinversion", "vae"):
        assert info["transfer_set"]["size"] == (48 if method == "deepinversion" else 96)
        assert len(info["synthesis"]) == (2 if method == "deepinversion" else 3)  # per batch / per VAE epoch


def test_deepinversion_synthesis_fits_its_targets(bn_teacher):
    """More steps must lower the BN-statistics distance and make the teacher agree with the sampled targets."""
    from torchslim.distillation.datafree import synthesize_deepinversion

    cfg = DeepInversionConfig(transfer_size=40, batch_size=40, iterations=60, lr=0.25, bn_weight=0.3, tv_weight=0.5,
                              jitter=0)
    x, records = synthesize_deepinversion(bn_teacher, cfg, SHAPE, 10, torch.Generator().manual_seed(0), **QUIET)
    short, _ = synthesize_deepinversion(bn_teacher, cfg.model_copy(update={"iterations": 2}), SHAPE, 10,
                                        torch.Generator().manual_seed(0), **QUIET)
    assert x.shape == (40, *SHAPE) and records[0]["target_accuracy"] >= 0.8
    with BNStatistics(bn_teacher) as stats, torch.no_grad():
        bn_teacher(x)
        long_bn = stats.loss().item()
        bn_teacher(short)
        assert long_bn < 0.5 * stats.loss().item()


def test_dafl_extra_student_steps_come_from_the_replay_buffer(bn_teacher):
    calls = []
    student = _student()
    student.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].detach().clone()) if m.training else None)
    cfg = TINY.model_copy(update={"method": "dafl", "dafl": TINY.dafl.model_copy(
        update={"student_steps": 3, "replay_size": 24})})
    info = distill_data_free(student, bn_teacher, cfg, TrainConfig(epochs=2, batch_size=8), input_shape=SHAPE,
                             num_classes=10, **QUIET)
    assert len(calls) == 2 * 4 * 3 and len(info["history"]) == 2  # epochs × iterations × student steps
    fresh = [calls[i] for i in range(0, len(calls), 3)]  # each iteration's first step: the new samples
    kept = {r for x in fresh[-3:] for r in _rows(x)}  # a buffer of 24 holds the last three batches of 8
    assert all(_rows(x) <= kept for x in calls[-2:])
    with pytest.raises(ValueError, match="student_steps > 1 draws the extra batches from a replay buffer"):
        DAFLConfig(student_steps=2)


def test_random_shift_translates_each_image_and_repeats_the_edges():
    x = torch.arange(2 * 2 * 5 * 6, dtype=torch.float32).view(2, 2, 5, 6)
    out = random_shift(x, 2, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws: all dy first, then all dx
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist(), torch.randint(0, 5, (2,), generator=g).tolist()
    for i in range(2):
        for c in range(2):
            for r in range(5):
                for col in range(6):
                    src_r, src_c = min(max(r + dy[i] - 2, 0), 4), min(max(col + dx[i] - 2, 0), 5)
                    assert out[i, c, r, col] == x[i, c, src_r, src_c]
    offsets = set()
    g = torch.Generator().manual_seed(0)
    one = torch.zeros(400, 1, 7, 7)
    one[:, 0, 3, 3] = 1
    for row in random_shift(one, 1, g):
        (r, c), = row[0].nonzero().tolist()
        offsets.add((r - 3, c - 3))
    assert offsets == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}


def test_dafl_adversarial_term_enters_the_generator_loss(bn_teacher):
    cfg = TINY.model_copy(update={"method": "dafl", "dafl": TINY.dafl.model_copy(update={"adversarial_weight": 0.5})})
    info = distill_data_free(_student(), bn_teacher, cfg, TrainConfig(epochs=1, batch_size=8), input_shape=SHAPE,
                             num_classes=10, **QUIET)
    h = info["history"][0]
    assert h["loss_adversarial"] < 0  # −mean |student − teacher logits|
    expected = h["loss_onehot"] + 5 * h["loss_entropy"] + 0.1 * h["loss_activation"] + 0.5 * h["loss_adversarial"]
    assert h["loss_generator"] == pytest.approx(expected, rel=1e-5)
    plain = distill_data_free(_student(), bn_teacher, TINY.model_copy(update={"method": "dafl"}),
                              TrainConfig(epochs=1, batch_size=8), input_shape=SHAPE, num_classes=10, **QUIET)
    assert "loss_adversarial" not in plain["history"][0]


@pytest.mark.parametrize("setting", [{"student_shift": 1}, {"student_mixup": 1.0}], ids=["shift", "mixup"])
def test_dafl_teacher_labels_the_transformed_student_inputs(setting, bn_teacher):
    """The student must be fitted to the teacher's logits of the very image it sees (shifted or mixed), not of the
    generated one it came from."""
    seen_by_student, seen_by_teacher = [], []
    student = _student()
    student.register_forward_pre_hook(lambda m, i: seen_by_student.append(i[0].detach().clone()) if m.training else None)
    hook = bn_teacher.register_forward_pre_hook(lambda m, i: seen_by_teacher.append(i[0].detach().clone()))
    cfg = TINY.model_copy(update={"method": "dafl", "dafl": TINY.dafl.model_copy(update=setting)})
    try:
        distill_data_free(student, bn_teacher, cfg, TrainConfig(epochs=1, batch_size=8), input_shape=SHAPE,
                          num_classes=10, **QUIET)
    finally:
        hook.remove()
    assert len(seen_by_student) == 4 * 2 and len(seen_by_teacher) == 4 * 3
    generated = seen_by_teacher[::3]  # per iteration: the generator's batch, then one relabelling per student step
    assert not any(torch.equal(s, g) for s in seen_by_student for g in generated)
    assert all(any(torch.equal(s, t) for t in seen_by_teacher) for s in seen_by_student)


def test_random_mixup_mixes_the_chosen_rows_with_another_row():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    assert torch.equal(random_mixup(x, 0.0, torch.Generator().manual_seed(0)), x)
    out = random_mixup(x, 1.0, torch.Generator().manual_seed(0))
    # Replay the draws: every row is λ·x_i + (1 − λ)·x_j with the seeded permutation and λ.
    g = torch.Generator().manual_seed(0)
    torch.rand(8, generator=g)
    partner, lam = torch.randperm(8, generator=g), torch.rand(8, generator=g)
    expected = lam * torch.arange(8.0) + (1 - lam) * torch.arange(8.0)[partner]
    assert torch.allclose(out[:, 0, 0, 0], expected) and torch.equal(out[:, :, :1, :1].expand_as(out), out)
    half = random_mixup(x, 0.5, torch.Generator().manual_seed(1))
    changed = (half != x).flatten(1).any(1)
    assert 0 < changed.sum() < 8  # some rows mixed, the rest untouched


def test_dafl_stops_when_the_generator_collapses(bn_teacher, monkeypatch, digits):
    """A generator whose tanh saturates everywhere emits all-zero batches (after its final BN) and never recovers:
    the run must stop, say so, and keep the student it had, not distill on zeros for the remaining epochs."""
    from torchslim.distillation import datafree

    class Saturating(datafree.DAFLGenerator):
        def forward(self, z):
            x = super().forward(z)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls <= 6:  # the four iterations of epoch 1 and two of epoch 2
                return x
            # Saturated: every tanh output is 1, which the final BN maps to 0 (`x * 0` keeps a graph to backpropagate).
            return x * 0 + self.bn3(torch.ones_like(x))

    monkeypatch.setattr(datafree, "DAFLGenerator", Saturating)
    logs, student = [], _student()
    cfg = TINY.model_copy(update={"method": "dafl"})
    info = distill_data_free(student, bn_teacher, cfg, TrainConfig(epochs=5, batch_size=8), input_shape=SHAPE,
                             num_classes=10, val=digits.val, log=logs.append)
    assert info["generator_collapsed"] == {"epoch": 2, "step": 3}
    assert [h["epoch"] for h in info["history"]] == [1] and info["best_epoch"] == 1
    assert any("the generator collapsed at epoch 2, step 3" in m for m in logs)


def test_lenet5_classic_batchnorm_variant_is_a_deepinversion_teacher():
    bn = create_model("lenet5-classic", input_shape=(1, 32, 32), batchnorm=True)
    assert [n for n, _ in bn.named_children()] == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2",
                                                   "conv3", "bn3", "relu3", "flatten", "fc1", "bn4", "relu4", "fc2"]
    # 61,706 plain parameters + a weight and a bias per BN channel: 2·(6 + 16 + 120 + 84) = 452.
    assert sum(p.numel() for p in bn.parameters()) == 61_706 + 452
    check_teacher("deepinversion", bn, "lenet5-classic")
    plain = create_model("lenet5-classic", input_shape=(1, 32, 32))
    assert "bn1" not in dict(plain.named_children()) and sum(p.numel() for p in plain.parameters()) == 61_706


def test_methods_reject_what_they_cannot_use(digits):
    mlp = create_model("mlp", input_shape=SHAPE, widths=[8])
    with pytest.raises(TorchslimError, match=r"method 'deepinversion' inverts BatchNorm statistics, but teacher "
                                             r"'mlp' has no BatchNorm layer; use a teacher with BatchNorm"):
        check_teacher("deepinversion", mlp, "mlp")
    cfg, train = TINY.model_copy(update={"method": "dafl"}), TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(TorchslimError, match=r"method 'dafl': takes no real images \(few_data is for method 'vae'"):
        distill_data_free(_student(), mlp, cfg, train, input_shape=SHAPE, num_classes=10,
                          few_data=digits.train.tensors[0][:4], **QUIET)
    with pytest.raises(TorchslimError, match=r"unknown teacher module for dafl.feature_layer 'fc9' \(did you mean"):
        distill_data_free(_student(), mlp, cfg.model_copy(update={"dafl": DAFLConfig(feature_layer="fc9")}), train,
                          input_shape=SHAPE, num_classes=10, **QUIET)
    with pytest.raises(TorchslimError, match=r"vae.few_data=5000 is more than the 100 training images"):
        few_data_indices(100, 5000, seed=0)


# ------------------------------------------------------------------------------------------------------- the guard
def _recipe(tmp_path, method, teacher="resnet8", **stage):
    r = {"data": {"name": "digits"},
         "teacher": {"model": teacher, "args": {"width": 0.25} if teacher == "resnet8" else {"widths": [8]},
                     "train": {"epochs": 1, "lr": 0.003}},
         "student": {"model": "mlp", "args": {"widths": [16]}},
         "stages": [{"type": "datafree", "method": method, "iterations": 3, "train": {"epochs": 2, "batch_size": 16},
                     "dafl": {"latent_dim": 8, "generator_width": 8},
                     "deepinversion": {"transfer_size": 32, "batch_size": 32, "iterations": 4},
                     "vae": {"few_data": 30, "transfer_size": 64, "epochs": 2, "hidden": 32}, **stage}],
         "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]}}
    p = tmp_path / f"{method}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.detach().flatten(1)}


@pytest.mark.parametrize("method", ["dafl", "deepinversion"])
def test_no_training_image_reaches_the_student(method, tmp_path, digits):
    """Every input the student's forward ever receives in a full run is recorded: none is a training row, and
    validation rows arrive only in eval mode without gradients (monitoring, never a training step)."""
    seen = []

    def record(module, inputs):
        if isinstance(module, MLP):  # the student; the teacher is a ResNet and the generator is not an MLP
            seen.append((inputs[0].detach().clone(), module.training, torch.is_grad_enabled()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        assert main(["run", str(_recipe(tmp_path, method)), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    finally:
        handle.remove()
    train_rows, val_rows = _rows(digits.train.tensors[0]), _rows(digits.val.tensors[0])
    trained_on = [x for x, training, grad in seen if training]
    assert sum(len(x) for x in trained_on) == 2 * 3 * 16  # epochs × iterations × batch: every step was recorded
    for x, training, grad in seen:
        rows = _rows(x)
        assert not rows & train_rows
        if rows & val_rows:
            assert not training and not grad
    assert any(_rows(x) & val_rows for x, _, _ in seen)  # the student was monitored on val


def _stage_run(tmp_path, method, data):
    """The datafree stage runner itself, on a given DataBundle, with a fixed teacher."""
    from torchslim.pipeline import RunState
    from torchslim.recipe import load_recipe

    recipe = load_recipe(_recipe(tmp_path, method))
    state = RunState(recipe, tmp_path / f"run-{method}", data, lambda m: None)
    torch.manual_seed(0)
    state.teacher = create_model("resnet8", input_shape=SHAPE, width=0.25).eval()
    art = recipe.stages[0].run(state, 7)
    return art.model.state_dict(), art.info["datafree"]


@pytest.mark.parametrize("method", ["dafl", "vae"])
def test_only_the_few_data_rows_can_influence_the_student(method, tmp_path, digits):
    """Replace every training image the method may not use with NaN: the student comes out bit-identical. For
    dafl that is every training image; for vae all but the `few_data` rows recorded in the artifact's info."""
    clean, info = _stage_run(tmp_path, method, digits)
    keep = torch.tensor(info.few_data_indices or [], dtype=torch.long)
    if method == "vae":
        assert len(keep) == 30 and keep.unique().numel() == 30 and keep.equal(few_data_indices(len(digits.train), 30, 7))
    x = torch.full_like(digits.train.tensors[0], float("nan"))
    x[keep] = digits.train.tensors[0][keep]
    poisoned = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(x, digits.train.tensors[1]))
    dirty, _ = _stage_run(tmp_path, method, poisoned)
    assert all(torch.equal(clean[k], dirty[k]) for k in clean)


# ------------------------------------------------------------------------------------------ recipe, validate, resume
def test_validate_refuses_deepinversion_with_a_teacher_without_batchnorm(tmp_path, capsys):
    assert main(["validate", str(_recipe(tmp_path, "deepinversion", teacher="mlp"))]) == 2
    err = capsys.readouterr().err
    assert "stages[0] (datafree): datafree method 'deepinversion' inverts BatchNorm statistics, but teacher 'mlp' " \
           "has no BatchNorm layer" in err and err.count("\n") == 1
    assert main(["validate", str(_recipe(tmp_path, "dafl", teacher="mlp"))]) == 0
    assert main(["validate", str(_recipe(tmp_path, "dafl", method_typo=1))]) == 2
    assert "stages[0].method_typo: unknown field" in capsys.readouterr().err
    assert main(["validate", str(_recipe(tmp_path, "gan"))]) == 2
    assert "stages[0].method: Input should be 'dafl', 'deepinversion', 'vae' or 'noise'" in capsys.readouterr().err
    assert main(["validate", str(_recipe(tmp_path, "dafl", dafl={"feature_layer": "pol"}))]) == 2
    assert "stages[0] (datafree): unknown teacher module for dafl.feature_layer 'pol' (did you mean 'pool'?)" in \
        capsys.readouterr().err
    assert main(["validate", str(_recipe(tmp_path, "vae", vae={"few_data": 5000}))]) == 2
    assert "stages[0] (datafree): vae.few_data=5000 is more than the 1293 training images; valid: 1 to 1293" in \
        capsys.readouterr().err


def test_recipe_stage_reports_and_resumes(tmp_path):
    recipe, out = _recipe(tmp_path, "noise", teacher="mlp"), tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    art = {a["name"]: a for a in report["artifacts"]}
    datafree = art["datafree"]["info"]["datafree"]
    assert list(art) == ["teacher", "datafree"] and datafree["method"] == "noise"
    assert len(datafree["history"]) == 2 and Path(art["datafree"]["path"]).is_file()
    # A resumed run reloads the finished stage from its file and measures the same model.
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    again = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert again["datafree"]["accuracy"] == art["datafree"]["accuracy"]


def test_ema_student_is_the_average_of_the_same_trajectory(bn_teacher, digits):
    """The average rides on the raw run without changing it: same raw validation curve, different returned
    weights, and the returned weights score what the history says."""
    from torchslim.training.loop import accuracy_of

    kw = dict(input_shape=SHAPE, num_classes=10, val=digits.val, seed=2, **QUIET)
    train = TrainConfig(epochs=2, batch_size=16, lr=1e-2, keep="last")
    raw = _student()
    plain = distill_data_free(raw, bn_teacher, TINY, train, **kw)
    averaged = _student()
    info = distill_data_free(averaged, bn_teacher, TINY.model_copy(update={"ema_decay": 0.9}), train, **kw)
    assert [h["val_accuracy_raw"] for h in info["history"]] == [h["val_accuracy"] for h in plain["history"]]
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), averaged.parameters()))
    assert accuracy_of(averaged, digits.val) == info["history"][-1]["val_accuracy"]


def _untimed(info):
    """`info` without its wall-clock times."""
    if isinstance(info, dict):
        return {k: _untimed(v) for k, v in info.items() if not k.endswith("seconds")}
    return [_untimed(v) for v in info] if isinstance(info, list) else info


@pytest.mark.parametrize("method,ema", [("dafl", 0.0), ("deepinversion", 0.0), ("dafl", 0.9)])
def test_interrupted_run_resumes_to_the_same_student(method, ema, tmp_path, bn_teacher, digits):
    cfg, ckpt = TINY.model_copy(update={"method": method, "ema_decay": ema}), tmp_path / "c.pt"
    if method == "dafl":
        cfg = cfg.model_copy(update={"dafl": cfg.dafl.model_copy(update={"student_shift": 1, "student_mixup": 0.5})})
    kw = dict(input_shape=SHAPE, num_classes=10, val=digits.val, seed=3, **QUIET)
    whole = _student()
    expected = distill_data_free(whole, bn_teacher, cfg, TrainConfig(epochs=3, batch_size=16, keep="last"), **kw)
    part = _student()
    distill_data_free(part, bn_teacher, cfg, TrainConfig(epochs=1, batch_size=16, keep="last"), checkpoint=ckpt, **kw)
    # One checkpoint, fit's, read back without running code: the source's state (generator, replay buffer or
    # transfer set, random stream) and the weight average travel in it.
    saved = torch.load(ckpt, weights_only=True)
    if method == "dafl":
        assert {"generator", "generator_optimizer", "replay"} <= saved["train_set"].keys()
    else:
        assert saved["train_set"]["transfer"].shape == (48, *SHAPE)
    assert ("ema" in saved) == bool(ema)
    resumed = _student()  # a fresh process: new weights, picked up from the checkpoint after epoch 1
    info = distill_data_free(resumed, bn_teacher, cfg, TrainConfig(epochs=3, batch_size=16, keep="last"),
                             checkpoint=ckpt, **kw)
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert _untimed(info) == _untimed(expected)  # the curves, the transfer set, the synthesis records: all the same


def test_distill_data_free_is_fit_on_a_batch_source(bn_teacher, digits):
    """The function adds nothing to the training itself: fit on the method's batch source gives the same student."""
    from torchslim.distillation.datafree import NoiseBatches

    cfg, train = TINY.model_copy(update={"method": "noise", "ema_decay": 0.9}), TrainConfig(epochs=2, batch_size=16)
    via_function = _student()
    info = distill_data_free(via_function, bn_teacher, cfg, train, input_shape=SHAPE, num_classes=10, val=digits.val,
                             seed=4, **QUIET)
    batches = NoiseBatches(bn_teacher, cfg, batch_size=16, input_shape=SHAPE, num_classes=10, seed=4)
    via_fit = _student()
    result = fit(via_fit, batches, digits.val, train, loss_fn=batches.loss, seed=4, ema_decay=0.9, **QUIET)
    assert all(torch.equal(a, b) for a, b in zip(via_function.state_dict().values(), via_fit.state_dict().values()))
    assert [h["loss_kd"] for h in info["history"]] == [h["terms"]["loss_kd"] for h in result.history]
