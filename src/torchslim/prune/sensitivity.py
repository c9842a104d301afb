"""Pruning sensitivity: how much each layer suffers when pruned alone, and per-layer sparsities derived from it.

Three steps, each usable alone (the `prune` stage with ``scope: sensitivity`` runs all three):

* :func:`layer_sensitivity` prunes ONE layer at a time to each sparsity, every other layer dense, always from the same
  starting weights, and measures the validation accuracy: one curve per layer.
* :func:`sparsities_from_sensitivity` turns the curves into one sparsity per layer that together reach an overall
  (weight-count-weighted) target: every layer gets as much sparsity as one shared accuracy-drop tolerance allows,
  and the tolerance is the smallest that reaches the target — so robust layers are pruned harder.
* :func:`plot_sensitivity_curves` draws the curves (one line per layer, the dense accuracy dashed).

:class:`SensitivityPlan` is the typed record of :func:`sensitivity_plan` that the `prune` stage reports (inside its
:class:`~torchslim.prune.schedules.PruningRecord`): the summary line, the table and the plot of the report.

Example:
    >>> from torchslim.data import load_dataset
    >>> from torchslim.models import create_model
    >>> data = load_dataset("digits")
    >>> model = create_model("mlp", input_shape=data.input_shape, widths=[32])
    >>> result = layer_sensitivity(model, data, sparsities=(0.5, 0.9))
    >>> [len(points) for points in result["curves"].values()]
    [2, 2]
    >>> chosen = sparsities_from_sensitivity(result["curves"], result["params"], 0.5,
    ...                                      dense_accuracy=result["dense_accuracy"])
    >>> round(sum(chosen[n] * k for n, k in result["params"].items()) / sum(result["params"].values()), 6)
    0.5
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.criteria import CRITERIA
from torchslim.prune.masks import masks_from_scores, prunable_layers
from torchslim.records import DASH, Figure, Record, Table, number, register

if TYPE_CHECKING:
    from torchslim.data import DataBundle
    from torchslim.prune.config import PruneConfig

Curves = Mapping[str, Sequence[Sequence[float]]]  # {layer: [(sparsity, accuracy), ...]}
EVAL_BATCH = 256  # validation rows per forward pass; `batches` counts these


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))
    return correct / max(1, len(y))


def _val_rows(data: DataBundle, batches: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if data.val is None or len(data.val) == 0:
        raise TorchslimError(f"pruning sensitivity measures accuracy on the validation split, and data '{data.name}' "
                             f"has none; load it with val_size > 0 (recipe: data.val_size)")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise TorchslimError(f"sensitivity batches = {batches!r}: must be a whole number ≥ 1, or None for all")
    x, y = data.val.tensors[:2]
    rows = None if batches is None else batches * EVAL_BATCH
    return x[:rows], y[:rows]


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    values = list(sparsities)
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1]
    if not values or bad:
        raise TorchslimError(f"sensitivity sparsities = {values}: give one or more fractions strictly between 0 and 1, "
                             f"e.g. [0.5, 0.7, 0.9]")
    return sorted(set(float(s) for s in values))


def layer_sensitivity(
    model: nn.Module,
    data: DataBundle,
    sparsities: Sequence[float] = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    criterion: str = "magnitude",
    batches: int | None = None,
    *,
    exclude: Sequence[str] = (),
    criterion_kwargs: Mapping | None = None,
) -> dict:
    """Accuracy of `model` with ONE prunable layer pruned to each sparsity, all other layers as they are.

    Every trial starts from the same weights: the layer's weight is saved before and written back after each trial,
    so the model leaves exactly as it came (bit for bit; its train/eval mode too). Scores come from the registered
    `criterion` (``torchslim list criteria``), computed once on the unpruned model; each trial keeps the top-scored
    weights of its layer (weights that are already zero count as pruned first). Accuracy is top-1 on ``data.val``,
    on the first `batches` × 256 rows (None: all of it).

    Returns ``{"dense_accuracy": float, "curves": {layer: [(sparsity, accuracy), ...]}, "params": {layer: weights},
    "samples": int, "criterion": str}`` — one point per sparsity per layer, sparsities ascending, layers in model
    order.

    Example:
        >>> result = layer_sensitivity(model, data, sparsities=(0.5, 0.9), batches=4)     # doctest: +SKIP
        >>> result["curves"]["fc1"]                                                       # doctest: +SKIP
        [(0.5, 0.97), (0.9, 0.91)]
    """
    levels = _check_sparsities(sparsities)
    x, y = _val_rows(data, batches)
    layers = prunable_layers(model, list(exclude))
    if not layers:
        raise TorchslimError("pruning sensitivity: the model has no Conv/Linear layers left to prune (check exclude)")
    was_training = model.training
    scores = CRITERIA.get(criterion)(layers, model=model, data=data, **dict(criterion_kwargs or {}))
    model.eval()
    try:
        dense = _accuracy(model, x, y)
        curves: dict[str, list[tuple[float, float]]] = {}
        for name, layer in layers.items():
            original = layer.weight.detach().clone()
            points = []
            try:
                for s in levels:
                    mask = masks_from_scores({name: layer}, {name: scores[name]}, s, "layerwise")[name]
                    with torch.no_grad():
                        layer.weight.mul_(mask)
                    points.append((s, _accuracy(model, x, y)))
                    with torch.no_grad():
                        layer.weight.copy_(original)
            finally:
                with torch.no_grad():
                    layer.weight.copy_(original)  # also when a forward pass raised half-way
            curves[name] = points
    finally:
        model.train(was_training)
    return {"dense_accuracy": dense, "curves": curves, "params": {n: m.weight.numel() for n, m in layers.items()},
            "samples": len(y), "criterion": criterion}


def _envelope(points: Sequence[Sequence[float]], dense: float) -> list[tuple[float, float]]:
    """(sparsity, drop) knots from (0, 0), with the drop made non-decreasing in sparsity (running maximum)."""
    knots, worst = [(0.0, 0.0)], 0.0
    for s, acc in sorted((float(p[0]), float(p[1])) for p in points):
        if s <= 0:
            continue
        worst = max(worst, dense - acc)
        knots.append((s, worst))
    return knots


def _sparsity_at(knots: Sequence[tuple[float, float]], tolerance: float) -> float:
    """The largest sparsity whose (interpolated, non-decreasing) drop is ≤ tolerance; 0 below every knot."""
    if tolerance < 0:
        return 0.0
    for (s0, d0), (s1, d1) in zip(knots, knots[1:]):
        if d1 > tolerance:  # the drop crosses the tolerance inside this segment (d0 ≤ tolerance < d1)
            return s0 + (tolerance - d0) / (d1 - d0) * (s1 - s0)
    return knots[-1][0]


def _allocate(curves: Curves, sizes: Mapping[str, int], target: float,
              dense_accuracy: float | None) -> tuple[dict[str, float], float]:
    """(sparsity per layer, tolerance in accuracy units); see :func:`sparsities_from_sensitivity`."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1:
        raise TorchslimError(f"target sparsity = {target!r}: must be a fraction in [0, 1)")
    missing = sorted(set(sizes) - set(curves))
    extra = sorted(set(curves) - set(sizes))
    if missing or extra:
        raise TorchslimError(f"sensitivity: curves and sizes name different layers (no curve for {missing}, "
                             f"no size for {extra})")
    empty = [n for n in curves if not curves[n]]
    if empty:
        raise TorchslimError(f"sensitivity: no measured points for layer(s) {empty}")
    names = [n for n in sizes if sizes[n] > 0]
    total = sum(sizes[n] for n in names)
    if not names:
        raise TorchslimError("sensitivity: every layer has size 0; nothing to prune")
    if dense_accuracy is None:
        dense_accuracy = max(float(p[1]) for n in names for p in curves[n])
    knots = {n: _envelope(curves[n], dense_accuracy) for n in names}

    def overall(chosen: Mapping[str, float]) -> float:
        return sum(sizes[n] * chosen[n] for n in names) / total

    def at(tolerance: float) -> dict[str, float]:
        return {n: _sparsity_at(knots[n], tolerance) for n in names}

    best = at(math.inf)
    if overall(best) < target - 1e-12:
        raise TorchslimError(f"target sparsity {target:g} is unreachable: the sensitivity curves reach at most "
                             f"{overall(best):.4f} overall (every layer at its largest measured sparsity); measure "
                             f"higher sparsities (prune.sensitivity_sparsities) or lower the target")
    # Bisection on the tolerance: overall(at(t)) is non-decreasing in t. lo always falls short of the target (t < 0
    # gives every layer 0), hi always reaches it.
    lo, hi = -1.0, max(d for k in knots.values() for _, d in k)
    if overall(at(hi)) < target:  # cannot happen (hi ≥ every drop), kept for floating-point safety
        hi = math.inf
    for _ in range(100):
        if hi - lo <= 1e-12:
            break
        mid = (lo + hi) / 2
        if overall(at(mid)) >= target:
            hi = mid
        else:
            lo = mid
    low, high = at(lo), at(hi)
    reach_lo, reach_hi = overall(low), overall(high)
    # Where a curve is flat the sparsity jumps at one tolerance, and the jump may overshoot the target; the layers
    # that move between lo and hi then each cover the same fraction of their own jump, which lands exactly on target.
    frac = 0.0 if reach_hi <= reach_lo else min(1.0, max(0.0, (target - reach_lo) / (reach_hi - reach_lo)))
    chosen = {n: low[n] + frac * (high[n] - low[n]) for n in names}
    chosen.update({n: 0.0 for n in sizes if n not in chosen})
    return {n: chosen[n] for n in sizes}, max(0.0, hi)


