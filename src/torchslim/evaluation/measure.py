"""The measurements behind the report: accuracy, parameters, MACs, file size and latency of one artifact.

Every number is taken from the artifact as it ships: accuracy and latency by running it in its own runtime
(PyTorch eager or ONNX Runtime), size from the file a user would download, parameters and MACs from the module.
Inputs are numpy arrays of any dtype (float32 images, int64 token ids), or a dict of them for a model with several
named inputs; latency runs on the task's example inputs.

Example:
    >>> run = make_runner(artifact, threads=1)                      # doctest: +SKIP
    >>> acc, errors, logits = accuracy(run, data.test)              # doctest: +SKIP
    >>> latency(run, data.task, batch_size=1)                       # doctest: +SKIP
    {'p50': 0.061, 'p90': 0.066, 'runs': 16000}
"""
from __future__ import annotations

import gc
import lzma
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError, unknown_choice
from torchslim.models.counting import count_macs, count_params  # noqa: F401  (re-exported: part of evaluation's API)
from torchslim.tasks import ImageClassification, Task, logits_of

ArrayInputs = Union[np.ndarray, Mapping[str, np.ndarray]]
Runner = Callable[[ArrayInputs], np.ndarray]
"""Maps an input batch (an array: float32 N×C×H×W images, int64 N×L token ids...; or a dict of arrays by input name)
to logits (N×classes), numpy."""

