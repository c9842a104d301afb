"""Pruning schedules: when, and how far, to prune while training. One public function per schedule, and
:func:`prune_with_schedule`, which runs the one ``cfg.schedule`` names and returns what a report records.

* ``oneshot``: prune once to ``sparsity``, then fine-tune with the masks held (:func:`iterative_prune`).
* ``iterative``: ``rounds`` prune/fine-tune rounds, each removing the same fraction of the remaining weights
  (:func:`iterative_targets`, :func:`iterative_prune`).
* ``gradual``: Zhu & Gupta 2017 (AGP). Sparsity rises during fine-tuning along
  s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(n·Δt))³, masks recomputed every Δt optimizer steps until the ramp ends,
  then held (:func:`agp_sparsity`, :class:`GradualPruner`, :func:`gradual_prune`).
* ``lottery``: Frankle & Carbin 2019, with Frankle et al. 2019's late rewinding. Train; prune a fixed fraction of
  each layer's remaining weights; rewind the survivors to their values at initialization (or after a few epochs);
  repeat. The last ticket is trained once more (:func:`lottery_ticket`).

The top of the module is small pure functions (the schedule math, tested on their own); the drivers below run them
with ``fit``. :class:`PruningRecord` (and :class:`SparsityRecord`, the zeros a fine-tuned model holds) is what a
pruning stage reports: :func:`pruning_records` makes it from :func:`prune_with_schedule`'s result.

Example:
    >>> round(agp_sparsity(50, final=0.9, initial=0.0, span=100), 4)   # 0.9 · (1 − 0.5³)
    0.7875
    >>> [round(s, 3) for s in iterative_targets(0.875, 3)]
    [0.5, 0.75, 0.875]
    >>> round(lottery_sparsity(0.2, 2), 2)                            # 1 − 0.8²
    0.36
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.config import PruneConfig, iterative_targets
from torchslim.prune.criteria import CRITERIA
from torchslim.prune.masks import Masks, attach_masks, detach_masks, masks_from_scores, prunable_layers, prune_
from torchslim.prune.nm import nm_storage
from torchslim.prune.sensitivity import SensitivityPlan, round_sparsities, sensitivity_plan
from torchslim.records import DASH, Figure, Record, Table, TrainingRecord, json_text, number, percent, register

if TYPE_CHECKING:
    from torchslim.data import DataBundle
    from torchslim.training.config import TrainConfig
    from torchslim.training.loop import FitResult

Log = Callable[[str], None]
RoundCheckpoint = Callable[[int], str | Path | None]  # round k -> its checkpoint file (None: not resumable)

# --------------------------------------------------------------------------------------------------- schedule math
# iterative_targets (imported above) is defined next to PruneConfig, whose round_targets() uses it.


def agp_sparsity(step: int, final: float, initial: float = 0.0, *, start: int = 0, span: int) -> float:
    """Zhu & Gupta's automated gradual pruning: s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(n·Δt))³.

    `span` is n·Δt, the steps from `start` (t_0) to the end of the ramp. Before t_0 the sparsity is `initial`,
    after the ramp `final`. The cube prunes fast while many redundant weights remain and slowly near the end.

    Example:
        >>> agp_sparsity(0, 0.9, span=10), agp_sparsity(10, 0.9, span=10), agp_sparsity(99, 0.9, span=10)
        (0.0, 0.9, 0.9)
    """
    if span < 1:
        raise ValueError(f"agp span must be at least one step, got {span}")
    frac = (step - start) / span
    if frac <= 0 or frac >= 1:  # the end points exactly, with no rounding of s_f + (s_i − s_f)
        return initial if frac <= 0 else final
    return final + (initial - final) * (1 - frac) ** 3


def ramp_steps(total_steps: int, ramp: float) -> int:
    """The step at which a gradual ramp over the fraction `ramp` of `total_steps` ends (at least 1)."""
    return min(total_steps, max(1, round(ramp * total_steps))) if total_steps > 0 else 1


def agp_update_steps(ramp_end: int, every: int) -> list[int]:
    """Steps after which the masks are recomputed: 0 (before training), every Δt while the ramp lasts, and the
    ramp's last step, where the sparsity reaches its final value (also when Δt does not divide the ramp).

    Example:
        >>> agp_update_steps(10, 4)
        [0, 4, 8, 10]
    """
    return sorted({*range(0, ramp_end, every), ramp_end})


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps in one epoch of `fit` (a last batch smaller than the number of processes is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= max(1, world) else 0)


def lottery_sparsity(rate: float, rounds: int) -> float:
    """A layer's sparsity after `rounds` rounds that each prune `rate` of its remaining weights: 1 − (1 − rate)^k."""
    return 1 - (1 - rate) ** rounds


