import pytest
import torch
from torch import nn

from torchslim.prune import MagnitudePruneConfig, prunable_layers, prune_
from torchslim.training import TrainConfig, fit


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 10), nn.ReLU(), nn.Linear(10, 3))


def test_layerwise_prunes_every_layer_to_the_target():
    m = _net()
    masks = prune_(m, MagnitudePruneConfig(sparsity=0.7, scope="layerwise"))
    for name, s in masks.sparsity().items():
        assert s == pytest.approx(0.7, abs=1 / m.get_submodule(name).weight.numel())


def test_global_prunes_the_smallest_weights_overall():
    m = _net()
    with torch.no_grad():
        m[4].weight.mul_(100)  # make the last layer's weights the largest: global pruning must spare them
    all_w = torch.cat([l.weight.abs().flatten() for l in prunable_layers(m).values()])
    threshold = all_w.sort().values[int(0.6 * all_w.numel()) - 1]
    masks = prune_(m, MagnitudePruneConfig(sparsity=0.6, scope="global"))
    assert masks.overall() == pytest.approx(0.6, abs=1e-3)
    assert masks.sparsity()["4"] == 0.0
    for layer in prunable_layers(m).values():
        nz = layer.weight[layer.weight != 0].abs()
        assert (nz >= threshold).all()


def test_biases_are_not_pruned_and_exclude_keeps_a_layer_dense():
    m = _net()
    masks = prune_(m, MagnitudePruneConfig(sparsity=0.9, exclude=["0"]))
    assert "0" not in masks.sparsity()
    assert (m[0].weight != 0).all()
    assert (m[2].bias != 0).all()


def test_iterative_targets_end_at_the_requested_sparsity_and_increase():
    t = MagnitudePruneConfig(sparsity=0.9, schedule="iterative", rounds=3).round_targets()
    assert t == sorted(t) and t[-1] == pytest.approx(0.9) and len(t) == 3
    # each round removes the same fraction of the remaining weights
    keep = [1 - s for s in t]
    assert keep[1] / keep[0] == pytest.approx(keep[0])


def test_masks_hold_during_fine_tuning():
    m = _net()
    masks = prune_(m, MagnitudePruneConfig(sparsity=0.8))
    zero_before = {n: (l.weight == 0) for n, l in prunable_layers(m).items()}
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))
    fit(m, torch.utils.data.TensorDataset(x, y), None, TrainConfig(epochs=3, lr=1e-2, optimizer="sgd"),
        after_step=masks.apply, log=lambda s: None)
    for n, l in prunable_layers(m).items():
        assert (l.weight[zero_before[n]] == 0).all()
    assert masks.overall() == pytest.approx(0.8, abs=1e-3)


def test_sparsity_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="less than 1"):
        MagnitudePruneConfig(sparsity=1.0)
