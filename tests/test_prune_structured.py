"""Structured pruning: channels really removed (residual adds and batch norms follow), MACs as measured, exact ONNX,
reloading a pruned state dict into a fresh model, the network-slimming penalty, and the recipe stage with resume."""
import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from torchslim.cli import main
from torchslim.errors import TorchslimError
from torchslim.evaluation import count_macs, count_params
from torchslim.models import BasicBlock, create_model
from torchslim.prune.structured import (ChannelPruneConfig, prune_channels_, prune_channels_to_target,
                                       resize_to_state_dict_)

SHAPE = (1, 16, 16)


def _resnet8(seed: int = 0) -> nn.Module:
    """ResNet-8 with random BN statistics and scales, so that every BN matters and channel scores differ."""
    torch.manual_seed(seed)
    model = create_model("resnet8", input_shape=SHAPE)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 1.0)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _prune(model: nn.Module, **cfg) -> dict:
    return prune_channels_(model, ChannelPruneConfig(**cfg), torch.zeros(1, *SHAPE))


def _check_shapes_line_up(model: nn.Module) -> None:
    """Every BN matches its conv, every block's two branches add up, the classifier reads the last stage."""
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
        assert block.bn2.num_features == block.conv2.out_channels
        if isinstance(block.shortcut, nn.Identity):
            assert block.conv1.in_channels == block.conv2.out_channels  # the residual add: same width on both sides
        else:
            assert block.shortcut[0].out_channels == block.conv2.out_channels == block.shortcut[1].num_features
            assert block.shortcut[0].in_channels == block.conv1.in_channels
    assert model.fc.in_features == model.layer3[-1].conv2.out_channels


def test_resnet8_at_half_the_macs_is_really_smaller_and_exports_exactly(tmp_path):
    import onnxruntime as ort

    from torchslim.export import export_onnx

    model = _resnet8()
    macs, params = count_macs(model, SHAPE), count_params(model)[0]
    convs = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    info = _prune(model, macs_reduction=2.0)

    assert info["macs_before"] == macs and info["macs_after"] == count_macs(model, SHAPE)
    assert 2 * count_macs(model, SHAPE) <= macs < 2.1 * count_macs(model, SHAPE)  # met, without overshooting much
    assert count_params(model)[0] == info["params_after"] < params
    after = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert sum(after.values()) < 0.8 * sum(convs.values()) and all(after[n] <= convs[n] for n in convs)
    assert model.fc.out_features == 10 and info["channels"]["fc"] == [10, 10]
    assert model.conv1.out_channels == info["channels"]["conv1"][1] < 16
    _check_shapes_line_up(model)

    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = model(x).numpy()
    path = export_onnx(model, tmp_path / "pruned.onnx", SHAPE)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_our_mac_count_matches_torch_pruning_on_the_pruned_model():
    import torch_pruning as tp

    model = _resnet8()
    _prune(model, macs_reduction=2.0)
    _, _, flops, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *SHAPE), layer_wise=True)
    # Torch-Pruning also counts BN, ReLU, pooling and bias additions; compare the conv and linear products only.
    theirs = sum(flops[m] for m in model.modules() if isinstance(m, nn.Conv2d))
    theirs += flops[model.fc] - model.fc.out_features  # minus its bias additions
    assert count_macs(model, SHAPE) == theirs


def test_uniform_scope_takes_the_same_fraction_from_every_layer():
    info = _prune(_resnet8(), macs_reduction=2.0, scope="uniform")
    assert 2 * info["macs_after"] <= info["macs_before"]
    kept = [after / before for name, (before, after) in info["channels"].items() if name != "fc"]
    assert max(kept) - min(kept) <= 1 / 16 + 1e-9, kept  # equal up to one channel of the narrowest (16) layers


def test_round_to_keeps_every_width_a_multiple():
    info = _prune(_resnet8(), macs_reduction=2.0, round_to=4)
    assert 2 * info["macs_after"] <= info["macs_before"]
    pruned = {name: after for name, (before, after) in info["channels"].items() if name != "fc"}
    assert all(c % 4 == 0 for c in pruned.values()) and min(pruned.values()) >= 4, pruned


def test_excluded_layers_and_their_coupled_group_keep_their_outputs():
    model = _resnet8()
    info = _prune(model, macs_reduction=1.5, exclude=["layer3.0.conv2"])
    # conv2 of the last block is added to the shortcut: the whole coupled group keeps its 64 channels.
    for name in ("layer3.0.conv2", "layer3.0.shortcut.0"):
        assert info["channels"][name] == [64, 64]
    assert info["channels"]["layer3.0.conv1"][1] < 64  # the rest is still pruned
    assert 1.5 * info["macs_after"] <= info["macs_before"]


def test_taylor_needs_data_and_prunes_with_it():
    model = _resnet8()
    cfg = ChannelPruneConfig(importance="taylor", importance_batches=1)
    with pytest.raises(TorchslimError, match="'taylor' needs training data"):
        prune_channels_(copy.deepcopy(model), cfg, torch.zeros(1, *SHAPE))
    train = torch.utils.data.TensorDataset(torch.randn(64, *SHAPE), torch.randint(0, 10, (64,)))
    info = prune_channels_(model, cfg, torch.zeros(1, *SHAPE), data=SimpleNamespace(train=train))
    assert 2 * info["macs_after"] <= info["macs_before"]
    assert all(p.grad is None for p in model.parameters())  # the scoring gradients are not left behind


