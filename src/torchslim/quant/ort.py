"""Post-training int8 quantization executed by ONNX Runtime's quantizer; the result runs in ONNX Runtime.

The model is exported with the inputs its task describes (float images, int64 token ids, several named inputs), and
the calibration batches are fed in the dtypes the exported file declares.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.export.onnx import export_onnx, ort_session
from torchslim.io import atomic_path
from torchslim.quant.config import DynamicInt8Config, StaticInt8Config
from torchslim.tasks import Task


def _calibration_batches(calibration: Any, cfg: StaticInt8Config, seed: int) -> list:
    """The inputs the calibrator sees: `calibration_batches` batches of `calibration_batch_size` random rows (seeded)
    of a tensor or a mapping of row-aligned tensors; or the first `calibration_batches` batches of a DataLoader /
    re-iterable of ``(inputs, labels)`` batches, as the loader makes them."""
    from torchslim.training.loop import iter_batches, split_inputs

    if isinstance(calibration, (torch.Tensor, Mapping)):
        rows_of = next(iter(calibration.values())) if isinstance(calibration, Mapping) else calibration
        g = torch.Generator().manual_seed(seed)
        n = min(len(rows_of), cfg.calibration_batches * cfg.calibration_batch_size)
        rows = torch.randperm(len(rows_of), generator=g)[:n]
        picked = ({k: v[rows] for k, v in calibration.items()} if isinstance(calibration, Mapping)
                  else calibration[rows])
        return split_inputs(picked, cfg.calibration_batch_size)
    return [x for x, _ in itertools.islice(iter_batches(calibration), cfg.calibration_batches)]


def _calibration_reader(calibration: Any, cfg: StaticInt8Config, seed: int, session: Any):
    from onnxruntime.quantization import CalibrationDataReader

    from torchslim.export.onnx import ort_feed

    batches = _calibration_batches(calibration, cfg, seed)
    if not batches:
        raise TorchslimError("static int8 quantization: no calibration batches were given")

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches to the calibrator, each input in the dtype the ONNX file declares."""

        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else ort_feed(session, batch)

    return Reader()


@contextlib.contextmanager
def _quantizable_onnx(model: nn.Module, input_shape: Sequence[int] | None = None, *, task: Task | None = None,
                      example: Any = None) -> Iterator[Path]:
    """`model` exported to a temporary ONNX file, shape-inferred and optimized (e.g. batch norm folded into conv)
    as ORT's quantizer advises; the file disappears after the block."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prep = Path(tmp) / "fp32.onnx", Path(tmp) / "prep.onnx"
        export_onnx(model, fp32, example, input_shape=input_shape, task=task)
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        yield prep


def quantize_static_int8(model: nn.Module, cfg: StaticInt8Config, calibration: Any, out_path: str | os.PathLike,
                         input_shape: Sequence[int] | None = None, seed: int = 0, *, task: Task | None = None,
                         example: Any = None) -> Path:
    """Export `model`, calibrate on training inputs and write a QDQ int8 ONNX model to `out_path` (atomically).

    `calibration` is a tensor or a mapping of tensors (random rows are drawn, seeded) or a DataLoader of
    ``(inputs, labels)`` batches (its first ``cfg.calibration_batches`` batches). The export's example inputs come
    from `example`, `task`, or `input_shape` (see :func:`~torchslim.export.export_onnx`); by default the first
    calibration batch.

    Example:
        >>> quantize_static_int8(model, StaticInt8Config(), data.train.tensors[0], "m.int8.onnx", (1, 28, 28))  # doctest: +SKIP
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    if example is None and task is None and input_shape is None:
        example = _first_inputs(calibration)
    out_path = Path(out_path)
    with _quantizable_onnx(model, input_shape, task=task, example=example) as prep:
        reader = _calibration_reader(calibration, cfg, seed, ort_session(prep))
        with atomic_path(out_path) as dst, _quiet_ort_logging():
            quantize_static(str(prep), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method)
    return out_path