def sparsities_from_sensitivity(curves: Curves, sizes: Mapping[str, int], target: float, *,
                                dense_accuracy: float | None = None) -> dict[str, float]:
    """One sparsity per layer that together prune `target` of all weights (Σ sizeₗ·sₗ / Σ sizeₗ = target).

    The rule: each layer's curve becomes a drop curve, drop(s) = dense_accuracy − accuracy(s), starting at
    (0, 0), linear between measured points, and made non-decreasing (a running maximum: a noisy point where pruning
    more "helped" never lets a layer jump past a worse point). For a tolerance t every layer gets the largest
    sparsity whose drop is ≤ t (never beyond its largest measured sparsity, never extrapolated); t is the smallest
    tolerance, found by bisection, at which the weighted overall sparsity reaches `target`. Layers that barely react
    to pruning are thus pruned hardest, and all layers end at about the same accuracy cost.

    Ties and edges: where a curve is flat its sparsity jumps at one tolerance; if that overshoots the target, every
    layer that jumps takes the same fraction of its jump, so the overall sparsity is exactly `target` (to 1e-9).
    A target of 0 gives 0 everywhere. A layer of size 0 gets 0. If the target exceeds what the curves reach with
    every layer at its largest measured sparsity, the error names that best reachable overall sparsity.
    `dense_accuracy` defaults to the best accuracy on any curve.

    Example:
        >>> curves = {"a": [(0.5, 0.99), (0.9, 0.98)], "b": [(0.5, 0.90), (0.9, 0.50)]}
        >>> chosen = sparsities_from_sensitivity(curves, {"a": 100, "b": 100}, 0.6, dense_accuracy=0.99)
        >>> chosen["a"] > chosen["b"], round((chosen["a"] + chosen["b"]) / 2, 6)
        (True, 0.6)
    """
    return _allocate(curves, sizes, target, dense_accuracy)[0]


