import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models import create_model
from torchslim.quant import (FakeQuant, QuantConfig, QuantConv2d, QuantLinear, QuantSpec, calibrate, fold_batchnorm,
                             prepare, ptq)
from torchslim.training import TrainConfig, fit


def _resnet_with_random_bn_stats():
    torch.manual_seed(0)
    model = create_model("resnet-cifar", depth=8, input_shape=(3, 16, 16))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_fold_batchnorm_keeps_eval_outputs_and_removes_every_bn():
    model = _resnet_with_random_bn_stats()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert folded.layer2[0].shortcut[0].bias is not None  # the option-B shortcut conv got its BN too
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max().item() < 1e-5


def test_fold_batchnorm_leaves_a_bn_whose_conv_output_is_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used unnormalised too: folding would change it

    assert isinstance(fold_batchnorm(Shared()).bn, nn.BatchNorm2d)


def test_prepare_places_quantizers_where_int8_kernels_read_and_write():
    cfg = QuantConfig()
    q = prepare(create_model("lenet5-classic", input_shape=(1, 32, 32)), cfg)
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc2, QuantLinear)
    # input, each conv/linear output after its ReLU; the logits (fc2) stay float
    assert sorted(q.activation_quantizers.keys()) == ["input", "relu1", "relu2", "relu3", "relu4"]
    assert q.conv2.input_quantizer == "relu1" and not q.conv2.input_direct  # through the max-pool
    assert q.fc2.input_quantizer == "relu4" and q.fc2.input_direct

    r = prepare(create_model("resnet8", input_shape=(1, 8, 8)), cfg)
    keys = set(r.activation_quantizers.keys())
    assert {"input", "relu", "layer1_0_relu1", "layer1_0_relu2", "layer2_0_shortcut_0", "pool"} <= keys
    assert r.fc.input_quantizer == "pool"  # the average pool leaves the grid: a quantizer after it


def test_exclude_and_per_layer_bits():
    cfg = QuantConfig(weight=QuantSpec(bits=4, per_channel=True), exclude=["fc2"],
                      per_layer_bits={"conv*": 8, "conv3": 6})
    q = prepare(create_model("lenet5-classic", input_shape=(1, 32, 32)), cfg)
    assert type(q.fc2) is nn.Linear
    assert [q.get_submodule(n).weight_fake_quant.spec.bits for n in ("conv1", "conv2", "conv3", "fc1")] == [8, 8, 6, 4]
    with pytest.raises(TorchslimError, match="'conv9' matches no Conv2d/Linear layer.*did you mean 'conv.'.*layers: conv1, conv2"):
        prepare(create_model("lenet5-classic", input_shape=(1, 32, 32)), QuantConfig(exclude=["conv9"]))


def test_prepared_model_needs_calibration_and_calibrate_needs_a_prepared_model():
    q = prepare(create_model("mlp", input_shape=(1, 8, 8), widths=[16]), QuantConfig())
    with pytest.raises(TorchslimError, match="calibrate"):
        q(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TorchslimError, match="prepare"):
        calibrate(create_model("mlp", input_shape=(1, 8, 8)), torch.zeros(4, 1, 8, 8))
    with pytest.raises(TorchslimError, match="no calibration batches"):
        calibrate(q, [])


def test_calibration_sees_the_float_model_and_the_state_dict_round_trips():
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 8, 8), widths=[32])
    x = torch.randn(256, 1, 8, 8)
    q = ptq(model, QuantConfig(calibration_batches=2, calibration_batch_size=128), x)
    with torch.no_grad():
        hidden = torch.relu(model.fc1(x.flatten(1)))
    # the grid of relu1 spans exactly the float activations of the calibration rows (all 256 of them)
    fq = q.activation_quantizers["relu1"]
    assert fq.zero_point.item() == 0
    assert (255 * fq.scale).item() == pytest.approx(hidden.max().item(), rel=1e-6)

    fresh = prepare(model, QuantConfig())
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.eval()(x), q(x))  # no calibration needed after loading


def test_fit_trains_a_fake_quant_model_and_the_weight_grid_follows_the_weights():
    torch.manual_seed(0)
    x, y = torch.randn(512, 1, 8, 8), torch.randint(0, 3, (512,))
    x[y == 1] += 0.5
    x[y == 2] -= 0.5
    model = create_model("mlp", num_classes=3, input_shape=(1, 8, 8), widths=[32])
    q = ptq(model, QuantConfig(weight=QuantSpec(bits=4, per_channel=True)), x)
    scale_before = q.fc1.weight_fake_quant.scale.clone()
    weight_before = q.fc1.weight.detach().clone()
    result = fit(q, torch.utils.data.TensorDataset(x, y), None,
                 TrainConfig(epochs=3, lr=1e-2, keep="last"), log=lambda s: None)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not torch.equal(q.fc1.weight, weight_before)
    q(x[:1])
    expected = q.fc1.weight.detach().abs().amax(1) / 7
    assert torch.allclose(q.fc1.weight_fake_quant.scale, expected)
    assert not torch.equal(q.fc1.weight_fake_quant.scale, scale_before)


def test_learnable_step_sizes_train_with_fit():
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 3, (256,))
    q = ptq(create_model("mlp", num_classes=3, input_shape=(1, 8, 8), widths=[16]),
            QuantConfig(weight=QuantSpec(bits=3, per_channel=True), learnable=True), x)
    steps = [m.scale for m in q.modules() if isinstance(m, FakeQuant)]
    assert all(isinstance(s, nn.Parameter) for s in steps)
    before = [s.detach().clone() for s in steps]
    fit(q, torch.utils.data.TensorDataset(x, y), None, TrainConfig(epochs=1, lr=1e-2), log=lambda s: None)
    assert all(not torch.equal(s, b) for s, b in zip(steps, before))


def test_untraceable_models_and_unquantized_exports_are_clear_errors(tmp_path):
    from torchslim.quant import export_qdq

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent control flow

    with pytest.raises(TorchslimError, match="cannot trace Branchy with torch.fx"):
        prepare(Branchy(), QuantConfig())
    with pytest.raises(TorchslimError, match="no quantizers"):
        export_qdq(create_model("mlp", input_shape=(1, 8, 8)), tmp_path / "x.onnx", (1, 8, 8))
    with pytest.raises(TorchslimError, match="not calibrated"):
        export_qdq(prepare(create_model("mlp", input_shape=(1, 8, 8)), QuantConfig()), tmp_path / "x.onnx", (1, 8, 8))
    assert not (tmp_path / "x.onnx").exists()


def test_linear_per_channel_override_keeps_convolutions_per_channel():
    from torchslim.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet5", input_shape=(1, 28, 28)).eval()
    q = ptq(model, QuantConfig(linear_per_channel=False), torch.randn(64, 1, 28, 28))
    kinds = {name: m.weight_fake_quant.spec.per_channel for name, m in q.named_modules()
             if hasattr(m, "weight_fake_quant")}
    assert kinds and all(v for n, v in kinds.items() if n.startswith("conv"))
    assert not any(v for n, v in kinds.items() if n.startswith("fc"))
