"""PTQ, QAT and QDQ export on a small ResNet trained on digits in the fixture (conv+BN, residual adds, avg pool)."""
import numpy as np
import onnx
import pytest
import torch

from torchslim.data import load_dataset
from torchslim.distillation import KDConfig
from torchslim.export.onnx import compare_logits, ort_logits, ort_session
from torchslim.models import create_model
from torchslim.quant import QuantConfig, QuantSpec, export_qdq, ort_kernels, ptq, qat
from torchslim.training import TrainConfig, fit
from torchslim.training.loop import predict

pytestmark = pytest.mark.slow

W4A4 = QuantConfig(weight=QuantSpec(bits=4, per_channel=False), activation=QuantSpec(bits=4, symmetric=False))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    model = create_model("resnet-cifar", depth=8, input_shape=data.input_shape)
    fit(model, data.train, data.val, TrainConfig(epochs=4, lr=1e-2), log=lambda s: None)
    return model, data


def _accuracy(model, data) -> float:
    x, y = data.test.tensors
    return (predict(model, x).argmax(1) == y).float().mean().item()


def test_8bit_ptq_loses_at_most_one_point(trained):
    model, data = trained
    assert _accuracy(ptq(model, QuantConfig(), data.train.tensors[0]), data) >= _accuracy(model, data) - 0.01


def test_4bit_is_worse_than_8bit(trained):
    model, data = trained
    x = data.test.tensors[0]
    ref = predict(model, x)
    q8, q4 = ptq(model, QuantConfig(), data.train.tensors[0]), ptq(model, W4A4, data.train.tensors[0])
    err8, err4 = [(predict(q, x) - ref).pow(2).mean().item() for q in (q8, q4)]
    assert err4 > 10 * err8
    assert _accuracy(q4, data) < _accuracy(q8, data)


@pytest.mark.parametrize("cfg", [QuantConfig(), W4A4, QuantConfig(observer="percentile", exclude=["fc"])],
                         ids=["w8a8", "w4a4", "percentile-fc-float"])
def test_qdq_export_keeps_our_grids_and_runs_int8_kernels(trained, cfg, tmp_path):
    model, data = trained
    q = ptq(model, cfg, data.train.tensors[0])
    path = export_qdq(q, tmp_path / "int8.onnx", data.input_shape)
    x = data.test.tensors[0]
    ours, theirs = predict(q, x).numpy(), ort_logits(ort_session(path), x)
    assert compare_logits(ours, theirs)["top1_agreement"] >= 0.995
    # The same grids: most logits agree to float rounding; the rest differ by a 1-LSB flip somewhere upstream (the
    # int8 kernels round ties, e.g. a 2×2 average pool's quarter steps, their own way). A wrong scale moves them all.
    diff = np.abs(ours - theirs)
    assert np.median(diff) < 1e-5
    assert diff.max() < 0.05 * ours.std()

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    dq_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}
    assert dq_inputs and all(inits[name].data_type in int_types for name in dq_inputs)
    float_sizes = [int(np.prod(i.dims)) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT]
    excluded = 64 * 10 + 10 if cfg.exclude else 0  # the float fc weight and bias, when fc is excluded
    assert sum(float_sizes) <= excluded + 64 * 40  # scales only, besides: no float copy of a quantized weight

    kernels = ort_kernels(path)
    assert kernels.get("QLinearConv", 0) == 9 and kernels.get("QLinearAdd", 0) == 3
    assert "Conv" not in kernels and "FusedConv" not in kernels  # every convolution runs in int8
    assert ("Gemm" in kernels) == bool(cfg.exclude) and ("QGemm" in kernels) != bool(cfg.exclude)


def test_qat_improves_4bit_accuracy_over_4bit_ptq(trained):
    model, data = trained
    train = TrainConfig(epochs=2, lr=1e-3)
    ptq_accuracy = _accuracy(ptq(model, W4A4, data.train.tensors[0]), data)
    q, result = qat(model, W4A4, data, train, log=lambda s: None)
    assert len(result.history) == 2
    assert _accuracy(q, data) >= ptq_accuracy + 0.01
    lsq = W4A4.model_copy(update={"learnable": True})
    q_kd, _ = qat(model, lsq, data, train, teacher=model, kd=KDConfig(temperature=4, alpha=0.5), log=lambda s: None)
    assert _accuracy(q_kd, data) >= ptq_accuracy + 0.01
