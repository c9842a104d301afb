"""Latency tables: how long each prunable layer takes at each width, timed in the runtime the model ships in; and
structured pruning to a latency budget with them (``ChannelPruneConfig(target="latency")``).

MACs fall in proportion to the channels removed; time does not. ONNX Runtime's CPU convolutions work on blocks of
8 or 16 channels (NCHWc), so a convolution cut from 64 to 49 channels runs as slow as at 64; batch norm, the
activations, the residual adds and the per-call overhead do not shrink with the MACs. So the widths are chosen by
timing the layers, not by counting.

**What one table cell is.** One Conv/Linear layer together with the BatchNorm and the activation module that
directly consume its output (ONNX Runtime fuses them into one kernel; PyTorch runs them as three back-to-back ops),
built fresh at input width ``c_in`` and output width ``c_out`` with random weights, and timed on a random input of
the layer's own per-sample shape (its spatial size, kernel, stride, padding as in the model) at the table's batch
size: the median of interleaved timed calls (:func:`torchslim.evaluation.measure_latencies`). The layer op alone,
not a sub-network with its neighbours, because a layer's time depends on its neighbours only through its input
width, which is the cell's other axis: the cells then compose to any combination of widths (the greedy search below
tries thousands), and one cell serves every layer, and every model, with the same signature (ResNet-56 reuses
ResNet-20's cells: same shapes). A group's latency "in the context of its neighbours" is read off the cells at the
widths its neighbours have: the rows of the layers it feeds out of, at their producers' widths, plus the columns of
the layers it feeds into. What isolated cells miss (the residual adds and pooling, the call overhead each isolated
cell pays once, the layout reorders at the edges of an isolated ONNX graph) is fitted against real timings of the
whole model: predicted = a·Σ cells + b, b from the dense model and a refitted each time the pruned model is timed.
(Measured on this project's 2-core machine, ONNX Runtime at batch 64 on 14×14 and 28×28 inputs: an isolated 3×3
conv of 16 to 32 channels takes 4-19% longer than the same conv inside a chain of them, one of 8 channels 7% less.) A measurement that misses the
prediction also times again the cells the pruned widths rely on: a cell timed at a busy moment is the commoner cause.

**The cache.** Cells are JSON files under ``~/.cache/torchslim/latency`` (``$XDG_CACHE_HOME/torchslim/latency``, or
an explicit folder), one per layer signature, named by a hash of the full key: CPU model string, core count, the
runtime and its version (for ONNX Runtime also the exporter: torch version and opset), threads, batch size and the
layer's shape signature. The file holds that key too and a mismatch is a miss, so a table timed on another CPU or
runtime is never reused.

Example:
    >>> table = LatencyTable("pytorch", threads=1, batch_size=1, cache_dir="runs/latency")          # doctest: +SKIP
    >>> curves = layer_latency_curves(model, torch.zeros(1, 1, 28, 28), table)                     # doctest: +SKIP
    >>> curves["layer3.0.conv1"]                                 # ms of the group's layers at each width
    {8: 0.021, 16: 0.023, 24: 0.031, ...}
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import io
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from torchslim.errors import TorchslimError, unknown_choice

if TYPE_CHECKING:
    from torchslim.prune.structured import ChannelPruneConfig

RUNTIMES = ("onnxruntime", "pytorch")
_FORMAT = 1  # the cache files' layout; a new layout is a new key, so old files are never misread
_OPSET = 17
# Activations that follow a layer and run with it (fused into the convolution by ONNX Runtime).
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.ELU)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# A step of the greedy search must save at least this fraction of the predicted latency: a smaller "saving" is within
# the timing noise of a cell, and taking it would cut channels for nothing.
_MIN_SAVING = 0.003
# After a round is pruned and timed, up to this many more prune-and-time passes close a gap between the prediction
# and the measurement.
_CORRECTIONS = 3
# A group is timed at about this many widths at most: wide ones on a coarser grid, refined around the chosen width.
_MAX_POINTS = 32

# timer(modules, input_shape, seconds) -> p50 ms of each module on a random batch of that per-sample shape.
Timer = Callable[[Sequence[nn.Module], tuple[int, ...], float], list[float]]


# ---------------------------------------------------------------------------------------------------------- the key
def default_cache_dir() -> Path:
    """Where latency tables live unless a folder is given: ``$XDG_CACHE_HOME/torchslim/latency``, else
    ``~/.cache/torchslim/latency``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchslim" / "latency"


def _cpu_name() -> str:
    from torchslim.evaluation import _cpu_name as cpu_name

    return cpu_name()


def latency_key(runtime: str, threads: int, batch_size: int) -> dict[str, Any]:
    """What a latency table's timings are only valid for: the machine (CPU model string, core count, architecture),
    the runtime and its version (ONNX Runtime: also the exporter, torch version and opset), threads and batch size.
    A cached table is used only when its stored key equals this one (plus the layer's signature).

    Example:
        >>> sorted(latency_key("pytorch", 1, 1))
        ['arch', 'batch_size', 'cores', 'cpu', 'format', 'runtime', 'threads', 'version']
    """
    if runtime not in RUNTIMES:
        raise unknown_choice("latency runtime", runtime, RUNTIMES)
    if runtime == "onnxruntime":
        import onnxruntime

        version = f"onnxruntime {onnxruntime.__version__}; exported by torch {torch.__version__}, opset {_OPSET}"
    else:
        version = f"torch {torch.__version__}"
    return {"format": _FORMAT, "cpu": _cpu_name(), "cores": os.cpu_count(), "arch": platform.machine(),
            "runtime": runtime, "version": version, "threads": int(threads), "batch_size": int(batch_size)}


# ------------------------------------------------------------------------------------------------------------ cells
class AttentionCell(nn.Module):
    """The attention of one transformer block with `heads` heads of `head_dim` (`group` query heads per key/value
    head): query/key/value projections from `hidden`, scaled dot-product attention, the output projection. A latency
    table times it as the cell (hidden, heads) of an ``"Attention"`` signature."""

    def __init__(self, hidden: int, heads: int, head_dim: int, causal: bool = False, group: int = 1) -> None:
        super().__init__()
        self.head_dim, self.causal, self.group = head_dim, causal, group
        self.q = nn.Linear(hidden, heads * head_dim)
        self.kv = nn.Linear(hidden, 2 * (heads // group) * head_dim)
        self.out = nn.Linear(heads * head_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N×T×hidden
        q = self.q(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in self.kv(x).chunk(2, dim=-1))
        if self.group > 1:
            k, v = k.repeat_interleave(self.group, dim=1), v.repeat_interleave(self.group, dim=1)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).flatten(2))


def _unit(spec: Mapping[str, Any], cin: int, cout: int) -> nn.Module:
    """The module one cell times: the layer at (cin, cout) plus its BN and activation, random weights, eval mode."""
    g = torch.Generator().manual_seed(cin * 100_003 + cout)
    if spec["op"] == "Attention":  # cin: the hidden size, cout: the heads
        torch.manual_seed(cin * 100_003 + cout)
        return AttentionCell(cin, cout, spec["head_dim"], spec["causal"], spec["group"]).eval()
    if spec["op"] == "Linear":
        layer: nn.Module = nn.Linear(cin * spec["per_channel"], cout, bias=spec["bias"])
    else:
        conv = getattr(nn, spec["op"])
        groups = cin if spec["depthwise"] else 1
        padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        layer = conv(cin, cout, tuple(spec["kernel"]), stride=tuple(spec["stride"]), padding=padding,
                     dilation=tuple(spec["dilation"]), groups=groups, bias=spec["bias"],
                     padding_mode=spec["padding_mode"])
    parts = [layer]
    if spec["bn"]:
        bn = getattr(nn, spec["bn"])(cout)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        parts.append(bn)
    if spec["act"]:
        parts.append(getattr(nn, spec["act"])())
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1, generator=g)
    return nn.Sequential(*parts).eval()