def lottery_rates(names: list[str], rate: float, output_rate: float, output: str | None) -> dict[str, float]:
    """Per-layer pruning rate of one lottery round: `output_rate` for the output layer, `rate` for the others."""
    return {name: output_rate if name == output else rate for name in names}


def output_layer(model: nn.Module) -> str | None:
    """The name of the model's last Conv/Linear module (registration order): the classifier of the usual models."""
    names = list(prunable_layers(model))
    return names[-1] if names else None


# ---------------------------------------------------------------------------------------------------------- drivers


def _prune_config(cfg: PruneConfig) -> PruneConfig:
    """The PruneConfig part of `cfg` (a recipe stage is a PruneConfig with fields of its own): what gets recorded."""
    return cfg if type(cfg) is PruneConfig else PruneConfig.model_validate(
        cfg.model_dump(include=set(PruneConfig.model_fields)))


def _fit_info(fitted: FitResult) -> dict:
    return {"history": fitted.history, "best_epoch": fitted.best_epoch, "best_val_accuracy": fitted.best_val_accuracy}


def _sensitivity_plan(model: nn.Module, cfg: PruneConfig, data: DataBundle, stage: str, log: Log) -> dict | None:
    """scope: sensitivity — prune each layer alone on the incoming model, then choose one sparsity per layer."""
    if cfg.scope != "sensitivity":
        return None
    plan = sensitivity_plan(model, data, cfg)
    levels = ", ".join(f"{name} {100 * s:.1f}%" for name, s in plan["sparsities"].items())
    log(f"[{stage}] sensitivity on {plan['samples']} val rows (dense {100 * plan['dense_accuracy']:.2f}%): "
        f"tolerance {plan['tolerance_points']:.2f} points → {levels}")
    return plan


def _plan_levels(plan: dict | None) -> Callable[[float], dict[str, float]] | None:
    """Each layer's sparsity for a step whose overall target is s: the schedule, per layer (None: no plan)."""
    if plan is None:
        return None
    return lambda s: round_sparsities(plan["sparsities"], s, plan["target"])