def test_bn_scale_importance_keeps_the_channels_with_large_scales():
    model = _resnet8()
    gamma = torch.linspace(0.01, 1.0, 16)
    model.layer1[0].bn1.weight.data.copy_(gamma)  # an inner BN (no residual coupling): its scale alone ranks
    info = _prune(model, macs_reduction=1.1, importance="bn_scale", scope="uniform")
    kept = info["channels"]["layer1.0.conv1"][1]
    assert kept < 16
    assert torch.equal(model.layer1[0].bn1.weight.data, gamma[16 - kept:])  # the smallest scales went


def test_prune_channels_to_target_meets_the_macs_target_in_rounds_and_fine_tunes_between(tmp_path):
    from torchslim.prune import PruneConfig, attached_masks, prune_
    from torchslim.training import TrainConfig

    model = _resnet8()
    widths = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    prune_(model, PruneConfig(sparsity=0.3))  # attached masks: they cannot fit the narrower layers afterwards
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(torch.randn(96, *SHAPE, generator=g),
                                           torch.randint(0, 10, (96,), generator=g))
    data = SimpleNamespace(train=train, val=None)
    example = torch.zeros(1, *SHAPE)
    macs = count_macs(model, SHAPE)
    seen = []

    def checkpoint(k):
        seen.append(k)
        return tmp_path / f"round-{k}.pt"

    cfg = ChannelPruneConfig(macs_reduction=2.0, rounds=2)
    info = prune_channels_to_target(model, cfg, data, TrainConfig(epochs=1, batch_size=32), example_inputs=example,
                                    seed=1, checkpoint=checkpoint, log=lambda s: None)
    assert info["macs_before"] == macs and info["macs_after"] == count_macs(model, SHAPE)  # measured on the model
    assert info["macs_reduction"] >= 2.0 and info["params_after"] == count_params(model)[0]
    assert [r["target_macs"] for r in info["rounds"]] == cfg.round_targets(macs) and seen == [1, 2]
    for r in info["rounds"]:
        assert r["macs"] <= r["target_macs"] and len(r["history"]) == 1
    assert {name: c[0] for name, c in info["channels"].items() if name in widths} == widths  # before round 1
    assert info["prune_channels"] == cfg.model_dump() and attached_masks(model) is None
    _check_shapes_line_up(model)
    json.dumps(info)


def test_unknown_importance_is_a_clear_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown channel importance 'tailor' \(did you mean 'taylor'\?\); "
                                         r"valid choices: bn_scale, l1, taylor"):
        ChannelPruneConfig(importance="tailor")
    from torchslim.recipe import validate_recipe

    with pytest.raises(TorchslimError, match=r"stages\[0\]\.importance: unknown channel importance 'l2'"):
        validate_recipe({"teacher": {"model": "resnet8"}, "stages": [{"type": "prune_channels", "importance": "l2"}]})


def test_unreachable_target_says_what_was_reached():
    with pytest.raises(TorchslimError, match=r"reached only 1.00x fewer MACs .* and 1 exclude pattern\(s\); raise "
                                             r"max_pruning_ratio, exclude fewer layers"):
        _prune(_resnet8(), macs_reduction=2.0, exclude=["*"])  # every layer kept: nothing can go


def test_resize_to_state_dict_round_trip(tmp_path):
    from torchslim.io import load_checkpoint, load_state_dict, save_checkpoint

    pruned = _resnet8()
    _prune(pruned, macs_reduction=2.0)
    path = save_checkpoint(pruned, tmp_path / "pruned.safetensors")

    fresh = create_model("resnet8", input_shape=SHAPE)  # the architecture before pruning
    with pytest.raises(TorchslimError, match="does not fit the model"):
        load_checkpoint(copy.deepcopy(fresh), path)
    resized = resize_to_state_dict_(fresh, load_state_dict(path))
    assert "conv1" in resized and "bn1" in resized and "fc" in resized  # fc: fewer inputs
    load_checkpoint(fresh, path).eval()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert fresh.conv1.out_channels == pruned.conv1.out_channels and fresh.bn1.num_features == pruned.bn1.num_features
    assert fresh.fc.in_features == pruned.fc.in_features
    assert resize_to_state_dict_(fresh, pruned.state_dict()) == []  # already the right shapes: nothing to do

    other = {"conv1.weight": torch.zeros(8, 1, 5, 5)}
    with pytest.raises(TorchslimError, match="cannot resize convolution 'conv1'.*only channel counts may differ"):
        resize_to_state_dict_(create_model("resnet8", input_shape=SHAPE), other)


