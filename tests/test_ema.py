"""WeightEMA against a hand-computed average."""
import pytest
import torch
from torch import nn

from torchslim.training.ema import WeightEMA


def test_weight_ema_matches_hand_computation_and_swaps_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.5)
    w0 = model[0].weight.detach().clone()
    expected = w0.clone()
    for t in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(float(t))
        model[1].num_batches_tracked += 1
        ema.update(model)
        d = min(0.5, (1 + t) / (10 + t))  # warm-up: 2/11, 3/12, 4/13 are all below 0.5
        expected = d * expected + (1 - d) * model[0].weight.detach()
    assert torch.allclose(ema.state["0.weight"], expected)
    assert ema.state["1.num_batches_tracked"].item() == 3  # integer buffers are copied, not averaged
    trained = model[0].weight.detach().clone()
    assert not torch.allclose(trained, expected)
    with ema.applied_to(model):
        assert torch.allclose(model[0].weight, expected)
    assert torch.equal(model[0].weight, trained)  # the trained weights are back after the block

    again = WeightEMA(model, decay=0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and torch.equal(again.state["0.weight"], ema.state["0.weight"])


def test_weight_ema_rejects_a_decay_outside_zero_one():
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightEMA(nn.Linear(1, 1), decay=1.0)
