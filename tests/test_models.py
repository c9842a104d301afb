"""Reference models: parameter counts against hand computation, shapes, geometry checks and error messages."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models import MODELS, create_model, list_models

# The input each model was designed for.
NATURAL_INPUT = {
    "mlp": (1, 28, 28),
    "lenet-300-100": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "lenet5-classic": (1, 32, 32),
    "lenet5-half": (1, 32, 32),
    "resnet-cifar": (3, 32, 32),
    "resnet8": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet32": (3, 32, 32),
    "resnet56": (3, 32, 32),
    "cnn": (1, 28, 28),
}
STANDARD_MODULES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
    nn.Identity, nn.Sequential,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Token ids in: tested in test_text_models.py (textcnn, bilstm), test_hf_models.py (bert), test_causal_lm.py (gpt*).
TEXT_MODELS = {"textcnn", "bilstm", "bert", "gpt", "gpt-nano", "gpt-mini", "gpt-shakespeare"}


def test_every_registered_model_has_a_natural_input() -> None:
    assert set(list_models()) == set(NATURAL_INPUT) | TEXT_MODELS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # conv1 20·(1·25)+20 = 520; conv2 50·(20·25)+50 = 25,050; 28→24→12→8→4, fc1 (50·4·4)·500+500 = 400,500;
        # fc2 500·10+10 = 5,010. Total 431,080 (Deep Compression's LeNet-5).
        ("lenet5", 431_080),
        # 784·300+300 = 235,500; 300·100+100 = 30,100; 100·10+10 = 1,010. Total 266,610.
        ("lenet-300-100", 266_610),
        # 784·256+256 = 200,960; 256·128+128 = 32,896; 128·10+10 = 1,290. Total 235,146.
        ("mlp", 235_146),
        # conv1 6·25+6 = 156; conv2 16·(6·25)+16 = 2,416; conv3 120·(16·25)+120 = 48,120; fc1 120·84+84 = 10,164;
        # fc2 84·10+10 = 850. Total 61,706.
        ("lenet5-classic", 61_706),
        # conv1 3·25+3 = 78; conv2 8·(3·25)+8 = 608; conv3 60·(8·25)+60 = 12,060; fc1 60·42+42 = 2,562;
        # fc2 42·10+10 = 430. Total 15,738.
        ("lenet5-half", 15_738),
        # Option A ResNet-20 has 269,722 (stem 432+32; stage 1: 6·(2,304+32); stage 2: 4,608+64 + 5·(9,216+64);
        # stage 3: 18,432+128 + 5·(36,864+128); fc 650). Option B adds two 1×1 projections with BN:
        # 16·32+64 = 576 and 32·64+128 = 2,176, so 272,474.
        ("resnet20", 272_474),
        ("resnet-cifar", 272_474),
    ],
)
def test_parameter_counts(name: str, expected: int) -> None:
    assert n_params(create_model(name, input_shape=NATURAL_INPUT[name])) == expected


@pytest.mark.parametrize("name", sorted(NATURAL_INPUT))
def test_output_shape_on_natural_input(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_shape=NATURAL_INPUT[name]).eval()
    out = model(torch.randn(3, *NATURAL_INPUT[name]))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(NATURAL_INPUT))
def test_models_use_standard_modules_and_one_relu_per_use(name: str) -> None:
    model = create_model(name, input_shape=NATURAL_INPUT[name])
    for module in model.modules():
        if module is not model:
            assert isinstance(module, STANDARD_MODULES) or type(module).__name__ == "BasicBlock", type(module)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    # A ReLU instance called twice would give a forward hook on it two different activations.
    calls: Counter[int] = Counter()
    for relu in relus:
        relu.register_forward_hook(lambda m, i, o: calls.update([id(m)]))
    model.eval()(torch.zeros(1, *NATURAL_INPUT[name]))
    assert set(calls.values()) == {1} and len(calls) == len(relus)


def test_flatten_sizes_follow_input_shape() -> None:
    assert create_model("mlp", input_shape=(1, 8, 8)).fc1.in_features == 64
    assert create_model("lenet-300-100", input_shape=(3, 32, 32)).fc1.in_features == 3 * 32 * 32
    # 32→28→14→10→5: 50·5·5 = 1,250 features into fc1.
    lenet = create_model("lenet5", input_shape=(1, 32, 32))
    assert lenet.fc1.in_features == 1250
    assert lenet(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    # 36→32→16→12→6→2: 120·2·2 = 480 features.
    assert create_model("lenet5-classic", input_shape=(1, 36, 36)).fc1.in_features == 480


@pytest.mark.parametrize(
    ("name", "shape", "needed"), [("lenet5", (1, 8, 8), "16×16"), ("lenet5-half", (1, 28, 28), "32×32")]
)
def test_too_small_input_is_a_clear_error(name: str, shape: tuple[int, int, int], needed: str) -> None:
    with pytest.raises(TorchslimError, match="too small") as err:
        create_model(name, input_shape=shape)
    assert needed in str(err.value) and name in str(err.value)


def test_unknown_argument_names_it_and_the_valid_ones() -> None:
    with pytest.raises(TorchslimError) as err:
        create_model("lenet5", widths=[300, 100])
    message = str(err.value)
    assert "'widths'" in message and "num_classes" in message and "input_shape" in message
    with pytest.raises(TorchslimError, match=r"did you mean 'widths'"):
        create_model("mlp", widht=[10])


def test_unknown_model_suggests_the_close_name() -> None:
    with pytest.raises(TorchslimError, match=r"unknown model 'lenet-5' \(did you mean 'lenet5'\?\).*resnet20"):
        create_model("lenet-5")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"name": "mlp", "dropout": 1.0}, "dropout"),
        ({"name": "mlp", "input_dropout": -0.1}, "input_dropout"),
        ({"name": "mlp", "widths": "300"}, "widths"),
        ({"name": "mlp", "widths": [300, 0]}, "widths"),
        ({"name": "resnet-cifar", "depth": 21}, "6n\\+2"),
        ({"name": "resnet-cifar", "width": 0}, "width"),
        ({"name": "mlp", "num_classes": 0}, "num_classes"),
        ({"name": "mlp", "input_shape": (28, 28)}, "input_shape"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(TorchslimError, match=pattern) as err:
        create_model(**kwargs)
    assert "\n" not in str(err.value)


def test_mlp_layer_order_and_dropout() -> None:
    model = create_model("mlp", input_shape=(1, 8, 8), widths=[32, 16], dropout=0.5, input_dropout=0.2)
    names = [name for name, _ in model.named_children()]
    assert names == ["flatten", "input_drop", "fc1", "relu1", "drop1", "fc2", "relu2", "drop2", "fc3"]
    assert model.input_drop.p == 0.2 and model.drop1.p == 0.5
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    # No dropout asked for: no Dropout modules at all (nothing for ONNX export to carry).
    assert not any(isinstance(m, nn.Dropout) for m in create_model("mlp", widths=[8]).modules())


def test_resnet_structure() -> None:
    model = create_model("resnet-cifar", input_shape=(1, 28, 28), depth=8, width=0.5)
    assert model.conv1.in_channels == 1
    # Option B: exactly two 1×1 projections, where stages 2 and 3 halve the resolution and double the channels.
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(8, 16, (2, 2)), (16, 32, (2, 2))]
    assert model.fc.in_features == 32
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    for depth in (8, 20, 32, 56):
        blocks = [name for name, _ in create_model(f"resnet{depth}").named_modules() if name.count(".") == 1]
        assert len(blocks) == 3 * (depth - 2) // 6  # 3 stages × n blocks
        assert n_params(create_model(f"resnet{depth}")) == n_params(create_model("resnet-cifar", depth=depth))


def test_list_models_and_help() -> None:
    assert list_models("resnet*") == ["resnet-cifar", "resnet20", "resnet32", "resnet56", "resnet8"]
    assert "431K" in MODELS.help("lenet5")
    # Input shapes from YAML arrive as lists.
    assert create_model("lenet5", input_shape=[1, 28, 28])(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
