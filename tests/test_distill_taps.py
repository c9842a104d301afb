"""Feature taps by module name, adapters, and the distilled student staying a plain student."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.distillation import FeatureTaps, KDConfig, distill, make_adapter, match_spatial
from torchslim.errors import TorchslimError
from torchslim.io import load_state_dict, save_checkpoint
from torchslim.models import create_model
from torchslim.training import TrainConfig


def test_taps_capture_the_named_outputs_and_are_removed_on_exit():
    model = create_model("mlp", input_shape=(1, 4, 4), widths=[5, 3])
    x = torch.randn(2, 1, 4, 4)
    with FeatureTaps(model, ["fc1", "relu2"]) as taps:
        logits = model(x)
        assert torch.equal(taps.outputs["fc1"], model.fc1(x.flatten(1)))
        assert torch.equal(taps.outputs["relu2"], torch.relu(model.fc2(torch.relu(model.fc1(x.flatten(1))))))
        assert torch.equal(model.fc3(taps.outputs["relu2"]), logits)
        assert taps.outputs["relu2"].requires_grad  # the graph is kept: a student's features carry gradients
        model(x[:1])
        assert taps.outputs["fc1"].shape[0] == 1  # a new forward replaces the last batch's outputs
    assert taps.outputs == {}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_taps_find_nested_resnet_modules():
    model = create_model("resnet8", input_shape=(1, 8, 8), width=0.25)
    with FeatureTaps(model, ["layer2", "layer3.0.relu1", "flatten"]) as taps:
        model(torch.zeros(3, 1, 8, 8))
        shapes = {n: tuple(t.shape) for n, t in taps.outputs.items()}
    assert shapes == {"layer2": (3, 8, 4, 4), "layer3.0.relu1": (3, 16, 2, 2), "flatten": (3, 16)}


def test_unknown_module_name_suggests_and_lists_valid_names():
    model = create_model("resnet8", input_shape=(1, 8, 8))
    with pytest.raises(TorchslimError) as e:
        FeatureTaps(model, ["layr2"])
    msg = str(e.value)
    assert "unknown module 'layr2' in the model (did you mean 'layer2'?); valid names include: conv1, bn1, relu" in msg
    assert "more)" in msg and len(msg) < 400 and "\n" not in msg


@pytest.mark.slow  # building the first DistributedDataParallel in a process imports torch._dynamo (~4 s)
def test_taps_look_inside_a_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = create_model("mlp", input_shape=(1, 4, 4), widths=[5])
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(2, 1, 4, 4)
        with FeatureTaps(ddp, ["fc1"]) as taps:  # names are the inner module's, not "module.fc1"
            ddp(x)
            assert torch.allclose(taps.outputs["fc1"], model.fc1(x.flatten(1)))
        assert not model.fc1._forward_hooks
    finally:
        dist.destroy_process_group()


def test_adapters_and_spatial_matching():
    conv = make_adapter((2, 16, 8, 8), (2, 32, 4, 4))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (16, 32)
    lin = make_adapter((2, 8), (2, 12))
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (8, 12)
    assert isinstance(make_adapter((2, 8, 4, 4), (2, 8, 2, 2)), nn.Identity)
    with pytest.raises(TorchslimError, match=r"student features \[8\] and teacher features \[8, 4, 4\] cannot be matched"):
        make_adapter((2, 8), (2, 8, 4, 4))
    a = torch.arange(32.0).reshape(1, 2, 4, 4)
    pooled, same = match_spatial(a, torch.zeros(1, 3, 2, 2))
    expected = a.numpy().reshape(1, 2, 2, 2, 2, 2).mean(axis=(3, 5))  # 2×2 block means of the larger map
    assert np.allclose(pooled.numpy(), expected) and same.shape == (1, 3, 2, 2)


def _digits_like(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return SimpleNamespace(train=torch.utils.data.TensorDataset(x, y), val=None)


def test_student_keeps_exactly_the_keys_of_a_plain_student(tmp_path):
    """Adapters and CRD heads train with the student but are not part of it: the saved file is a plain student."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", input_shape=(1, 8, 8), num_classes=3, width=0.5).eval()
    student = create_model("resnet8", input_shape=(1, 8, 8), num_classes=3, width=0.25)
    plain = create_model("resnet8", input_shape=(1, 8, 8), num_classes=3, width=0.25)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    kd = KDConfig(losses=["kd", {"name": "fitnet", "student": "layer2", "teacher": "layer2"},
                          {"name": "crd", "student": "flatten", "teacher": "flatten", "negatives": 8}])
    result = distill(student, teacher, _digits_like(), kd, TrainConfig(epochs=1, batch_size=32), log=lambda m: None)
    assert list(student.state_dict()) == list(plain.state_dict())
    path = save_checkpoint(student, tmp_path / "student.safetensors")
    assert sorted(load_state_dict(path)) == sorted(plain.state_dict())
    plain.load_state_dict(load_state_dict(path))  # loads into a fresh student with strict=True
    assert not torch.equal(before["conv1.weight"], student.state_dict()["conv1.weight"])  # it did train
    assert set(result.history[0]["terms"]) == {"kd", "fitnet", "crd"}
    assert result.history[0]["loss"] == pytest.approx(sum(result.history[0]["terms"].values()), rel=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())  # taps removed