def iterative_prune(model: nn.Module, cfg: PruneConfig, data: DataBundle, train: TrainConfig, *, seed: int = 0,
                    checkpoint: RoundCheckpoint | None = None, stage: str = "prune", log: Log = print) -> dict:
    """Prune `model` in place in ``cfg.round_targets()`` rounds (one for ``oneshot``), fine-tuning after each round
    with the masks held; return the record of what was done (JSON-ready).

    Round k prunes to its target (per layer from a sensitivity analysis of the incoming model with ``scope:
    sensitivity``, which this function runs first), then fine-tunes for ``train.epochs`` (none when 0) with
    ``fit(seed=seed + k)`` and the masks re-applied after every step; ``checkpoint(k)`` is round k's checkpoint file
    (the masks are saved with it, so an interrupted round resumes). The last masks stay attached to the model.

    Returns ``{"sparsity": {layer: fraction}, "overall_sparsity", "rounds": [{"target", "sparsity", "history",
    "best_epoch", "best_val_accuracy"}], "prune": cfg as a dict}``, plus ``"sensitivity"`` (the plan, see
    :func:`~torchslim.prune.sensitivity.sensitivity_plan`) with ``scope: sensitivity`` and ``"nm_storage"`` (see
    :func:`~torchslim.prune.nm.nm_storage`) with an N:M pattern.

    Example:
        >>> from torchslim.data import load_dataset
        >>> from torchslim.models import create_model
        >>> from torchslim.training import TrainConfig
        >>> data = load_dataset("digits")
        >>> model = create_model("mlp", input_shape=data.input_shape, widths=[32])
        >>> cfg = PruneConfig(sparsity=0.75, schedule="iterative", rounds=2)
        >>> info = iterative_prune(model, cfg, data, TrainConfig(epochs=1), log=lambda s: None)
        >>> [round(r["target"], 2) for r in info["rounds"]], round(info["overall_sparsity"], 2)
        ([0.5, 0.75], 0.75)
    """
    from torchslim.training.loop import fit

    cfg = _prune_config(cfg)
    if cfg.schedule not in ("oneshot", "iterative"):
        raise TorchslimError(f"iterative_prune runs the schedules oneshot and iterative, not '{cfg.schedule}'; "
                             f"use gradual_prune or lottery_ticket, or prune_with_schedule for any schedule")
    plan = _sensitivity_plan(model, cfg, data, stage, log)
    levels = _plan_levels(plan)
    ckpt = checkpoint or (lambda k: None)
    rounds = []
    for k, target in enumerate(cfg.round_targets(), start=1):
        masks = prune_(model, cfg, sparsity=target if levels is None else levels(target), data=data)
        log(f"[{stage}] round {k}: pruned to {100 * masks.overall():.1f}% sparsity ({cfg.scope})")
        fitted = fit(model, data.train, data.val, train, seed=seed + k, after_step=masks.apply, checkpoint=ckpt(k),
                     extra_state=masks.masks, stage=f"{stage} round {k}", log=log) if train.epochs else None
        rounds.append({"target": target, "sparsity": masks.overall(), **(_fit_info(fitted) if fitted else {})})
    # Masked weights are exact zeros in the weight tensors themselves, so the sparsity is already permanent: a saved
    # model is an ordinary module with no mask buffers or hooks.
    info = {"sparsity": masks.sparsity(), "overall_sparsity": masks.overall(), "rounds": rounds,
            "prune": cfg.model_dump()}
    if plan is not None:
        info["sensitivity"] = plan
    if cfg.n_m is not None:
        info["nm_storage"] = nm_storage(masks.layers, *cfg.n_m)
        log(f"[{stage}] {cfg.pattern} storage: {info['nm_storage']['packed_bytes']:,} bytes of weights "
            f"vs {info['nm_storage']['dense_bytes']:,} dense")
    return info


