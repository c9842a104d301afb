"""ONNX export and its verification against PyTorch.

The example inputs that trace the model decide the ONNX inputs: a tensor becomes one input (``input``, or the task's
input name), a mapping of tensors one input per key (the model is called as ``model(**inputs)``), each with its own
dtype (int64 token ids stay int64). Runners here feed every input in the dtype the file declares.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_path
from torchslim.records import Record, register
from torchslim.tasks import Task, forward, logits_of

INPUT_NAME, OUTPUT_NAME = "input", "logits"

# ONNX tensor types as onnxruntime spells them, and the numpy dtype to feed each.
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


class _Outputs(nn.Module):
    """`model` called with its inputs as keywords (in `names` order) and reduced to its logits, for the exporter,
    which passes inputs by position and wants tensors out (a Hugging Face output object is neither)."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None) -> None:
        super().__init__()
        self.model, self.names = model, list(names) if names is not None else None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return logits_of(self.model(*inputs))
        return logits_of(self.model(**dict(zip(self.names, inputs))))


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Any = None, *,
                input_shape: Sequence[int] | None = None, task: Task | None = None, opset: int = 17) -> Path:
    """Write `model` (eval mode) as ONNX, atomically, with a dynamic batch axis (and sequence axis for token ids).

    The example inputs that trace it come from, in this order: `example` (a tensor or a mapping of tensors with a
    batch axis; or a DataLoader or ``(inputs, labels)`` batch, whose first inputs are taken),
    ``task.example_inputs(1)``, or zeros of `input_shape` (one sample's shape, without the batch axis: ``(1, 28, 28)``; also accepted in
    `example`'s place, as before). Input names and dynamic axes are the task's when given (``task.input_names``,
    ``task.dynamic_axes()``); else ``input`` (a tensor) or the mapping's keys, each with a dynamic batch axis, and a
    dynamic sequence axis (axis 1) for integer N×L inputs. The output is ``logits``.

    Example:
        >>> export_onnx(model, "runs/x/model.onnx", (1, 28, 28))                       # doctest: +SKIP
        >>> export_onnx(text_model, "text.onnx", task=data.task)                        # doctest: +SKIP
        >>> export_onnx(hf_model, "hf.onnx", {"input_ids": ids, "attention_mask": mask})   # doctest: +SKIP
    """
    path = Path(path)
    if _is_shape(example):  # export_onnx(model, path, (1, 28, 28)): the shape, positionally
        example, input_shape = None, tuple(example)
    inputs = _example_inputs(example, task, input_shape)
    model = model.eval()
    out = _run_once(model, inputs, input_shape)
    if isinstance(inputs, Mapping):
        names = list(inputs)
        args = tuple(inputs.values())
        module: nn.Module = _Outputs(model, names)
    else:
        names = list(task.input_names) if task is not None else [INPUT_NAME]
        if len(names) != 1:
            raise TorchslimError(f"export_onnx: task '{task.name}' has inputs {names}; give `example` as a mapping of "
                                 f"them")
        args = (inputs,)
        # A tuple or a Hugging Face output object: export the logits alone.
        module = model if isinstance(out, torch.Tensor) else _Outputs(model, None)
    task_axes = task.dynamic_axes() if task is not None else {}
    tensors = dict(zip(names, args))
    dynamic_axes = {n: task_axes.get(n, _default_axes(tensors[n])) for n in names}
    dynamic_axes[OUTPUT_NAME] = task_axes.get(OUTPUT_NAME, {0: "batch"})
    with atomic_path(path) as tmp, warnings.catch_warnings(), _eager_attention(model):
        # The TorchScript exporter needs no onnxscript and handles every model we ship; its deprecation notice is noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # Tracing an nn.LSTM warns that its shape arithmetic is traced as constants; the sequence axis stays dynamic
        # (verified against PyTorch at other lengths), so the notice is noise too.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, input_names=names,
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes)
    return path


@contextlib.contextmanager
def _eager_attention(model: nn.Module):
    """Hugging Face models export with their plain ("eager") attention, restored afterwards. The sdpa path traces to
    extra masking ops (Where, IsNaN) that ONNX Runtime runs slower, for the same outputs."""
    switched = []
    for m in model.modules():
        config = getattr(m, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if current not in (None, "eager") and hasattr(m, "set_attn_implementation"):
            try:
                m.set_attn_implementation("eager")
            except (ValueError, ImportError):  # a model without an eager path keeps its own
                continue
            switched.append((m, current))
    try:
        yield
    finally:
        for m, current in switched:
            m.set_attn_implementation(current)


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and len(value) > 0 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in value)


def _example_inputs(example: Any, task: Task | None, input_shape: Sequence[int] | None):
    if example is not None:
        if isinstance(example, (torch.Tensor, Mapping)):
            return example
        if isinstance(example, (tuple, list)) and example and isinstance(example[0], (torch.Tensor, Mapping)):
            return example[0]  # an (inputs, labels, ...) batch
        if isinstance(example, Iterable):  # a DataLoader or batches: the first batch's inputs
            from torchslim.training.loop import iter_batches

            first = next(iter_batches(example), None)
            if first is None:
                raise TorchslimError("export_onnx: the example loader gave no batches")
            return first[0]
        raise TorchslimError(f"export_onnx: example must be a tensor, a mapping of tensors, a batch or a DataLoader, "
                             f"got {type(example).__name__}")
    if task is not None:
        return task.example_inputs(1)
    if input_shape is not None:
        return torch.zeros(1, *input_shape)
    raise TorchslimError("export_onnx needs example inputs: give example= (a tensor, a mapping or a loader), task=, "
                         "or input_shape= (one sample's shape, without the batch axis)")