def _unit_input(spec: Mapping[str, Any], cin: int) -> tuple[int, ...]:
    """One sample's input shape for a cell at input width `cin`."""
    if spec["op"] in ("Linear", "Attention"):
        return (*spec["input"], cin * spec.get("per_channel", 1))
    return (cin, *spec["input"])


def runtime_timer(runtime: str, threads: int, batch_size: int) -> Timer:
    """The timer a :class:`LatencyTable` uses unless given one: each module run in `runtime` (ONNX Runtime: exported
    to ONNX first, as a shipped model is) with `threads` threads, on a seeded random batch of `batch_size`, all
    modules interleaved in rounds (:func:`torchslim.evaluation.measure_latencies`); returns the p50 in ms of each.
    PyTorch's process-wide thread count and each module's train/eval mode are restored afterwards.

    Example:
        >>> timer = runtime_timer("pytorch", threads=1, batch_size=8)
        >>> len(timer([nn.Linear(4, 4), nn.Linear(4, 2)], (4,), 0.01))
        2
    """
    if runtime not in RUNTIMES:
        raise unknown_choice("latency runtime", runtime, RUNTIMES)

    def timer(modules: Sequence[nn.Module], input_shape: tuple[int, ...], seconds: float) -> list[float]:
        from torchslim.evaluation.measure import LatencyConfig, _ort_runner, _torch_runner, measure_latencies
        from torchslim.export.onnx import export_onnx

        modes = [m.training for m in modules]
        torch_threads = torch.get_num_threads()
        config = LatencyConfig(warmup=3, min_runs=10, max_runs=100_000, max_seconds=seconds,
                               batch_sizes=(batch_size,), threads=threads, rounds=5)
        try:
            with tempfile.TemporaryDirectory(prefix="torchslim-latency-") as folder:
                if runtime == "onnxruntime":
                    runners = [_ort_runner(export_onnx(m, Path(folder) / f"m{i}.onnx", tuple(input_shape),
                                                       opset=_OPSET), threads) for i, m in enumerate(modules)]
                else:
                    runners = [_torch_runner(m, threads) for m in modules]
                timings = measure_latencies(runners, tuple(input_shape), config)
        finally:
            torch.set_num_threads(torch_threads)
            for m, mode in zip(modules, modes):
                m.train(mode)
        return [t[str(batch_size)]["p50"] for t in timings]

    return timer