class GradualPruner:
    """The `after_step` of a gradual (AGP) fine-tuning: counts optimizer steps, recomputes the masks with the
    configured criterion at the steps of :func:`agp_update_steps`, and holds them (zeros) after every step.

    ``extra_state`` (the masks and the step counter) goes into ``fit``'s checkpoints, so a resumed run continues
    from the same step with the same masks. ``levels`` maps the scheduled overall sparsity to what `prune_` is given
    (per-layer levels for ``scope: sensitivity``).
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig, total_steps: int, data: DataBundle | None = None,
                 levels: Callable[[float], float | Mapping[str, float]] | None = None) -> None:
        self.model, self.cfg, self.data = model, cfg, data
        self.levels = levels or (lambda s: s)
        self.ramp_end = ramp_steps(total_steps, cfg.ramp)
        self.updates = agp_update_steps(self.ramp_end, cfg.update_every)
        self._update_set = set(self.updates)
        layers = prunable_layers(model, cfg.exclude)
        self.masks = Masks(layers, {name: torch.ones_like(m.weight) for name, m in layers.items()})
        self.step = torch.zeros((), dtype=torch.int64)

    def target(self, step: int) -> float:
        """The overall sparsity the schedule asks for after `step` optimizer steps."""
        return agp_sparsity(step, self.cfg.sparsity, self.cfg.initial_sparsity, span=self.ramp_end)

    @property
    def extra_state(self) -> dict[str, torch.Tensor]:
        return {**self.masks.masks, "@gradual_step": self.step}

    def start(self) -> None:
        """Prune to the initial sparsity s_i, before the first step."""
        self._update(0)

    def __call__(self) -> None:
        self.step += 1
        if int(self.step) in self._update_set:
            self._update(int(self.step))
        else:
            self.masks.apply()

    def _update(self, step: int) -> None:  # not under no_grad: gradient criteria (taylor, snip) need autograd
        fresh = prune_(self.model, self.cfg, sparsity=self.levels(self.target(step)), data=self.data)
        for name, mask in fresh.masks.items():
            self.masks.masks[name].copy_(mask)
        attach_masks(self.model, self.masks)  # the held masks (saved in checkpoints) stay the model's masks


def gradual_prune(model: nn.Module, cfg: PruneConfig, data: DataBundle, train: TrainConfig, *, seed: int = 0,
                  checkpoint: str | Path | None = None, stage: str = "prune", log: Callable[[str], None] = print,
                  levels: Callable[[float], float | Mapping[str, float]] | None = None) -> tuple[Masks, FitResult]:
    """Fine-tune `model` in place while its sparsity follows the AGP ramp to ``cfg.sparsity``; returns
    (the held masks, also attached to the model, and ``fit``'s result).

    With ``train.keep == "best"`` only epochs that end after the ramp, at the final sparsity, can be kept. A
    `checkpoint` makes the stage resumable: masks and step counter are saved with the training state.

    Example:
        >>> cfg = PruneConfig(schedule="gradual", sparsity=0.9, update_every=50, ramp=0.75)   # doctest: +SKIP
        >>> masks, fitted = gradual_prune(model, cfg, data, TrainConfig(epochs=4, lr=5e-4))    # doctest: +SKIP
    """
    from torchslim.training import dist
    from torchslim.training.loop import fit

    if train.epochs < 1:
        raise TorchslimError("prune schedule 'gradual' prunes while it trains: train.epochs must be at least 1")
    per_epoch = steps_per_epoch(len(data.train), train.batch_size, dist.world())
    pruner = GradualPruner(model, cfg, train.epochs * per_epoch, data=data, levels=levels)
    pruner.start()
    fitted = fit(model, data.train, data.val, train, seed=seed, after_step=pruner, checkpoint=checkpoint,
                 extra_state=pruner.extra_state, stage=stage, log=log,
                 keep_from_epoch=math.ceil(pruner.ramp_end / per_epoch))
    return pruner.masks, fitted


@dataclass
class LotteryResult:
    """What :func:`lottery_ticket` found. ``rounds``: one record per training (round 0 is the dense network), with
    the overall and per-layer sparsity and the training history. ``rewind_state``: θ_k, the state the survivors were
    rewound to. ``ticket``: the last round's starting state — the winning ticket m ⊙ θ_k (or m ⊙ θ' with reinit).
    """

    masks: Masks | None  # held on the trained model
    rounds: list[dict] = field(default_factory=list)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)
    ticket: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def reinitialize_(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh weights for every submodule that has ``reset_parameters`` (PyTorch's default init), seeded, without
    touching the global RNG. Custom init in a model's constructor is not repeated: prefer building a new model from
    its factory when there is one (the pipeline does).

    Example:
        >>> m = nn.Linear(3, 2); before = m.weight.clone()
        >>> torch.equal(reinitialize_(m, seed=1).weight, before)
        False
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def lottery_masks(model: nn.Module, cfg: PruneConfig, rates: Mapping[str, float], rounds_done: int,
                  data: DataBundle | None = None) -> Masks:
    """Masks after `rounds_done` lottery rounds: each layer keeps (1 − rate)^k of its weights, the best by
    ``cfg.criterion`` (magnitude for Frankle & Carbin) among those still nonzero. ``scope: layerwise`` prunes each
    layer at its rate; ``global`` ranks all layers but the output layer together (at the common rate), and the output
    layer alone at its own rate, as in Frankle & Carbin's global pruning of deeper nets.
    """
    layers = prunable_layers(model, cfg.exclude)
    scores = CRITERIA.get(cfg.criterion)(layers, model=model, data=data, norm=cfg.norm, batches=cfg.criterion_batches)
    levels = {name: lottery_sparsity(rates[name], rounds_done) for name in layers}
    if cfg.scope == "layerwise":
        chosen = masks_from_scores(layers, scores, levels, "layerwise")
    else:
        out = output_layer(model)
        rest = {n: m for n, m in layers.items() if n != out}
        chosen = masks_from_scores(rest, scores, lottery_sparsity(cfg.lottery_rate, rounds_done), "global") \
            if rest else {}
        if out in layers:
            chosen.update(masks_from_scores({out: layers[out]}, scores, levels[out], "layerwise"))
    return Masks(layers, chosen)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lottery_ticket(model: nn.Module, cfg: PruneConfig, data: DataBundle, train: TrainConfig, *, seed: int = 0,
                   fresh_init: Callable[[], Mapping[str, torch.Tensor]] | None = None,
                   checkpoint: Callable[[int], str | Path | None] | None = None, stage: str = "lottery",
                   log: Callable[[str], None] = print,
                   after_round: Callable[[int, nn.Module, Masks | None], None] | None = None) -> LotteryResult:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019), in place on `model`, whose current weights
    are θ_0 (an untrained initialization).

    Round 0 trains the dense network for ``train.epochs`` (keeping θ_k, the weights after ``cfg.rewind_epoch``
    epochs; θ_0 when 0). Each of ``cfg.rounds`` rounds then prunes ``lottery_rate`` of the remaining weights of
    every layer (the output layer ``lottery_output_rate``) by the trained weights' scores, rewinds the survivors to
    θ_k (pruned weights exactly 0) and trains again with the masks held. With ``cfg.reinit`` the last round instead
    starts the same masks from ``fresh_init()`` (default: :func:`reinitialize_` of a copy, seeded): Frankle & Carbin's
    random re-initialization control. `checkpoint(k)` gives round k's checkpoint file (resumable); `after_round(k,
    model, masks)` runs after each round's training (``masks`` is None for round 0). Each round's masks are attached
    to the model (:func:`~torchslim.prune.masks.attach_masks`), so later training holds the last ones.

    Example:
        >>> cfg = PruneConfig(schedule="lottery", rounds=5, lottery_rate=0.2)               # doctest: +SKIP
        >>> result = lottery_ticket(create_model("lenet-300-100"), cfg, data, TrainConfig(epochs=5))   # doctest: +SKIP
    """
    from torchslim.training import dist
    from torchslim.training.loop import fit

    if train.epochs < 1:
        raise TorchslimError("prune schedule 'lottery' trains every round: train.epochs must be at least 1")
    if cfg.rewind_epoch > train.epochs:
        raise TorchslimError(f"prune rewind_epoch {cfg.rewind_epoch} is after the last epoch of a round "
                             f"(train.epochs = {train.epochs}); choose 0 (initialization) to {train.epochs}")
    layers = prunable_layers(model, cfg.exclude)
    if not layers:
        raise TorchslimError("prune: the model has no Conv/Linear layers left to prune (check prune.exclude)")
    rates = lottery_rates(list(layers), cfg.lottery_rate, cfg.lottery_output_rate, output_layer(model))
    ckpt = checkpoint or (lambda k: None)
    detach_masks(model)  # round 0 trains the dense network

    # Round 0: the dense network. θ_k is captured after step k·(steps per epoch); it lives in the checkpoint's
    # extra state with the step counter, so that a resumed round 0 still rewinds to the same weights.
    rewind = _clone_state(model)
    step = torch.zeros((), dtype=torch.int64)
    snapshot_at = cfg.rewind_epoch * steps_per_epoch(len(data.train), train.batch_size, dist.world())

    def count_and_snapshot() -> None:
        step.add_(1)
        if int(step) == snapshot_at:
            for k, v in model.state_dict().items():
                rewind[k].copy_(v)

    extra = {"@lottery_step": step, **({f"rewind:{k}": v for k, v in rewind.items()} if snapshot_at else {})}
    fitted = fit(model, data.train, data.val, train, seed=seed, after_step=count_and_snapshot, checkpoint=ckpt(0),
                 extra_state=extra, stage=f"{stage} round 0", log=log)
    result = LotteryResult(masks=None, rewind_state=rewind)
    result.rounds.append(_round_record(0, layers, fitted))
    if after_round is not None:
        after_round(0, model, None)

    for k in range(1, cfg.rounds + 1):
        masks = lottery_masks(model, cfg, rates, k, data)
        start = rewind
        if cfg.reinit and k == cfg.rounds:
            start = fresh_init() if fresh_init is not None else \
                reinitialize_(copy.deepcopy(model), seed + 1_000_003).state_dict()
        model.load_state_dict(start)
        attach_masks(model, masks).apply()
        if k == cfg.rounds:
            result.ticket = _clone_state(model)
        log(f"[{stage}] round {k}: {100 * masks.overall():.1f}% pruned, survivors "
            f"{'re-initialized' if start is not rewind else f'rewound to epoch {cfg.rewind_epoch}'}")
        fitted = fit(model, data.train, data.val, train, seed=seed + k, after_step=masks.apply, checkpoint=ckpt(k),
                     extra_state=masks.masks, stage=f"{stage} round {k}", log=log)
        result.rounds.append(_round_record(k, layers, fitted))
        result.masks = masks
        if after_round is not None:
            after_round(k, model, masks)
    if result.masks is None:  # rounds = 0 is refused by the config; kept for direct callers
        result.masks = Masks(layers, {n: (m.weight != 0).float() for n, m in layers.items()})
    return result


