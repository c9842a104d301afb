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


# --- criteria and N:M ---------------------------------------------------------------------------------------------
from types import SimpleNamespace  # noqa: E402

from torchslim.prune import CRITERIA, PruneConfig, nm_masks  # noqa: E402


def _toy_data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=g)
    return SimpleNamespace(train=torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))


def test_taylor_scores_are_weight_times_gradient_summed_over_batches():
    m = _net()
    data = _toy_data()
    layers = prunable_layers(m)
    scores = CRITERIA.get("taylor")(layers, model=m, data=data, batches=2, batch_size=64, seed=0)
    # Hand computation on the same two batches.
    rows = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:128]
    expected = torch.zeros_like(m[0].weight)
    for idx in rows.split(64):
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(data.train.tensors[0][idx]), data.train.tensors[1][idx]).backward()
        expected += (m[0].weight * m[0].weight.grad).abs().detach()
    assert torch.allclose(scores["0"], expected, atol=1e-6)


def test_gradient_criterion_without_data_is_a_clear_error():
    with pytest.raises(Exception, match="needs the model and training data"):
        prune_(_net(), PruneConfig(criterion="snip"))


def test_unknown_criterion_lists_the_choices():
    with pytest.raises(Exception, match="did you mean 'taylor'.*valid choices: apoz, entropy, han, magnitude, random, snip, taylor"):
        PruneConfig(criterion="tailor")


def test_random_criterion_hits_the_level_and_differs_from_magnitude():
    a, b = _net(), _net()
    prune_(a, PruneConfig(sparsity=0.5, criterion="random"))
    masks = prune_(b, PruneConfig(sparsity=0.5))
    assert masks.overall() == pytest.approx(0.5, abs=1e-3)
    assert not torch.equal(a[0].weight == 0, b[0].weight == 0)


def test_iterative_pruning_never_revives_a_pruned_weight_even_with_random_scores():
    m = _net()
    first = prune_(m, PruneConfig(sparsity=0.5, criterion="random"))
    zero = {n: (l.weight == 0) for n, l in first.layers.items()}
    prune_(m, PruneConfig(sparsity=0.7, criterion="random"), data=None)
    for n, l in prunable_layers(m).items():
        assert (l.weight[zero[n]] == 0).all()


@pytest.mark.parametrize("shape", [(6, 8), (4, 2, 2, 2)])
def test_two_four_masks_keep_exactly_two_of_every_four_largest(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    layer = torch.nn.Linear(8, 6) if len(shape) == 2 else torch.nn.Conv2d(2, 4, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    mask = nm_masks({"l": layer}, {"l": w.abs()}, 2, 4)["l"]
    groups_w = w.reshape(-1, 4).abs()
    groups_m = mask.reshape(-1, 4)
    assert (groups_m.sum(1) == 2).all()
    kept_min = torch.where(groups_m.bool(), groups_w, torch.inf).min(1).values
    dropped_max = torch.where(groups_m.bool(), -torch.inf, groups_w).max(1).values
    assert (kept_min >= dropped_max).all()


def test_n_m_pattern_fixes_the_sparsity_and_rejects_bad_shapes():
    cfg = PruneConfig(pattern="2:4", exclude=["2", "4"])  # 50 and 10 inputs per output: not multiples of 4
    assert cfg.round_targets() == [0.5]
    masks = prune_(_net(), cfg)
    assert masks.sparsity() == {"0": 0.5}
    with pytest.raises(Exception, match="not a multiple of 8"):
        prune_(torch.nn.Sequential(torch.nn.Linear(6, 4)), PruneConfig(pattern="2:8"))
    with pytest.raises(ValueError, match="pattern must be 'unstructured' or 'N:M'"):
        PruneConfig(pattern="4:2")


# --- masks attached to the model -----------------------------------------------------------------------------------
import copy  # noqa: E402

from torchslim.errors import TorchslimError  # noqa: E402
from torchslim.prune import attached_masks, detach_masks  # noqa: E402


def test_prune_attaches_its_masks_outside_the_state_dict_and_a_second_prune_replaces_them():
    m = _net()
    keys = set(m.state_dict())
    first = prune_(m, PruneConfig(sparsity=0.5))
    assert attached_masks(m) is first and set(m.state_dict()) == keys  # a plain attribute, never saved
    twin = copy.deepcopy(m)  # a stage copies the model it starts from: the copy's masks must bind the copy's layers
    assert attached_masks(twin).layers["0"] is twin[0] and attached_masks(twin) is not first
    second = prune_(m, PruneConfig(sparsity=0.8))
    assert attached_masks(m) is second and second.overall() == pytest.approx(0.8, abs=1e-3)
    with torch.no_grad():
        for layer in prunable_layers(m).values():
            layer.weight.add_(1.0)  # an optimizer step: every weight moves, the pruned ones too
    attached_masks(m).apply()
    assert second.overall() == pytest.approx(0.8, abs=1e-3)
    assert detach_masks(m) is second and attached_masks(m) is None and detach_masks(m) is None


def test_masks_that_no_longer_fit_their_layer_name_it():
    m = _net()
    masks = prune_(m, PruneConfig(sparsity=0.5))
    m[2].weight = nn.Parameter(torch.randn(40, 50))  # channels removed after pruning
    with pytest.raises(TorchslimError, match=r"mask of layer '2' has shape \(10, 50\), the weight \(40, 50\); detach"):
        masks.apply()


def test_fit_holds_the_masks_prune_attached():
    """prune_, then plain training with no after_step: the zeros must survive (fit applies the attached masks)."""
    m = _net()
    prune_(m, PruneConfig(sparsity=0.8))
    before = {n: l.weight.detach().clone() for n, l in prunable_layers(m).items()}
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))
    fit(m, torch.utils.data.TensorDataset(x, y), None, TrainConfig(epochs=2, lr=1e-2, optimizer="sgd"),
        log=lambda s: None)
    for n, l in prunable_layers(m).items():
        assert (l.weight[before[n] == 0] == 0).all(), n
    assert any(not torch.equal(l.weight, before[n]) for n, l in prunable_layers(m).items())  # it did train