class LatencyTable:
    """Measured latencies (ms) of layer cells, per layer signature and (input width, output width), for one
    runtime, thread count and batch size on this machine; cached on disk and timed only when missing.

    ``timer`` (default :func:`runtime_timer`) times cells and whole models; a test passes its own to count calls or
    to fake a machine. ``cell_seconds`` is the timing budget per cell. Counters: ``measured`` (cells timed by this
    object), ``loaded`` (cells read from the cache) and ``seconds`` (time spent timing cells). ``cache_dir=False``
    keeps the table in memory only.

    Example:
        >>> table = LatencyTable("onnxruntime", threads=1, batch_size=64)     # doctest: +SKIP
        >>> table.key["cpu"], table.measured                                   # doctest: +SKIP
        ('AMD EPYC 7B13', 0)
    """

    def __init__(self, runtime: str = "onnxruntime", threads: int = 1, batch_size: int = 1, *,
                 cache_dir: str | os.PathLike | None | bool = None, timer: Timer | None = None,
                 cell_seconds: float = 0.05) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise TorchslimError(f"latency table: threads must be an integer ≥ 1, got {threads!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TorchslimError(f"latency table: batch_size must be an integer ≥ 1, got {batch_size!r}")
        if not cell_seconds > 0:
            raise TorchslimError(f"latency table: cell_seconds must be > 0, got {cell_seconds!r}")
        self.runtime, self.threads, self.batch_size = runtime, threads, batch_size
        self.key = latency_key(runtime, threads, batch_size)
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
        self.timer = timer or runtime_timer(runtime, threads, batch_size)
        self.cell_seconds = float(cell_seconds)
        self.measured = 0
        self.loaded = 0
        self.seconds = 0.0
        self._cells: dict[str, dict[tuple[int, int], float]] = {}
        self._envelope: dict[str, dict[tuple[int, int], float]] = {}  # cell() memo, dropped when cells are added

    def path(self, signature: str) -> Path | None:
        """The cache file of one layer signature (a canonical JSON string): named by a hash of the whole key."""
        if self.cache_dir is None:
            return None
        text = json.dumps({"key": self.key, "layer": json.loads(signature)}, sort_keys=True)
        return self.cache_dir / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"

    def _cells_of(self, signature: str) -> dict[tuple[int, int], float]:
        if signature not in self._cells:
            cells: dict[tuple[int, int], float] = {}
            path = self.path(signature)
            if path is not None and path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = {}
                # The stored key must be ours exactly: a hash collision or an edited file is a miss, never a reuse.
                if data.get("key") == self.key and data.get("layer") == json.loads(signature):
                    cells = {tuple(int(c) for c in k.split(",")): float(v) for k, v in data.get("cells", {}).items()}
                    self.loaded += len(cells)
            self._cells[signature] = cells
        return self._cells[signature]

    def has(self, signature: str, cin: int, cout: int) -> bool:
        """Whether the cell is known (measured or cached) without timing it."""
        return (cin, cout) in self._cells_of(signature)

    def ensure(self, cells: Iterable[tuple[str, int, int]], *, again: bool = False, seconds: float | None = None
               ) -> int:
        """Time the cells not known yet (with ``again``, all of them, replacing what is known: a re-timing when the
        model's real time disagrees with the table), interleaved per input shape, ``seconds`` each (default
        ``cell_seconds``), and write them to the cache; returns how many were timed."""
        missing: dict[tuple[str, int], list[int]] = {}
        for signature, cin, cout in cells:
            if (again or (cin, cout) not in self._cells_of(signature)) and \
                    cout not in missing.get((signature, cin), []):
                missing.setdefault((signature, cin), []).append(cout)
        changed = set()
        for (signature, cin), couts in missing.items():
            spec = json.loads(signature)
            self._cells_of(signature)
            t0 = time.perf_counter()
            ms = self.timer([_unit(spec, cin, c) for c in couts], _unit_input(spec, cin), seconds or self.cell_seconds)
            self.seconds += time.perf_counter() - t0
            self.measured += len(couts)
            # Rounded to the ns as stored: a table read back from the cache gives the very same numbers.
            self._cells[signature].update({(cin, c): round(float(m), 6) for c, m in zip(couts, ms)})
            self._envelope.pop(signature, None)
            changed.add(signature)
        for signature in changed:
            self._save(signature)
        return sum(len(c) for c in missing.values())

    def _save(self, signature: str) -> None:
        path = self.path(signature)
        if path is None:
            return
        from torchslim.io import atomic_write_text

        cells = self._cells[signature]
        data = {"key": self.key, "layer": json.loads(signature),
                "cells": {f"{a},{b}": v for (a, b), v in sorted(cells.items())}}
        try:
            atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only cache folder costs the reuse, not the run
            pass

    def cell(self, signature: str, cin: int, cout: int) -> float:
        """The latency (ms) of one cell, timed now if unknown. The cells of a signature are read as a monotone
        envelope: a cell never costs more than a wider one (zero channels could pad it to that width), so noise
        cannot make a narrower layer look slower."""
        memo = self._envelope.setdefault(signature, {})
        if (cin, cout) not in memo:
            self.ensure([(signature, cin, cout)])
            cells = self._cells[signature]
            memo[(cin, cout)] = min(v for (a, b), v in cells.items() if a >= cin and b >= cout)
        return memo[(cin, cout)]

    def time_models(self, models: Sequence[nn.Module], input_shape: Sequence[int], seconds: float = 1.0
                    ) -> list[float]:
        """p50 latency (ms) of whole models, interleaved, with this table's runtime, threads and batch size."""
        return [float(m) for m in self.timer(list(models), tuple(input_shape), seconds)]


# ----------------------------------------------------------------------------------------------- the model's layout
@dataclasses.dataclass
class _Layer:
    name: str
    signature: str  # canonical JSON of the shape signature: the cache key of its cells
    in_group: str | None  # the group whose width is this layer's input width (None: fixed at cin)
    out_group: str | None  # the group whose width is its output width (None: fixed at cout)
    cin: int
    cout: int
    calls: int = 1


@dataclasses.dataclass
class _Layout:
    """Prunable groups (Torch-Pruning's coupled channels, named by their root layer) and every Conv/Linear layer with
    the group(s) that set its widths."""

    groups: dict[str, int]  # group -> width
    layers: list[_Layer]
    step: int
    graph: Any = None  # the torch_pruning DependencyGraph
    tp_groups: dict[str, Any] = dataclasses.field(default_factory=dict)

    def choices(self, group: str) -> list[int]:
        """The widths a group is searched at: :func:`width_grid` of its width."""
        return width_grid(self.groups[group], self.step)

    def touching(self, group: str) -> list[_Layer]:
        return [layer for layer in self.layers if group in (layer.in_group, layer.out_group)]

    def _widths_of(self, layer: _Layer, widths: Mapping[str, int]) -> tuple[int, int]:
        cin = widths[layer.in_group] if layer.in_group is not None else layer.cin
        cout = widths[layer.out_group] if layer.out_group is not None else layer.cout
        return cin, cout

    def cells(self, widths: Mapping[str, int], layers: Iterable[_Layer] | None = None) -> list[tuple[str, int, int]]:
        return [(layer.signature, *self._widths_of(layer, widths)) for layer in (layers or self.layers)]

    def neighbourhood(self, widths: Mapping[str, int]) -> list[tuple[str, int, int]]:
        """Every cell a one-group change of `widths` reads: the table a greedy step needs."""
        out = self.cells(widths)
        for group in self.groups:
            for w in self.choices(group):
                if w < widths[group]:
                    out += self.cells({**widths, group: w}, self.touching(group))
        return out

    def total(self, table: LatencyTable, widths: Mapping[str, int]) -> float:
        """Σ cells (ms) at `widths`: the uncalibrated prediction."""
        return sum(layer.calls * table.cell(s, a, b) for layer, (s, a, b) in zip(self.layers, self.cells(widths)))

    def group_curve(self, table: LatencyTable, group: str, widths: Mapping[str, int]) -> dict[int, float]:
        """ms of the layers a group touches, at each of its widths, the other groups at `widths`."""
        near = self.touching(group)
        return {w: sum(layer.calls * table.cell(*cell) for layer, cell in
                       zip(near, self.cells({**widths, group: w}, near))) for w in self.choices(group)}


def width_grid(width: int, step: int, max_points: int = _MAX_POINTS) -> list[int]:
    """The widths a layer group of `width` channels is timed and searched at: the multiples of `step` below it, and
    `width` itself (a group no wider than `step` stays as it is). A wide group gets a coarser grid, a multiple of
    `step`, so that it has at most about `max_points` widths; the search then refines its choice on `step`.

    Example:
        >>> width_grid(50, 16)
        [16, 32, 48, 50]
        >>> width_grid(512, 8)[:3], len(width_grid(512, 8))
        ([16, 32, 48], 32)
    """
    coarse = step * max(1, math.ceil(width / (step * max_points)))
    return sorted({*range(coarse, width, coarse), width})


def _signature(module: nn.Module, x: torch.Tensor, bn: nn.Module | None, act: nn.Module | None,
               per_channel: int) -> dict[str, Any]:
    common = {"bias": module.bias is not None, "bn": type(bn).__name__ if bn is not None else None,
              "act": type(act).__name__ if act is not None else None}
    if isinstance(module, nn.Linear):
        return {"op": "Linear", "input": list(x.shape[1:-1]), "per_channel": per_channel, **common}
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    return {"op": type(module).__name__, "input": list(x.shape[2:]), "kernel": list(module.kernel_size),
            "stride": list(module.stride), "padding": module.padding if isinstance(module.padding, str)
            else list(module.padding), "dilation": list(module.dilation), "padding_mode": module.padding_mode,
            "depthwise": depthwise, **common}


def _followers(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, tuple]:
    """For each Conv/Linear layer: (its input, the BN reading its output, the activation reading that, calls)."""
    calls: list[tuple[nn.Module, Any, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0] if args else None, out)))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    found: dict[nn.Module, tuple] = {}
    for i, (mod, x, out) in enumerate(calls):
        if not isinstance(mod, (_ConvNd, nn.Linear)):
            continue
        if mod in found:
            x0, bn, act, n = found[mod]
            found[mod] = (x0, bn, act, n + 1)
            continue
        bn = act = None
        tail = out
        later = calls[i + 1:]
        nxt = next((c for c in later if c[1] is tail), None)
        if nxt is not None and isinstance(nxt[0], _BatchNorm) and nxt[0].num_features == out.shape[1]:
            bn, tail = nxt[0], nxt[2]
            nxt = next((c for c in later if c[1] is tail), None)
        if nxt is not None and isinstance(nxt[0], _ACTIVATIONS):
            act = nxt[0]
        found[mod] = (x, bn, act, 1)
    return found


