"""Mixed precision: how much each layer suffers from fewer weight bits, and which bit width each layer gets.

Three steps, each usable alone:

* :func:`layer_sensitivity` quantizes the weights of ONE layer at a time, at each bit width, and measures the
  accuracy drop and the output divergence (KL) against the float model on a validation split.
* :func:`allocate_bits` picks one weight width per layer (32 = keep float) that minimises the summed sensitivity
  under a weight-storage budget in bytes: an exact multiple-choice knapsack.
* :func:`accuracy_aware` starts from the most compressed uniform configuration and moves the most sensitive layers
  back to 8 bits, then to float, one at a time, until the accuracy is within a tolerance of fp32; every trial is kept
  for the report.

:func:`mixed_precision` runs them in order, for a size budget or an accuracy tolerance, and returns the record;
:class:`MixedPrecisionRecord` is that record as the `mixed` stage reports it.

Every result is an ordinary :class:`QuantConfig` (``per_layer_bits`` + ``exclude``), so ``ptq``/``qat``/``export_qdq``
take it as is.

Example:
    >>> from torchslim.data import load_dataset
    >>> from torchslim.models import create_model
    >>> data = load_dataset("digits")
    >>> model = create_model("mlp", input_shape=data.input_shape, widths=[32])
    >>> rows = layer_sensitivity(model, QuantConfig(), data, bits=(2, 8))
    >>> [(r["layer"], r["bits"]) for r in rows]
    [('fc1', 2), ('fc1', 8), ('fc2', 2), ('fc2', 8)]
    >>> bits = allocate_bits(model, rows, budget_bytes=weight_bytes(model, 8), choices=(2, 8, 32))
    >>> weight_bytes(model, bits) <= weight_bytes(model, 8)
    True
"""
from __future__ import annotations

import dataclasses
import fnmatch
import lzma
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError, unknown_choice
from torchslim.quant.fakequant import FakeQuant
from torchslim.quant.prepare import _QuantLayer, calibrate, calibration_rows, prepare
from torchslim.quant.config import QuantConfig
from torchslim.records import DASH, Record, Table, register

if TYPE_CHECKING:
    from torchslim.data import DataBundle

FLOAT = 32  # the "bit width" of a layer kept in fp32 (listed in ``QuantConfig.exclude``)
METRICS = ("kl", "drop")
Split = Literal["val", "test"]


def quantizable_layers(model: nn.Module) -> dict[str, int]:
    """Conv2d/Linear layers that :func:`~torchslim.quant.prepare` would quantize, in graph order, with the number of
    weights of each (after BatchNorm folding, which keeps the shape).

    Example:
        >>> from torchslim.models import create_model
        >>> quantizable_layers(create_model("mlp", widths=[32]))
        {'fc1': 25088, 'fc2': 320}
    """
    prepared = prepare(model, QuantConfig())
    return {name: m.weight.numel() for name, m in prepared.named_modules() if isinstance(m, _QuantLayer)}


def weight_bytes(model: nn.Module, bits: int | Mapping[str, int]) -> float:
    """Bytes the weights of the quantizable layers need at `bits` (one width for all, or one per layer name; a layer
    missing from the mapping, or given 32, counts as fp32): Σ weights × bits / 8, i.e. tightly packed.

    Scales, zero points and biases are left out: they are the same for every choice of widths. Note that a QDQ ONNX
    file stores widths below 8 in int8 containers, so its raw size stops shrinking at 8 bits (its lzma size does not).

    Example:
        >>> from torchslim.models import create_model
        >>> weight_bytes(create_model("mlp", widths=[32]), {"fc1": 4})
        13824.0
    """
    layers = quantizable_layers(model)
    if isinstance(bits, Mapping):
        _check_layers(bits, layers, "bits")
        return sum(n * bits.get(name, FLOAT) / 8 for name, n in layers.items())
    return sum(n * bits / 8 for n in layers.values())


def _check_layers(names, layers: Mapping[str, int], what: str) -> None:
    for name in names:
        if name not in layers:
            raise unknown_choice(f"layer in {what}", name, layers)


def _check_bits(bits: Sequence[int], allowed: set[int], what: str) -> tuple[int, ...]:
    bits = tuple(bits)
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or b not in allowed]
    if not bits or bad:
        raise TorchslimError(f"{what} = {list(bits)}: every width must be one of {sorted(allowed)}")
    return tuple(sorted(set(bits)))


