"""Structured pruning: whole channels of convolutions and units of linear layers removed for real.

The layers shrink (a ``Conv2d(64, 64)`` becomes a ``Conv2d(41, 37)``), so the pruned model is smaller and faster in
any runtime, with no sparse kernels. Which channels must go together (the convolutions on both sides of a residual
add, the batch norm after a convolution, the next layer's inputs) is found by Torch-Pruning's dependency graph
(Fang et al. 2023, DepGraph) rather than by a graph of our own; torchslim chooses how many channels go and checks the
result by counting the MACs of the pruned model itself.

    info = prune_channels_(model, ChannelPruneConfig(macs_reduction=2.0), torch.zeros(1, 1, 28, 28))
    info["macs_after"] <= info["macs_before"] / 2      # True

:func:`prune_channels_to_target` reaches the target in ``cfg.rounds`` rounds with fine-tuning in between.

Importance criteria (`torchslim list channel-importances`) are registered in ``CHANNEL_IMPORTANCE``: each entry
gets the model, the data and the config, prepares what it needs (gradients, for Taylor) and returns a Torch-Pruning
importance (a callable: one coupled group of layers in, one score per channel out).

A pruned model no longer matches ``create_model(...)``: :func:`resize_to_state_dict_` gives a freshly built model
the shapes of a saved pruned state dict before loading it.

:class:`ChannelPruningRecord` is what the `prune_channels` stage reports (:func:`prune_channels_to_target`'s result).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.prune.masks import detach_masks
from torchslim.records import DASH, Figure, Record, Table, json_text, percent, register
from torchslim.registry import Registry

if TYPE_CHECKING:
    from torchslim.data import DataBundle
    from torchslim.training.config import TrainConfig

# target latency's implementation, filled in by torchslim.prune.latency when it is imported (torchslim.prune imports
# it): the latency mode builds on this module, so this module must not import it back.
LATENCY_MODE: dict[str, Callable[..., Any]] = {}

# The ratio is stepped in this many increments (each removes ~max_pruning_ratio/200 of the channels) until the
# measured MACs reach the target: fine enough to stop within about half a percent of the MACs of the target.
_STEPS = 200

# entry(model, data=..., cfg=...) -> a Torch-Pruning importance: group -> 1-D tensor of channel scores (higher: keep)
CHANNEL_IMPORTANCE: Registry[Callable[..., Any]] = Registry("channel importance")


class ChannelPruneConfig(Config):
    """Remove whole channels (conv filters, linear units) until the model has `macs_reduction`× fewer MACs, or, with
    ``target="latency"``, until it runs `latency_reduction`× faster (or in `latency_ms`) as timed in
    `latency_runtime` with `threads` threads at `batch_size` (:mod:`torchslim.prune.latency`).

    ``scope="global"`` ranks the channels of all layers together (layers end with different widths); ``"uniform"``
    removes the same fraction from every layer. ``rounds`` reaches the target in steps (the MACs shrink by the same
    factor each round, ``macs_reduction^(1/rounds)``) with fine-tuning in between (the recipe stage's ``train``).
    The final classifier's outputs are always kept; so are the outputs of layers matching an ``exclude`` glob (and
    of every layer coupled to them, e.g. through a residual add).

    The fields of one target (TARGET_FIELDS) are an error with the other; left out, they get the target's default
    (TARGET_DEFAULTS), so a resolved recipe shows the values used. With target latency, the widths are chosen on a
    grid of multiples of ``round_to`` (8 when unset) by timing, and ``scope`` must be global.

    Example:
        >>> ChannelPruneConfig(macs_reduction=2.0, rounds=2).round_targets(1000)
        [707, 500]
        >>> ChannelPruneConfig(target="latency").latency_reduction
        2.0
    """

    target: Literal["macs", "latency"] = Field("macs", description="what the budget counts: MACs, or time measured "
                                                                   "in latency_runtime")
    macs_reduction: float | None = Field(None, gt=1, le=100, description="target macs: MACs before / MACs after (2.0 "
                                                                         "= half the MACs; the default)")
    latency_reduction: float | None = Field(None, gt=1, le=100, description="target latency: measured time before / "
                                                                            "after (default 2.0 unless latency_ms)")
    latency_ms: float | None = Field(None, gt=0, le=1e6, description="target latency: the time to reach instead, "
                                                                     "ms per call at batch_size")
    latency_runtime: Literal["onnxruntime", "pytorch"] | None = Field(
        None, description="target latency: where the model is timed (default onnxruntime)")
    threads: int | None = Field(None, ge=1, le=1024, description="target latency: threads of the timed runtime "
                                                                 "(default 1)")
    batch_size: int | None = Field(None, ge=1, le=65536, description="target latency: the batch size timed (default "
                                                                     "1); the training batch is train.batch_size")
    latency_cost: Literal["loss", "importance"] | None = Field(
        None, description="target latency: what a cut costs, per ms it saves: the validation loss it adds (default) or "
                          "the importance of the channels it removes")
    latency_tolerance: float | None = Field(None, ge=0, le=1, description="target latency: the measured time may "
                                                                          "miss the budget by this fraction (timing "
                                                                          "noise) before the stage fails (default 0)")
    latency_seconds: float | None = Field(None, gt=0, le=600, description="target latency: seconds of timing per "
                                                                          "model and measurement (default 1.0)")
    latency_cache: str | None = Field(None, description="target latency: the folder of cached latency tables "
                                                        "(default ~/.cache/torchslim/latency)")
    importance: str = Field("l1", description="how channels are ranked: see `torchslim list channel-importances`")
    scope: Literal["global", "uniform"] = "global"
    rounds: int = Field(1, ge=1, le=20, description="prune/fine-tune rounds to reach the target")
    round_to: int | None = Field(None, ge=1, le=1024, description="keep channel counts a multiple of this (SIMD width)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names whose outputs are kept")
    max_pruning_ratio: float = Field(0.9, gt=0, lt=1, description="no layer loses more than this fraction of its "
                                                                  "channels in one round")
    importance_batches: int = Field(8, ge=1, le=10_000, description="training batches of 128 for taylor's gradients "
                                                                    "(and validation batches for latency_cost loss)")

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, name: str) -> str:
        try:
            CHANNEL_IMPORTANCE.get(name)
        except TorchslimError as e:  # a ValueError, so that a recipe error names the field
            raise ValueError(str(e)) from None
        return name

    @model_validator(mode="before")
    @classmethod
    def _target_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        target = data.get("target") or "macs"
        data = dict(data)
        for name, default in TARGET_DEFAULTS.items():
            if data.get(name) is None and TARGET_FIELDS[name] == target and \
                    not (name == "latency_reduction" and data.get("latency_ms") is not None):
                data[name] = default
        return data

    @model_validator(mode="after")
    def _target_fields(self):
        for name, target in TARGET_FIELDS.items():
            if getattr(self, name) is not None and self.target != target:
                raise ValueError(f"`{name}` is a target: {target} setting, and target is '{self.target}'; remove it "
                                 f"or set target: {target}")
        if self.target == "latency":
            if self.latency_cache is not None and not self.latency_cache.strip():
                raise ValueError("latency_cache must name a folder (or be left out for ~/.cache/torchslim/latency)")
            if self.latency_reduction is not None and self.latency_ms is not None:
                raise ValueError(f"give latency_reduction ({self.latency_reduction}) or latency_ms "
                                 f"({self.latency_ms}), not both")
            if self.scope != "global":
                raise ValueError(f"target latency ranks the channels of all layers together by time saved (scope "
                                 f"global); scope '{self.scope}' is for target macs")
        return self

    def round_targets(self, macs: int) -> list[int]:
        """MACs to reach after each round, starting from `macs`: the same reduction factor every round."""
        if self.macs_reduction is None:
            raise TorchslimError("round_targets: this config has target latency; its rounds are timed, not counted")
        return [int(macs / self.macs_reduction ** (k / self.rounds)) for k in range(1, self.rounds + 1)]


# Which target uses which field, and the defaults they get when left out (latency_cache: None is the default folder).
TARGET_FIELDS: dict[str, str] = {
    "macs_reduction": "macs", "latency_reduction": "latency", "latency_ms": "latency", "latency_runtime": "latency",
    "threads": "latency", "batch_size": "latency", "latency_cost": "latency", "latency_tolerance": "latency",
    "latency_seconds": "latency", "latency_cache": "latency"}
TARGET_DEFAULTS: dict[str, Any] = {
    "macs_reduction": 2.0, "latency_reduction": 2.0, "latency_runtime": "onnxruntime", "threads": 1, "batch_size": 1,
    "latency_cost": "loss", "latency_tolerance": 0.0, "latency_seconds": 1.0}


# ------------------------------------------------------------------------------------------------------ importances
@CHANNEL_IMPORTANCE.register("l1", help="L1 norm of each channel's weights over its coupled layers (Li et al. 2017), "
                                        "needs no data")
def _l1(model: nn.Module, **_) -> Any:
    import torch_pruning as tp

    # Mean over the group (conv filter, BN scale, next layer's input slice), normalized by the group's mean so that
    # a global ranking compares channels of wide and narrow groups fairly.
    return tp.importance.MagnitudeImportance(p=1)


@CHANNEL_IMPORTANCE.register("bn_scale", help="|γ| of the batch norm after each channel (network slimming, Liu et "
                                              "al. 2017); train with train.bn_l1 > 0 first")
def _bn_scale(model: nn.Module, **_) -> Any:
    import torch_pruning as tp

    if not any(isinstance(m, _BatchNorm) and m.affine for m in model.modules()):
        raise TorchslimError("channel importance 'bn_scale' needs batch norm layers with a scale (γ), and the model "
                             "has none; choose l1 or taylor")
    return tp.importance.BNScaleImportance()


@CHANNEL_IMPORTANCE.register("taylor", help="first-order Taylor |w·∂L/∂w| summed per channel over a few training "
                                            "batches (Molchanov et al. 2019)")
def _taylor(model: nn.Module, *, data=None, cfg: ChannelPruneConfig | None = None, seed: int = 0, **_) -> Any:
    import torch_pruning as tp

    if data is None:
        raise TorchslimError("channel importance 'taylor' needs training data (gradients); data-free choices: "
                             "bn_scale, l1")
    batches = cfg.importance_batches if cfg is not None else 8
    _accumulate_gradients(model, data, batches, batch_size=128, seed=seed)
    return tp.importance.TaylorImportance()


def _accumulate_gradients(model: nn.Module, data, batches: int, batch_size: int, seed: int) -> None:
    """Leave ∂L/∂w summed over `batches` training batches in every parameter's .grad (cross-entropy): seeded rows of
    a DataBundle's training split, or the first batches of a loader.

    Torch-Pruning slices .grad together with the weights, so the gradients stay aligned while channels go.
    """
    from torchslim.prune.criteria import training_batches
    from torchslim.tasks import forward

    sample = training_batches(data, batches, batch_size, seed, "taylor")
    model.zero_grad(set_to_none=True)
    # eval: batch norm uses its running statistics, as the pruned model will at inference; no dropout noise.
    model.eval()
    for inputs, labels in sample:
        F.cross_entropy(forward(model, inputs), labels).backward()


# ---------------------------------------------------------------------------------------------------------- pruning
def prune_channels_(model: nn.Module, cfg: ChannelPruneConfig, example_inputs: torch.Tensor, data=None,
                    target_macs: int | None = None) -> dict:
    """Remove channels from `model` in place until its MACs are at most `target_macs`; return what changed.

    `target_macs` defaults to the model's MACs / ``cfg.macs_reduction`` (one round); a multi-round schedule passes
    ``cfg.round_targets(original_macs)[k]``. The pruning ratio is stepped up in small increments and the MACs of the
    pruned model are counted after each one (:func:`torchslim.models.counting.count_macs` on the first sample of
    `example_inputs`, which has a batch axis), so the target is met as measured, whatever the per-layer widths turn
    out to be. `data` (a DataBundle) is needed by the taylor importance only. The returned dict holds MACs and
    parameters before and after, the reduction reached, and per layer the output channels ``[before, after]``.
    Pruning masks attached to the model (:func:`~torchslim.prune.masks.prune_`) no longer fit the narrower layers
    and are detached.

    Example:
        >>> model = create_model("resnet8", input_shape=(1, 16, 16))                             # doctest: +SKIP
        >>> info = prune_channels_(model, ChannelPruneConfig(), torch.zeros(1, 1, 16, 16))       # doctest: +SKIP
        >>> info["macs_reduction"] >= 2.0                                                        # doctest: +SKIP
        True
    """
    import torch_pruning as tp

    from torchslim.models.counting import count_macs, count_params

    if cfg.target != "macs":
        raise TorchslimError("prune_channels_ prunes to a MACs target; target latency times the model between rounds: "
                             "use prune_channels_to_target")
    one = example_inputs[:1]  # MACs of one sample
    macs_before, params_before = count_macs(model, one), count_params(model)[0]
    target = int(macs_before / cfg.macs_reduction) if target_macs is None else int(target_macs)
    before = _widths(model)
    was_training = model.training
    steps, macs = 0, macs_before
    try:
        if macs > target:
            make_importance = CHANNEL_IMPORTANCE.get(cfg.importance)
            importance = make_importance(model, data=data, cfg=cfg)
            model.eval()  # tracing runs the model: batch norm must not update its running statistics
            kept = [m for name, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))
                    and any(fnmatch.fnmatch(name, pat) for pat in cfg.exclude)]
            pruner = tp.pruner.BasePruner(
                model, example_inputs, importance, global_pruning=cfg.scope == "global",
                pruning_ratio=cfg.max_pruning_ratio, max_pruning_ratio=cfg.max_pruning_ratio, iterative_steps=_STEPS,
                ignored_layers=[*kept, _classifier(model, example_inputs)], round_to=cfg.round_to)
            while macs > target and steps < _STEPS:
                pruner.step()
                steps += 1
                macs = count_macs(model, one)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if macs > target:
        raise TorchslimError(
            f"prune_channels: reached only {macs_before / macs:.2f}x fewer MACs ({macs:,} > target {target:,}) with "
            f"max_pruning_ratio={cfg.max_pruning_ratio} and {len(cfg.exclude)} exclude pattern(s); raise "
            f"max_pruning_ratio, exclude fewer layers, or ask for a smaller macs_reduction")
    after = _widths(model)
    if after != before:  # attached pruning masks (prune_) no longer fit the narrower layers
        detach_masks(model)
    return {"importance": cfg.importance, "scope": cfg.scope, "target_macs": target, "macs_before": macs_before,
            "macs_after": macs, "macs_reduction": macs_before / macs, "params_before": params_before,
            "params_after": count_params(model)[0], "steps": steps,
            "channels": {name: [before[name], after[name]] for name in after}}


def _channel_config(cfg: ChannelPruneConfig) -> ChannelPruneConfig:
    """The ChannelPruneConfig part of `cfg` (a recipe stage is one with fields of its own): what gets recorded."""
    return cfg if type(cfg) is ChannelPruneConfig else ChannelPruneConfig.model_validate(
        cfg.model_dump(include=set(ChannelPruneConfig.model_fields)))


def prune_channels_to_target(model: nn.Module, cfg: ChannelPruneConfig, data: DataBundle, train: TrainConfig, *,
                             example_inputs: torch.Tensor, seed: int = 0,
                             checkpoint: Callable[[int], str | Path | None] | None = None,
                             stage: str = "prune_channels", log: Callable[[str], None] = print,
                             latency_table: Any = None, loss_fn: Callable[..., tuple] | None = None) -> dict:
    """Remove channels from `model` in place until it has ``cfg.macs_reduction``× fewer MACs, in ``cfg.rounds``
    rounds (the same reduction factor each), fine-tuning for ``train.epochs`` after each round; return the record.

    With ``cfg.target == "latency"`` the budget is time instead, measured in ``cfg.latency_runtime``:
    :func:`torchslim.prune.latency.prune_channels_to_latency` runs (same rounds, same record plus ``"latency"``:
    predicted and measured ms, the table's build, the per-group latency curves); `latency_table` (a
    :class:`~torchslim.prune.latency.LatencyTable`) overrides the one the config would make.

    Round k prunes to ``cfg.round_targets(macs)[k]`` with :func:`prune_channels_`, then trains with
    ``fit(seed=seed + k)`` and ``checkpoint(k)`` as its checkpoint file (pruning is deterministic, so a resumed run
    rebuilds the same shapes before the round's checkpoint loads). `loss_fn` is :func:`~torchslim.training.fit`'s:
    e.g. distillation from the unpruned model (:func:`torchslim.distillation.kd_loss_fn`), cross-entropy when None.
    MACs are counted on one sample of `example_inputs` (a tensor with a batch axis, e.g.
    ``torch.zeros(1, *data.input_shape)``), which is also what Torch-Pruning traces.

    Returns ``{"macs_before", "macs_after", "macs_reduction", "params_before", "params_after", "channels":
    {layer: [before, after]}, "rounds": [{"target_macs", "macs", "params", "history", "best_epoch",
    "best_val_accuracy"}], "prune_channels": cfg as a dict}`` (JSON-ready).

    Example:
        >>> from torchslim.data import load_dataset
        >>> from torchslim.models import create_model
        >>> from torchslim.training import TrainConfig
        >>> data = load_dataset("digits")
        >>> model = create_model("mlp", input_shape=data.input_shape, widths=[64])
        >>> info = prune_channels_to_target(model, ChannelPruneConfig(macs_reduction=2.0, rounds=2), data,
        ...                                 TrainConfig(epochs=1), example_inputs=torch.zeros(1, *data.input_shape),
        ...                                 log=lambda s: None)
        >>> info["macs_reduction"] >= 2.0, len(info["rounds"])
        (True, 2)
    """
    from torchslim.models.counting import count_macs, count_params
    from torchslim.training.loop import fit

    cfg = _channel_config(cfg)
    if cfg.target == "latency":
        return LATENCY_MODE["prune"](model, cfg, data, train, example_inputs=example_inputs, seed=seed,
                                         checkpoint=checkpoint, stage=stage, log=log, table=latency_table,
                                         loss_fn=loss_fn)
    macs, params = count_macs(model, example_inputs[:1]), count_params(model)[0]
    ckpt = checkpoint or (lambda k: None)
    widths, rounds = None, []
    for k, target in enumerate(cfg.round_targets(macs), start=1):
        pruned = prune_channels_(model, cfg, example_inputs, data=data, target_macs=target)
        widths = widths or {layer: c[0] for layer, c in pruned["channels"].items()}
        log(f"[{stage}] round {k}: {pruned['macs_after']:,} MACs ({macs / pruned['macs_after']:.2f}x fewer), "
            f"{pruned['params_after']:,} parameters ({cfg.importance}, {cfg.scope})")
        fitted = fit(model, data.train, data.val, train, loss_fn=loss_fn, seed=seed + k, checkpoint=ckpt(k),
                     stage=f"{stage} round {k}", log=log) if train.epochs else None
        rounds.append({"target_macs": target, "macs": pruned["macs_after"], "params": pruned["params_after"],
                       **({"history": fitted.history, "best_epoch": fitted.best_epoch,
                           "best_val_accuracy": fitted.best_val_accuracy} if fitted else {})})
    return {"macs_before": macs, "macs_after": rounds[-1]["macs"], "macs_reduction": macs / rounds[-1]["macs"],
            "params_before": params, "params_after": rounds[-1]["params"],
            "channels": {layer: [widths[layer], c[1]] for layer, c in pruned["channels"].items()},
            "rounds": rounds, "prune_channels": cfg.model_dump()}


@register
@dataclasses.dataclass
class ChannelPruningRecord(Record):
    """What a `prune_channels` stage reports, as :func:`prune_channels_to_target` returns it: MACs and parameters
    before and after, ``channels`` ({layer: [width before, width after]}), ``rounds`` (per round: ``target_macs``,
    ``macs``, ``params`` and its fine-tuning; with target latency ``target_ms``, ``predicted_ms``, ``measured_ms``,
    ``corrections`` and ``widths``), ``prune_channels`` (the config as a dict) and, with target latency,
    ``latency``: runtime, threads, batch size, dense / target / predicted / measured ms, the table's build and key,
    the latency-vs-width ``curves`` per layer group (plotted as the ``latency-widths`` figure) and the group
    ``widths`` [before, after].

    Example:
        >>> rec = ChannelPruningRecord(1000, 400, 2.5, 100, 45, {"conv1": [16, 6]})
        >>> rec.summary()[0]
        ('MACs', '1,000 → 400 (2.50× fewer)')
    """

    kind = "channel_pruning"
    macs_before: int
    macs_after: int
    macs_reduction: float
    params_before: int
    params_after: int
    channels: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    rounds: list[dict] = dataclasses.field(default_factory=list)
    prune_channels: dict = dataclasses.field(default_factory=dict)
    latency: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> list[tuple[str, str]]:
        rows = [("MACs", f"{self.macs_before:,} → {self.macs_after:,} ({self.macs_reduction:.2f}× fewer)"),
                ("parameters", f"{self.params_before:,} → {self.params_after:,}")]
        lat = self.latency
        if lat:
            want = (f"{lat['latency_reduction']:g}× faster" if lat.get("latency_reduction")
                    else f"{_ms(lat.get('latency_ms'))} ms")
            reduction = lat.get("measured_reduction")
            rows.append(("latency", f"{_ms(lat.get('dense_ms'))} ms → measured {_ms(lat.get('measured_ms'))} ms"
                         + (f" ({reduction:.2f}× faster)" if isinstance(reduction, (int, float)) else "")
                         + f", predicted {_ms(lat.get('predicted_ms'))} ms; target {want} in {lat.get('runtime')}, "
                         f"{lat.get('threads')} thread(s), batch {lat.get('batch_size')}"))
            table = lat.get("table") or {}
            rows.append(("latency table", f"{table.get('measured_cells', 0)} cells timed in "
                         f"{table.get('seconds', 0):.1f} s, {table.get('cached_cells', 0)} from the cache "
                         f"({table.get('cache') or 'not cached'}), {table.get('search_cells', 0)} more timed during "
                         f"the search; plot: the latency-widths figure"))
        return rows + ([("prune_channels config", json_text(self.prune_channels))] if self.prune_channels else [])

    def figures(self, artifact: str) -> list[Figure]:
        curves = self.latency.get("curves") if self.latency else None
        if not curves:
            return []
        render_latency_curves = LATENCY_MODE["render"]

        chosen = {g: w[1] for g, w in (self.latency.get("widths") or {}).items()}
        return [Figure("latency-widths", f"latency vs width of each layer group of {artifact}",
                       lambda: render_latency_curves(curves, chosen=chosen, title=(
                           f"{artifact}: latency vs width, {self.latency.get('runtime')}, batch "
                           f"{self.latency.get('batch_size')}")))]

    def tables(self) -> list[Table]:
        tables = [(["layer", "channels before", "channels after"],
                   [[str(layer), str(c[0]), str(c[1])] for layer, c in self.channels.items()])] if self.channels else []
        if self.rounds and "target_ms" in self.rounds[0]:
            rows = [[str(k), _ms(r.get("target_ms")), _ms(r.get("predicted_ms")), _ms(r.get("measured_ms")),
                     str(r.get("corrections", 0)), f"{r.get('macs', 0):,}", str(len(r.get("history") or [])),
                     f"{percent(r.get('best_val_accuracy'))} (epoch {r['best_epoch']})"
                     if r.get("best_epoch") is not None else DASH] for k, r in enumerate(self.rounds, start=1)]
            tables.append((["round", "target ms", "predicted ms", "measured ms", "corrections", "MACs", "epochs",
                            "kept val accuracy"], rows))
        elif self.rounds:
            rows = [[str(k), f"{r.get('target_macs', 0):,.0f}", f"{r.get('macs', 0):,}", f"{r.get('params', 0):,}",
                     str(len(r.get("history") or [])),
                     f"{percent(r.get('best_val_accuracy'))} (epoch {r['best_epoch']})"
                     if r.get("best_epoch") is not None else DASH] for k, r in enumerate(self.rounds, start=1)]
            tables.append((["round", "target MACs", "MACs", "params", "epochs", "kept val accuracy"], rows))
        return tables


def _ms(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else DASH


def _widths(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) or units (linear) per layer."""
    return {name: m.out_channels if isinstance(m, _ConvNd) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))}