def _layout(model: nn.Module, example_inputs: torch.Tensor, exclude: Sequence[str] = (), step: int = 8) -> _Layout:
    """The prunable groups of `model` (Torch-Pruning's dependency graph; the classifier's outputs and the groups of
    `exclude`d layers stay) and its Conv/Linear layers with their cell signatures."""
    import torch_pruning as tp

    from torchslim.prune.structured import _classifier

    if not isinstance(example_inputs, torch.Tensor) or not example_inputs.is_floating_point():
        raise TorchslimError("prune_channels with target latency needs a floating-point example input tensor "
                             "(image-like); models fed token ids or several inputs are timed with target macs only")
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    for name, m in model.named_modules():
        if isinstance(m, _ConvNd) and (m.transposed or (m.groups > 1 and not m.groups == m.in_channels ==
                                                        m.out_channels) or not isinstance(m, _CONVS)):
            raise TorchslimError(f"latency tables cover Conv1d/2d/3d (dense or depthwise) and Linear layers; "
                                 f"'{name}' is a {type(m).__name__} with groups={m.groups}; use target macs")
    kept = [m for name, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))
            and any(fnmatch.fnmatch(name, pat) for pat in exclude)]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    groups, tp_groups = {}, {}
    outs: dict[nn.Module, str] = {}
    ins: dict[nn.Module, list[str]] = {}
    for group in graph.get_all_groups(ignored_layers=[*kept, _classifier(model, example_inputs)]):
        root = group[0].dep.target.module
        name = names[root]
        groups[name], tp_groups[name] = len(group[0].idxs), group
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, (_ConvNd, nn.Linear)):
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                outs[m] = name
            elif graph.is_in_channel_pruning_fn(dep.handler) and name not in ins.setdefault(m, []):
                ins[m].append(name)
    order = {n: i for i, n in enumerate(names.values())}  # groups in the model's order (the plot, the record)
    groups = dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))
    tp_groups = {g: tp_groups[g] for g in groups}
    layers = []
    for m, (x, bn, act, calls) in _followers(model, example_inputs).items():
        cin_total = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        cout = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        depthwise = isinstance(m, _ConvNd) and m.groups > 1
        in_group = ins[m][0] if len(ins.get(m, [])) == 1 else None  # fed by a concat of groups: width held fixed
        out_group = outs.get(m)
        if depthwise:  # one width: its channels are its producer's
            in_group = out_group = out_group or in_group
        per_channel, cin = 1, cin_total
        if in_group is not None:
            if cin_total % groups[in_group] or (isinstance(m, _ConvNd) and cin_total != groups[in_group]):
                in_group = None  # an input that is not one group's channels (a reshape we cannot follow)
            else:
                per_channel, cin = cin_total // groups[in_group], groups[in_group]
        spec = _signature(m, x, bn, act, per_channel)
        layers.append(_Layer(names[m], json.dumps(spec, sort_keys=True), in_group, out_group, cin, cout, calls))
    return _Layout(groups, layers, step, graph, tp_groups)


def layer_latency_curves(model: nn.Module, example_inputs: torch.Tensor, table: LatencyTable, *, step: int = 8,
                         exclude: Sequence[str] = ()) -> dict[str, dict[int, float]]:
    """Time (through `table`: cached cells are not timed again) each prunable layer group of `model` at every width
    of its grid (multiples of `step`, and its width), in the context of its neighbours: the other groups at their
    current widths. Returns ``{group: {width: ms}}``, a group named by its first layer, the ms being the summed cells
    of the layers the group's width touches (its layers' outputs, its consumers' inputs). A flat stretch is a
    kernel step: widths on it cost the same.

    Example:
        >>> table = LatencyTable("pytorch", 1, 1, cache_dir=False)
        >>> net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
        >>> sorted(layer_latency_curves(net, torch.zeros(1, 1, 8, 8), table)["0"])
        [8, 16]
    """
    was_training = model.training
    try:
        layout = _layout(model, example_inputs, exclude, step)
        table.ensure(layout.neighbourhood(layout.groups))
        return {g: layout.group_curve(table, g, layout.groups) for g in layout.groups}
    finally:
        model.train(was_training)


def snap_width(curve: Mapping[int, float], width: int, tolerance: float = 0.0) -> int:
    """The widest width of `curve` ({width: ms}) that costs no more than `width` does (within `tolerance`, a
    fraction): a width between grid points costs what the next grid point up costs (kernels pad up to their
    block), and on a flat step the widest width keeps the most channels for the same time.

    Example:
        >>> snap_width({8: 1.0, 16: 1.0, 24: 2.0, 32: 2.0, 40: 3.0}, 17)
        32
    """
    if not curve:
        raise TorchslimError("snap_width: the latency curve is empty")
    grid = sorted(curve)
    above = [w for w in grid if w >= width]
    cost = curve[above[0]] if above else curve[grid[-1]]
    return max(w for w in grid if curve[w] <= cost * (1 + tolerance))