def round_sparsities(sparsities: Mapping[str, float], round_target: float, final_target: float) -> dict[str, float]:
    """Per-layer sparsities for one pruning round, so that every layer follows the schedule to its OWN final level.

    A schedule gives an overall sparsity per round (``PruneConfig.round_targets()``). Its progress is measured on a
    log-keep scale, e = log(1 − round_target) / log(1 − final_target), and each layer gets 1 − (1 − sₗ)^e: for the
    geometric schedule s_k = 1 − (1 − s)^(k/R) this is exactly that schedule per layer, and the last round
    (e = 1) lands every layer on its own sₗ.

    Example:
        >>> {k: round(v, 3) for k, v in round_sparsities({"a": 0.96, "b": 0.5}, 0.8, 0.96).items()}
        {'a': 0.8, 'b': 0.293}
    """
    if final_target <= 0 or round_target >= final_target:
        return dict(sparsities)
    e = max(0.0, math.log1p(-round_target) / math.log1p(-final_target))
    return {n: 1 - (1 - s) ** e for n, s in sparsities.items()}


def sensitivity_plan(model: nn.Module, data: DataBundle, cfg: PruneConfig) -> dict:
    """Run the analysis of ``cfg`` (``scope="sensitivity"``) on `model` and pick the per-layer sparsities.

    Returns what the `prune` stage records in its artifact info (``info["sensitivity"]``): ``dense_accuracy``,
    ``curves``, ``params``, ``samples``, ``criterion``, ``target`` (``cfg.sparsity``), ``sparsities`` (the
    chosen one per layer), ``expected_overall`` (their weighted mean) and ``tolerance_points`` (the shared
    accuracy-drop tolerance, in points).

    Example:
        >>> plan = sensitivity_plan(model, data, PruneConfig(scope="sensitivity", sparsity=0.8))   # doctest: +SKIP
        >>> prune_(model, PruneConfig(scope="sensitivity"), sparsity=plan["sparsities"])           # doctest: +SKIP
    """
    result = layer_sensitivity(model, data, cfg.sensitivity_sparsities, cfg.criterion, cfg.sensitivity_batches,
                               exclude=cfg.exclude, criterion_kwargs={"norm": cfg.norm,
                                                                       "batches": cfg.criterion_batches})
    chosen, tolerance = _allocate(result["curves"], result["params"], cfg.sparsity, result["dense_accuracy"])
    sizes = result["params"]
    overall = sum(sizes[n] * chosen[n] for n in sizes) / max(1, sum(sizes.values()))
    return {**result, "target": cfg.sparsity, "sparsities": chosen, "expected_overall": overall,
            "tolerance_points": 100 * tolerance}


