"""The training loop: one function that reads top to bottom.

`fit` trains a model on a dataset split held in memory as tensors. Under torchrun the same loop runs data-parallel:
batches come from a rank-aware index iterator, the model is wrapped in DDP, metrics are summed over ranks, and only
rank 0 writes the checkpoint (the caller's `log` decides who prints).
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_path, resume_errors
from torchslim.training import dist
from torchslim.training.config import TrainConfig

# loss_fn(model, x, y, *extra) -> (loss, logits) or (loss, logits, terms). `extra` are further tensors of the
# training set row-aligned with x (e.g. cached teacher logits), so a distillation loss needs no side channel to find
# its targets. `terms` ({name: scalar}) are the parts of the loss worth a curve; their per-epoch mean is recorded.
LossFn = Callable[..., tuple]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


def bn_scale_l1(model: nn.Module) -> torch.Tensor:
    """Σ|γ| over the scales of every BatchNorm layer of `model` (0 when it has none).

    Example:
        >>> bn_scale_l1(nn.BatchNorm1d(3))
        tensor(3., grad_fn=<AddBackward0>)
    """
    scales = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return sum(scales, torch.zeros(()))


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch: loss, train_acc, val_acc, seconds, terms
    best_epoch: int | None = None
    best_val_accuracy: float | None = None


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step LR schedule (stepping per batch keeps cosine smooth on short runs)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        fn = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif cfg.schedule == "step":
        fn = lambda step: cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)  # noqa: E731
    else:
        fn = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                  shuffle: bool = True) -> Iterator[tuple[torch.Tensor, float]]:
    """(rows, share) per step, in batches of `batch_size` (the global batch, whatever the number of processes).

    Every rank draws the same permutation (same seed) and takes every world-th row of each global batch, so N
    processes take the same optimizer steps on the same samples as one process would. DDP averages gradients over
    ranks; a rank whose slice is larger or smaller than 1/world of the batch scales its mean loss by `share`
    (= rows · world / global rows) so that the average is exactly the global batch mean. A last batch smaller than
    `world` is dropped so that no rank ever sees an empty batch.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for idx in order.split(batch_size):
        if len(idx) >= world:
            rows = idx[rank::world]
            yield rows, len(rows) * world / len(idx)