def quantize_dynamic_int8(model: nn.Module, cfg: DynamicInt8Config, out_path: str | os.PathLike,
                          input_shape: Sequence[int] | None = None, *, task: Task | None = None,
                          example: Any = None) -> Path:
    """Export `model` and write a dynamically quantized (int8 weights) ONNX model to `out_path` (atomically).
    The export's example inputs come from `example`, `task` or `input_shape` (see
    :func:`~torchslim.export.export_onnx`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    with _quantizable_onnx(model, input_shape, task=task, example=example) as prep:
        with atomic_path(out_path) as dst, _quiet_ort_logging():
            quantize_dynamic(str(prep), str(dst), per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=_matching_nodes(prep, cfg.exclude))
    return out_path


def _matching_nodes(path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the ONNX graph's nodes that match any of the glob `patterns`; a pattern matching none is an error
    naming a few of the node names there are (a typo must not silently quantize everything)."""
    if not patterns:
        return []
    import fnmatch

    import onnx

    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.name]
    matched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            quantizable = [n for n in names if n.rsplit("/", 1)[-1].startswith(("MatMul", "Gemm", "Conv"))]
            raise TorchslimError(f"exclude pattern {pattern!r} matches no node of the exported graph; its "
                                 f"MatMul/Gemm/Conv nodes include: {', '.join(quantizable[:6]) or '(none)'}")
        matched += [n for n in hits if n not in matched]
    # quantize_dynamic first rewrites each Gemm as a MatMul named `<gemm>_MatMul` (plus an Add): exclude that too.
    return matched + [f"{n}_MatMul" for n in matched if n.rsplit("/", 1)[-1].startswith("Gemm")]


def _first_inputs(data: Any) -> Any:
    """One batch of `data`'s inputs (a tensor, a mapping, a loader), to export the model with; None if it is empty."""
    from torchslim.training.loop import iter_batches

    first = next(iter_batches(data, batch_size=1), None)
    return None if first is None else first[0]


class _quiet_ort_logging:
    """ORT's quantizer logs every tensor at INFO; keep the run's output readable."""

    def __enter__(self):
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.WARNING)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self._level)


def quantize(model: nn.Module, cfg: StaticInt8Config | DynamicInt8Config, data: Any, path: str | os.PathLike,
             *, name: str = "int8", seed: int = 0, task: Task | None = None, calibration: Any = None):
    """Quantize `model` to int8 for ONNX Runtime and return the deployable :class:`~torchslim.artifact.Artifact`.

    `data` is a DataBundle: static quantization calibrates on ``data.train``, the file is exported with
    ``data.task``'s inputs (int64 token ids for text), and the artifact's
    :class:`~torchslim.quant.export.QuantizationRecord` (``art.info["quantization"]``) holds its top-1 agreement
    with `model` on ``data.test`` (``vs_fp32``). Or `data` is a DataLoader / re-iterable of ``(inputs, labels)``
    batches (or None): the agreement is measured on it, static quantization calibrates on its first
    ``cfg.calibration_batches`` batches, and the export takes its first batch's inputs unless `task` is given.
    `calibration` (a tensor, a mapping of tensors or a loader) replaces the calibration data in either case.

    Example:
        >>> art = quantize(model, StaticInt8Config(calibration_batches=32), data, "runs/x/int8.onnx")  # doctest: +SKIP
        >>> art = quantize(text_model, DynamicInt8Config(), test_loader, "text.int8.onnx", task=task)  # doctest: +SKIP
    """
    from torchslim.artifact import Artifact
    from torchslim.export.onnx import OnnxVerification
    from torchslim.quant.export import QuantizationRecord, ort_kernels
    from torchslim.records import as_info

    if isinstance(data, Task):  # quantize(model, cfg, task, path): the task alone, nothing to calibrate or check on
        task, data = data, None
    if hasattr(data, "train") and hasattr(data, "test"):  # a DataBundle
        task = task or getattr(data, "task", None)
        check = data.test.tensors[0] if hasattr(data.test, "tensors") else data.test
        if calibration is None:
            calibration = data.train.tensors[0] if hasattr(data.train, "tensors") else data.train
        input_shape = getattr(data, "input_shape", None) if task is None else None
    else:
        check, input_shape = data, None
        calibration = data if calibration is None else calibration
    if calibration is None and isinstance(cfg, StaticInt8Config):
        raise TorchslimError("quantize: static int8 needs calibration data; give `data` (a DataBundle or a loader) "
                             "or calibration=")
    example = None if task is not None or input_shape is not None else _first_inputs(
        calibration if calibration is not None else check)
    if example is None and task is None and input_shape is None:
        raise TorchslimError("quantize: no inputs to export the model with; give `data`, calibration= or task=")
    if isinstance(cfg, StaticInt8Config):
        quantize_static_int8(model, cfg, calibration, path, input_shape, seed=seed, task=task, example=example)
        mode = "static"
    else:
        quantize_dynamic_int8(model, cfg, path, input_shape, task=task, example=example)
        mode = "dynamic"
    vs_fp32 = OnnxVerification.measure(model, path, check) if check is not None else None
    # The node types ONNX Runtime runs after its graph optimizations: which integer kernels it chose (the report's).
    info = as_info(QuantizationRecord(mode=mode, config=cfg.model_dump(), vs_fp32=vs_fp32,
                                      kernels=ort_kernels(path)))
    return Artifact(name, "quantize", "onnxruntime", Path(path), model, info)