def render_sensitivity_curves(curves: Curves, *, dense_accuracy: float | None = None,
                              chosen: Mapping[str, float] | None = None,
                              title: str = "Pruning sensitivity (one layer pruned at a time)") -> bytes:
    """The PNG bytes of :func:`plot_sensitivity_curves` (for embedding, e.g. in report.html)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, (name, points) in enumerate(curves.items()):
        pts = sorted((float(p[0]), float(p[1])) for p in points)
        if dense_accuracy is not None:
            pts = [(0.0, float(dense_accuracy))] + [p for p in pts if p[0] > 0]
        line = ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], marker="o", markersize=3,
                       label=str(name), color=f"C{i % 10}", linestyle="-" if i < 10 else ":")[0]
        if chosen is not None and name in chosen:
            s = float(chosen[name])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            # The chosen level on the measured curve (linear between points, as the allocation assumes).
            ax.plot([100 * s], [100 * _interp(s, xs, ys)], marker="*", markersize=11, color=line.get_color(),
                    markeredgecolor="black", linestyle="none")
    if dense_accuracy is not None:
        ax.axhline(100 * float(dense_accuracy), color="gray", linestyle="--", linewidth=1,
                   label=f"dense {100 * float(dense_accuracy):.2f}%")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title + (" — ★ chosen" if chosen else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


def plot_sensitivity_curves(curves: Curves, path: str | os.PathLike, *, dense_accuracy: float | None = None,
                            chosen: Mapping[str, float] | None = None,
                            title: str = "Pruning sensitivity (one layer pruned at a time)") -> Path:
    """A PNG with one accuracy-vs-sparsity line per layer, the dense accuracy dashed and, if given, each layer's
    chosen sparsity starred; written atomically. Drawn on a bare Figure (Agg): pyplot's global state is untouched.

    Example:
        >>> r = layer_sensitivity(model, data)                                                     # doctest: +SKIP
        >>> plot_sensitivity_curves(r["curves"], "sens.png", dense_accuracy=r["dense_accuracy"])   # doctest: +SKIP
        PosixPath('sens.png')
    """
    from torchslim.io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render_sensitivity_curves(curves, dense_accuracy=dense_accuracy, chosen=chosen,
                                                       title=title))
    return path


@register
@dataclasses.dataclass
class SensitivityPlan(Record):
    """The record of :func:`sensitivity_plan`: ``curves`` ({layer: [[sparsity, accuracy], ...]}, validation accuracy
    with that layer alone pruned), ``dense_accuracy``, ``params`` (weights per layer), ``samples`` (validation rows),
    ``criterion``, ``target`` (the overall sparsity), ``sparsities`` (chosen per layer), ``expected_overall`` (their
    weighted mean) and ``tolerance_points`` (the shared accuracy-drop tolerance that gives them).

    Example:
        >>> plan = SensitivityPlan.from_json(sensitivity_plan(model, data, cfg))   # doctest: +SKIP
    """

    kind = "prune_sensitivity"
    curves: dict[str, list] = dataclasses.field(default_factory=dict)
    dense_accuracy: float | None = None
    params: dict[str, int] = dataclasses.field(default_factory=dict)
    samples: int | None = None
    criterion: str = "magnitude"
    target: float | None = None
    sparsities: dict[str, float] = dataclasses.field(default_factory=dict)
    expected_overall: float | None = None
    tolerance_points: float | None = None

    def summary(self) -> list[tuple[str, str]]:
        dense = self.dense_accuracy
        text = (f"each layer pruned alone ({self.criterion}) on {self.samples if self.samples is not None else '?'} "
                f"validation rows; dense accuracy {100 * dense:.2f} %" if number(dense) else
                "each layer pruned alone")
        if number(self.tolerance_points) and number(self.target):
            text += (f"; shared tolerance {self.tolerance_points:.2f} points gives the chosen sparsities, "
                     f"{100 * self.target:.1f} % of the weights overall")
        return [("sensitivity", text)]

    def tables(self) -> list[Table]:
        levels = sorted({float(p[0]) for points in self.curves.values() for p in points})
        rows = []
        for layer, points in self.curves.items():
            acc = {float(p[0]): float(p[1]) for p in points}
            size = self.params.get(layer)
            rows.append([str(layer), DASH if size is None else f"{size:,}"]
                        + [f"{100 * acc[s]:.2f}" if s in acc else DASH for s in levels]
                        + [f"{100 * float(self.sparsities[layer]):.2f}" if layer in self.sparsities else DASH])
        return [(["layer", "weights"] + [f"acc % @{100 * s:g}%" for s in levels] + ["chosen sparsity %"], rows)]

    def figures(self, artifact: str) -> list[Figure]:
        return [Figure("sensitivity", f"pruning sensitivity of {artifact}", lambda: render_sensitivity_curves(
            self.curves, dense_accuracy=self.dense_accuracy, chosen=self.sparsities or None,
            title=f"{artifact}: pruning sensitivity, one layer at a time"))]

    def __post_init__(self) -> None:
        if not isinstance(self.curves, Mapping):
            raise TypeError(f"sensitivity curves must be {{layer: [[sparsity, accuracy], ...]}}, got {self.curves!r}")


__all__ = ["SensitivityPlan", "layer_sensitivity", "plot_sensitivity_curves", "render_sensitivity_curves", "round_sparsities",
           "sensitivity_plan", "sparsities_from_sensitivity"]