# ----------------------------------------------------------------------------------------------------- the planning
def plan_widths(widths: Mapping[str, int], choices: Mapping[str, Sequence[int]],
                predict: Callable[[Mapping[str, int]], float], target_ms: float, *,
                scores: Mapping[str, Sequence[float]] | None = None, floors: Mapping[str, int] | None = None,
                min_saving: float = 0.0, prepare: Callable[[Mapping[str, int]], Any] | None = None,
                steps: list[dict] | None = None,
                cost: Callable[[str, Mapping[str, int], int], float] | None = None) -> dict[str, int]:
    """Greedy (NetAdapt-style) widths that bring the predicted latency to `target_ms` or below.

    Each step looks, for every group, at its cheapest useful cut: the widest width in ``choices[group]`` below the
    current one (and not below ``floors[group]``) that saves at least `min_saving` × the current latency, which is
    the top of the next lower kernel step (a width just past a step is as slow as the next step up, so it is never
    chosen). It takes the cut that costs least per millisecond saved: by default the importance it removes
    (``scores[group]`` holds one importance per channel, the lowest go first; without scores each channel counts 1);
    with `cost`, ``cost(group, widths, new_width)`` (e.g. the validation loss it adds; negative counts as 0). It
    stops at the first widths predicted at or under `target_ms`. `prepare(widths)` runs before each step (the table
    times the cells the step will read); `steps`, when given a list, receives one dict per step.

    Example:
        >>> plan_widths({"a": 32, "b": 32}, {"a": [8, 16, 24, 32], "b": [8, 16, 24, 32]},
        ...             lambda w: w["a"] + 2 * w["b"], 80)
        {'a': 32, 'b': 24}
    """
    start = dict(widths)
    cur = dict(widths)
    floors = floors or {}
    ranked = {g: sorted(float(s) for s in scores[g]) for g in scores} if scores is not None else {}
    latency = predict(cur)
    while latency > target_ms:
        if prepare is not None:
            prepare(cur)
        best = None
        for group in cur:
            lower = sorted((w for w in choices[group] if w < cur[group] and w >= floors.get(group, 0)), reverse=True)
            for w in lower:
                trial = predict({**cur, group: w})
                saved = latency - trial
                if saved > 0 and saved >= min_saving * latency:
                    gone = ranked.get(group)
                    lost = (max(0.0, float(cost(group, cur, w))) if cost is not None
                            else sum(gone[start[group] - cur[group]:start[group] - w]) if gone is not None
                            else float(cur[group] - w))
                    rank = (lost / saved, -saved)
                    if best is None or rank < best[0]:
                        best = (rank, group, w, trial, lost, saved)
                    break
        if best is None:
            raise TorchslimError(
                f"prune_channels: the latency table predicts {latency:.4g} ms at best with every group at its "
                f"narrowest allowed width, above the target {target_ms:.4g} ms; raise max_pruning_ratio, exclude "
                f"fewer layers, use more rounds or a smaller reduction")
        _, group, w, latency, lost, saved = best
        if steps is not None:
            steps.append({"group": group, "from": cur[group], "to": w, "saved_ms": saved, "cost": lost,
                          "predicted_ms": latency})
        cur[group] = w
    return cur


class _Calibration:
    """predicted = a·Σ cells + b: b from the dense model's real time, a refitted from the dense and the latest real
    timing (anchored at the latest, which is nearest the target), kept within [0.2, 5]. `dense_total()` gives the
    dense model's Σ cells from the table as it is now (cells may have been timed again since)."""

    def __init__(self, dense_total: Callable[[], float], measured: float) -> None:
        self.dense_total, self.measured = dense_total, measured
        self.a, self.b = 1.0, None  # b on first use: a resumed run that replays its rounds reads no cell

    def update(self, total: float, measured: float) -> None:
        s0, m0 = self.dense_total(), self.measured
        self.a = min(5.0, max(0.2, (m0 - measured) / (s0 - total))) if abs(s0 - total) > 0.02 * s0 else 1.0
        self.b = measured - self.a * total

    def __call__(self, total: float) -> float:
        if self.b is None:
            self.b = self.measured - self.dense_total()
        return self.a * total + self.b


def _scores(layout: _Layout, importance: Any) -> dict[str, list[float]]:
    out = {}
    for name, group in layout.tp_groups.items():
        s = importance(group)
        out[name] = [1.0] * layout.groups[name] if s is None else [float(v) for v in s.detach().flatten()]
    return out


class _LossCost:
    """``cost(group, widths, new_width)`` for :func:`plan_widths`: how much the mean cross-entropy on a few fixed
    batches rises when the group goes from ``widths[group]`` to ``new_width`` channels, the others at `widths`.

    Pruning is simulated, not done: the channels that would go (the lowest-scored) are zeroed at the output of every
    layer and batch norm of the group, which is what consumers see once they are removed (a zero channel adds
    nothing, ReLU keeps it zero). NetAdapt fine-tunes every candidate briefly; this takes the loss right after the
    cut instead. A cut's cost is computed once and kept while the other groups change (each step re-scores only the
    group it cut): the interactions between groups are left out, which costs one forward pass per step instead of
    one per group."""

    def __init__(self, model: nn.Module, layout: _Layout, scores: Mapping[str, Sequence[float]], batches: list) -> None:
        self.model, self.layout, self.batches = model, layout, batches
        self.order = {g: sorted(range(n), key=lambda i: (scores[g][i], i)) for g, n in layout.groups.items()}
        self.known: dict[tuple[str, int, int], float] = {}
        self.base: dict[tuple, float] = {}

    def loss(self, widths: Mapping[str, int]) -> float:
        import torch.nn.functional as F

        hooks = []
        for group, width in widths.items():
            n = self.layout.groups[group]
            if width >= n:
                continue
            mask = torch.ones(n)
            mask[self.order[group][:n - width]] = 0
            for dep, _ in self.layout.tp_groups[group]:
                m = dep.target.module
                if isinstance(m, _BatchNorm) or (isinstance(m, (_ConvNd, nn.Linear)) and
                                                 self.layout.graph.is_out_channel_pruning_fn(dep.handler)):
                    hooks.append(m.register_forward_hook(
                        lambda mod, args, out, mask=mask: out * mask.view(1, -1, *[1] * (out.dim() - 2))))
        try:
            with torch.no_grad():
                total = sum(float(F.cross_entropy(self.model(x), y, reduction="sum")) for x, y in self.batches)
        finally:
            for h in hooks:
                h.remove()
        return total / sum(len(y) for _, y in self.batches)

    def __call__(self, group: str, widths: Mapping[str, int], width: int) -> float:
        key = (group, widths[group], width)
        if key not in self.known:
            now = tuple(sorted(widths.items()))
            if now not in self.base:
                self.base[now] = self.loss(widths)
            self.known[key] = self.loss({**widths, group: width}) - self.base[now]
        return self.known[key]


def _loss_batches(data, batches: int) -> list:
    """`batches` fixed batches of 128 for the loss cost: seeded rows of the validation split (the training split
    when there is none)."""
    from torchslim.prune.criteria import training_batches

    split = getattr(data, "val", None)
    split = split if split is not None and len(split) else getattr(data, "train", data)
    return training_batches(split, batches, 128, 0, "latency_cost loss")


def _apply(layout: _Layout, widths: Mapping[str, int], scores: Mapping[str, Sequence[float]]) -> None:
    """Prune every group to its width in `widths`, removing its lowest-scored channels."""
    for name, width in widths.items():
        n = layout.groups[name]
        if width >= n:
            continue
        order = sorted(range(n), key=lambda i: (scores[name][i], i))
        root = layout.tp_groups[name][0]
        layout.graph.get_pruning_group(root.dep.target.module, root.dep.handler, sorted(order[:n - width])).prune()