def _eval_split(data: DataBundle, split: Split, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in ("val", "test"):
        raise unknown_choice("split", split, ("val", "test"))
    dataset = data.val if split == "val" else data.test
    if dataset is None:
        raise TorchslimError(f"split 'val': data '{data.name}' has no validation split; load it with val_size > 0, "
                             f"or use split='test' (a fixed subset of test)")
    x, y = dataset.tensors[:2]
    return x[:max_samples], y[:max_samples]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(xb) for xb in x.split(batch_size)])


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(softmax(reference) ‖ softmax(logits)) over samples: how far the outputs moved, even where the
    top-1 did not change (it ranks layers whose accuracy drops tie at zero)."""
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                    reduction="batchmean").item()


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def _uniform(cfg: QuantConfig, bits: int, activation_bits: int | None) -> QuantConfig:
    update: dict = {"weight": cfg.weight.with_bits(bits), "per_layer_bits": None}
    if activation_bits is not None:
        update["activation"] = cfg.activation.with_bits(activation_bits)
    return cfg.model_copy(update=update)


def layer_sensitivity(model: nn.Module, cfg: QuantConfig | None, data: DataBundle, bits: Sequence[int] = (2, 3, 4, 8),
                      *, activation_bits: int | None = None, split: Split = "val", max_samples: int | None = 2000,
                      seed: int = 0) -> list[dict]:
    """One row per (quantizable layer, bit width): the effect of quantizing that layer's weights alone.

    Every other layer keeps fp32 weights. Activations stay in float by default (`activation_bits` None): the rows
    then measure each layer's weight error in isolation, need no calibration and are comparable across layers. With
    ``activation_bits=8`` every activation is quantized (calibrated on training rows) and the reference is that
    model with float weights. Weight grids otherwise follow `cfg` (symmetric, per-channel, weight observer);
    layers in ``cfg.exclude`` are left out.

    Each row: ``layer``, ``kind`` (Conv2d/Linear), ``params`` (weights), ``bits``, ``accuracy`` (fraction),
    ``reference_accuracy``, ``drop`` (points: reference − accuracy), ``kl`` (mean KL divergence of the outputs from
    the reference's). Measured with the PyTorch fake-quant model on the first `max_samples` rows of `split`.

    Example:
        >>> rows = layer_sensitivity(model, QuantConfig(), data, bits=(2, 4, 8))      # doctest: +SKIP
        >>> max(rows, key=lambda r: r["kl"])["layer"]                                 # doctest: +SKIP
        'conv1'
    """
    cfg = cfg or QuantConfig()
    bits = _check_bits(bits, set(range(2, 9)), "bits")
    if activation_bits is not None:
        _check_bits([activation_bits], set(range(2, 9)), "activation_bits")
    x, y = _eval_split(data, split, max_samples)
    rows = []
    for b in bits:
        # One prepared model per width; a layer is "alone" when every other layer's weight quantizer is off, which
        # computes exactly what excluding those layers would (float weight, float bias) without re-tracing L times.
        qmodel = prepare(model, _uniform(cfg, b, activation_bits))
        layers = {name: m for name, m in qmodel.named_modules() if isinstance(m, _QuantLayer)}
        activations = [m for m in qmodel.modules() if isinstance(m, FakeQuant) and m.kind == "activation"]
        if activation_bits is None:
            for fq in activations:
                fq.enabled = False
        else:
            calibrate(qmodel, calibration_rows(data.train.tensors[0], cfg, seed))
        for layer in layers.values():
            layer.weight_fake_quant.enabled = False
        reference = _logits(qmodel if activation_bits is not None else model, x)
        ref_acc = _accuracy(reference, y)
        for name, layer in layers.items():
            layer.weight_fake_quant.enabled = True
            logits = _logits(qmodel, x)
            layer.weight_fake_quant.enabled = False
            acc = _accuracy(logits, y)
            rows.append({"layer": name, "kind": "Conv2d" if isinstance(layer, nn.Conv2d) else "Linear",
                         "params": layer.weight.numel(), "bits": b, "accuracy": acc, "reference_accuracy": ref_acc,
                         "drop": 100 * (ref_acc - acc), "kl": _kl(reference, logits)})
    order = {name: i for i, name in enumerate(dict.fromkeys(r["layer"] for r in rows))}
    return sorted(rows, key=lambda r: (order[r["layer"]], r["bits"]))


def _costs(rows: Sequence[dict], metric: str) -> dict[str, dict[int, float]]:
    if metric not in METRICS:
        raise unknown_choice("sensitivity metric", metric, METRICS)
    costs: dict[str, dict[int, float]] = {}
    for r in rows:
        # A negative drop (noise: quantization "helped") would reward fewer bits; no layer gains from them.
        costs.setdefault(r["layer"], {})[int(r["bits"])] = max(0.0, float(r[metric]))
    return costs


def sensitivity_order(rows: Sequence[dict], bits: int, metric: str = "kl") -> list[str]:
    """Layer names, most sensitive first, at one bit width (ties broken by the other metric).

    Example:
        >>> sensitivity_order(rows, 4)[0]                   # doctest: +SKIP
        'fc3'
    """
    other = "drop" if metric == "kl" else "kl"
    at = [r for r in rows if int(r["bits"]) == bits]
    if not at:
        raise TorchslimError(f"the sensitivity rows have no entries at {bits} bits; widths measured: "
                             f"{sorted({int(r['bits']) for r in rows})}")
    _costs(at, metric)  # validates the metric name
    return [r["layer"] for r in sorted(at, key=lambda r: (-r[metric], -r[other]))]


def allocate_bits(model: nn.Module, sensitivity_rows: Sequence[dict], budget_bytes: float,
                  choices: Sequence[int] = (2, 4, 8, FLOAT), *, metric: str = "kl") -> dict[str, int]:
    """Weight bits per layer (from `choices`; 32 keeps a layer in float) minimising the summed sensitivity under
    ``weight_bytes(model, bits) <= budget_bytes``.

    The cost of a layer at b bits is its `metric` from :func:`layer_sensitivity` ("kl", the default: output
    divergences of independent small perturbations add up roughly, accuracy drops saturate and tie at zero; or
    "drop"), 0 at 32 bits, and never less than its cost at more bits (measurement noise must not make fewer bits look
    better). This is a multiple-choice knapsack; it is solved exactly by dynamic programming over the layers that
    keeps only the Pareto frontier of (bits used, cost) — a few hundred states for a ResNet-20, milliseconds — where a
    greedy bits-per-cost rule can miss the optimum when layer sizes differ by 100×, as they do here. Among equal costs
    the smaller allocation wins.

    Example:
        >>> bits = allocate_bits(model, rows, budget_bytes=0.8 * weight_bytes(model, 8))   # doctest: +SKIP
        >>> bits["conv1"], bits["layer2.1.conv1"]                                            # doctest: +SKIP
        (32, 4)
    """
    choices = _check_bits(choices, set(range(2, 9)) | {FLOAT}, "choices")
    layers = quantizable_layers(model)
    costs = _costs(sensitivity_rows, metric)
    _check_layers(costs, layers, "sensitivity rows")
    table: dict[str, list[tuple[int, float, int]]] = {}
    for name, n in layers.items():
        measured = costs.get(name, {})
        missing = [b for b in choices if b != FLOAT and b not in measured]
        if missing:
            raise TorchslimError(f"allocate_bits: no sensitivity for layer '{name}' at {missing} bits; measure "
                                 f"them with layer_sensitivity(..., bits=...) or drop them from choices {list(choices)}")
        options, floor = [], 0.0
        for b in sorted(choices, reverse=True):
            floor = max(floor, 0.0 if b == FLOAT else measured[b])
            options.append((n * b, floor, b))
        table[name] = options

    budget_bits = budget_bytes * 8
    smallest = sum(min(o[0] for o in opts) for opts in table.values())
    if smallest > budget_bits:
        raise TorchslimError(f"budget_bytes = {budget_bytes:g} is below the smallest allocation ({smallest / 8:g} "
                             f"bytes with every layer at {min(choices)} bits); raise the budget or add smaller choices")
    # Frontier: (bits used, summed cost, widths chosen so far), sorted by bits with strictly falling cost.
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for name, options in table.items():
        rest = sum(min(o[0] for o in table[m]) for m in list(table)[list(table).index(name) + 1:])
        grown = sorted((used + size, cost + c, picks + (b,)) for used, cost, picks in frontier
                       for size, c, b in options if used + size + rest <= budget_bits)
        frontier = []
        for state in grown:
            if not frontier or state[1] < frontier[-1][1]:
                frontier.append(state)
    best = min(frontier, key=lambda s: (s[1], s[0]))
    return dict(zip(table, best[2]))


def config_for(cfg: QuantConfig, bits: Mapping[str, int]) -> QuantConfig:
    """`cfg` with per-layer weight widths: layers at 32 bits go to ``exclude``, the others to ``per_layer_bits``.

    Example:
        >>> config_for(QuantConfig(), {"fc1": 4, "fc2": 32}).exclude
        ['fc2']
    """
    exclude = list(dict.fromkeys([*cfg.exclude, *(n for n, b in bits.items() if b == FLOAT)]))
    per_layer = {n: b for n, b in bits.items() if b != FLOAT}
    return QuantConfig.model_validate({**cfg.model_dump(), "exclude": exclude, "per_layer_bits": per_layer or None})


def _qdq_sizes(qmodel: nn.Module, input_shape: tuple[int, ...], path: Path) -> dict[str, int]:
    from torchslim.quant.export import export_qdq

    export_qdq(qmodel, path, input_shape)
    raw = path.read_bytes()
    return {"file_bytes": len(raw), "file_bytes_lzma": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}


def accuracy_aware(model: nn.Module, cfg: QuantConfig, data: DataBundle, tolerance_points: float, *,
                   sensitivity_rows: Sequence[dict] | None = None, fallback: Sequence[int] = (8, FLOAT),
                   metric: str = "kl", split: Split = "val", max_samples: int | None = 2000,
                   export_dir: str | os.PathLike | None = None, max_trials: int | None = None, seed: int = 0,
                   log: Callable[[str], None] = print) -> tuple[QuantConfig, list[dict]]:
    """The most compressed configuration found within `tolerance_points` of fp32 accuracy, and every trial.

    Trial 0 is `cfg` with every layer at ``cfg.weight.bits`` (layers in ``cfg.exclude`` stay float). Each next trial
    moves one more layer up to the next width of `fallback` — the most sensitive first, by `metric` at the width it
    leaves — first all to 8 bits, then to float, stopping at the first trial whose accuracy is within the tolerance.
    Each trial is a :func:`~torchslim.quant.ptq` (activations as `cfg` says) measured on `split`, like fp32.

    A trial records ``trial``, ``changed`` ("layer → bits"), ``bits`` (per layer, 32 = float), ``config`` (the
    QuantConfig as a dict), ``accuracy``, ``fp32_accuracy``, ``drop`` (points), ``weight_bytes`` (packed, see
    :func:`weight_bytes`), ``within_tolerance``, and, with `export_dir`, ``file_bytes`` / ``file_bytes_lzma`` of the
    exported QDQ file. The best config is the first within tolerance, else the most accurate trial's.

    Example:
        >>> best, trials = accuracy_aware(model, QuantConfig(weight=QuantSpec(bits=4, per_channel=True)), data,
        ...                               tolerance_points=0.5)                          # doctest: +SKIP
        >>> [(t["changed"], round(t["drop"], 2)) for t in trials]                       # doctest: +SKIP
        [(None, 1.9), ('conv1 → 8', 0.8), ('fc → 8', 0.3)]
    """
    if not tolerance_points >= 0:
        raise TorchslimError(f"tolerance_points = {tolerance_points}: must be a number >= 0")
    fallback = _check_bits(fallback, set(range(2, 9)) | {FLOAT}, "fallback")
    start = cfg.weight.bits
    steps = [b for b in fallback if b > start]
    if not steps:
        raise TorchslimError(f"fallback = {list(fallback)}: no width above the starting {start} bits; "
                             f"e.g. fallback=(8, 32)")
    layers = [n for n in quantizable_layers(model)
              if not any(fnmatch.fnmatchcase(n, p) for p in cfg.exclude)]
    if sensitivity_rows is None:
        sensitivity_rows = layer_sensitivity(model, cfg, data, bits=sorted({start, *(b for b in steps if b != FLOAT)}),
                                             split=split, max_samples=max_samples, seed=seed)
    x, y = _eval_split(data, split, max_samples)
    fp32_acc = _accuracy(_logits(model, x), y)
    calibration = calibration_rows(data.train.tensors[0], cfg, seed)
    export = Path(export_dir) if export_dir is not None else None

    def trial(bits: dict[str, int], changed: str | None) -> dict:
        qcfg = config_for(cfg, bits)
        qmodel = calibrate(prepare(model, qcfg), calibration).eval()
        acc = _accuracy(_logits(qmodel, x), y)
        record = {"trial": len(trials), "changed": changed, "bits": dict(bits), "config": qcfg.model_dump(),
                  "accuracy": acc, "fp32_accuracy": fp32_acc, "drop": 100 * (fp32_acc - acc),
                  "weight_bytes": weight_bytes(model, bits),
                  "within_tolerance": 100 * (fp32_acc - acc) <= tolerance_points}
        if export is not None:
            export.mkdir(parents=True, exist_ok=True)
            record.update(_qdq_sizes(qmodel, data.input_shape, export / f"trial{len(trials)}.onnx"))
        log(f"[accuracy-aware] trial {record['trial']}: {changed or f'uniform {start}-bit'}: accuracy "
            f"{100 * acc:.2f}% (fp32 {100 * fp32_acc:.2f}%), {record['weight_bytes'] / 1000:.1f} KB of weights")
        return record

    trials: list[dict] = []
    bits = {n: start for n in layers}
    trials.append(trial(bits, None))
    previous = start
    for width in steps:
        measured_at = previous if any(int(r["bits"]) == previous for r in sensitivity_rows) else start
        for name in sensitivity_order([r for r in sensitivity_rows if r["layer"] in bits], measured_at, metric):
            if trials[-1]["within_tolerance"] or (max_trials is not None and len(trials) >= max_trials):
                break
            bits[name] = width
            trials.append(trial(bits, f"{name} → {'float' if width == FLOAT else width}"))
        previous = width
    within = [t for t in trials if t["within_tolerance"]]
    best = within[0] if within else max(trials, key=lambda t: t["accuracy"])
    return QuantConfig.model_validate(best["config"]), trials


def mixed_precision(model: nn.Module, cfg: QuantConfig, data: DataBundle, *, budget: float | None = None,
                    tolerance_points: float | None = None, choices: Sequence[int] = (2, 4, 8, FLOAT), seed: int = 0,
                    log: Callable[[str], None] = print) -> tuple[QuantConfig, dict]:
    """Choose a weight width per layer of `model` — for a size `budget` or an accuracy `tolerance_points` (give
    exactly one) — and return (the per-layer QuantConfig, the record of how it was chosen).

    First :func:`layer_sensitivity` at every width of `choices` below 32, on the validation split (the test split
    when `data` has none). Then, with `budget` (weight bytes as a fraction of uniform int8, e.g. 0.6):
    :func:`allocate_bits` over `choices` under ``budget × weight_bytes(model, 8)``; with `tolerance_points`:
    :func:`accuracy_aware` from uniform ``cfg.weight.bits`` until within that many points of fp32. The model is not
    changed; quantize it with ``ptq(model, config, ...)``.

    The record (JSON-ready): ``quant`` (cfg as a dict), ``sensitivity`` (the rows), ``split``, ``budget_bytes``
    (budget) or ``trials`` (tolerance), ``bits`` (per layer, 32 = float), ``weight_bytes`` (packed, at those bits)
    and ``int8_weight_bytes``.

    Example:
        >>> from torchslim.data import load_dataset
        >>> from torchslim.models import create_model
        >>> data = load_dataset("digits")
        >>> model = create_model("mlp", input_shape=data.input_shape, widths=[32])
        >>> qcfg, info = mixed_precision(model, QuantConfig(), data, budget=0.5, choices=(2, 4, 8))
        >>> info["weight_bytes"] <= 0.5 * info["int8_weight_bytes"]
        True
    """
    if (budget is None) == (tolerance_points is None):
        raise TorchslimError(f"mixed_precision: give exactly one of budget (a fraction of the int8 weight bytes) or "
                             f"tolerance_points (an accuracy drop), got budget={budget}, "
                             f"tolerance_points={tolerance_points}")
    if type(cfg) is not QuantConfig:  # e.g. a recipe stage: a QuantConfig with fields of its own
        cfg = QuantConfig.model_validate(cfg.model_dump(include=set(QuantConfig.model_fields)))
    split: Split = "val" if data.val is not None else "test"
    rows = layer_sensitivity(model, cfg, data, bits=[b for b in choices if b < FLOAT], split=split, seed=seed)
    info: dict = {"quant": cfg.model_dump(), "sensitivity": rows, "split": split}
    if budget is not None:
        budget_bytes = budget * weight_bytes(model, 8)
        bits = allocate_bits(model, rows, budget_bytes, choices)
        cfg = config_for(cfg, bits)
        info.update(budget_bytes=budget_bytes)
    else:
        cfg, trials = accuracy_aware(model, cfg, data, tolerance_points, sensitivity_rows=rows, split=split,
                                     seed=seed, log=log)
        bits = next(t["bits"] for t in trials if t["config"] == cfg.model_dump())
        info.update(trials=trials)
    info.update(bits=bits, weight_bytes=weight_bytes(model, bits), int8_weight_bytes=weight_bytes(model, 8))
    return cfg, info


def plot_sensitivity(rows: Sequence[dict], path: str | os.PathLike, *, metric: str = "drop",
                     title: str = "Per-layer weight sensitivity") -> Path:
    """A PNG with one line per bit width: `metric` ("drop" in points, or "kl") of each layer quantized alone, on a
    log scale for "kl". Drawn on a bare Figure (Agg), so pyplot's global state is untouched.

    Example:
        >>> plot_sensitivity(rows, "bench/results/quant-sensitivity.png")      # doctest: +SKIP
        PosixPath('bench/results/quant-sensitivity.png')
    """
    from matplotlib.figure import Figure

    from torchslim.io import atomic_path

    if metric not in METRICS:
        raise unknown_choice("sensitivity metric", metric, METRICS)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for b in sorted({int(r["bits"]) for r in rows}):
        value = {r["layer"]: r[metric] for r in rows if int(r["bits"]) == b}
        ax.plot(range(len(layers)), [value.get(n, float("nan")) for n in layers], marker="o", label=f"{b}-bit")
    ax.set_xticks(range(len(layers)), layers, rotation=70, ha="right", fontsize=8)
    if metric == "kl":
        ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylabel("accuracy drop (points)" if metric == "drop" else "KL(fp32 ‖ quantized)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="weights", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as dst:
        fig.savefig(dst, format="png")
    return path


@register
@dataclasses.dataclass
class MixedPrecisionRecord(Record):
    """How :func:`mixed_precision` chose the weight widths (its result without ``quant``, which the artifact's
    quantization record holds): ``bits`` ({layer: bits}, 32 = float), ``weight_bytes`` (packed, at those widths),
    ``int8_weight_bytes``, ``sensitivity`` (the rows of :func:`layer_sensitivity`), ``split`` (where they were
    measured), and ``budget_bytes`` (a size budget) or ``trials`` (an accuracy tolerance: every trial, in order).

    Example:
        >>> MixedPrecisionRecord({"fc1": 4, "fc2": 32}, 600, 1000).summary()[0]
        ('weight bits', 'fc1 4, fc2 float: 600 bytes of weights, 60.0 % of uniform int8 (1,000 bytes)')
    """

    kind = "mixed_precision"
    bits: dict[str, int]
    weight_bytes: float
    int8_weight_bytes: float
    sensitivity: list[dict] = dataclasses.field(default_factory=list)
    split: str | None = None
    budget_bytes: float | None = None
    trials: list[dict] | None = None

    def summary(self) -> list[tuple[str, str]]:
        widths = ", ".join(f"{n} {'float' if b == FLOAT else b}" for n, b in self.bits.items())
        rows = [("weight bits", f"{widths}: {self.weight_bytes:,.0f} bytes of weights, "
                                f"{100 * self.weight_bytes / max(1, self.int8_weight_bytes):.1f} % of uniform int8 "
                                f"({self.int8_weight_bytes:,.0f} bytes)")]
        if self.budget_bytes is not None:
            rows.append(("budget", f"{self.budget_bytes:,.0f} bytes of weights"))
        if self.trials:
            kept = next((t for t in self.trials if t.get("bits") == self.bits), self.trials[-1])
            rows.append(("accuracy-aware trials", f"{len(self.trials)}; kept trial {kept.get('trial')}: accuracy "
                                                  f"{100 * kept.get('accuracy', float('nan')):.2f} % "
                                                  f"({kept.get('drop', float('nan')):.2f} points below fp32)"))
        return rows

    def tables(self) -> list[Table]:
        if not self.sensitivity:
            return []
        widths = sorted({int(r["bits"]) for r in self.sensitivity})
        drop = {(r["layer"], int(r["bits"])): r.get("drop") for r in self.sensitivity}
        layers = list(dict.fromkeys(r["layer"] for r in self.sensitivity))
        rows = [[str(n), DASH if n not in self.bits else ("float" if self.bits[n] == FLOAT else str(self.bits[n]))]
                + [DASH if drop.get((n, b)) is None else f"{drop[(n, b)]:.2f}" for b in widths] for n in layers]
        return [(["layer", "chosen bits"] + [f"drop @{b}-bit (points, {self.split or 'val'})" for b in widths], rows)]


__all__ = ["FLOAT", "MixedPrecisionRecord", "accuracy_aware", "allocate_bits", "config_for", "layer_sensitivity",
           "mixed_precision", "plot_sensitivity", "quantizable_layers", "sensitivity_order", "weight_bytes"]
