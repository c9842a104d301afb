"""Feed-forward neurons removed to a latency budget: the width every transformer block keeps is chosen from the
same measured latency tables as channel pruning (:class:`~torchslim.prune.latency.LatencyTable`), not from a count.

A block's feed-forward part at width w is ``down(act(up(x)))``: one Linear cell h→w (two for a gated model) and one
w→h, each timed on the block's real input shape (sequence length × hidden size) at the table's batch size, in the
runtime the model ships in. The whole model is timed once as it is (T0, exported to ONNX for ONNX Runtime); the
latency at width w is predicted as ``T0 − blocks · (ffn(W) − ffn(w))``. The widest width on the grid (multiples of
`step`) whose prediction meets the target is kept (:func:`~torchslim.prune.transformer.prune_ffn_`: the same width in
every block, so a Hugging Face config still describes the model), and the pruned model is timed for real; when it
misses the target by more than the tolerance, the next narrower width is tried, and when none is left the call fails
with one line that says how far the feed-forward layers alone can go.

    info = prune_ffn_to_latency_(student, calibration=batches, example_inputs=ids[:1], latency_reduction=1.5)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError, unknown_choice
from torchslim.prune.latency import RUNTIMES, LatencyTable
from torchslim.prune.transformer import attention_layers, ffn_layers, prune_ffn_, prune_heads_
from torchslim.tasks import Task


def _hidden_input(model: nn.Module, example_inputs: Any, layer: nn.Module | None = None) -> tuple[int, int]:
    """(sequence length, hidden size) of `layer`'s input (default: the first feed-forward layer) on
    `example_inputs`."""
    layer = layer if layer is not None else ffn_layers(model)[0][0][0]
    seen: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model.eval()
            model(**example_inputs) if isinstance(example_inputs, Mapping) else model(example_inputs)
    finally:
        hook.remove()
    if not seen or len(seen[0]) != 3:
        raise TorchslimError("pruning to a latency target: the transformer layers did not see a batch × sequence × "
                             "hidden input on the example inputs; give token ids of the length the model will be "
                             "run at")
    return seen[0][1], seen[0][2]


def time_models(models: list[nn.Module], example_inputs: Any, runtime: str, threads: int, seconds: float = 1.0,
                rounds: int = 5) -> list[float]:
    """p50 latency (ms) of whole models on `example_inputs` (a tensor or a mapping of tensors, batch included),
    interleaved, in `runtime` (ONNX Runtime: each exported first, as it ships)."""
    from torchslim.evaluation.measure import LatencyConfig, _ort_runner, _torch_runner, measure_latencies
    from torchslim.export.onnx import export_onnx

    inputs = dict(example_inputs) if isinstance(example_inputs, Mapping) else example_inputs
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    batch = int(first.shape[0])
    torch_threads = torch.get_num_threads()
    config = LatencyConfig(warmup=3, min_runs=10, max_runs=100_000, max_seconds=seconds, batch_sizes=(batch,),
                           threads=threads, rounds=rounds)

    try:
        with tempfile.TemporaryDirectory(prefix="torchslim-ffn-latency-") as folder:
            if runtime == "onnxruntime":
                runners = [_ort_runner(export_onnx(copy.deepcopy(m).eval(), Path(folder) / f"m{i}.onnx", inputs),
                                       threads) for i, m in enumerate(models)]
            else:
                runners = [_torch_runner(m.eval(), threads) for m in models]
            timings = measure_latencies(runners, _GivenInputs(inputs=inputs), config)
    finally:
        torch.set_num_threads(torch_threads)
    return [float(t[str(batch)]["p50"]) for t in timings]


@dataclasses.dataclass
class _GivenInputs(Task):
    """measure_latencies draws its batch from a task: this one hands it the inputs the caller gave."""
    inputs: Any = None

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> Any:
        return self.inputs


def _cells(hidden: int, seq: int, n_ups: int, act: str, width: int) -> list[tuple[str, int, int]]:
    up = json.dumps({"op": "Linear", "input": [seq], "per_channel": 1, "bias": True, "bn": None, "act": act},
                    sort_keys=True)
    down = json.dumps({"op": "Linear", "input": [seq], "per_channel": 1, "bias": True, "bn": None, "act": None},
                      sort_keys=True)
    return [(up, hidden, width)] * n_ups + [(down, width, hidden)]


def _check_target(latency_reduction: float | None, latency_ms: float | None, runtime: str, step: int,
                  what: str) -> None:
    if runtime not in RUNTIMES:
        raise unknown_choice("latency runtime", runtime, RUNTIMES)
    if (latency_reduction is None) == (latency_ms is None):
        raise TorchslimError(f"{what}: give exactly one of latency_reduction (e.g. 1.5) or latency_ms")
    if latency_reduction is not None and not latency_reduction > 1:
        raise TorchslimError(f"latency_reduction {latency_reduction}: must be > 1 (1.5 = 1.5× faster)")
    if not isinstance(step, int) or step < 1:
        raise TorchslimError(f"step {step!r}: must be a whole number ≥ 1")


def _batch_of(example_inputs: Any) -> int:
    first = next(iter(example_inputs.values())) if isinstance(example_inputs, Mapping) else example_inputs
    return int(first.shape[0])


def _to_latency(model: nn.Module, example_inputs: Any, *, unit: str, full: int, grid: list[int],
                part_ms: dict[int, float], blocks: int, prune: Callable[[nn.Module, int], dict],
                latency_reduction: float | None, latency_ms: float | None, runtime: str, threads: int,
                seconds: float, tolerance: float, table: LatencyTable, rest: str, noun: str) -> dict[str, Any]:
    """The search both transformer parts share: predict the model's time at each size on the grid from the table
    (``T0 − blocks · (part(full) − part(n))``), keep the largest size that meets the target, time it for real, and
    go narrower (up to 3 tries) while the measurement misses by more than the tolerance."""
    base = time_models([model], example_inputs, runtime, threads, seconds)[0]
    target = latency_ms if latency_ms is not None else base / latency_reduction
    predicted = {n: base - blocks * (part_ms[full] - part_ms[n]) for n in grid}
    fits = [n for n in grid if predicted[n] <= target]
    record: dict[str, Any] = {"runtime": runtime, "threads": threads, "batch_size": _batch_of(example_inputs),
                              "blocks": blocks, "base_ms": base, "target_ms": target,
                              f"predicted_ms_by_{unit}": predicted}
    if not fits:
        raise TorchslimError(
            f"latency target {target:.4g} ms is out of reach of the {rest}: with {grid[0]} of {full} {noun} per "
            f"block the model is predicted at {predicted[grid[0]]:.4g} ms (now {base:.4g} ms; the rest of the time "
            f"is the other layers); drop layers (keep_layers) or give a smaller reduction")
    tried = []
    original = copy.deepcopy(model)
    for n in sorted(fits, reverse=True)[:3]:
        candidate = copy.deepcopy(original)
        info = prune(candidate, n)
        measured = time_models([candidate], example_inputs, runtime, threads, seconds)[0]
        tried.append({"kept": n, "predicted_ms": predicted[n], "measured_ms": measured})
        if measured <= target * (1 + tolerance):
            break
    else:
        raise TorchslimError(
            f"latency target {target:.4g} ms missed: "
            + ", ".join(f"{t['kept']} {noun} measured {t['measured_ms']:.4g} ms" for t in tried)
            + f" (tolerance {tolerance:.0%}); give a smaller reduction or a larger tolerance")
    prune(model, tried[-1]["kept"])
    record["table"] = {"measured_cells": table.measured, "cached_cells": table.loaded,
                       "timing_seconds": round(table.seconds, 2)}
    record.update({"kept": tried[-1]["kept"], "predicted_ms": tried[-1]["predicted_ms"],
                   "measured_ms": tried[-1]["measured_ms"], "measured_reduction": base / tried[-1]["measured_ms"],
                   "tried": tried, "criterion": info["criterion"]})
    return record


def prune_ffn_to_latency_(model: nn.Module, *, example_inputs: Any, calibration: Iterable | None = None,
                          latency_reduction: float | None = None, latency_ms: float | None = None,
                          runtime: str = "onnxruntime", threads: int = 1, step: int = 64, tolerance: float = 0.05,
                          criterion: str = "activation", pad_id: int = 0, seconds: float = 1.0,
                          cache_dir: str | os.PathLike | None | bool = None, table: LatencyTable | None = None
                          ) -> dict[str, Any]:
    """Remove feed-forward neurons (the same number in every block) until the model runs `latency_reduction`× faster
    than now, or in `latency_ms`, in `runtime` on `example_inputs` (token ids at the batch size and length it will be
    run at); in place. Returns the record: the curve of predicted latency per width, the width kept, the predicted and
    measured latency, and the table's cells timed and read from the cache.

    Example:
        >>> info = prune_ffn_to_latency_(student, example_inputs=ids[:1], calibration=batches,
        ...                              latency_reduction=1.5)                                   # doctest: +SKIP
        >>> info["kept"], info["measured_ms"], info["target_ms"]                                    # doctest: +SKIP
    """
    _check_target(latency_reduction, latency_ms, runtime, step, "prune_ffn_to_latency_")
    layers = ffn_layers(model)
    width = layers[0][1].in_features
    seq, hidden = _hidden_input(model, example_inputs)
    table = table or LatencyTable(runtime, threads, _batch_of(example_inputs), cache_dir=cache_dir,
                                  cell_seconds=seconds / 10)
    n_ups = len(layers[0][0])
    grid = sorted({*range(step, width, step), width})
    cells = {w: _cells(hidden, seq, n_ups, "GELU" if n_ups == 1 else "SiLU", w) for w in grid}
    table.ensure([c for w in grid for c in cells[w]])
    ffn = {w: sum(table.cell(*c) for c in cells[w]) for w in grid}
    record = _to_latency(
        model, example_inputs, unit="width", full=width, grid=grid, part_ms=ffn, blocks=len(layers),
        prune=lambda m, w: prune_ffn_(m, keep=w, calibration=calibration, criterion=criterion, pad_id=pad_id),
        latency_reduction=latency_reduction, latency_ms=latency_ms, runtime=runtime, threads=threads,
        seconds=seconds, tolerance=tolerance, table=table, rest="feed-forward layers", noun="neurons")
    return {**record, "width": width, "sequence_length": seq}


def prune_heads_to_latency_(model: nn.Module, *, example_inputs: Any, calibration: Iterable | None = None,
                            latency_reduction: float | None = None, latency_ms: float | None = None,
                            runtime: str = "onnxruntime", threads: int = 1, tolerance: float = 0.05,
                            criterion: str = "activation", pad_id: int = 0, seconds: float = 1.0,
                            cache_dir: str | os.PathLike | None | bool = None, table: LatencyTable | None = None
                            ) -> dict[str, Any]:
    """Remove attention heads (the same number in every block; whole groups in a grouped-query model) until the
    model runs `latency_reduction`× faster than now, or in `latency_ms`, in `runtime` on `example_inputs`; in place.
    A block's attention at h heads is one table cell (its query/key/value and output layers and the attention itself,
    on the block's real sequence × hidden input), so the prediction and the search are those of
    :func:`prune_ffn_to_latency_`. Returns the same record with ``predicted_ms_by_heads``.

    Example:
        >>> info = prune_heads_to_latency_(student, example_inputs=ids[:1], calibration=batches,
        ...                                latency_reduction=1.2)                                 # doctest: +SKIP
        >>> info["kept"], info["heads"], info["measured_ms"]                                       # doctest: +SKIP
    """
    _check_target(latency_reduction, latency_ms, runtime, 1, "prune_heads_to_latency_")
    layers = attention_layers(model)
    a = layers[0]
    group = a.heads // a.kv_heads
    seq, hidden = _hidden_input(model, example_inputs, a.query)
    table = table or LatencyTable(runtime, threads, _batch_of(example_inputs), cache_dir=cache_dir,
                                  cell_seconds=seconds / 10)
    causal = bool(getattr(a.module, "is_causal", type(a.module).__name__ == "CausalSelfAttention"))
    signature = json.dumps({"op": "Attention", "input": [seq], "head_dim": a.head_dim, "causal": causal,
                            "group": group}, sort_keys=True)
    grid = list(range(group, a.heads + 1, group))
    table.ensure([(signature, hidden, n) for n in grid])
    attention = {n: table.cell(signature, hidden, n) for n in grid}
    record = _to_latency(
        model, example_inputs, unit="heads", full=a.heads, grid=grid, part_ms=attention, blocks=len(layers),
        prune=lambda m, n: prune_heads_(m, keep=n, calibration=calibration, criterion=criterion, pad_id=pad_id),
        latency_reduction=latency_reduction, latency_ms=latency_ms, runtime=runtime, threads=threads,
        seconds=seconds, tolerance=tolerance, table=table, rest="attention heads", noun="heads")
    return {**record, "heads": a.heads, "head_dim": a.head_dim, "sequence_length": seq}
