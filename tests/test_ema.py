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


def _fit_args(epochs=3):
    from torch.utils.data import TensorDataset

    from torchslim.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return data, data, TrainConfig(epochs=epochs, batch_size=16, lr=0.05, keep="last")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_with_ema_decay_validates_and_returns_the_average_of_the_same_trajectory():
    from torchslim.training import fit
    from torchslim.training.loop import accuracy_of

    train, val, cfg = _fit_args()
    quiet = {"log": lambda m: None}
    plain = fit(_model(), train, val, cfg, **quiet)
    averaged = _model()
    result = fit(averaged, train, val, cfg, ema_decay=0.9, **quiet)
    by_hand = _model()
    ema = WeightEMA(by_hand, 0.9)
    fit(by_hand, train, val, cfg, after_step=lambda: ema.update(by_hand), **quiet)
    assert all(torch.equal(ema.state[k], v) for k, v in averaged.state_dict().items())
    assert [h["val_accuracy_raw"] for h in result.history] == [h["val_accuracy"] for h in plain.history]
    assert accuracy_of(averaged, val) == result.history[-1]["val_accuracy"]


def test_fit_checkpoints_the_average(tmp_path):
    from torchslim.errors import TorchslimError
    from torchslim.training import fit

    train, val, cfg = _fit_args()
    quiet, ckpt = {"log": lambda m: None}, tmp_path / "c.pt"
    whole = _model()
    fit(whole, train, val, cfg, ema_decay=0.8, **quiet)
    fit(_model(), train, val, cfg.model_copy(update={"epochs": 1}), ema_decay=0.8, checkpoint=ckpt, **quiet)
    resumed = _model()
    fit(resumed, train, val, cfg, ema_decay=0.8, checkpoint=ckpt, **quiet)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    plain = tmp_path / "plain.pt"  # written without an average: resuming with one says so in one line
    fit(_model(), train, val, cfg.model_copy(update={"epochs": 1}), checkpoint=plain, **quiet)
    with pytest.raises(TorchslimError, match=r"cannot resume from .*plain.pt: KeyError: 'ema'"):
        fit(_model(), train, val, cfg, ema_decay=0.8, checkpoint=plain, **quiet)