def _classifier(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The Conv/Linear layer whose output is the model's output (else the last one to run): its outputs are the
    classes, which must all stay."""
    ran: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: ran.append((mod, out)))
             for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise TorchslimError("prune_channels: the model has no Conv/Linear layer to prune")
    return next((mod for mod, o in ran if o is out), ran[-1][0])


# --------------------------------------------------------------------------------------------------------- reloading
def resize_to_state_dict_(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Give the Conv/Linear/BatchNorm layers of `model` the shapes of a saved (channel-pruned) state dict, in place.

    Parameters and buffers get new, uninitialized tensors of the saved shapes and the layer attributes follow
    (``in_channels``/``out_channels``/``groups``, ``in_features``/``out_features``, ``num_features``), so that
    ``load_state_dict`` fits. Only channel dimensions may differ: a different kernel size or number of dimensions is
    not a pruned version of this model and raises. Returns the names of the layers resized.

    Example:
        >>> model = create_model("resnet20")                             # doctest: +SKIP
        >>> state = load_state_dict("run/prune_channels.safetensors")    # doctest: +SKIP
        >>> resize_to_state_dict_(model, state)                          # doctest: +SKIP
        ['conv1', 'bn1', 'layer1.0.conv1', ...]
        >>> model.load_state_dict(state)                                 # doctest: +SKIP
    """
    resized = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        saved = {attr: state_dict[prefix + attr] for attr in ("weight", "bias", "running_mean", "running_var")
                 if prefix + attr in state_dict}
        if isinstance(m, (_ConvNd, nn.Linear)) and "weight" in saved:
            changed = _resize_conv(name, m, saved) if isinstance(m, _ConvNd) else _resize_linear(name, m, saved)
        elif isinstance(m, _BatchNorm) and ("running_mean" in saved or "weight" in saved):
            changed = _resize_batchnorm(m, saved)
        else:
            continue
        if changed:
            resized.append(name)
    return resized


def _replace(module: nn.Module, attr: str, shape: tuple[int, ...]) -> bool:
    """Swap `module.attr` (a parameter or buffer) for an empty tensor of `shape`; False when it already fits."""
    old = getattr(module, attr, None)
    if old is None or tuple(old.shape) == tuple(shape):
        return False
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module.register_buffer(attr, new)
    return True


def _resize_linear(name: str, m: nn.Linear, saved: dict) -> bool:
    shape = tuple(saved["weight"].shape)
    if len(shape) != 2:
        raise TorchslimError(f"cannot resize linear layer '{name}' to a saved weight of shape {shape}")
    changed = _replace(m, "weight", shape)
    if m.bias is not None and "bias" in saved:
        changed |= _replace(m, "bias", (shape[0],))
    m.out_features, m.in_features = shape
    return changed


def _resize_conv(name: str, m: _ConvNd, saved: dict) -> bool:
    shape = tuple(saved["weight"].shape)
    if len(shape) != m.weight.dim() or shape[2:] != tuple(m.weight.shape[2:]):
        raise TorchslimError(f"cannot resize convolution '{name}' (weight {tuple(m.weight.shape)}) to a saved weight "
                             f"of shape {shape}: only channel counts may differ")
    # Depthwise (one group per channel) stays depthwise; any other grouping keeps its number of groups.
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if m.transposed:  # weight: (in, out / groups, *kernel)
        groups = shape[0] if depthwise else m.groups
        in_channels, out_channels = shape[0], shape[1] * groups
    else:  # weight: (out, in / groups, *kernel)
        groups = shape[0] if depthwise else m.groups
        in_channels, out_channels = shape[1] * groups, shape[0]
    if out_channels % groups or in_channels % groups:
        raise TorchslimError(f"cannot resize convolution '{name}' to a saved weight of shape {shape}: "
                             f"{in_channels} inputs / {out_channels} outputs do not split into {groups} groups")
    changed = _replace(m, "weight", shape)
    if m.bias is not None and "bias" in saved:
        changed |= _replace(m, "bias", (out_channels,))
    m.in_channels, m.out_channels, m.groups = in_channels, out_channels, groups
    return changed


def _resize_batchnorm(m: _BatchNorm, saved: dict) -> bool:
    n = int((saved.get("running_mean") if "running_mean" in saved else saved["weight"]).shape[0])
    changed = False
    for attr in ("weight", "bias", "running_mean", "running_var"):
        changed |= _replace(m, attr, (n,))
    m.num_features = n
    return changed
