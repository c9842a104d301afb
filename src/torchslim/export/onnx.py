"""ONNX export and its verification against PyTorch."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchslim.io import atomic_path

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], opset: int = 17) -> Path:
    """Write `model` (eval mode) as ONNX with a dynamic batch axis, atomically.

    Example:
        >>> export_onnx(model, "runs/x/model.onnx", (1, 28, 28))   # doctest: +SKIP
    """
    path = Path(path)
    model = model.eval()
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript and handles every model we ship; its deprecation notice is noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path


def ort_session(path: str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session with a fixed thread count and all graph optimizations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(session, x: torch.Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
    name = session.get_inputs()[0].name
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.concatenate([session.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0]
                           for i in range(0, len(x), batch_size)])


def compare_logits(reference: np.ndarray, other: np.ndarray) -> dict:
    """Max |Δlogit| and top-1 agreement between two runs of the same inputs."""
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
            "samples": int(len(reference))}


def verify_onnx(model: nn.Module, path: str | os.PathLike, x: torch.Tensor, threads: int = 1) -> dict:
    """Run the same inputs through PyTorch and ONNX Runtime; report max |Δlogit| and top-1 agreement."""
    from torchslim.training.loop import predict

    return compare_logits(predict(model, x).numpy(), ort_logits(ort_session(path, threads), x))
