"""Post-training int8 quantization executed by ONNX Runtime's quantizer; the result runs in ONNX Runtime."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from torchslim.export.onnx import INPUT_NAME, export_onnx
from torchslim.io import atomic_path
from torchslim.quant.config import DynamicInt8Config, StaticInt8Config


def _calibration_reader(x: torch.Tensor, cfg: StaticInt8Config, seed: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds `calibration_batches` random training batches (seeded) to the calibrator."""

        def __init__(self) -> None:
            g = torch.Generator().manual_seed(seed)
            n = min(len(x), cfg.calibration_batches * cfg.calibration_batch_size)
            rows = torch.randperm(len(x), generator=g)[:n]
            self._batches = iter(x[rows].split(cfg.calibration_batch_size))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    return Reader()


@contextlib.contextmanager
def _quantizable_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> Iterator[Path]:
    """`model` exported to a temporary ONNX file, shape-inferred and optimized (e.g. batch norm folded into conv)
    as ORT's quantizer advises; the file disappears after the block."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prep = Path(tmp) / "fp32.onnx", Path(tmp) / "prep.onnx"
        export_onnx(model, fp32, input_shape)
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        yield prep


def quantize_static_int8(model: nn.Module, cfg: StaticInt8Config, calibration_x: torch.Tensor,
                         out_path: str | os.PathLike, input_shape: tuple[int, ...], seed: int = 0) -> Path:
    """Export `model`, calibrate on training inputs and write a QDQ int8 ONNX model to `out_path` (atomically).

    Example:
        >>> quantize_static_int8(model, StaticInt8Config(), data.train.tensors[0], "m.int8.onnx", (1, 28, 28))  # doctest: +SKIP
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    out_path = Path(out_path)
    with _quantizable_onnx(model, input_shape) as prep:
        with atomic_path(out_path) as dst, _quiet_ort_logging():
            quantize_static(str(prep), str(dst), _calibration_reader(calibration_x, cfg, seed),
                            quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method)
    return out_path


def quantize_dynamic_int8(model: nn.Module, cfg: DynamicInt8Config, out_path: str | os.PathLike,
                          input_shape: tuple[int, ...]) -> Path:
    """Export `model` and write a dynamically quantized (int8 weights) ONNX model to `out_path` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    with _quantizable_onnx(model, input_shape) as prep:
        with atomic_path(out_path) as dst, _quiet_ort_logging():
            quantize_dynamic(str(prep), str(dst), per_channel=cfg.per_channel, weight_type=QuantType.QInt8)
    return out_path


class _quiet_ort_logging:
    """ORT's quantizer logs every tensor at INFO; keep the run's output readable."""

    def __enter__(self):
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.WARNING)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self._level)


def quantize(model: nn.Module, cfg: StaticInt8Config | DynamicInt8Config, data, path: str | os.PathLike,
             *, name: str = "int8", seed: int = 0):
    """Quantize `model` to int8 for ONNX Runtime and return the deployable :class:`~torchslim.artifact.Artifact`.

    Static quantization calibrates on `data.train`; the artifact records its top-1 agreement with `model` on
    `data.test`.

    Example:
        >>> art = quantize(model, StaticInt8Config(calibration_batches=32), data, "runs/x/int8.onnx")  # doctest: +SKIP
    """
    from torchslim.artifact import Artifact
    from torchslim.export.onnx import verify_onnx

    if isinstance(cfg, StaticInt8Config):
        quantize_static_int8(model, cfg, data.train.tensors[0], path, data.input_shape, seed=seed)
        mode = "static"
    else:
        quantize_dynamic_int8(model, cfg, path, data.input_shape)
        mode = "dynamic"
    info = {"mode": mode, "config": cfg.model_dump(),
            "verification": verify_onnx(model, path, data.test.tensors[0])}
    return Artifact(name, "quantize", "onnxruntime", Path(path), model, info)
