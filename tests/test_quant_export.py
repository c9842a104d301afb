"""export_qdq_verified: the QDQ file ONNX Runtime runs, checked against the fake-quant model and the float one."""
import numpy as np
import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant import QuantConfig, export_qdq, export_qdq_verified, ptq


def _model_and_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x


def test_ort_agrees_with_the_fake_quant_model_and_runs_integer_kernels(tmp_path):
    from torchslim.export import ort_logits, ort_session
    from torchslim.training.loop import predict

    model, x = _model_and_inputs()
    qmodel = ptq(model, QuantConfig(calibration_batches=2), x)
    info = export_qdq_verified(qmodel, model, tmp_path / "q.onnx", x, example_inputs=torch.zeros(1, 1, 8, 8))
    assert set(info) == {"verification", "vs_fp32", "kernels"}
    v, f = info["verification"], info["vs_fp32"]
    assert v["samples"] == f["samples"] == 200
    # ORT computes what the fake-quant model computes: the same grids, integer kernels instead of float ones.
    assert v["top1_agreement"] == 1.0 and v["max_abs_diff"] < 1e-4
    assert f["top1_agreement"] >= 0.95 and 1e-3 < f["max_abs_diff"] < 0.2  # int8 is close to fp32, not equal
    assert info["kernels"].get("QLinearConv") == 1 and info["kernels"].get("QGemm") == 1
    assert "Conv" not in info["kernels"] and "Gemm" not in info["kernels"]
    # The recorded numbers are those of the file on disk.
    onnx = ort_logits(ort_session(tmp_path / "q.onnx"), x)
    assert v["max_abs_diff"] == pytest.approx(float(np.abs(predict(qmodel, x).numpy() - onnx).max()))


def test_example_inputs_and_input_shape_export_the_same_model(tmp_path):
    from torchslim.export import ort_logits, ort_session

    model, x = _model_and_inputs()
    qmodel = ptq(model, QuantConfig(calibration_batches=2), x)
    a = export_qdq(qmodel, tmp_path / "a.onnx", (1, 8, 8))
    b = export_qdq(qmodel, tmp_path / "b.onnx", example_inputs=x[:3])
    assert np.array_equal(ort_logits(ort_session(a), x), ort_logits(ort_session(b), x))
    with pytest.raises(TorchslimError, match="export_qdq: give exactly one of input_shape"):
        export_qdq(qmodel, tmp_path / "c.onnx")
    with pytest.raises(TorchslimError, match="export_qdq: give exactly one of input_shape"):
        export_qdq(qmodel, tmp_path / "c.onnx", (1, 8, 8), example_inputs=x[:1])


def test_dynamic_int8_leaves_excluded_nodes_in_float(tmp_path):
    """`exclude` keeps the named MatMul in float (one integer MatMul fewer); a pattern matching nothing is an error."""
    import onnx

    import torchslim as ts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(8, 16)

    def integer_nodes(path):
        return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMulInteger",
                                                                                    "DynamicQuantizeMatMul")]

    full = ts.quantize(model, ts.DynamicInt8Config(), [(x, torch.zeros(8))], tmp_path / "all.onnx")
    names = [n.name for n in onnx.load(str(tmp_path / "all.onnx")).graph.node]
    assert len(integer_nodes(full.path)) == 2, names
    part = ts.quantize(model, ts.DynamicInt8Config(exclude=["/2/*"]), [(x, torch.zeros(8))],
                       tmp_path / "part.onnx")
    assert len(integer_nodes(part.path)) == 1
    with pytest.raises(TorchslimError, match="matches no node"):
        ts.quantize(model, ts.DynamicInt8Config(exclude=["*nonexistent*"]), [(x, torch.zeros(8))],
                    tmp_path / "bad.onnx")