def _default_axes(x: torch.Tensor) -> dict[int, str]:
    if not x.is_floating_point() and x.dim() == 2:  # token ids N×L: batches of any size and any length
        return {0: "batch", 1: "sequence"}
    return {0: "batch"}


def _shape_text(inputs) -> str:
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
    return str(tuple(inputs.shape))


def _run_once(model: nn.Module, inputs, input_shape: Sequence[int] | None) -> Any:
    """`model`'s output on the example, so that a wrong shape is one clear line rather than the exporter's trace."""
    try:
        with torch.no_grad():
            return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    except Exception as e:  # noqa: BLE001 - any failure here means the example does not fit the model
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    hint = ""
    if input_shape is not None and len(input_shape) > 1 and input_shape[0] == 1:
        try:  # the usual mistake: the batch axis included in input_shape
            with torch.no_grad():
                forward(model, torch.zeros(1, *input_shape[1:]))
            hint = f"; input_shape excludes the batch axis: did you mean {tuple(input_shape[1:])}?"
        except Exception:  # noqa: BLE001
            pass
    raise TorchslimError(f"export_onnx: {type(model).__name__} fails on example inputs of shape "
                         f"{_shape_text(inputs)} ({reason}){hint}") from None


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


def ort_feed(session, x: Any) -> dict[str, np.ndarray]:
    """The feed dict for `session`: `x` (an array or tensor: the first input; a mapping: by name) in each input's
    declared dtype (float32 for images, int64 for token ids).

    Example:
        >>> ort_feed(ort_session("text.onnx"), {"input_ids": ids})["input_ids"].dtype   # doctest: +SKIP
        dtype('int64')
    """
    declared = session.get_inputs()
    if isinstance(x, Mapping):
        missing = [i.name for i in declared if i.name not in x]
        if missing:
            raise TorchslimError(f"the ONNX model needs inputs {[i.name for i in declared]}; missing: {missing}")
        return {i.name: _as_array(x[i.name], i.type) for i in declared}
    return {declared[0].name: _as_array(x, declared[0].type)}


def _as_array(x: Any, onnx_type: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=_ORT_DTYPES.get(onnx_type, np.float32))


def ort_logits(session, x: Any, batch_size: int = 512) -> np.ndarray:
    """Logits of an ONNX Runtime session on `x`, in batches: a tensor or array, a mapping of them (one per ONNX input),
    or a DataLoader / re-iterable of ``(inputs, labels)`` batches. Each input is fed in its declared dtype."""
    from torchslim.training.loop import iter_batches

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif isinstance(x, Mapping):
        x = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in x.items()}
    out = [session.run(None, ort_feed(session, xb))[0] for xb, _ in iter_batches(x, batch_size)]
    return np.concatenate(out) if out else np.empty((0,), np.float32)


def compare_logits(reference: np.ndarray, other: np.ndarray) -> dict:
    """Max |Δlogit| and top-1 agreement between two runs of the same inputs."""
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
            "samples": int(len(reference))}


def verify_onnx(model: nn.Module, path: str | os.PathLike, x: Any, threads: int = 1) -> dict:
    """Run the same inputs through PyTorch and ONNX Runtime; report max |Δlogit| and top-1 agreement. `x` is a
    tensor, a mapping of tensors, or a DataLoader of ``(inputs, labels)`` batches."""
    from torchslim.training.loop import predict

    return compare_logits(predict(model, x).numpy(), ort_logits(ort_session(path, threads), x))


@register
@dataclasses.dataclass
class OnnxVerification(Record):
    """How closely an ONNX file computes what its reference computes, on the same inputs (:func:`compare_logits`):
    ``max_abs_diff`` (max |Δlogit|), ``top1_agreement`` (a fraction) and ``samples``. An `export` stage reports it
    (ONNX Runtime vs PyTorch); a quantization record holds one per reference.

    Example:
        >>> OnnxVerification(2e-6, 1.0, 360).summary()
        [('ONNX verification', 'max |ONNX − PyTorch| = 2e-06'), ('top-1 agreement', '100.00 % on 360 test inputs')]
    """

    kind = "onnx_verification"
    max_abs_diff: float
    top1_agreement: float
    samples: int | None = None

    @classmethod
    def measure(cls, model: nn.Module, path: str | os.PathLike, x: Any, threads: int = 1) -> OnnxVerification:
        """:func:`verify_onnx` as a record."""
        return cls.from_json(verify_onnx(model, path, x, threads))

    def agreement_text(self) -> str:
        on = f" on {self.samples:,} test inputs" if self.samples is not None else ""
        return f"{100 * self.top1_agreement:.2f} %{on}"

    def text(self) -> str:
        """One line: ``max |Δlogit| 3.1e-06, top-1 agreement 100.00 % on 360 test inputs``."""
        return f"max |Δlogit| {self.max_abs_diff:.3g}, top-1 agreement {self.agreement_text()}"

    def summary(self) -> list[tuple[str, str]]:
        return [("ONNX verification", f"max |ONNX − PyTorch| = {self.max_abs_diff:.3g}"),
                ("top-1 agreement", self.agreement_text())]
