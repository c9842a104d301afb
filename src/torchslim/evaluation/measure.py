"""The measurements behind the report: accuracy, parameters, MACs, file size and latency of one artifact.

Every number is taken from the artifact as it ships: accuracy and latency by running it in its own runtime
(PyTorch eager or ONNX Runtime), size from the file a user would download, parameters and MACs from the module.

Example:
    >>> run = make_runner(artifact, threads=1)                      # doctest: +SKIP
    >>> acc, errors, logits = accuracy(run, data.test)              # doctest: +SKIP
    >>> latency(run, data.input_shape, batch_size=1)                # doctest: +SKIP
    {'p50': 0.061, 'p90': 0.066, 'runs': 16000}
"""
from __future__ import annotations

import gc
import lzma
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError, unknown_choice

Runner = Callable[[np.ndarray], np.ndarray]
"""Maps an input batch (float32, N×C×H×W) to logits (N×classes), both numpy."""

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
    """A function that runs ``artifact`` in its runtime on a float32 numpy batch and returns the logits.

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

    def run(x: np.ndarray) -> np.ndarray:
        # The thread count is process-wide in PyTorch; re-assert it in case something changed it since.
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if not x.flags.writeable:  # torch.from_numpy warns on read-only arrays
            x = x.copy()
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif hasattr(out, "logits"):  # Hugging Face style output objects
            out = out.logits
        return out.float().numpy()

    return run


def _ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    if not path.is_file():
        raise TorchslimError(f"ONNX file not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: graph-optimizer notices are noise in a report run
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def accuracy(runner: Runner, dataset: torch.utils.data.Dataset, batch_size: int = 256) -> tuple[float, int, np.ndarray]:
    """Top-1 accuracy (a fraction), the number of errors, and the logits (N×classes) of ``runner`` on ``dataset``.

    Example:
        >>> acc, errors, logits = accuracy(make_runner(artifact, 1), data.test)   # doctest: +SKIP
    """
    logits, labels = [], []
    for x, y in _batches(dataset, batch_size):
        logits.append(np.asarray(runner(x.numpy())))
        labels.append(y.numpy())
    if not labels:
        raise TorchslimError("cannot measure accuracy on an empty test set")
    all_logits = np.concatenate(logits)
    y = np.concatenate(labels)
    errors = int((all_logits.argmax(axis=1) != y).sum())
    return 1.0 - errors / len(y), errors, all_logits


def _batches(dataset: torch.utils.data.Dataset, batch_size: int):
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:  # TensorDataset: slice directly, much faster than per-sample collation
        x, y = tensors[0], tensors[1]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size].float(), y[i : i + batch_size]
        return
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield x.float(), y


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of ``model``; shared parameters count once.

    For layers pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) the nonzero count is taken
    from the masked weight the layer actually uses, not from the dense ``weight_orig``.

    Example:
        >>> count_params(nn.Linear(4, 3))
        (15, 15)
    """
    params = nonzero = 0
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            effective = p
            if name.endswith("_orig") and isinstance(getattr(module, name[: -len("_orig")], None), torch.Tensor):
                effective = getattr(module, name[: -len("_orig")])
            nonzero += int(torch.count_nonzero(effective.detach()))
    return params, nonzero


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on ONE sample of shape ``input_shape`` (no batch dimension).

    Counted: ``nn.Conv1d/2d/3d`` (output elements × in_channels/groups × kernel elements) and ``nn.Linear``
    (output elements × in_features, so leading dimensions such as a sequence count). Not counted: element-wise
    ops, activations, pooling, normalization (BN) and bias additions; they are a small share for conv/linear
    networks and depend on fusion in the runtime. Zero weights count too: this is the dense cost.

    Example:
        >>> count_macs(nn.Linear(4, 3), (4,))
        12
    """
    total = 0

    def conv_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    first = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=first.device if first is not None else "cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


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
    input_shape: Sequence[int],
    batch_size: int,
    *,
    warmup: int = LatencyConfig.warmup,
    min_runs: int = LatencyConfig.min_runs,
    max_runs: int = LatencyConfig.max_runs,
    max_seconds: float = LatencyConfig.max_seconds,
    seed: int = LatencyConfig.seed,
) -> dict[str, float | int]:
    """Latency of one runner alone: ``{"p50": ms, "p90": ms, "runs": n}`` over individually timed calls.

    A fixed seeded random batch; ``warmup`` untimed calls; then calls timed one by one until both ``min_runs``
    calls and ``max_seconds`` have passed, or ``max_runs`` calls. To compare artifacts, use
    :func:`measure_latencies`, which times them interleaved.

    Example:
        >>> latency(make_runner(artifact, 1), (1, 28, 28), batch_size=1)    # doctest: +SKIP
        {'p50': 0.061, 'p90': 0.066, 'runs': 16000}
    """
    x = _random_input(input_shape, batch_size, seed)
    for _ in range(warmup):
        runner(x)
    return _summary(_timed_calls(runner, x, min_runs, max_runs, max_seconds))


def measure_latencies(runners: Sequence[Runner], input_shape: Sequence[int], config: LatencyConfig) -> list[dict[str, dict]]:
    """Latency of several runners, interleaved: one ``{batch: {"p50", "p90", "runs"}}`` per runner, in order.

    Timing each artifact in its own block lets a noisy moment (another process, a frequency change, thermal
    throttling) land on one artifact only and skew the ratios. So, for each batch size, the budget is split
    into ``config.rounds`` rounds; each round times every artifact for its slice of the budget (starting with a
    different artifact each round), and the samples of all rounds are pooled per artifact. Any noise is then
    spread over all artifacts alike.

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
        x = _random_input(input_shape, batch_size, config.seed)
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


def _timed_calls(runner: Runner, x: np.ndarray, min_runs: int, max_runs: int, max_seconds: float) -> list[int]:
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