# ------------------------------------------------------------------------------------------------------- the rounds
def _shared(values: list[int] | None, n: int) -> list[int] | None:
    """Rank 0's plan on every torchrun rank (n widths, or None: no more); an empty rank-0 plan with code -1 says
    rank 0 failed."""
    from torchslim.training import dist

    if not dist.active():
        return values
    t = (torch.tensor([1, *values] if values is not None else [0] * (n + 1), dtype=torch.int64)
         if dist.is_main() else None)
    t = dist.broadcast(t, (n + 1,), torch.int64)
    if int(t[0]) < 0:
        raise TorchslimError("prune_channels: rank 0 failed while timing the model (see its error)")
    return [int(v) for v in t[1:]] if int(t[0]) else None


def _fail_on_all_ranks(n: int) -> None:
    from torchslim.training import dist

    if dist.active() and dist.is_main():
        dist.broadcast(torch.tensor([-1] + [0] * n, dtype=torch.int64), (n + 1,), torch.int64)


def prune_channels_to_latency(model: nn.Module, cfg: ChannelPruneConfig, data, train, *,
                              example_inputs: torch.Tensor, seed: int = 0,
                              checkpoint: Callable[[int], str | os.PathLike | None] | None = None,
                              stage: str = "prune_channels", log: Callable[[str], None] = print,
                              table: LatencyTable | None = None,
                              loss_fn: Callable[..., tuple] | None = None) -> dict:
    """:func:`~torchslim.prune.prune_channels_to_target` for ``cfg.target == "latency"``: remove channels from
    `model` in place until it runs ``cfg.latency_reduction``× faster (or in ``cfg.latency_ms``) in
    ``cfg.latency_runtime`` with ``cfg.threads`` threads at ``cfg.batch_size``, as measured; return the record.

    1. The table: every group's cells in the context of its neighbours (:func:`layer_latency_curves`, cached), and
       the dense model timed for real; its time over ``latency_reduction`` is the target.
    2. ``cfg.rounds`` rounds, each to the same factor of time (like the MAC mode): widths planned by
       :func:`plan_widths` on the calibrated prediction (a cut's cost ``cfg.latency_cost``: the validation loss it
       adds, or the importance it removes; channels ranked by ``cfg.importance``; no group losing more than
       ``max_pruning_ratio`` of its channels in a round; widths on the grid of ``round_to`` or 8), the model
       pruned, timed for real (interleaved with the dense model for a reduction), the prediction recalibrated, and
       up to 3 more passes if the measurement misses the round's target (each after timing the cells it relied on
       again); then ``train.epochs`` of fine-tuning.
    3. The last measurement must meet the budget within ``cfg.latency_tolerance``; else a one-line error with the
       numbers.

    With `checkpoint`, each round's widths are saved beside its checkpoint (``<checkpoint>.plan.pt``) so that a
    resumed run rebuilds the same shapes without timing again. `table` (default: one from the config) may carry an
    injected timer. Under torchrun, rank 0 times and plans; the widths are broadcast.

    Example:
        >>> cfg = ChannelPruneConfig(target="latency", latency_reduction=1.5)                      # doctest: +SKIP
        >>> info = prune_channels_to_latency(model, cfg, data, TrainConfig(epochs=1), example_inputs=x) # doctest: +SKIP
        >>> info["latency"]["measured_reduction"] >= 1.5                                                # doctest: +SKIP
        True
    """
    was_training = model.training
    try:
        return _prune_channels_to_latency(model, cfg, data, train, example_inputs=example_inputs, seed=seed,
                                          checkpoint=checkpoint, stage=stage, log=log, table=table, loss_fn=loss_fn)
    finally:
        model.train(was_training)