def _round_record(k: int, layers: Mapping[str, nn.Module], fitted: FitResult) -> dict:
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return {"round": k, "sparsity": zeros / total,
            "kept": {n: float((m.weight != 0).float().mean()) for n, m in layers.items()},
            "history": fitted.history, "best_epoch": fitted.best_epoch, "best_val_accuracy": fitted.best_val_accuracy}


def prune_with_schedule(model: nn.Module, cfg: PruneConfig, data: DataBundle, train: TrainConfig, *, seed: int = 0,
                        checkpoint: str | Path | None = None, round_checkpoint: RoundCheckpoint | None = None,
                        stage: str = "prune", log: Log = print,
                        fresh_init: Callable[[int], tuple[nn.Module, str]] | None = None) -> tuple[nn.Module, dict]:
    """Prune on the schedule ``cfg.schedule`` names, with its training; return (the pruned model, its record).

    * ``oneshot`` / ``iterative``: :func:`iterative_prune` on `model` in place (``round_checkpoint(k)`` per round).
    * ``gradual``: :func:`gradual_prune` on `model` in place, ``fit(seed=seed + 1)``, resumable from `checkpoint`;
      with ``scope: sensitivity`` every mask update follows the per-layer plan measured on the incoming model.
    * ``lottery``: :func:`lottery_ticket` retrains from scratch: `model` gives the architecture only. θ_0 is
      ``fresh_init(seed)`` — a callable seed → (new model, how it was made), e.g. the model's factory — or, without
      one, :func:`reinitialize_` of a copy of `model`; ``fresh_init(seed + 1)`` is the ``reinit`` control's start.
      The returned model is that new one.

    The record (JSON-ready) has ``sparsity`` (per layer), ``overall_sparsity`` and ``prune`` (cfg as a dict); and
    ``rounds`` (oneshot, iterative, lottery), ``history`` / ``best_epoch`` / ``best_val_accuracy`` (gradual, lottery:
    the last training), ``init`` (lottery: how θ_0 was made), ``sensitivity`` (scope: sensitivity), ``nm_storage``
    (an N:M pattern). The masks stay attached to the returned model, so later training keeps its zeros.

    Example:
        >>> from torchslim.data import load_dataset
        >>> from torchslim.models import create_model
        >>> from torchslim.training import TrainConfig
        >>> data = load_dataset("digits")
        >>> model = create_model("mlp", input_shape=data.input_shape, widths=[32])
        >>> cfg = PruneConfig(schedule="gradual", sparsity=0.8, update_every=5)
        >>> model, info = prune_with_schedule(model, cfg, data, TrainConfig(epochs=1), log=lambda s: None)
        >>> round(info["overall_sparsity"], 2)
        0.8
    """
    cfg = _prune_config(cfg)
    if cfg.schedule in ("oneshot", "iterative"):
        return model, iterative_prune(model, cfg, data, train, seed=seed, checkpoint=round_checkpoint, stage=stage,
                                      log=log)
    if cfg.schedule == "gradual":
        plan = _sensitivity_plan(model, cfg, data, stage, log)
        masks, fitted = gradual_prune(model, cfg, data, train, seed=seed + 1, checkpoint=checkpoint, stage=stage,
                                      log=log, levels=_plan_levels(plan))
        log(f"[{stage}] gradual: {100 * cfg.initial_sparsity:.0f}% → {100 * masks.overall():.1f}% sparsity "
            f"({cfg.scope}, {cfg.criterion}, masks updated every {cfg.update_every} steps)")
        info = {"sparsity": masks.sparsity(), "overall_sparsity": masks.overall(), "prune": cfg.model_dump(),
                **_fit_info(fitted)}
        if plan is not None:
            info["sensitivity"] = plan
        return model, info
    if cfg.schedule == "lottery":
        init = fresh_init or (lambda s: (reinitialize_(copy.deepcopy(model), s),
                                         f"reset_parameters of the current model, seed {s}"))
        fresh, how = init(seed)
        detach_masks(fresh)  # a new initialization has no zeros to hold
        log(f"[{stage}] lottery ticket: retraining from a fresh initialization ({how}); {cfg.rounds} rounds at "
            f"{100 * cfg.lottery_rate:g}% per round ({100 * cfg.lottery_output_rate:g}% for the output layer), "
            f"rewinding to epoch {cfg.rewind_epoch}" + (", random re-init for the last round" if cfg.reinit else ""))
        result = lottery_ticket(fresh, cfg, data, train, seed=seed,
                                fresh_init=lambda: init(seed + 1)[0].state_dict(),
                                checkpoint=round_checkpoint, stage=stage, log=log)
        last = result.rounds[-1]
        info = {"sparsity": result.masks.sparsity(), "overall_sparsity": result.masks.overall(), "init": how,
                "rounds": result.rounds, "prune": cfg.model_dump(),
                **{k: last[k] for k in ("history", "best_epoch", "best_val_accuracy")}}
        return fresh, info
    raise TorchslimError(f"unknown prune schedule '{cfg.schedule}'; valid choices: gradual, iterative, lottery, "
                         f"oneshot")


