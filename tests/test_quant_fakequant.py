import pydantic
import pytest
import torch

from torchslim.errors import TorchslimError
from torchslim.quant import FakeQuant, QuantConfig, QuantSpec, fake_quantize


def _calibrated(spec: QuantSpec, x: torch.Tensor, **kw) -> FakeQuant:
    fq = FakeQuant(spec, channels=x.shape[0] if spec.per_channel else 1,
                   kind="weight" if spec.per_channel else "activation", **kw)
    fq.observe_and_freeze(x)
    return fq


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_outputs_lie_on_the_grid_within_its_range(bits, symmetric):
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    fq = _calibrated(spec, torch.randn(1000))
    x = 3 * torch.randn(5000)  # wider than the calibration data: some values must be clipped
    q = (fq(x) / fq.scale).detach() + fq.zero_point  # back to integers
    assert torch.allclose(q, q.round(), atol=1e-4)
    assert q.round().min() >= spec.qmin and q.round().max() <= spec.qmax
    assert q.round().min() == spec.qmin or q.round().max() == spec.qmax  # the clipped values sit on the ends
    assert len(q.round().unique()) <= 2 ** bits


def test_small_grids_have_the_expected_integer_range():
    assert (QuantSpec(bits=4, symmetric=True).qmin, QuantSpec(bits=4, symmetric=True).qmax) == (-8, 7)
    assert (QuantSpec(bits=4, symmetric=False).qmin, QuantSpec(bits=4, symmetric=False).qmax) == (0, 15)
    assert (QuantSpec(bits=2, symmetric=True).qmin, QuantSpec(bits=2, symmetric=True).qmax) == (-2, 1)


def test_hand_computed_values():
    # scale 0.1, zero point 3 on [0, 15]: 0.26 → round(2.6)+3 = 6 → 0.3; -1 → -10+3 clipped to 0 → -0.3
    y = fake_quantize(torch.tensor([0.26, -1.0, 5.0]), torch.tensor(0.1), torch.tensor(3), 0, 15)
    assert torch.allclose(y, torch.tensor([0.3, -0.3, 1.2]))


def test_straight_through_gradient_is_one_inside_and_zero_outside():
    fq = _calibrated(QuantSpec(bits=4, symmetric=True), torch.tensor([-1.0, 1.0]))  # range [-8/7, 1]
    x = torch.tensor([-3.0, -0.5, 0.0, 0.33, 0.99, 1.5], requires_grad=True)
    fq(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]), atol=1e-6)


def test_per_channel_scales_differ_per_channel_and_symmetric_zero_point_is_zero():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0]).reshape(4, 1, 1, 1)
    fq = _calibrated(QuantSpec(bits=8, symmetric=True, per_channel=True), w)
    assert fq.scale.shape == (4,)
    assert len(fq.scale.unique()) == 4
    expected = w.abs().amax(dim=(1, 2, 3)) / 127
    assert torch.allclose(fq.scale, expected)
    assert (fq.zero_point == 0).all()
    # each channel is quantized with its own step: the error of the small channel is small
    err = (fq(w) - w).abs().amax(dim=(1, 2, 3))
    assert (err <= fq.scale / 2 + 1e-7).all()


def test_asymmetric_grid_has_an_integer_zero_point_that_keeps_zero_exact():
    fq = _calibrated(QuantSpec(bits=8, symmetric=False), torch.tensor([-0.7, 2.3]))
    assert 0 < fq.zero_point.item() < 255
    assert fq(torch.zeros(3)).abs().max() == 0


def test_lsq_step_sizes_receive_the_lsq_gradient():
    spec = QuantSpec(bits=4, symmetric=True)
    fq = _calibrated(spec, torch.tensor([-1.0, 1.0]), learnable=True)
    s = fq.scale.item()
    x = torch.tensor([0.3, -0.45, 5.0, -5.0])
    fq(x).sum().backward()
    v = x / s
    inside = v.abs() < 7
    # d x̂ / d s: round(x/s) − x/s inside, qmax or qmin outside; times g = 1/sqrt(N·qmax) with N = x[0].numel() = 1
    per_value = torch.where(inside, v.round() - v, torch.where(v > 0, torch.tensor(7.0), torch.tensor(-8.0)))
    g = 1 / (1 * 7) ** 0.5
    assert fq.scale.grad is not None
    assert fq.scale.grad.item() == pytest.approx(g * per_value.sum().item(), rel=1e-5)


def test_uncalibrated_activation_quantizer_says_what_to_do():
    with pytest.raises(TorchslimError, match="calibrate"):
        FakeQuant(QuantSpec())(torch.zeros(2))


def test_configs_reject_bad_values_naming_the_choices():
    with pytest.raises(pydantic.ValidationError, match="bits"):
        QuantSpec(bits=9)
    with pytest.raises(pydantic.ValidationError, match="valid choices: kl, minmax, moving_average, mse, percentile"):
        QuantConfig(observer="entropy")
    with pytest.raises(pydantic.ValidationError, match="per_channel"):
        QuantConfig(activation=QuantSpec(per_channel=True))
    with pytest.raises(pydantic.ValidationError, match="between 2 and 8"):
        QuantConfig(per_layer_bits={"fc1": 1})
    with pytest.raises(pydantic.ValidationError, match="observers"):
        QuantConfig(observers="minmax")  # unknown field