def _prune_channels_to_latency(model: nn.Module, cfg: ChannelPruneConfig, data, train, *,
                               example_inputs: torch.Tensor, seed: int,
                               checkpoint: Callable[[int], str | os.PathLike | None] | None, stage: str,
                               log: Callable[[str], None], table: LatencyTable | None,
                               loss_fn: Callable[..., tuple] | None) -> dict:
    from torchslim.models.counting import count_macs, count_params
    from torchslim.prune.structured import CHANNEL_IMPORTANCE, _widths
    from torchslim.training import dist
    from torchslim.training.loop import fit

    if table is None:
        table = LatencyTable(cfg.latency_runtime, cfg.threads, cfg.batch_size, cache_dir=cfg.latency_cache,
                             cell_seconds=cfg.latency_seconds / 20)
    elif (table.runtime, table.threads, table.batch_size) != (cfg.latency_runtime, cfg.threads, cfg.batch_size):
        raise TorchslimError(f"prune_channels: the latency table times {table.runtime}, {table.threads} thread(s), "
                             f"batch {table.batch_size}; the config asks for {cfg.latency_runtime}, {cfg.threads} "
                             f"thread(s), batch {cfg.batch_size}")
    main = dist.is_main()
    counters = (table.measured, table.seconds)
    step = cfg.round_to or 8
    shape = tuple(example_inputs.shape[1:])
    one = example_inputs[:1]
    macs0, params0 = count_macs(model, one), count_params(model)[0]
    layer_widths0 = _widths(model)
    dense = copy.deepcopy(model).eval()
    ckpt = checkpoint or (lambda k: None)
    plan_file = _plan_file(ckpt(1))
    setup = torch.load(plan_file, weights_only=True)["setup"] if plan_file is not None and plan_file.is_file() else None
    layout = _layout(model, example_inputs, cfg.exclude, step)
    widths0 = dict(layout.groups)
    if setup is None:
        setup = {"build": {}, "curves": {}, "dense_ms": None}
        if main:
            t0, m0, l0 = table.seconds, table.measured, table.loaded
            try:
                table.ensure(layout.neighbourhood(widths0))
                curves = {g: layout.group_curve(table, g, widths0) for g in layout.groups}
                dense_ms = table.time_models([dense], shape, cfg.latency_seconds)[0]
            except Exception:
                _fail_on_all_ranks(1)
                raise
            setup = {"build": {"measured_cells": table.measured - m0, "cached_cells": table.loaded - l0,
                               "seconds": round(table.seconds - t0, 3)},
                     "curves": {g: {str(w): ms for w, ms in c.items()} for g, c in curves.items()},
                     "dense_ms": dense_ms}
            log(f"[{stage}] latency table ({cfg.latency_runtime}, {cfg.threads} thread(s), batch {cfg.batch_size}): "
                f"{setup['build']['measured_cells']} cells timed in {setup['build']['seconds']:.1f} s, "
                f"{setup['build']['cached_cells']} from the cache; dense model {dense_ms:.3f} ms")
        _shared([0], 1)  # the other ranks wait for rank 0's timing
    dense_ms = setup["dense_ms"]  # None on the other torchrun ranks: rank 0 alone times
    target_ms = None if dense_ms is None else dense_ms / cfg.latency_reduction if cfg.latency_reduction \
        else cfg.latency_ms
    # Σ cells of the dense model: from the table as it is (a correction may time cells again).
    calibration = _Calibration(lambda: layout.total(table, widths0), dense_ms) if main else None
    rounds, last = [], {}
    for k in range(1, cfg.rounds + 1):
        # The same factor of time each round, as the MAC mode shrinks MACs.
        round_target = None if dense_ms is None else dense_ms * (target_ms / dense_ms) ** (k / cfg.rounds)
        plan_file = _plan_file(ckpt(k))
        saved = torch.load(plan_file, weights_only=True) if plan_file is not None and plan_file.is_file() else None
        if saved is not None:  # resumed: the same widths, in the same passes, without timing
            for planned in saved["passes"]:
                replay = _layout(model, example_inputs, cfg.exclude, step)
                _apply(replay, planned, _scores(replay, CHANNEL_IMPORTANCE.get(cfg.importance)(model, data=data,
                                                                                            cfg=cfg)))
                model.zero_grad(set_to_none=True)
            info = saved["round"]
            if calibration is not None:
                calibration.a, calibration.b = saved["calibration"]
        else:
            info, passes = _prune_round(model, cfg, data, example_inputs, table, step=step, dense=dense,
                                        dense_ms=dense_ms, round_target=round_target, calibration=calibration,
                                        reference=(layout, widths0), stage=stage, k=k, log=log)
            if plan_file is not None and calibration is not None:
                from torchslim.io import atomic_path

                with atomic_path(plan_file) as tmp:
                    torch.save({"setup": setup, "passes": passes, "round": info,
                                "calibration": [calibration.a, calibration.b]}, tmp)
        last = info
        fitted = fit(model, data.train, data.val, train, loss_fn=loss_fn, seed=seed + k, checkpoint=ckpt(k),
                     stage=f"{stage} round {k}", log=log) if train.epochs else None
        rounds.append({**info, "macs": count_macs(model, one), "params": count_params(model)[0],
                       **({"history": fitted.history, "best_epoch": fitted.best_epoch,
                           "best_val_accuracy": fitted.best_val_accuracy} if fitted else {})})
    widths_after = dict(_layout(model, example_inputs, cfg.exclude, step).groups) if rounds else widths0
    measured_ms, reduction, predicted_ms = last.get("measured_ms"), last.get("measured_reduction"), \
        last.get("predicted_ms")
    # Cells timed by the search after the build (0 when resumed: nothing is timed then).
    search_cells = max(0, table.measured - counters[0] - setup["build"].get("measured_cells", 0))
    summary = {"runtime": cfg.latency_runtime, "threads": cfg.threads, "batch_size": cfg.batch_size,
               "latency_reduction": cfg.latency_reduction, "latency_ms": cfg.latency_ms, "target_ms": target_ms,
               "dense_ms": dense_ms, "predicted_ms": predicted_ms, "measured_ms": measured_ms,
               "predicted_reduction": dense_ms / predicted_ms if predicted_ms and dense_ms else None,
               "measured_reduction": reduction, "tolerance": cfg.latency_tolerance,
               "table": {**setup["build"], "search_cells": search_cells,
                         "total_seconds": round(table.seconds - counters[1], 3),
                         "cache": str(table.cache_dir) if table.cache_dir else None, "key": table.key},
               "curves": setup["curves"], "widths": {g: [w, widths_after.get(g, w)] for g, w in widths0.items()}}
    layer_widths = _widths(model)
    result = {"macs_before": macs0, "macs_after": count_macs(model, one), "params_before": params0,
              "params_after": count_params(model)[0],
              "channels": {layer: [layer_widths0[layer], w] for layer, w in layer_widths.items()},
              "rounds": rounds, "prune_channels": cfg.model_dump(), "latency": summary}
    result["macs_reduction"] = result["macs_before"] / result["macs_after"]
    if main and measured_ms is not None:
        missed = (reduction * (1 + cfg.latency_tolerance) < cfg.latency_reduction if cfg.latency_reduction
                  else measured_ms > cfg.latency_ms * (1 + cfg.latency_tolerance))
        if missed:
            want = (f"latency_reduction {cfg.latency_reduction:g}" if cfg.latency_reduction
                    else f"latency_ms {cfg.latency_ms:g}")
            raise TorchslimError(
                f"prune_channels: measured {measured_ms:.4g} ms ({reduction:.2f}x faster than the dense "
                f"{dense_ms:.4g} ms) in {cfg.latency_runtime}, {cfg.threads} thread(s), batch {cfg.batch_size}, "
                f"misses {want} (target {target_ms:.4g} ms, predicted {last.get('predicted_ms', 0):.4g} ms, "
                f"tolerance {cfg.latency_tolerance:g}); time on a quieter machine, raise latency_tolerance, or ask "
                f"for less")
    return result


def _plan_file(checkpoint: str | os.PathLike | None) -> Path | None:
    # `<stage>-round-<k>.plan.pt`: a .pt beside the round's checkpoint, so the run drops it with the checkpoints.
    return None if checkpoint is None else Path(checkpoint).with_suffix(".plan.pt")


