"""Int4 export to ONNX Runtime's MatMulNBits (torchslim.quant.nbits_onnx): the packing against ONNX Runtime's own
blockwise quantizer, and ONNX Runtime's outputs against the fake-quant PyTorch model for GPTQ and AWQ weights."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tiny_lm import TinyGPT

from torchslim.errors import TorchslimError
from torchslim.quant import export_matmul_nbits, pack_matmul_nbits, quantize_groupwise, quantize_weights_

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _calibration(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(n)]


def _export(model: nn.Module, path, example) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notices
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch", 1: "seq"}})


def _run(path, ids: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids.numpy()})[0]


def test_packing_matches_onnxruntime_blockwise_quantizer():
    """ONNX Runtime's own RTN (the C++ kernel behind MatMulNBitsQuantizer) on the same weight gives the same bytes:
    codes low nibble first, per-block scales, packed zero points."""
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    if not hasattr(pybind, "quantize_matmul_4bits"):
        pytest.skip("this onnxruntime has no quantize_matmul_4bits")
    torch.manual_seed(0)
    n, k, block = 48, 192, 32  # 6 blocks per row: the zero points fill 3 bytes
    w = torch.randn(n, k)
    blocks = k // block
    packed = np.zeros((n, blocks, block // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    pybind.quantize_matmul_4bits(packed, np.ascontiguousarray(w.T.numpy()), scales, zero_points, block, n, k, False)
    b, s, z = pack_matmul_nbits(quantize_groupwise(w, 4, block))
    assert b.shape == packed.shape and z.shape == zero_points.shape
    assert np.array_equal(z, zero_points) and np.allclose(s, scales, rtol=1e-6, atol=0)
    assert (b == packed).mean() > 0.999  # a code may differ where w/scale sits on a rounding tie


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_onnxruntime_runs_the_quantized_weights_exactly(method, tmp_path):
    torch.manual_seed(1)
    model = TinyGPT().eval()
    calibration = _calibration()
    result = quantize_weights_(model, calibration, method=method, bits=4, group_size=16, act_order=method == "gptq")
    _export(model, tmp_path / "model.onnx", calibration[0])
    info = export_matmul_nbits(tmp_path / "model.onnx", result, tmp_path / "model.int4.onnx")
    assert set(info["nodes"]) == set(result.layers)
    graph = onnx.load(str(tmp_path / "model.int4.onnx")).graph
    nbits = [node for node in graph.node if node.op_type == "MatMulNBits"]
    assert len(nbits) == 12  # lm_head stays a float MatMul
    assert {a.name: a.i for a in nbits[0].attribute} == {"K": 32, "N": 32, "bits": 4, "block_size": 16}
    assert info["weight_bytes_before"] / info["weight_bytes_after"] > 5
    ids = torch.randint(0, 64, (2, 11))  # another batch size and length than exported with
    with torch.no_grad():
        want = model(ids).numpy()
    got = _run(tmp_path / "model.int4.onnx", ids)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_the_float_models_onnx_gets_the_gptq_codes_not_a_requantization(tmp_path):
    """The ONNX of the float model: each MatMul is matched to its layer and replaced by the GPTQ codes, so ONNX
    Runtime computes what the fake-quant model computes, not the float model."""
    torch.manual_seed(2)
    model = TinyGPT().eval()
    calibration = _calibration()
    _export(model, tmp_path / "float.onnx", calibration[0])
    quantized = copy.deepcopy(model)
    result = quantize_weights_(quantized, calibration, method="gptq", bits=4, group_size=32)
    export_matmul_nbits(tmp_path / "float.onnx", result.layers, tmp_path / "int4.onnx")
    ids = calibration[1]
    with torch.no_grad():
        fake, full = quantized(ids).numpy(), model(ids).numpy()
    got = _run(tmp_path / "int4.onnx", ids)
    assert np.abs(got - fake).max() < 1e-4 * np.abs(fake).max()
    assert np.abs(got - full).max() > 100 * np.abs(got - fake).max()


def test_gemm_with_bias_becomes_matmulnbits_with_bias(tmp_path):
    """A Linear on 2-D inputs exports as Gemm (weight transposed, bias as C): the bias goes to MatMulNBits' input 5."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    result = quantize_weights_(model, None, method="rtn", bits=4, group_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 64),), str(tmp_path / "mlp.onnx"), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert {n.op_type for n in onnx.load(str(tmp_path / "mlp.onnx")).graph.node} >= {"Gemm"}
    export_matmul_nbits(tmp_path / "mlp.onnx", result, tmp_path / "mlp.int4.onnx")
    x = torch.randn(5, 64)
    session = ort.InferenceSession(str(tmp_path / "mlp.int4.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_errors_name_the_layer_and_the_fix(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 64),), str(tmp_path / "mlp.onnx"), dynamo=False)
    three = quantize_weights_(copy.deepcopy(model), None, method="rtn", bits=3, group_size=32)
    with pytest.raises(TorchslimError, match=r"layer '0': MatMulNBits takes 2, 4, 8-bit codes.*3 bits"):
        export_matmul_nbits(tmp_path / "mlp.onnx", three, tmp_path / "out.onnx")
    small = quantize_weights_(copy.deepcopy(model), None, method="rtn", bits=4, group_size=8)
    with pytest.raises(TorchslimError, match=r"power of two of at least 16.*group size is 8"):
        export_matmul_nbits(tmp_path / "mlp.onnx", small, tmp_path / "out.onnx")
    other = {"0": quantize_groupwise(torch.randn(32, 64), 4, 32)}  # a weight that is not in the graph
    with pytest.raises(TorchslimError, match=r"layer '0' \(32x64\) matches no MatMul/Gemm weight"):
        export_matmul_nbits(tmp_path / "mlp.onnx", other, tmp_path / "out.onnx")