_RUNTIMES = ("pytorch", "onnxruntime")


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured; the defaults keep one small artifact (batch 1 and 64) under ~2.5 s.

    ``max_seconds`` is the time budget per artifact and batch size; timing goes on until both ``min_runs`` calls
    were timed and the budget is spent, or ``max_runs`` calls were timed. The budget is split over ``rounds``
    interleaved rounds (see :func:`measure_latencies`). ``seed`` fixes the random input.

    Example:
        >>> LatencyConfig(max_seconds=0.5, batch_sizes=(1, 32), threads=4).threads
        4
    """

    warmup: int = 5
    min_runs: int = 20
    max_runs: int = 2000
    max_seconds: float = 1.0
    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int = 1
    rounds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept a list from a recipe or JSON, but store a tuple so the config stays hashable.
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        checks = {
            "warmup": (self.warmup, isinstance(self.warmup, int) and self.warmup >= 0, "an integer >= 0"),
            "min_runs": (self.min_runs, isinstance(self.min_runs, int) and self.min_runs >= 1, "an integer >= 1"),
            "max_runs": (
                self.max_runs,
                isinstance(self.max_runs, int) and self.max_runs >= self.min_runs,
                f"an integer >= min_runs ({self.min_runs})",
            ),
            "max_seconds": (
                self.max_seconds,
                isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0,
                "a number > 0",
            ),
            "batch_sizes": (
                self.batch_sizes,
                len(self.batch_sizes) > 0
                and len(set(self.batch_sizes)) == len(self.batch_sizes)
                and all(isinstance(b, int) and b >= 1 for b in self.batch_sizes),
                "a non-empty list of distinct integers >= 1",
            ),
            "threads": (self.threads, isinstance(self.threads, int) and self.threads >= 1, "an integer >= 1"),
            "rounds": (self.rounds, isinstance(self.rounds, int) and self.rounds >= 1, "an integer >= 1"),
        }
        for name, (value, ok, want) in checks.items():
            if not ok:
                raise TorchslimError(f"latency.{name} = {value!r} is invalid; it must be {want}")


def make_runner(artifact: Artifact, threads: int) -> Runner:
    """A function that runs ``artifact`` in its runtime on a numpy batch (or a dict of them) and returns the logits.

    Example:
        >>> run = make_runner(artifact, threads=1)                  # doctest: +SKIP
        >>> run(np.zeros((8, 1, 28, 28), np.float32)).shape         # doctest: +SKIP
        (8, 10)
    """
    if artifact.runtime == "pytorch":
        if artifact.model is None:
            raise TorchslimError(f"artifact '{artifact.name}' has runtime 'pytorch' but no model to run")
        return _torch_runner(artifact.model, threads)
    if artifact.runtime == "onnxruntime":
        return _ort_runner(Path(artifact.path), threads)
    raise unknown_choice(f"runtime of artifact '{artifact.name}'", artifact.runtime, _RUNTIMES)


def _torch_runner(model: nn.Module, threads: int) -> Runner:
    model.eval()
    torch.set_num_threads(threads)

    def run(x: ArrayInputs) -> np.ndarray:
        # The thread count is process-wide in PyTorch; re-assert it in case something changed it since.
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            if isinstance(x, Mapping):
                out = model(**{k: _as_tensor(v) for k, v in x.items()})
            else:
                out = model(_as_tensor(x))
        return logits_of(out).float().numpy()  # a tuple's first entry, or `.logits` of a Hugging Face output

    return run


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    if not x.flags.writeable:  # torch.from_numpy warns on read-only arrays
        x = x.copy()
    # Floating inputs run in float32 (the model's dtype); integer inputs (token ids) keep theirs.
    dtype = np.float32 if np.issubdtype(x.dtype, np.floating) else None
    return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))


def _ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    from torchslim.export.onnx import _ORT_DTYPES

    if not path.is_file():
        raise TorchslimError(f"ONNX file not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: graph-optimizer notices are noise in a report run
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    # Each input in the dtype the file declares: float32 images, int64 token ids.
    dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
    first = next(iter(dtypes))

    def run(x: ArrayInputs) -> np.ndarray:
        if isinstance(x, Mapping):
            missing = [n for n in dtypes if n not in x]
            if missing:
                raise TorchslimError(f"ONNX model {path.name} needs inputs {list(dtypes)}; missing: {missing}")
            return session.run(None, {n: np.ascontiguousarray(x[n], dtype=t) for n, t in dtypes.items()})[0]
        return session.run(None, {first: np.ascontiguousarray(x, dtype=dtypes[first])})[0]

    return run


def accuracy(runner: Runner, dataset: Any, batch_size: int = 256) -> tuple[float, int, np.ndarray]:
    """Top-1 accuracy (a fraction), the number of errors, and the logits (N×classes) of ``runner`` on ``dataset``:
    a TensorDataset, a dataset of (x, y) samples, or a DataLoader / re-iterable of ``(inputs, labels)`` batches.

    Example:
        >>> acc, errors, logits = accuracy(make_runner(artifact, 1), data.test)   # doctest: +SKIP
    """
    logits, labels = logits_and_labels(runner, dataset, batch_size)
    errors = int((logits.argmax(axis=1) != labels).sum())
    return 1.0 - errors / len(labels), errors, logits


def logits_and_labels(runner: Runner, dataset: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The logits (N×classes) of ``runner`` on every input of ``dataset`` (see :func:`accuracy`), and the labels."""
    from torchslim.training.loop import iter_batches

    logits, labels = [], []
    for x, y in iter_batches(dataset, batch_size):
        if y is None:
            raise TorchslimError("the test data has no labels: each batch must be (inputs, labels, ...)")
        logits.append(np.asarray(runner(to_numpy(x))))
        labels.append(y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
    if not labels:
        raise TorchslimError("cannot measure accuracy on an empty test set")
    return np.concatenate(logits), np.concatenate(labels)


def to_numpy(x: Any) -> ArrayInputs:
    """A batch's inputs as numpy: floating tensors as float32, integer ones (token ids) in their own dtype; a mapping
    of tensors as a dict of arrays."""
    if isinstance(x, Mapping):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return (x.float() if x.is_floating_point() else x).detach().cpu().numpy()
    return np.asarray(x)


def example_batch(inputs: Sequence[int] | Task, batch_size: int, seed: int = 0) -> ArrayInputs:
    """The fixed random batch latency is timed on: for an image task (or one sample's shape) standard normal float32
    from numpy's seeded generator; for any other task its ``example_inputs(batch_size, seed)`` (token ids...).

    Example:
        >>> example_batch((1, 8, 8), 4).shape
        (4, 1, 8, 8)
    """
    if isinstance(inputs, ImageClassification):
        return _random_input(inputs.input_shape, batch_size, seed)
    if isinstance(inputs, Task):
        return to_numpy(inputs.example_inputs(batch_size, seed))
    return _random_input(inputs, batch_size, seed)


def memory_sizes(model: nn.Module) -> tuple[int, int]:
    """(bytes, lzma bytes) of ``model``'s state dict serialized as safetensors in memory: the file
    :func:`torchslim.save_checkpoint` would write, for a model that has no file yet. A layer pruned with
    ``torch.nn.utils.prune`` counts as it would ship, its masked weight alone (not the dense ``weight_orig`` plus
    ``weight_mask``), so its zeros show in the lzma size.

    Example:
        >>> memory_sizes(nn.Linear(4, 3))[0] > 15 * 4
        True
    """
    from safetensors.torch import save

    # Cloned (safetensors refuses tensors that share memory) and with save_checkpoint's metadata: the same bytes.
    state = {k: v.detach().contiguous().clone() for k, v in _shipped_state(model).items()}
    data = save(state, metadata={"format": "pt"})
    return len(data), len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def _shipped_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every ``torch.nn.utils.prune`` reparametrization (``<name>_orig`` and ``<name>_mask``)
    replaced by the masked tensor the layer uses, under ``<name>``."""
    state = dict(model.state_dict())
    for prefix, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            name = getattr(hook, "_tensor_name", None)  # a torch.nn.utils.prune method
            key = f"{prefix}.{name}" if prefix else name
            if name is not None and f"{key}_orig" in state and f"{key}_mask" in state:
                del state[f"{key}_orig"], state[f"{key}_mask"]
                state[key] = getattr(module, name)
    return state


def file_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, lzma bytes) of the file at ``path``: what a user ships, and what downloading it costs.

    The lzma size uses preset 9 | PRESET_EXTREME (``xz -9e``), compressed in memory.

    Example:
        >>> file_sizes("runs/lenet/student.onnx")                   # doctest: +SKIP
        (246112, 221380)
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"artifact file not found: {path}")
    data = path.read_bytes()
    return len(data), len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def latency(
    runner: Runner,
    input_shape: Sequence[int] | Task,
    batch_size: int,
    *,
    warmup: int = LatencyConfig.warmup,
    min_runs: int = LatencyConfig.min_runs,
    max_runs: int = LatencyConfig.max_runs,
    max_seconds: float = LatencyConfig.max_seconds,
    seed: int = LatencyConfig.seed,
) -> dict[str, float | int]:
    """Latency of one runner alone: ``{"p50": ms, "p90": ms, "runs": n}`` over individually timed calls.

    A fixed seeded random batch (:func:`example_batch`: of one sample's ``input_shape``, or of a task's inputs);
    ``warmup`` untimed calls; then calls timed one by one until both ``min_runs`` calls and ``max_seconds`` have
    passed, or ``max_runs`` calls. To compare artifacts, use :func:`measure_latencies`, which times them interleaved.

    Example:
        >>> latency(make_runner(artifact, 1), (1, 28, 28), batch_size=1)    # doctest: +SKIP
        {'p50': 0.061, 'p90': 0.066, 'runs': 16000}
    """
    x = example_batch(input_shape, batch_size, seed)
    for _ in range(warmup):
        runner(x)
    return _summary(_timed_calls(runner, x, min_runs, max_runs, max_seconds))


def measure_latencies(runners: Sequence[Runner], input_shape: Sequence[int] | Task, config: LatencyConfig
                      ) -> list[dict[str, dict]]:
    """Latency of several runners, interleaved: one ``{batch: {"p50", "p90", "runs"}}`` per runner, in order.

    Timing each artifact in its own block lets a noisy moment (another process, a frequency change, thermal
    throttling) land on one artifact only and skew the ratios. So, for each batch size, the budget is split
    into ``config.rounds`` rounds; each round times every artifact for its slice of the budget (starting with a
    different artifact each round), and the samples of all rounds are pooled per artifact. Any noise is then
    spread over all artifacts alike. The batch is :func:`example_batch` of ``input_shape`` (one sample's shape, or
    a task).

    Example:
        >>> measure_latencies([run_a, run_b], (1, 28, 28), LatencyConfig())   # doctest: +SKIP
        [{'1': {'p50': 0.06, 'p90': 0.07, 'runs': 2000}, '64': {...}}, {...}]
    """
    n, rounds = len(runners), config.rounds
    slice_seconds = config.max_seconds / rounds
    slice_min = math.ceil(config.min_runs / rounds)
    slice_max = max(slice_min, config.max_runs // rounds)
    results: list[dict[str, dict]] = [{} for _ in runners]
    for batch_size in config.batch_sizes:
        x = example_batch(input_shape, batch_size, config.seed)
        for run in runners:
            for _ in range(config.warmup):
                run(x)
        samples: list[list[int]] = [[] for _ in runners]
        for r in range(rounds):
            for k in range(n):
                i = (r + k) % n
                # One untimed call first: after another model ran, the caches are cold, which is a cost of
                # interleaving, not of this artifact.
                runners[i](x)
                samples[i] += _timed_calls(runners[i], x, slice_min, slice_max, slice_seconds)
        for i in range(n):
            results[i][str(batch_size)] = _summary(samples[i])
    return results


def _random_input(input_shape: Sequence[int], batch_size: int, seed: int) -> np.ndarray:
    # Random rather than zeros: some kernels (and sparse or quantized paths) are faster on zeros.
    return np.random.default_rng(seed).standard_normal((batch_size, *input_shape), dtype=np.float32)


def _timed_calls(runner: Runner, x: ArrayInputs, min_runs: int, max_runs: int, max_seconds: float) -> list[int]:
    """Durations (ns) of individual calls until min_runs and max_seconds are both reached, or max_runs."""
    budget_ns = int(max_seconds * 1e9)
    times: list[int] = []
    # A garbage collection triggered by one artifact's garbage would otherwise land in some later timing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while len(times) < max_runs:
            t0 = time.perf_counter_ns()
            runner(x)
            t1 = time.perf_counter_ns()
            times.append(t1 - t0)
            if len(times) >= min_runs and t1 - start >= budget_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _summary(times_ns: Sequence[int]) -> dict[str, float | int]:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    return {"p50": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "runs": len(ms)}