def _prune_round(model: nn.Module, cfg: ChannelPruneConfig, data, example_inputs: torch.Tensor,
                 table: LatencyTable, *, step: int, dense: nn.Module, dense_ms: float | None,
                 round_target: float | None, calibration: _Calibration | None,
                 reference: tuple[_Layout, dict[str, int]], stage: str, k: int,
                 log: Callable[[str], None]) -> tuple[dict, list[dict[str, int]]]:
    """One round: plan, prune, time for real, recalibrate, and prune more while the measurement misses the round's
    target (at most _CORRECTIONS more passes). A miss first times again, 4× longer, every cell whose value differs
    between the dense widths (`reference`: the dense model's layout and widths) and the current ones: a cell timed
    at a busy moment is the likeliest reason for a prediction to be off, and the search would keep trusting it.
    Rank 0 (the one with a `calibration`) times and plans. Returns the round's record and the widths of each pass
    (what a resumed run replays)."""
    from torchslim.prune.structured import CHANNEL_IMPORTANCE

    shape = tuple(example_inputs.shape[1:])
    main = calibration is not None
    batches = _loss_batches(data, cfg.importance_batches) if main and cfg.latency_cost == "loss" else None
    passes: list[dict[str, int]] = []
    info: dict[str, Any] = {"target_ms": round_target, "passes": []}
    start: dict[str, int] = {}
    for attempt in range(_CORRECTIONS + 1):
        layout = _layout(model, example_inputs, cfg.exclude, step)
        start = start or dict(layout.groups)
        scores = _scores(layout, CHANNEL_IMPORTANCE.get(cfg.importance)(model, data=data, cfg=cfg))
        model.zero_grad(set_to_none=True)
        planned: dict[str, int] | None = None
        if main:
            try:
                cost = _LossCost(model, layout, scores, batches) if batches is not None else None
                planned = _plan(layout, table, calibration, scores, start, cfg.max_pruning_ratio, round_target, cost)
            except TorchslimError:
                if attempt == 0:
                    _fail_on_all_ranks(len(layout.groups))
                    raise
                # A correction found nothing more to cut: the measurement stands and the final check decides.
        shared = _shared([planned[g] for g in layout.groups] if planned is not None else None, len(layout.groups))
        if shared is None:
            break
        widths = dict(zip(layout.groups, shared))
        _apply(layout, widths, scores)
        passes.append(widths)
        done = False
        if main:
            info["predicted_ms"] = calibration(layout.total(table, widths))
            after = _layout(model, example_inputs, cfg.exclude, step)
            if cfg.latency_reduction:  # interleaved with the dense model: a change of load hits both alike
                d, m = table.time_models([dense, model], shape, cfg.latency_seconds)
                measured = m * dense_ms / d  # on the scale of the dense model's first timing
            else:
                measured = table.time_models([model], shape, cfg.latency_seconds)[0]
            info["measured_ms"], info["measured_reduction"] = measured, dense_ms / measured
            calibration.update(after.total(table, after.groups), measured)
            info["passes"].append({"predicted_ms": info["predicted_ms"], "measured_ms": measured})
            log(f"[{stage}] round {k}{f' correction {attempt}' if attempt else ''}: predicted "
                f"{info['predicted_ms']:.4g} ms, measured {measured:.4g} ms ({dense_ms / measured:.2f}x faster than "
                f"dense; round target {round_target:.4g} ms)")
            done = measured <= round_target * (1 + cfg.latency_tolerance)
            if not done and attempt < _CORRECTIONS:
                ref_layout, ref_widths = reference
                before, now = ref_layout.cells(ref_widths), after.cells(after.groups)
                retimed = table.ensure([c for pair in zip(before, now) if pair[0] != pair[1] for c in pair],
                                       again=True, seconds=4 * table.cell_seconds)
                calibration.update(after.total(table, after.groups), measured)
                info["retimed_cells"] = info.get("retimed_cells", 0) + retimed
        if _shared([int(done)], 1) == [1]:
            break
    info["widths"] = dict(_layout(model, example_inputs, cfg.exclude, step).groups) if passes else start
    info["corrections"] = max(0, len(passes) - 1)
    return info, passes


def _plan(layout: _Layout, table: LatencyTable, calibration: _Calibration, scores: Mapping[str, Sequence[float]],
          start: Mapping[str, int], max_ratio: float, target: float,
          cost: Callable[[str, Mapping[str, int], int], float] | None = None) -> dict[str, int]:
    """The round's widths from the current ones: unchanged when the calibrated prediction already meets `target`,
    else :func:`plan_widths` with no group below (1 − max_ratio) of its width at the round's start, then the cut
    groups widened back as far as the target allows."""
    floors = {g: min(w for w in layout.choices(g) if w >= math.ceil(start.get(g, n) * (1 - max_ratio)))
              for g, n in layout.groups.items()}
    steps: list[dict] = []
    planned = plan_widths(layout.groups, {g: layout.choices(g) for g in layout.groups},
                          lambda w: calibration(layout.total(table, w)), target, scores=scores, floors=floors,
                          min_saving=_MIN_SAVING, prepare=lambda w: table.ensure(layout.neighbourhood(w)), steps=steps,
                          cost=cost)
    # Give back, last cut first: the widest width on the fine grid (multiples of `step`, finer than a wide group's
    # search grid) that keeps the prediction within the target. The last greedy step usually saves more than was
    # still missing, and a width at the top of its kernel step costs what the narrower ones on the step cost.
    for group in dict.fromkeys(s["group"] for s in reversed(steps)):
        fine = [w for w in width_grid(layout.groups[group], layout.step, max_points=10 ** 9)
                if planned[group] < w < layout.groups[group]]
        for w in reversed(fine):
            trial = {**planned, group: w}
            table.ensure(layout.cells(trial, layout.touching(group)))
            if calibration(layout.total(table, trial)) <= target:
                planned = trial
                break
    return planned


# ------------------------------------------------------------------------------------------------------------- plot
def render_latency_curves(curves: Mapping[str, Mapping[Any, float]], *, chosen: Mapping[str, int] | None = None,
                          title: str = "Latency of each layer group vs its width") -> bytes:
    """The PNG bytes of :func:`plot_latency_curves` (for embedding, e.g. in report.html)."""
    from matplotlib.figure import Figure

    names = list(curves)
    cols = min(6, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(2.4 * cols, 1.9 * rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = sorted((int(w), float(ms)) for w, ms in curves[name].items())
        ws, ms = [w for w, _ in pts], [m for _, m in pts]
        # steps-pre: a width between two grid points costs what the next one up costs (kernels pad up).
        ax.step(ws, ms, where="pre", color="C0", linewidth=1.2)
        ax.plot(ws, ms, "o", color="C0", markersize=3)
        if chosen is not None and name in chosen and int(chosen[name]) in ws:
            w = int(chosen[name])
            ax.plot([w], [ms[ws.index(w)]], marker="*", markersize=11, color="C3", markeredgecolor="black")
        ax.set_title(str(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.supxlabel("width (channels)", fontsize=8)
    fig.supylabel("ms (the group's layers)", fontsize=8)
    fig.suptitle(title + (" — ★ chosen" if chosen else ""), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_latency_curves(curves: Mapping[str, Mapping[Any, float]], path: str | os.PathLike, *,
                        chosen: Mapping[str, int] | None = None,
                        title: str = "Latency of each layer group vs its width") -> Path:
    """A PNG with one small latency-vs-width plot per layer group (``curves``: {group: {width: ms}}, e.g. from
    :func:`layer_latency_curves`), drawn as steps so that kernel steps show; chosen widths starred. Written
    atomically on a bare Figure (Agg): pyplot's global state is untouched.

    Example:
        >>> plot_latency_curves({"conv1": {8: 0.02, 16: 0.02, 24: 0.04}}, "latency.png")    # doctest: +SKIP
        PosixPath('latency.png')
    """
    from torchslim.io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render_latency_curves(curves, chosen=chosen, title=title))
    return path


__all__ = ["LatencyTable", "RUNTIMES", "default_cache_dir", "latency_key", "layer_latency_curves", "plan_widths",
           "plot_latency_curves", "prune_channels_to_latency", "render_latency_curves", "runtime_timer",
           "snap_width", "width_grid"]


def _register() -> None:
    """Hand target latency's entry points to structured.py, which dispatches to them without importing this module."""
    from torchslim.prune import structured

    structured.LATENCY_MODE.update(prune=prune_channels_to_latency, render=render_latency_curves)


_register()