# ---------------------------------------------------------------------------------------------------------- records


def _sparsity_table(layers: Mapping[str, float]) -> Table:
    return (["layer", "sparsity %"], [[str(layer), f"{100 * float(v):.2f}"] for layer, v in layers.items()])


@register
@dataclass
class SparsityRecord(Record):
    """The zeros a model keeps: ``layers`` ({layer: fraction of zero weights}) and ``overall`` (over all those
    weights). A `finetune` of a pruned model reports it: fine-tuning held them.

    Example:
        >>> SparsityRecord({"fc1": 0.5, "fc2": 0.25}, 0.4).summary()
        [('sparsity', '40.00 % of the prunable weights (held while training)')]
    """

    kind = "sparsity"
    layers: dict[str, float]
    overall: float | None = None

    @classmethod
    def of(cls, masks: Masks) -> SparsityRecord:
        return cls(masks.sparsity(), masks.overall())

    def summary(self) -> list[tuple[str, str]]:
        return [("sparsity", f"{percent(self.overall)} of the prunable weights (held while training)")] \
            if self.overall is not None else []

    def tables(self) -> list[Table]:
        return [_sparsity_table(self.layers)] if self.layers else []


@register
@dataclass
class PruningRecord(Record):
    """What a `prune` stage reports, as :func:`prune_with_schedule` returns it: ``sparsity`` ({layer: fraction}),
    ``overall_sparsity``, ``prune`` (the PruneConfig as a dict), ``rounds`` (oneshot, iterative, lottery: one entry
    per round with its sparsity and training), ``init`` (lottery: how θ_0 was made), ``sensitivity`` (``scope:
    sensitivity``: the :class:`~torchslim.prune.sensitivity.SensitivityPlan`, with its curves plot) and
    ``nm_storage`` (an N:M pattern: see :func:`~torchslim.prune.nm.nm_storage`).

    Example:
        >>> rec = PruningRecord({"fc1": 0.9}, 0.9, {"schedule": "oneshot", "criterion": "magnitude"})
        >>> rec.summary()[0]
        ('sparsity', '90.00 % of the prunable weights overall (oneshot, magnitude)')
    """

    kind = "pruning"
    sparsity: dict[str, float]
    overall_sparsity: float
    prune: dict = field(default_factory=dict)
    rounds: list[dict] | None = None
    init: str | None = None
    sensitivity: SensitivityPlan | None = None
    nm_storage: dict | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> PruningRecord:
        rec = super().from_json(data)
        if isinstance(rec.sensitivity, Mapping):
            rec.sensitivity = SensitivityPlan.from_json(rec.sensitivity)
        return rec

    def summary(self) -> list[tuple[str, str]]:
        how = ", ".join(str(self.prune[k]) for k in ("schedule", "criterion", "scope", "pattern") if self.prune.get(k))
        rows = [("sparsity", f"{percent(self.overall_sparsity)} of the prunable weights overall"
                             + (f" ({how})" if how else ""))]
        if self.init:
            rows.append(("initialization", self.init))
        nm = self.nm_storage
        if isinstance(nm, Mapping) and number(nm.get("packed_bytes")) and number(nm.get("dense_bytes")):
            ratio = nm["dense_bytes"] / max(1, nm["packed_bytes"])
            rows.append(("N:M storage", f"{nm.get('pattern', '')} weights in {nm['packed_bytes']:,} bytes packed vs "
                                        f"{nm['dense_bytes']:,} dense ({ratio:.2f}× smaller)"))
        if self.prune:
            rows.append(("prune config", json_text(self.prune)))
        return rows + (self.sensitivity.summary() if self.sensitivity is not None else [])

    def tables(self) -> list[Table]:
        tables = [_sparsity_table(self.sparsity)] if self.sparsity else []
        if self.rounds:
            targets = any("target" in r for r in self.rounds)
            rows = []
            for k, r in enumerate(self.rounds, start=1):
                best = r.get("best_epoch")
                rows.append([str(r.get("round", k))] + ([percent(r.get("target"))] if targets else [])
                            + [percent(r.get("sparsity")), str(len(r.get("history") or []))]
                            + [f"{percent(r.get('best_val_accuracy'))} (epoch {best})" if best is not None else DASH])
            tables.append((["round"] + (["target"] if targets else []) + ["sparsity", "epochs", "kept val accuracy"],
                           rows))
        return tables + (self.sensitivity.tables() if self.sensitivity is not None else [])

    def figures(self, artifact: str) -> list[Figure]:
        return self.sensitivity.figures(artifact) if self.sensitivity is not None else []


def pruning_records(info: Mapping) -> list[Record]:
    """The records of a :func:`prune_with_schedule` (or :func:`iterative_prune`) result: the
    :class:`PruningRecord`, and the :class:`~torchslim.records.TrainingRecord` of the last training when the
    schedule trains the model as a whole (gradual, lottery).

    Example:
        >>> model, info = prune_with_schedule(model, cfg, data, train)    # doctest: +SKIP
        >>> art = Artifact("prune", "prune", "pytorch", path, model, as_info(*pruning_records(info)))   # doctest: +SKIP
    """
    records: list[Record] = [PruningRecord.from_json(info)]
    if "history" in info:
        records.append(TrainingRecord.from_json(info))
    return records


__all__ = ["GradualPruner", "LotteryResult", "PruningRecord", "SparsityRecord", "agp_sparsity", "agp_update_steps",
           "gradual_prune", "iterative_prune", "iterative_targets", "lottery_masks", "lottery_rates",
           "lottery_sparsity", "lottery_ticket", "output_layer", "prune_with_schedule", "pruning_records", "ramp_steps",
           "reinitialize_", "steps_per_epoch"]
