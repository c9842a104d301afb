"""The training loop: one function that reads top to bottom.

`fit` trains a model on a dataset split held in memory as tensors (a TensorDataset: the fast path, batches sliced by
index), or on any DataLoader or re-iterable of ``(inputs, labels, *extra)`` batches, where ``inputs`` is a tensor or a
mapping of tensors (``model(**inputs)``: input_ids + attention_mask). Models are called through
:func:`torchslim.tasks.forward`, so Hugging Face style outputs (``.logits``) work too. Under torchrun the same loop
runs data-parallel: batches come from a rank-aware index iterator (or every world-th batch of a loader), the model is
wrapped in DDP, metrics are summed over ranks, and only rank 0 writes the checkpoint (the caller's `log` decides who
prints). A method that makes its own inputs as it trains (data-free distillation's generator) plugs in as a batch
source: an iterable of batches that fit checkpoints with the model (see :func:`fit`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_path, resume_errors
from torchslim.tasks import Task, forward
from torchslim.training import dist
from torchslim.training.config import TrainConfig
from torchslim.training.ema import WeightEMA

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]  # one batch's model inputs: a tensor, or keyword tensors
TrainData = Union[torch.utils.data.TensorDataset, Iterable]  # a TensorDataset, a DataLoader, or re-iterable batches

# loss_fn(model, x, y, *extra) -> (loss, logits) or (loss, logits, terms). `x` is a batch's inputs (a tensor or a
# mapping of tensors: call the model with `torchslim.tasks.forward(model, x)`). `extra` are further tensors of the
# training set row-aligned with x (e.g. cached teacher logits), so a distillation loss needs no side channel to find
# its targets. `terms` ({name: scalar}) are the parts of the loss worth a curve; their per-epoch mean is recorded.
LossFn = Callable[..., tuple]


def cross_entropy_loss(label_smoothing: float = 0.0, task: Task | None = None) -> LossFn:
    """The default training loss: the task's (:meth:`Task.loss`: cross-entropy of N×C logits with N labels; causal-lm:
    mean token cross-entropy of N×T×V logits with the N×T next tokens), plain cross-entropy without a task."""
    def loss_fn(model: nn.Module, x: Inputs, y: torch.Tensor, *extra: torch.Tensor):
        logits = forward(model, x)
        if task is not None:
            return task.loss(logits, y, label_smoothing), logits
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


class StopTraining(Exception):
    """Raise it from a batch source, a `loss_fn` or an `after_step` to end :func:`fit` early (a generator that has
    collapsed, a budget spent); its message says why. The epoch it interrupts is neither recorded nor checkpointed,
    and the weights are kept as after a last epoch (the best epoch's with ``keep="best"``).

    Example:
        >>> raise StopTraining("the generator collapsed at epoch 2, step 3")   # doctest: +SKIP
    """


EpochWatcher = Callable[[str, dict, str], None]
_EPOCH_WATCHERS: list[EpochWatcher] = []


@contextmanager
def watch_epochs(watcher: EpochWatcher) -> Iterator[None]:
    """Call ``watcher(stage, record, monitor)`` after every epoch that :func:`fit` finishes inside the block (on
    rank 0, after the epoch's checkpoint): `record` is the epoch's history entry (``val_accuracy``, ``val_<metric>``,
    loss...), `monitor` the key training keeps the best epoch by. Whatever the watcher raises ends the training and
    propagates to the caller: a search stops a trial that is heading nowhere this way.

    Example:
        >>> with watch_epochs(lambda stage, record, monitor: print(stage, record[monitor])):   # doctest: +SKIP
        ...     run_recipe(recipe, "runs/x")
    """
    _EPOCH_WATCHERS.append(watcher)
    try:
        yield
    finally:
        _EPOCH_WATCHERS.remove(watcher)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch: loss, train_acc, val_acc, seconds, terms
    best_epoch: int | None = None
    best_val_accuracy: float | None = None  # the validation accuracy of the best epoch
    stopped: str | None = None  # why training ended before its last epoch (a StopTraining's message), else None
    monitor: str = "val_accuracy"  # the history key that chose the best epoch: val_<the task's primary metric>
    best_val: float | None = None  # its value at the best epoch (= best_val_accuracy when monitor is val_accuracy)


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


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor | None, tuple]:
    """``(inputs, labels, extra)`` of one batch: a tuple or list ``(inputs, labels, *extra)``, or a mapping whose
    ``labels`` entry holds the labels (a Hugging Face collator's batch); anything else is inputs without labels.

    Example:
        >>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1]
        tensor([0, 1])
    """
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise TorchslimError("got an empty batch; a batch is (inputs, labels, *extra)")
        return batch[0], (batch[1] if len(batch) > 1 else None), tuple(batch[2:])
    if isinstance(batch, Mapping) and "labels" in batch:
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"], ()
    return batch, None, ()


def split_inputs(inputs: Inputs, batch_size: int) -> list[Inputs]:
    """`inputs` (a tensor, or a mapping of row-aligned tensors) in chunks of `batch_size` rows."""
    if isinstance(inputs, Mapping):
        parts = {k: v.split(batch_size) for k, v in inputs.items()}
        return [dict(zip(parts, chunk)) for chunk in zip(*parts.values())]
    return list(inputs.split(batch_size))


def iter_batches(data: Any, batch_size: int = 512) -> Iterator[tuple[Inputs, torch.Tensor | None]]:
    """``(inputs, labels)`` per batch of `data`, labels None where `data` has none.

    `data` is a tensor or a mapping of tensors (inputs only, split into `batch_size` rows), a TensorDataset (x, y
    sliced into `batch_size` rows), a map-style dataset or a list of ``(x, y)`` samples (collated by a DataLoader of
    `batch_size`), or a DataLoader / re-iterable of batches (taken as they come; see :func:`split_batch`).

    Example:
        >>> [tuple(x.shape) for x, _ in iter_batches(torch.zeros(5, 2), batch_size=2)]
        [(2, 2), (2, 2), (1, 2)]
    """
    if isinstance(data, (torch.Tensor, Mapping)):
        for part in split_inputs(data, batch_size):
            yield part, None
        return
    if _is_tensor_dataset(data):  # slice directly: much faster than per-sample collation
        x, y = data.tensors[0], (data.tensors[1] if len(data.tensors) > 1 else None)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], (None if y is None else y[i:i + batch_size])
        return
    if _is_sample_dataset(data):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        inputs, labels, _ = split_batch(batch)
        yield inputs, labels


def _is_sample_dataset(data: Any) -> bool:
    """A map-style dataset, or a list of (x, y) samples (labels without a batch axis), rather than batches."""
    if isinstance(data, torch.utils.data.DataLoader):
        return False
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return True
    if isinstance(data, Sequence) and len(data) and isinstance(data[0], (tuple, list)) and len(data[0]) > 1:
        label = data[0][1]
        return isinstance(label, (int, float)) or (isinstance(label, torch.Tensor) and label.dim() == 0)
    return False


@torch.no_grad()  # not inference_mode: cached teacher logits are later saved for backward
def predict(model: nn.Module, x: Any, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` (eval mode) on inputs `x`, in batches: a tensor, a mapping of tensors (``model(**x)``), or a
    DataLoader / dataset / re-iterable of ``(inputs, labels)`` batches (their inputs, in order).

    Example:
        >>> predict(nn.Linear(3, 2), torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    was_training = model.training
    model.eval()
    try:
        out = [forward(model, xb) for xb, _ in iter_batches(x, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy_of(model: nn.Module, data: Any) -> float | None:
    """Top-1 accuracy (a fraction) of `model` on `data` (a TensorDataset, a DataLoader or re-iterable of
    ``(inputs, labels)`` batches); None when `data` is None or empty. The classes are the logits' last axis, so for
    N×T×V logits and N×T labels (causal-lm) it is the accuracy over every token."""
    if data is None:
        return None
    if _is_tensor_dataset(data):
        if len(data) == 0:
            return None
        x, y = data.tensors[:2]
        return (predict(model, x).argmax(-1) == y).float().mean().item()
    correct = seen = 0
    for inputs, labels in iter_batches(data):
        if labels is None:
            raise TorchslimError("accuracy needs labels: each batch must be (inputs, labels, ...)")
        correct += (predict(model, inputs).argmax(-1) == labels).sum().item()
        seen += labels.numel()
    return correct / seen if seen else None


def task_of(*splits: Any) -> Task | None:
    """The task a data split says it belongs to (its ``task`` attribute: the splits of a causal-lm DataBundle carry
    theirs), the first found among `splits`; None for a plain TensorDataset or loader (classification)."""
    for data in splits:
        task = getattr(data, "task", None)
        if isinstance(task, Task):
            return task
    return None


def validate(model: nn.Module, data: Any, task: Task | None = None) -> dict[str, float | None]:
    """What :func:`fit` records after each epoch: ``{"val_accuracy": ...}`` (None without data), and for a task whose
    primary metric is not accuracy also ``val_<primary metric>`` (causal-lm: ``val_perplexity``), computed by
    ``task.metrics`` on the logits of all of `data` (a TensorDataset, or a loader of ``(inputs, labels)``).

    Example:
        >>> validate(model, data.val, data.task)   # doctest: +SKIP
        {'val_perplexity': 5.62, 'val_accuracy': 0.47}
    """
    if task is None or task.primary_metric == "accuracy" or data is None:
        return {"val_accuracy": accuracy_of(model, data)}
    if _is_tensor_dataset(data):
        x, y = data.tensors[:2]
        logits = predict(model, x)
    else:
        pairs = [(predict(model, inputs), labels) for inputs, labels in iter_batches(data)]
        logits, y = torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs])
    metrics = task.metrics(logits.float().numpy(), y.numpy())
    return {f"val_{task.primary_metric}": metrics[task.primary_metric], "val_accuracy": metrics.get("accuracy")}


def _better(value: float | None, best: float | None, higher_is_better: bool) -> bool:
    """Whether `value` beats `best` (None: nothing yet) in the metric's direction; NaN never does."""
    if value is None or value != value:
        return False
    return best is None or (value > best if higher_is_better else value < best)


def _val_text(record: dict, monitor: str) -> str:
    """The validation part of an epoch's log line: `val 97.50%`, or `val perplexity 5.62 (accuracy 47.10%)`."""
    acc = record.get("val_accuracy")
    if monitor == "val_accuracy":
        return f"  val {100 * acc:6.2f}%" if acc is not None else ""
    value = record.get(monitor)
    if value is None:
        return ""
    return f"  val {monitor.removeprefix('val_')} {value:.4f}" + (f" (accuracy {100 * acc:.2f}%)" if acc is not None
                                                                 else "")


def splits(data: Any, val: Any | None = None) -> tuple[Any, Any | None]:
    """(train, val) data of a DataBundle (anything with `train` and `val` splits; `val` given replaces its own), or of
    a DataLoader / re-iterable of batches given alone (validated on `val`)."""
    if hasattr(data, "train") and hasattr(data, "val") and not isinstance(data, nn.Module):
        return data.train, data.val if val is None else val
    return data, val


def _loader_steps(loader: Iterable) -> int:
    """Optimizer steps one rank takes per epoch of `loader`: every world-th batch, the same number on every rank."""
    if isinstance(loader, Iterator):  # a generator or iterator: the second epoch would find it empty
        raise TorchslimError(f"training data must be re-iterable once per epoch (a DataLoader, a TensorDataset or a "
                             f"list of batches), not a one-shot {type(loader).__name__}")
    try:
        count = len(loader)
    except TypeError:  # an iterable without a length: count one pass
        count = sum(1 for _ in loader)
    return count // _loader_shard(loader)[1]


def _is_tensor_dataset(data: Any) -> bool:
    """A TensorDataset, or anything else holding its rows as `.tensors` (x, y, *extra): the fast index path."""
    return isinstance(getattr(data, "tensors", None), (tuple, list))


def _describe(inputs: Inputs) -> str:
    if isinstance(inputs, Mapping):
        return "a mapping of " + ", ".join(f"{k} {_describe(v)}" for k, v in inputs.items())
    if isinstance(inputs, torch.Tensor):
        return f"{str(inputs.dtype).removeprefix('torch.')} {'×'.join(map(str, inputs.shape))}"
    return type(inputs).__name__


def _loader_shard(loader: Iterable) -> tuple[int, int]:
    """(rank, world) of the batches this rank takes; (0, 1) when the loader's batches are this rank's own already (a
    DistributedSampler shards it, or a batch source says ``per_rank = True``)."""
    if isinstance(getattr(loader, "sampler", None), torch.utils.data.distributed.DistributedSampler) \
            or getattr(loader, "per_rank", False):
        return 0, 1
    return dist.rank(), dist.world()


def _stateful(obj: Any) -> bool:
    """Whether `obj` can be checkpointed: it has ``state_dict()`` and ``load_state_dict(state)``."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _epoch_batches(train_set: TrainData, batch_size: int, gen: torch.Generator, epoch: int, steps: int
                   ) -> Iterator[tuple[Inputs, torch.Tensor, tuple, float]]:
    """(inputs, labels, extra, share) per optimizer step of one epoch on this rank (see :func:`batch_indices`)."""
    if _is_tensor_dataset(train_set):
        tensors: Sequence[torch.Tensor] = train_set.tensors
        for idx, share in batch_indices(len(tensors[0]), batch_size, gen, dist.rank(), dist.world()):
            x, y, *extra = (t[idx] for t in tensors)
            yield x, y, tuple(extra), share
        return
    # A loader batches (and shuffles) itself. Under torchrun each rank takes every world-th batch, and all ranks stop
    # after the same number of steps (a tail of fewer than `world` batches is dropped), so that DDP's gradient
    # all-reduce always finds every rank. A loader with a DistributedSampler is sharded already: each rank takes all.
    for epoch_aware in (train_set, getattr(train_set, "sampler", None)):  # a batch source, a DistributedSampler
        if callable(getattr(epoch_aware, "set_epoch", None)):
            epoch_aware.set_epoch(epoch)
    rank, world = _loader_shard(train_set)
    for i, batch in enumerate(train_set):
        if i >= steps * world:
            break
        if i % world == rank:
            x, y, extra = split_batch(batch)
            if y is None:
                raise TorchslimError(f"training batch {i} has no labels; a batch is (inputs, labels, *extra)")
            yield x, y, extra, 1.0


def fit(
    model: nn.Module,
    train_set: TrainData,
    val_set: Any | None,
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
    ema_decay: float = 0.0,
    task: Task | None = None,
) -> FitResult:
    """Train `model` in place on `train_set` and return the per-epoch history.

    `train_set` is a TensorDataset (x, y, *extra: batches of ``cfg.batch_size`` rows drawn by index with `seed`), or
    a DataLoader or any re-iterable of ``(inputs, labels, *extra)`` batches, where inputs are a tensor or a mapping
    of tensors (the model is called as ``model(**inputs)``); a loader's own batch size and order are used. Another
    map-style dataset of ``(x, y)`` samples is batched by ``cfg.batch_size`` and shuffled with `seed`. `val_set`
    (None, or the same kinds) gives the validation accuracy after each epoch. With ``cfg.keep == "best"`` and a
    validation split, the weights of the best validation epoch are restored at the end. `after_step` runs after
    every optimizer step (pruning uses it to hold masks at zero); when it is None and `model` was pruned by
    :func:`torchslim.prune_` (its masks are attached to it), the masks are applied after every step and checkpointed,
    so training never revives pruned weights. With `checkpoint`, the full training state (model, optimizer,
    schedule, RNG states, `extra_state` such as pruning masks, epoch) is written there atomically after every epoch,
    and a run that finds the file continues after its last epoch. Under torchrun the model is wrapped in DDP; each
    global batch of a TensorDataset is split across ranks, and of a loader each rank takes every world-th batch
    (give the loader a DistributedSampler instead and each rank takes all of its own). A progress bar is shown while
    an epoch runs when `progress` is True, or by default when stderr is a terminal. Epochs before `keep_from_epoch`
    are never the best (a gradual pruning stage: they end less sparse than asked).

    A method that makes its inputs while it trains (a generator trained against a teacher, a replay buffer) passes a
    *batch source*: any re-iterable of batches with a ``len()`` (the steps of one epoch). fit uses what it has of

    - ``set_epoch(epoch)``: called before each epoch, as on a DistributedSampler;
    - ``state_dict()`` / ``load_state_dict(state)``: its state is checkpointed with the model after every epoch and
      restored on resume (``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts), so that a
      resumed run draws exactly the batches an uninterrupted one would (a torchdata StatefulDataLoader qualifies);
    - ``metrics()``: its own numbers for the epoch just ended on this rank, ``{name: float}``, added to the epoch's
      ``terms`` (a generator's losses; a loss_fn that is a method of the source can count there too);
    - ``per_rank = True``: under torchrun its batches are this rank's own already, so every rank takes all of them.

    A batch source, `loss_fn` or `after_step` may raise :class:`StopTraining` to end training early (the interrupted
    epoch is dropped; under torchrun every rank must raise it at the same step); `FitResult.stopped` then says why.
    With `ema_decay` > 0 an exponential moving average of the weights (:class:`~torchslim.training.ema.WeightEMA`) is
    updated after every optimizer step; the average is what is validated (``val_accuracy``; the trained weights'
    score is ``val_accuracy_raw``), kept as the best, checkpointed and left in `model` at the end.

    `task` (default: the one the data carries, :func:`task_of` — a causal-lm DataBundle's splits do; else
    classification) decides the default loss (:meth:`Task.loss`) and what validation measures: the best epoch is the
    one best by ``val_<task.primary_metric>`` in the task's direction (``higher_is_better``; perplexity: the
    lowest), recorded as ``FitResult.monitor`` and ``best_val``. Without a task, or with a classification task, it
    is ``val_accuracy``, highest first, as always. Training accuracy counts every prediction (each token for
    N×T×V logits).

    Example:
        >>> fit(model, data.train, data.val, TrainConfig(epochs=3), stage="teacher")   # doctest: +SKIP
        >>> fit(model, train_loader, val_loader, TrainConfig(epochs=3))               # doctest: +SKIP
        >>> fit(student, batches, val, TrainConfig(epochs=3), loss_fn=batches.loss, ema_decay=0.999)  # doctest: +SKIP
    """
    task = task if task is not None else task_of(train_set, val_set)
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing, task)
    monitor = "val_accuracy" if task is None or task.primary_metric == "accuracy" else f"val_{task.primary_metric}"
    higher_is_better = task is None or monitor == "val_accuracy" or task.higher_is_better
    masks = getattr(model, "_torchslim_masks", None) if after_step is None else None
    if masks is not None:
        # An optimizer step moves pruned weights off zero (momentum, weight decay): put them back after each one.
        after_step = masks.apply
        extra_state = {**{f"masks.{k}": v for k, v in masks.masks.items()}, **(extra_state or {})}
    gen = torch.Generator().manual_seed(seed)
    if _is_tensor_dataset(train_set):
        steps_per_epoch = math.ceil(len(train_set.tensors[0]) / cfg.batch_size)
    else:
        if _is_sample_dataset(train_set):  # samples, not batches: batch and shuffle them (drawn from `gen`: resumable)
            train_set = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        steps_per_epoch = _loader_steps(train_set)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    sched = make_schedule(opt, cfg, steps_per_epoch)
    ema = WeightEMA(model, ema_decay) if ema_decay else None
    # Everything a checkpoint holds besides RNG states and the history: each part's state_dict.
    parts = {"model": model, "optimizer": opt, "schedule": sched,
             **({"train_set": train_set} if _stateful(train_set) else {}), **({"ema": ema} if ema is not None else {})}
    result = FitResult(monitor=monitor)
    best_state = None
    start = 1
    if checkpoint is not None and Path(checkpoint).is_file():
        start, best_state = _restore(checkpoint, parts, gen, result, extra_state)
        log(f"[{stage}] resumed from {checkpoint} after epoch {start - 1}")
    net = dist.wrap(model)  # DDP (one gradient all-reduce per step) when launched by torchrun, else the model
    check_sync = dist.active() and os.environ.get("TORCHSLIM_CHECK_SYNC") == "1"
    if cfg.jitter:
        from torchslim.data.augment import random_shift

    for epoch in range(start, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, correct, seen, predicted = 0.0, 0, 0, 0
        term_sums: dict[str, float] = {}
        bar = _progress(progress if dist.is_main() else False, f"[{stage}] epoch {epoch}/{cfg.epochs}", steps_per_epoch)
        batches = _epoch_batches(train_set, cfg.batch_size, gen, epoch, steps_per_epoch)
        try:
            for step, (x, y, extra, share) in enumerate(bar(batches), start=1):
                if cfg.jitter:
                    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4):
                        raise TorchslimError(f"stage '{stage}': jitter shifts images (float N×C×H×W), but the "
                                             f"inputs are {_describe(x)}; set jitter to 0")
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
                if ema is not None:
                    ema.update(model)
                if check_sync:
                    dist.check_in_sync(model, f"stage '{stage}' epoch {epoch} step {step}")
                total_loss += loss.item() * len(y)
                correct += (logits.argmax(-1) == y).sum().item()  # classes on the last axis: each token counts
                seen += len(y)
                predicted += y.numel()
                for name, value in (terms[0] if terms else {}).items():
                    term_sums[name] = term_sums.get(name, 0.0) + float(value) * len(y)
        except StopTraining as stop:  # this epoch is dropped; the weights are kept below as after a last epoch
            result.stopped = str(stop)
            log(f"[{stage}] stopped: {stop}")
            break

        total_loss, correct, seen, predicted, *term_totals = dist.all_sum(total_loss, correct, seen, predicted,
                                                                          *term_sums.values())
        if not seen:
            raise TorchslimError(f"stage '{stage}': epoch {epoch} saw no training batches; the training data is empty")
        val = validate(model, val_set, task)  # every rank holds the same weights, so the same values
        record = {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / predicted,
                  **val, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if ema is not None:  # the average is the model being trained: validate (and keep) it, note the raw score
            with ema.applied_to(model):
                averaged = validate(model, val_set, task)
            record.update({**averaged, **{f"{k}_raw": v for k, v in val.items()}})
        val_acc, val_score = record["val_accuracy"], record.get(monitor)
        term_means = {name: total / seen for name, total in zip(term_sums, term_totals)}
        if callable(getattr(train_set, "metrics", None)):
            term_means.update(train_set.metrics())  # a batch source's own numbers (a generator's losses, ...)
        if term_means:
            record["terms"] = term_means
        result.history.append(record)
        val_txt = _val_text(record, monitor)
        if ema is not None and val_score is not None:
            raw = record[f"{monitor}_raw"]
            val_txt += f" (EMA; raw {100 * raw:.2f}%)" if monitor == "val_accuracy" else f" (EMA; raw {raw:.4f})"
        terms_txt = "".join(f"  {k} {v:.4f}" for k, v in term_means.items())
        log(f"[{stage}] epoch {epoch:>3}/{cfg.epochs}  loss {record['loss']:.4f}{terms_txt}  "
            f"train {100 * record['train_accuracy']:6.2f}%{val_txt}  ({record['seconds']:.1f}s)")
        if epoch >= keep_from_epoch and _better(val_score, result.best_val, higher_is_better):
            result.best_val, result.best_val_accuracy, result.best_epoch = val_score, val_acc, epoch
            if cfg.keep == "best":
                best_state = copy.deepcopy(ema.state if ema is not None else model.state_dict())
        if checkpoint is not None and dist.is_main():
            _save(checkpoint, epoch, parts, gen, result, best_state, extra_state)
        dist.barrier()  # no rank races ahead of the checkpoint (a resume must find every rank's last epoch there)
        if dist.is_main():
            for watcher in tuple(_EPOCH_WATCHERS):
                watcher(stage, record, monitor)

    if ema is not None:  # the averaged weights are the result (the last ones unless the best are kept below)
        model.load_state_dict(ema.state)
    if cfg.keep == "best" and best_state is not None and result.best_epoch != cfg.epochs:
        model.load_state_dict(best_state)
        best = f"accuracy {100 * result.best_val:.2f}%" if monitor == "val_accuracy" else \
            f"{monitor.removeprefix('val_')} {result.best_val:.4f}"
        log(f"[{stage}] kept the {'averaged ' if ema is not None else ''}weights of epoch {result.best_epoch} (best "
            f"validation {best})")
    model.eval()
    return result


def _save(path, epoch, parts, gen, result, best_state, extra_state) -> None:
    """The whole training state, atomically. torch.save here is read back with weights_only=True (no code runs)."""
    state = {
        "epoch": epoch, **{name: part.state_dict() for name, part in parts.items()},
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "best_state": best_state,
        "history": json.dumps(result.history), "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy, "best_val": result.best_val, "extra_state": extra_state or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore(path, parts, gen, result, extra_state) -> tuple[int, dict | None]:
    with resume_errors(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, part in parts.items():  # a part the file lacks (a run without ema_decay): one line, not a traceback
            part.load_state_dict(state[name])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    result.history = json.loads(state["history"])
    result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
    # A checkpoint written before `best_val` existed monitored the validation accuracy.
    result.best_val = state.get("best_val", state["best_val_accuracy"])
    for key, tensor in (extra_state or {}).items():
        tensor.copy_(state["extra_state"][key])
    return state["epoch"] + 1, state["best_state"]


def train(model: nn.Module, data: Any, cfg: TrainConfig, *, val: Any | None = None, seed: int = 0,
          stage: str = "train", log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place with cross-entropy on `data`: a DataBundle (its train split, validated on its val
    split unless `val` is given), or a DataLoader / re-iterable of ``(inputs, labels)`` batches (validated on `val`).

    Example:
        >>> train(create_model("lenet5"), load_dataset("mnist"), TrainConfig(epochs=10))   # doctest: +SKIP
        >>> train(model, train_loader, TrainConfig(epochs=3), val=val_loader)             # doctest: +SKIP
    """
    train_set, val_set = splits(data, val)
    return fit(model, train_set, val_set, cfg, seed=seed, stage=stage, log=log,
               task=task_of(train_set, val_set, data))