def _progress(enabled: bool | None, description: str, total: int):
    """Wrap an iterator in a transient rich progress bar (a no-op when disabled or not on a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return lambda it: it

    def wrap(it):
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in it:
                yield item
                bar.advance(task)

    return wrap


@torch.no_grad()  # not inference_mode: cached teacher logits are later saved for backward
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` (eval mode) on a tensor of inputs, in batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(xb) for xb in x.split(batch_size)]) if len(x) else torch.empty(0)
    model.train(was_training)
    return out


def accuracy_of(model: nn.Module, dataset: torch.utils.data.TensorDataset | None) -> float | None:
    if dataset is None or len(dataset) == 0:
        return None
    x, y = dataset.tensors[:2]
    return (predict(model, x).argmax(1) == y).float().mean().item()


def fit(
    model: nn.Module,
    train_set: torch.utils.data.TensorDataset,
    val_set: torch.utils.data.TensorDataset | None,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    extra_state: dict[str, torch.Tensor] | None = None,
    stage: str = "train",
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    keep_from_epoch: int = 1,
) -> FitResult:
    """Train `model` in place on `train_set` (tensors: x, y, *extra) and return the per-epoch history.

    With ``cfg.keep == "best"`` and a validation split, the weights of the best validation epoch are restored at the
    end. `after_step` runs after every optimizer step (pruning uses it to hold masks at zero). With `checkpoint`,
    the full training state (model, optimizer, schedule, RNG states, `extra_state` such as pruning masks, epoch) is
    written there atomically after every epoch, and a run that finds the file continues after its last epoch.
    Under torchrun the model is wrapped in DDP and each global batch is split across ranks. A progress bar is
    shown while an epoch runs when `progress` is True, or by default when stderr is a terminal. Epochs before
    `keep_from_epoch` are never the best (a gradual pruning stage: they end less sparse than asked).

    Example:
        >>> fit(model, data.train, data.val, TrainConfig(epochs=3), stage="teacher")   # doctest: +SKIP
    """
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    tensors: Sequence[torch.Tensor] = train_set.tensors
    n = len(tensors[0])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    sched = make_schedule(opt, cfg, steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    result = FitResult()
    best_state = None
    start = 1
    if checkpoint is not None and Path(checkpoint).is_file():
        start, best_state = _restore(checkpoint, model, opt, sched, gen, result, extra_state)
        log(f"[{stage}] resumed from {checkpoint} after epoch {start - 1}")
    net = dist.wrap(model)  # DDP (one gradient all-reduce per step) when launched by torchrun, else the model
    check_sync = dist.active() and os.environ.get("TORCHSLIM_CHECK_SYNC") == "1"
    if cfg.jitter:
        from torchslim.data.augment import random_shift

    for epoch in range(start, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        term_sums: dict[str, float] = {}
        bar = _progress(progress if dist.is_main() else False, f"[{stage}] epoch {epoch}/{cfg.epochs}", steps_per_epoch)
        for step, (idx, share) in enumerate(bar(batch_indices(n, cfg.batch_size, gen, dist.rank(), dist.world())),
                                            start=1):
            x, y, *extra = (t[idx] for t in tensors)
            if cfg.jitter:
                x = random_shift(x, cfg.jitter, gen)
            loss, logits, *terms = loss_fn(net, x, y, *extra)
            if cfg.bn_l1:  # network slimming: the penalty's subgradient λ·sign(γ) pulls every BN scale toward 0
                loss = loss + cfg.bn_l1 * bn_scale_l1(model)
            if not torch.isfinite(loss):
                raise TorchslimError(
                    f"stage '{stage}': loss became {loss.item()} at epoch {epoch}, batch {step}; "
                    f"lower the learning rate (now {cfg.lr}) or check the inputs"
                )
            opt.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            if check_sync:
                dist.check_in_sync(model, f"stage '{stage}' epoch {epoch} step {step}")
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            for name, value in (terms[0] if terms else {}).items():
                term_sums[name] = term_sums.get(name, 0.0) + float(value) * len(y)

        total_loss, correct, seen, *term_totals = dist.all_sum(total_loss, correct, seen, *term_sums.values())
        val_acc = accuracy_of(model, val_set)  # every rank holds the same weights, so the same value
        record = {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen,
                  "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if term_sums:
            record["terms"] = {name: total / seen for name, total in zip(term_sums, term_totals)}
        result.history.append(record)
        val_txt = f"  val {100 * val_acc:6.2f}%" if val_acc is not None else ""
        terms_txt = "".join(f"  {k} {v:.4f}" for k, v in record.get("terms", {}).items())
        log(f"[{stage}] epoch {epoch:>3}/{cfg.epochs}  loss {record['loss']:.4f}{terms_txt}  "
            f"train {100 * record['train_accuracy']:6.2f}%{val_txt}  ({record['seconds']:.1f}s)")
        if val_acc is not None and epoch >= keep_from_epoch and (result.best_val_accuracy is None
                                                                 or val_acc > result.best_val_accuracy):
            result.best_val_accuracy, result.best_epoch = val_acc, epoch
            if cfg.keep == "best":
                best_state = copy.deepcopy(model.state_dict())
        if checkpoint is not None and dist.is_main():
            _save(checkpoint, epoch, model, opt, sched, gen, result, best_state, extra_state)
        dist.barrier()  # no rank races ahead of the checkpoint (a resume must find every rank's last epoch there)

    if cfg.keep == "best" and best_state is not None and result.best_epoch != cfg.epochs:
        model.load_state_dict(best_state)
        log(f"[{stage}] kept the weights of epoch {result.best_epoch} (best validation accuracy "
            f"{100 * result.best_val_accuracy:.2f}%)")
    model.eval()
    return result


def _save(path, epoch, model, opt, sched, gen, result, best_state, extra_state) -> None:
    """The whole training state, atomically. torch.save here is read back with weights_only=True (no code runs)."""
    state = {
        "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "best_state": best_state,
        "history": json.dumps(result.history), "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy, "extra_state": extra_state or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore(path, model, opt, sched, gen, result, extra_state) -> tuple[int, dict | None]:
    with resume_errors(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    result.history = json.loads(state["history"])
    result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
    for key, tensor in (extra_state or {}).items():
        tensor.copy_(state["extra_state"][key])
    return state["epoch"] + 1, state["best_state"]


def train(model: nn.Module, data, cfg: TrainConfig, *, seed: int = 0, stage: str = "train",
          log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place on `data.train` with cross-entropy, validating on `data.val` (a DataBundle).

    Example:
        >>> train(create_model("lenet5"), load_dataset("mnist"), TrainConfig(epochs=10))   # doctest: +SKIP
    """
    return fit(model, data.train, data.val, cfg, seed=seed, stage=stage, log=log)