def test_bn_l1_adds_lambda_sign_gamma_to_the_gradient_with_any_loss():
    """One plain SGD step: the BN scales of the penalized run differ by exactly −lr·λ·sign(γ)."""
    from torchslim.training import TrainConfig, fit

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    nn.init.uniform_(net[1].weight, -1.0, 1.0)  # both signs
    gamma0 = net[1].weight.detach().clone()
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,)))

    def mse_loss(model, x, y):  # not cross-entropy: the penalty must not depend on the task loss
        logits = model(x)
        return ((logits - nn.functional.one_hot(y, 3).float()) ** 2).mean(), logits

    lr, lam = 0.1, 0.05
    runs = {}
    for bn_l1 in (0.0, lam):
        model = copy.deepcopy(net)
        cfg = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=lr, momentum=0.0, bn_l1=bn_l1, keep="last")
        fit(model, data, None, cfg, loss_fn=mse_loss, log=lambda m: None)
        runs[bn_l1] = model[1].weight.detach()
    torch.testing.assert_close(runs[lam] - runs[0.0], -lr * lam * torch.sign(gamma0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        TrainConfig(bn_l1=-1.0)


def test_list_channel_importances(capsys):
    assert main(["list", "channel-importances"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["bn_scale", "l1", "taylor"]


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_recipe_train_prune_channels_export_and_resume(tmp_path, capsys):
    """The stage in a recipe: fewer MACs in the report, exact ONNX of the pruned model; a run killed in the middle of
    round 2 resumes to the same numbers, and one resumed after the stage finished reloads the pruned shapes."""
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import load_recipe

    recipe = {"data": {"name": "digits"}, "student": {"model": "resnet8"},
              "stages": [{"type": "train", "train": {"epochs": 1, "lr": 0.003}},
                         {"type": "prune_channels", "macs_reduction": 2.0, "rounds": 2, "round_to": 4,
                          "train": {"epochs": 2, "lr": 0.001}},
                         {"type": "export", "name": "onnx"}],
              "evaluate": {"max_seconds": 0.01}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    capsys.readouterr()
    art = {a["name"]: a for a in json.loads((tmp_path / "full" / "report.json").read_text())["artifacts"]}
    pruned, onnx = art["prune_channels"], art["onnx"]
    assert 2 * pruned["macs"] <= art["train"]["macs"] and pruned["params"] < art["train"]["params"]
    channels = pruned["info"]["channel_pruning"]
    assert channels["macs_after"] == pruned["macs"] and len(channels["rounds"]) == 2
    assert all(c[1] % 4 == 0 for name, c in channels["channels"].items() if name != "fc")
    assert onnx["macs"] == pruned["macs"]
    assert onnx["info"]["onnx_verification"]["max_abs_diff"] < 1e-4
    assert onnx["info"]["onnx_verification"]["top1_agreement"] == 1.0 and onnx["accuracy"] == pruned["accuracy"]

    def numbers(out):
        report = json.loads((out / "report.json").read_text())
        return {a["name"]: [a[k] for k in ("accuracy", "macs", "params", "file_bytes")] for a in report["artifacts"]}

    # Killed after epoch 1 of round 2 (the log line of epoch 2 comes before its checkpoint is written).
    out = tmp_path / "killed"

    def log(msg):
        if msg.startswith("[prune_channels round 2] epoch   2/2"):
            raise _Killed
    with pytest.raises(_Killed):
        run_recipe(load_recipe(path), out, log=log)
    assert list(json.loads((out / "progress.json").read_text())) == ["train"]
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    assert "[prune_channels round 2] resumed from" in capsys.readouterr().out
    assert numbers(out) == numbers(tmp_path / "full")

    # Interrupted after prune_channels finished: the resumed run must rebuild the pruned shapes from the file.
    progress = json.loads((out / "progress.json").read_text())
    del progress["onnx"]
    (out / "progress.json").write_text(json.dumps(progress))
    (out / "onnx.onnx").unlink()
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    assert "[prune_channels] finished in an earlier run: reloaded prune_channels.safetensors" in capsys.readouterr().out
    assert numbers(out) == numbers(tmp_path / "full")
    again = json.loads((out / "report.json").read_text())["artifacts"]
    assert again[-1]["info"]["onnx_verification"]["max_abs_diff"] < 1e-4


def test_prune_channels_distill_fine_tunes_from_the_model_before_pruning(tmp_path, capsys):
    """`distill` makes every fine-tuning epoch a KD step from the unpruned model: the kd term is in the history, and
    a field of the general KD objective (which needs teachers of its own) is refused in one line."""
    recipe = {"data": {"name": "digits"}, "student": {"model": "mlp", "args": {"widths": [64]}},
              "stages": [{"type": "train", "train": {"epochs": 1}},
                         {"type": "prune_channels", "macs_reduction": 2.0, "rounds": 1,
                          "distill": {"temperature": 4, "alpha": 0.5}, "train": {"epochs": 1}}],
              "evaluate": {"max_seconds": 0.01}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    art = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][-1]
    history = art["info"]["channel_pruning"]["rounds"][0]["history"]
    assert history[0]["terms"]["kd"] > 0
    capsys.readouterr()
    recipe["stages"][1]["distill"] = {"losses": ["kd", {"name": "fitnet", "student": "fc1", "teacher": "fc1"}]}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "distill takes temperature and alpha only" in err and len(err.splitlines()) == 1
