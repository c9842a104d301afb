"""Pruning schedules: when, and how far, to prune while training.

* ``oneshot``: prune once to ``sparsity``, then fine-tune with the masks held.
* ``iterative``: ``rounds`` prune/fine-tune rounds, each removing the same fraction of the remaining weights
  (:func:`iterative_targets`).
* ``gradual``: Zhu & Gupta 2017 (AGP). Sparsity rises during fine-tuning along
  s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(n·Δt))³, masks recomputed every Δt optimizer steps until the ramp ends,
  then held (:func:`agp_sparsity`, :class:`GradualPruner`, :func:`gradual_prune`).
* ``lottery``: Frankle & Carbin 2019, with Frankle et al. 2019's late rewinding. Train; prune a fixed fraction of
  each layer's remaining weights; rewind the survivors to their values at initialization (or after a few epochs);
  repeat. The last ticket is trained once more (:func:`lottery_ticket`).

The top of the module is small pure functions (the schedule math, tested on their own); the drivers below run them
with ``fit``.

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

if TYPE_CHECKING:
    from torchslim.data import DataBundle
    from torchslim.prune.config import PruneConfig
    from torchslim.prune.magnitude import Masks
    from torchslim.training.config import TrainConfig
    from torchslim.training.loop import FitResult

# --------------------------------------------------------------------------------------------------- schedule math


def iterative_targets(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each of `rounds` rounds, each pruning the same fraction of what remains: 1 − (1 − s)^(k/R)."""
    return [1 - (1 - sparsity) ** (k / rounds) for k in range(1, rounds + 1)]


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
    from torchslim.prune.magnitude import prunable_layers

    names = list(prunable_layers(model))
    return names[-1] if names else None


# ---------------------------------------------------------------------------------------------------------- drivers


class GradualPruner:
    """The `after_step` of a gradual (AGP) fine-tuning: counts optimizer steps, recomputes the masks with the
    configured criterion at the steps of :func:`agp_update_steps`, and holds them (zeros) after every step.

    ``extra_state`` (the masks and the step counter) goes into ``fit``'s checkpoints, so a resumed run continues
    from the same step with the same masks. ``levels`` maps the scheduled overall sparsity to what `prune_` is given
    (per-layer levels for ``scope: sensitivity``).
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig, total_steps: int, data: DataBundle | None = None,
                 levels: Callable[[float], float | Mapping[str, float]] | None = None) -> None:
        from torchslim.prune.magnitude import Masks, prunable_layers

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
        from torchslim.prune.magnitude import prune_

        fresh = prune_(self.model, self.cfg, sparsity=self.levels(self.target(step)), data=self.data)
        for name, mask in fresh.masks.items():
            self.masks.masks[name].copy_(mask)


def gradual_prune(model: nn.Module, cfg: PruneConfig, data: DataBundle, train: TrainConfig, *, seed: int = 0,
                  checkpoint: str | Path | None = None, stage: str = "prune", log: Callable[[str], None] = print,
                  levels: Callable[[float], float | Mapping[str, float]] | None = None) -> tuple[Masks, FitResult]:
    """Fine-tune `model` in place while its sparsity follows the AGP ramp to ``cfg.sparsity``; returns
    (the held masks, ``fit``'s result).

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
    from torchslim.prune.criteria import CRITERIA
    from torchslim.prune.magnitude import Masks, masks_from_scores, prunable_layers

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
    model, masks)` runs after each round's training (``masks`` is None for round 0).

    Example:
        >>> cfg = PruneConfig(schedule="lottery", rounds=5, lottery_rate=0.2)               # doctest: +SKIP
        >>> result = lottery_ticket(create_model("lenet-300-100"), cfg, data, TrainConfig(epochs=5))   # doctest: +SKIP
    """
    from torchslim.prune.magnitude import prunable_layers
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
        masks.apply()
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
        from torchslim.prune.magnitude import Masks

        result.masks = Masks(layers, {n: (m.weight != 0).float() for n, m in layers.items()})
    return result


def _round_record(k: int, layers: Mapping[str, nn.Module], fitted: FitResult) -> dict:
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return {"round": k, "sparsity": zeros / total,
            "kept": {n: float((m.weight != 0).float().mean()) for n, m in layers.items()},
            "history": fitted.history, "best_epoch": fitted.best_epoch, "best_val_accuracy": fitted.best_val_accuracy}
