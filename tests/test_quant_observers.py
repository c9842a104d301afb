import pytest
import torch

from torchslim.errors import TorchslimError
from torchslim.quant import OBSERVERS, QuantSpec, fake_quantize


def _qparams(name: str, spec: QuantSpec, *batches: torch.Tensor, **kw):
    obs = OBSERVERS.get(name)(spec, **kw)
    for x in batches:
        obs.observe(x)
    return obs.qparams()


def _mse(x: torch.Tensor, spec: QuantSpec, scale, zero_point) -> float:
    return (fake_quantize(x, scale, zero_point, spec.qmin, spec.qmax) - x).pow(2).mean().item()


def test_registry_names_and_unknown_name():
    assert OBSERVERS.names() == ["kl", "minmax", "moving_average", "mse", "percentile"]
    with pytest.raises(TorchslimError, match="did you mean 'minmax'"):
        OBSERVERS.get("min_max")


def test_minmax_by_hand():
    x = torch.tensor([-1.0, 0.5, 2.54])
    scale, zp = _qparams("minmax", QuantSpec(bits=8, symmetric=True), x)
    assert scale.item() == pytest.approx(2.54 / 127) and zp.item() == 0
    # asymmetric 8-bit: [-1, 2.54] over 255 steps; zero point = round(1 / scale)
    scale, zp = _qparams("minmax", QuantSpec(bits=8, symmetric=False), x)
    assert scale.item() == pytest.approx(3.54 / 255) and zp.item() == round(1 / (3.54 / 255))
    # the range spans all batches, and always includes 0
    scale, zp = _qparams("minmax", QuantSpec(bits=4, symmetric=False), torch.tensor([1.0, 2.0]), torch.tensor([3.0]))
    assert scale.item() == pytest.approx(3 / 15) and zp.item() == 0


def test_minmax_per_channel_by_hand():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]])
    scale, zp = _qparams("minmax", QuantSpec(bits=8, symmetric=True, per_channel=True), w)
    assert torch.allclose(scale, torch.tensor([2 / 127, 0.5 / 127, 1.0]))  # an all-zero channel gets scale 1
    assert zp.tolist() == [0, 0, 0]


def test_moving_average_follows_batches_slowly():
    spec = QuantSpec(bits=8, symmetric=False)
    scale, _ = _qparams("moving_average", spec, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 101.0]))
    assert scale.item() == pytest.approx((1 + 0.01 * 100) / 255)


def test_percentile_clips_an_outlier():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100_000), torch.tensor([1000.0])])
    spec = QuantSpec(bits=8, symmetric=True)
    scale, _ = _qparams("percentile", spec, x, percentile=99.9)
    amax = scale.item() * 127
    assert 3.0 < amax < 3.6  # |N(0,1)| 99.9th percentile ≈ 3.29, far from the outlier
    minmax = _qparams("minmax", spec, x)
    assert _mse(x[:-1], spec, scale, _) < _mse(x[:-1], spec, *minmax) / 100


def test_mse_is_never_worse_than_minmax_and_much_better_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((50_000,))  # heavy tails: minmax wastes the grid on outliers
    for spec in [QuantSpec(bits=4, symmetric=True), QuantSpec(bits=4, symmetric=False)]:
        assert _mse(x, spec, *_qparams("mse", spec, x)) < _mse(x, spec, *_qparams("minmax", spec, x)) / 3
    spec = QuantSpec(bits=8, symmetric=True)
    assert _mse(x, spec, *_qparams("mse", spec, x)) <= _mse(x, spec, *_qparams("minmax", spec, x))
    # on a uniform tensor nothing should be clipped, and mse must not lose to minmax
    u = torch.rand(10_000)
    spec = QuantSpec(bits=8, symmetric=False)
    assert _mse(u, spec, *_qparams("mse", spec, u)) <= _mse(u, spec, *_qparams("minmax", spec, u)) * (1 + 1e-6)


def test_mse_per_channel_picks_each_channels_own_clip():
    torch.manual_seed(0)
    w = torch.randn(3, 2000)
    w[0, 0] = 50.0  # one outlier in channel 0 only
    spec = QuantSpec(bits=4, symmetric=True, per_channel=True)
    scale, _ = _qparams("mse", spec, w)
    minmax, _ = _qparams("minmax", spec, w)
    assert scale[0] < minmax[0] / 3  # channel 0 clips its outlier
    assert scale[1] <= minmax[1] and scale[1] > minmax[1] / 3


def test_kl_threshold_is_reasonable_on_relu_outputs():
    torch.manual_seed(0)
    x = torch.randn(200_000).relu()  # half exact zeros, as after a ReLU
    spec = QuantSpec(bits=8, symmetric=False)
    scale, zp = _qparams("kl", spec, x)
    threshold = scale.item() * (spec.qmax - zp.item())
    assert zp.item() == 0
    assert 2.5 < threshold < x.max().item()  # clips the sparse tail, keeps the bulk


def test_sample_is_uniform_over_batches_and_seeded():
    spec = QuantSpec(bits=8, symmetric=True)
    a = OBSERVERS.get("percentile")(spec, sample_size=1000)
    b = OBSERVERS.get("percentile")(spec, sample_size=1000)
    for i in range(10):
        batch = torch.full((1000,), float(i))
        a.observe(batch)
        b.observe(batch)
    assert torch.equal(a.sample, b.sample)
    counts = torch.bincount(a.sample.flatten().long(), minlength=10)
    assert counts.min() > 50  # every batch is represented (about 100 each)


def test_qparams_before_any_observation_is_a_clear_error():
    with pytest.raises(TorchslimError, match="observed no tensor"):
        OBSERVERS.get("mse")(QuantSpec()).qparams()
