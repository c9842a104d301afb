"""Pruning criteria against hand computations: han (|w| / σ), apoz and entropy (whole units, post-ReLU)."""
import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.cli import main
from torchslim.prune import CRITERIA, PruneConfig, han_threshold_masks, masks_from_scores, prunable_layers, prune_

X = torch.tensor([[-1.0], [0.0], [1.0], [2.0]])


def _data(x=X):
    return SimpleNamespace(train=torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))


def _tiny_mlp():
    """fc1 units on x ∈ {-1, 0, 1, 2}: relu(x) = [0, 0, 1, 2], relu(-x) = [1, 0, 0, 0], relu(0·x + 0.5) = 0.5."""
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(1, 3), relu=nn.ReLU(), fc2=nn.Linear(3, 2)))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0], [-1.0], [0.0]]))
        model.fc1.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    return model


def test_han_scores_rank_globally_like_hans_per_layer_quality_times_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10))
    with torch.no_grad():
        model[2].weight.mul_(5)  # a layer with a much wider spread: magnitude would spare it, han must not
    layers = prunable_layers(model)
    scores = CRITERIA.get("han")(layers)
    for name, layer in layers.items():
        assert torch.allclose(scores[name], layer.weight.abs() / layer.weight.std())
    masks = masks_from_scores(layers, scores, 0.7, "global")
    # The global cut at t keeps |w| > t·σ in every layer: Han's threshold with one quality t for all layers.
    kept = torch.cat([scores[n][masks[n].bool()] for n in layers])
    dropped = torch.cat([scores[n][~masks[n].bool()] for n in layers])
    quality = ((kept.min() + dropped.max()) / 2).item()
    han = han_threshold_masks(layers, quality)
    for name in layers:
        assert torch.equal(masks[name], han[name])
    # Magnitude would have kept the wide layer almost whole; han prunes both layers at a similar rate.
    sparsity = {n: 1 - m.mean().item() for n, m in masks.items()}
    assert abs(sparsity["0"] - sparsity["2"]) < 0.1


def test_apoz_is_one_minus_the_zero_fraction_after_the_relu_for_every_weight_of_a_unit():
    model = _tiny_mlp()
    scores = CRITERIA.get("apoz")(prunable_layers(model, ["fc2"]), model=model, data=_data(), batches=1, batch_size=4)
    # Zeros after the ReLU: unit 0 → 2 of 4, unit 1 → 3 of 4, unit 2 → 0 of 4.
    assert torch.allclose(scores["fc1"], torch.tensor([[0.5], [0.25], [1.0]]))


def test_entropy_is_the_histogram_entropy_of_each_units_activation():
    model = _tiny_mlp()
    scores = CRITERIA.get("entropy")(prunable_layers(model, ["fc2"]), model=model, data=_data(), batches=1,
                                     batch_size=4)
    # Unit 0: [0, 0, 1, 2] over 32 bins of [0, 2] → bins 0, 0, 16, 31: p = (1/2, 1/4, 1/4).
    # Unit 1: [1, 0, 0, 0] → p = (3/4, 1/4). Unit 2: constant → 0.
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert torch.allclose(scores["fc1"].flatten(), torch.tensor([h0, h1, 0.0]), atol=1e-6)


class _BNNet(nn.Module):
    """Linear → BatchNorm → functional ReLU: the BN shift makes every unit positive whatever the Linear gives."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        self.bn = nn.BatchNorm1d(2)
        self.out = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()
            self.bn.bias.fill_(5.0)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.fc(x))))


def test_apoz_measures_after_batchnorm_and_relu_not_the_layer_output():
    model = _BNNet().eval()  # running stats (0, 1): BN adds 5, so the ReLU never outputs 0
    scores = CRITERIA.get("apoz")(prunable_layers(model, ["out"]), model=model, data=_data(), batches=1, batch_size=4)
    # relu(fc(x)) would have had zeros (APoZ 0.5 and 0.75); after BN and the ReLU there are none.
    assert torch.equal(scores["fc"], torch.ones(2, 1))
    assert not model.training  # the criterion leaves the model in the mode it found
    model.train()
    CRITERIA.get("apoz")(prunable_layers(model, ["out"]), model=model, data=_data(), batches=1, batch_size=4)
    assert model.training


def _mlp3():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 10), relu1=nn.ReLU(), fc2=nn.Linear(10, 8), relu2=nn.ReLU(),
                                     fc3=nn.Linear(8, 3)))


def _partial_units(masks):
    return sum(int(((m.sum(1) > 0) & (m.sum(1) < m.shape[1])).sum()) for m in masks.values())


@pytest.mark.parametrize("criterion", ["apoz", "entropy"])
def test_activation_criteria_prune_whole_units_and_refuse_a_layer_without_relu(criterion):
    data = _data(torch.randn(64, 6))
    model = _mlp3()
    layers = prunable_layers(model, ["fc3"])
    scores = CRITERIA.get(criterion)(layers, model=model, data=data)
    # Units in the order a global cut removes them (lowest score first, ties by position), with their sizes.
    units = sorted(((float(scores[n][u, 0]), i, u, layers[n].weight.shape[1]) for i, n in enumerate(layers)
                    for u in range(layers[n].weight.shape[0])), key=lambda t: t[:3])
    boundary = sum(size for *_, size in units[:5])
    masks = prune_(model, PruneConfig(sparsity=boundary / 140, criterion=criterion, exclude=["fc3"]), data=data)
    assert _partial_units(masks.masks) == 0 and masks.overall() == pytest.approx(boundary / 140)
    # Any other level cuts at most one unit in two, at the boundary.
    masks = prune_(_mlp3(), PruneConfig(sparsity=0.5, criterion=criterion, exclude=["fc3"]), data=data)
    assert _partial_units(masks.masks) <= 1
    with pytest.raises(Exception, match=r"layer\(s\) \['fc3'\] feed no ReLU of their own; exclude them"):
        prune_(_mlp3(), PruneConfig(sparsity=0.5, criterion=criterion), data=data)
    with pytest.raises(Exception, match=f"criterion '{criterion}' needs the model and training data"):
        prune_(_mlp3(), PruneConfig(sparsity=0.5, criterion=criterion, exclude=["fc3"]))


def test_conv_units_are_output_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-100.0, 100.0, 0.0, 0.0]))  # channel 0 always off, channel 1 always on
    x = torch.randn(8, 1, 6, 6)
    scores = CRITERIA.get("apoz")(prunable_layers(model, ["3"]), model=model, data=_data(x), batches=1, batch_size=8)
    s = scores["0"]
    assert s.shape == model[0].weight.shape and torch.equal(s[0], torch.zeros(1, 3, 3))
    assert torch.equal(s[1], torch.ones(1, 3, 3))
    expected = (F.relu(model[0](x)) != 0).float().mean((0, 2, 3))
    assert torch.allclose(s[:, 0, 0, 0], expected)


def test_list_criteria_shows_the_new_criteria(capsys):
    assert main(["list", "criteria"]) == 0
    out = capsys.readouterr().out
    for name in ("han", "apoz", "entropy", "magnitude", "taylor", "snip"):
        assert name in out.split()
