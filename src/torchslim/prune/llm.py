"""Pruning a language model with calibration data: magnitude, Wanda and SparseGPT on its nn.Linear layers,
unstructured or N:M, block by block.

    result = prune_llm_(model, calibration, LLMPruneConfig(method="sparsegpt", pattern="2:4"))
    result.overall, result.layers["blocks.0.mlp.fc1"]        # sparsity, overall and per layer

The methods (registered in LLM_PRUNERS; each prunes one weight W of shape (out, in) from statistics of its inputs X,
the calibration tokens as rows, (tokens, in)):

* ``magnitude`` — zero the smallest |W_ij| of the layer (no data needed);
* ``wanda`` (Sun et al. 2023) — score |W_ij|·‖X_j‖₂ and zero the lowest scores of each output row: an input feature
  with large activations keeps its weights even when they are small. No weight update;
* ``sparsegpt`` (Frantar & Alistarh 2023) — optimal brain surgeon row by row with the layer Hessian
  H = 2XᵀX + λI (λ = percdamp · mean diag H): columns are visited left to right in blocks of ``blocksize``; at the
  start of each block the weights with the lowest w²/[H⁻¹]²_jj in it are chosen to be pruned, and as each column is
  zeroed the error is spread over the columns not yet visited with the Cholesky factor of H⁻¹ (lazily: inside the
  block at once, to later blocks once per block). The kept weights change to make up for the pruned ones.

``pattern="2:4"`` (any N:M) keeps the N best of every M consecutive inputs of a row instead; SparseGPT then chooses
each group's mask when it reaches the group's first column, as in the paper.

Sequential calibration (the papers' way, and the default when the model has a list of transformer blocks): the
calibration batches run up to the first block once and its inputs are kept; each block then has its layers'
statistics collected from those inputs, is pruned, and is run again to give the next block its inputs — so block k
is calibrated on what the already-pruned blocks before it produce. A model without such a list (or
``sequential=False``) is calibrated in one pass over the whole model. The calibration machinery here
(`calibration_list`, `layerwise`, `InputStats`) is shared with `torchslim.quant.weight_only`.
"""
from __future__ import annotations

import fnmatch
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.registry import Registry

DEFAULT_EXCLUDE = ["*lm_head*", "*embed*"]  # the LM head and embeddings stay dense (and tied weights with them)
_CACHE_KEYS = ("past_key_value", "past_key_values", "layer_past", "cache")  # KV caches are not replayed


# --------------------------------------------------------------------------------------------- configs and results
class LLMPruneConfig(Config):
    """Pruning of a language model's Linear layers from calibration data (see the module docstring).

    `method` from LLM_PRUNERS (magnitude, wanda, sparsegpt); `sparsity` a fraction in (0, 1) for
    ``pattern="unstructured"`` (default 0.5); with ``pattern="N:M"`` the sparsity is 1 − N/M. `exclude` lists
    glob patterns of Linear names left dense. `sequential` None prunes block by block when the model has a list of
    blocks (found automatically, or named by `blocks`, e.g. ``"model.layers"``), else in one pass.
    `calibration_batches` uses that many batches of the calibration data (None: all). SparseGPT's `blocksize`
    (columns updated at once) and `percdamp` (Hessian dampening as a fraction of its mean diagonal).

    Example:
        >>> LLMPruneConfig(method="sparsegpt", pattern="2:4").target_sparsity
        0.5
    """

    method: str = "wanda"
    sparsity: float | None = Field(None, description="fraction of each layer's weights set to zero, in (0, 1); "
                                                     "default 0.5 (an N:M pattern fixes it at 1 - N/M)")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M' such as '2:4'")
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE),
                               description="glob patterns of Linear names left dense")
    sequential: bool | None = None
    blocks: str | None = Field(None, description="dotted name of the model's list of transformer blocks")
    calibration_batches: int | None = Field(None, ge=1)
    blocksize: int = Field(128, ge=1, le=1_000_000)
    percdamp: float = Field(0.01, ge=0, le=10)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in LLM_PRUNERS:
            raise ValueError(_unknown("LLM pruning method", name, LLM_PRUNERS))
        return name

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, s: float | None) -> float | None:
        if s is not None and not 0 < s < 1:
            raise ValueError(f"sparsity must be a fraction strictly between 0 and 1, got {s}")
        return s

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, pattern: str) -> str:
        if pattern != "unstructured" and parse_nm(pattern) is None:
            raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}")
        return pattern

    @model_validator(mode="after")
    def _sparsity_of_pattern(self) -> LLMPruneConfig:
        nm = parse_nm(self.pattern)
        if nm and self.sparsity is not None and not math.isclose(self.sparsity, 1 - nm[0] / nm[1]):
            raise ValueError(f"pattern {self.pattern} prunes {1 - nm[0] / nm[1]:g} of the weights; sparsity "
                             f"{self.sparsity} contradicts it: leave sparsity out")
        return self

    @property
    def n_m(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern)

    @property
    def target_sparsity(self) -> float:
        nm = self.n_m
        return 1 - nm[0] / nm[1] if nm else (0.5 if self.sparsity is None else self.sparsity)


@dataclass
class LLMPruneResult:
    """What `prune_llm_` did: per-layer sparsity (zeros / weights, measured after pruning) and their weight counts."""

    method: str
    pattern: str
    sparsity: float  # the target
    layers: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    sequential: bool = False
    seconds: float = 0.0

    @property
    def overall(self) -> float:
        """Zeros / weights over all pruned layers."""
        total = sum(self.params.values())
        return sum(self.layers[n] * self.params[n] for n in self.layers) / total if total else 0.0


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """(N, M) of an ``"N:M"`` pattern, None for anything else.

    Example:
        >>> parse_nm("2:4"), parse_nm("unstructured")
        ((2, 4), None)
    """
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) < int(parts[1]) <= 256:
        return int(parts[0]), int(parts[1])
    return None


def _unknown(kind: str, name: str, registry: Registry) -> str:
    from torchslim.errors import unknown_choice

    return str(unknown_choice(kind, name, registry.names()))


def resolve_config(cls: type[Config], cfg: Config | None, options: Mapping[str, Any], what: str) -> Any:
    """`cfg` (or the class's defaults) updated by keyword `options`, validated; any problem is one TorchslimError
    line naming the field (a function's keyword arguments are user input like a recipe's fields)."""
    base = {} if cfg is None else cfg.model_dump(exclude_unset=True)
    try:
        return cls(**{**base, **options})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or what
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise TorchslimError(f"{what}: {loc}: {msg}{got}") from None
    except TypeError as e:  # a keyword that is not a field
        raise TorchslimError(f"{what}: {e}") from None


# ------------------------------------------------------------------------------------------------ calibration data
def calibration_list(calibration, limit: int | None, what: str) -> list:
    """The calibration batches as a list: `limit` of them (all when None). A tensor or a dict is one batch.

    A batch is passed to the model as ``model(batch)`` (a tensor, e.g. token ids of shape (batch, seq)),
    ``model(**batch)`` (a dict) or ``model(*batch)`` (a tuple or list).

    Example:
        >>> len(calibration_list([torch.zeros(2, 8, dtype=torch.long)] * 3, 2, "gptq"))
        2
    """
    hint = "a list of batches: token-id tensors, or dicts of the model's inputs"
    if calibration is None:
        raise TorchslimError(f"{what} needs calibration data: {hint}")
    if isinstance(calibration, (torch.Tensor, Mapping)):
        calibration = [calibration]
    batches = []
    for batch in calibration:
        if limit is not None and len(batches) == limit:
            break
        batches.append(batch)
    if not batches:
        raise TorchslimError(f"{what}: the calibration data gave no batches; pass {hint}")
    if limit is not None and len(batches) < limit:
        raise TorchslimError(f"{what}: calibration_batches={limit}, but the calibration data gave only "
                             f"{len(batches)} batch(es); pass more batches or lower calibration_batches")
    return batches


def _as_call(batch) -> tuple[tuple, dict]:
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def _no_cache(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A replayed call must not append to the KV cache of the call it was captured from."""
    def cached(v) -> bool:
        return "Cache" in type(v).__name__

    args = tuple(None if cached(a) else a for a in args)
    kwargs = {k: (None if k in _CACHE_KEYS or cached(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def _first_tensor(out) -> torch.Tensor:
    if hasattr(out, "to_tuple"):  # a Hugging Face ModelOutput
        out = out.to_tuple()
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


@contextmanager
def _inference(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------ layers and blocks
def target_linears(model: nn.Module, exclude: Iterable[str]) -> dict[str, nn.Linear]:
    """The model's nn.Linear layers by name, minus those matching an `exclude` glob and those whose weight is shared
    with an embedding (a tied LM head).

    Example:
        >>> list(target_linears(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), ["2"]))
        ['0']
    """
    exclude = list(exclude)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(fnmatch.fnmatch(name, p) for p in exclude)
            and id(m.weight) not in embedded}


def find_blocks(model: nn.Module, blocks: str | None = None) -> tuple[str, nn.ModuleList] | None:
    """(name, list) of the model's transformer blocks: the module named `blocks`, or the longest nn.ModuleList whose
    every element holds a Linear layer (GPT-2's ``transformer.h``, Llama's ``model.layers``); None when there is none.

    Example:
        >>> find_blocks(nn.Sequential(nn.Linear(2, 2))) is None
        True
    """
    if blocks is not None:
        try:
            found = model.get_submodule(blocks)
        except AttributeError:
            lists = [n for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and n]
            raise TorchslimError(f"blocks: the model has no module '{blocks}'; module lists it has: "
                                 f"{', '.join(lists) or '(none)'}") from None
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or not len(found):
            raise TorchslimError(f"blocks: '{blocks}' is a {type(found).__name__}, not a list of blocks")
        return blocks, found
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and all(
                any(isinstance(s, nn.Linear) for s in block.modules()) for block in m):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    return best


class _Stop(Exception):
    """Raised by the hook that captures the first block's inputs: the rest of the model need not run."""


@dataclass
class CalibrationUnit:
    """A part of the model run on its own inputs: one transformer block on its cached inputs (sequential
    calibration), or the whole model on the calibration batches. `layers` are the target layers inside it."""

    name: str
    module: nn.Module
    calls: list[tuple[tuple, dict]]
    layers: dict[str, nn.Linear]
    prefix: str = ""  # the module's own name in the model ("" for the model itself)

    def run(self, call: tuple[tuple, dict]):
        args, kwargs = call
        return self.module(*args, **kwargs)

    def run_all(self) -> None:
        for call in self.calls:
            self.run(call)

    def collect(self, stats: Mapping[str, InputStats]) -> None:
        """Run every call with each layer's inputs fed to its InputStats."""
        hooks = [self.layers[name].register_forward_pre_hook(functools.partial(_feed, s)) for name, s in stats.items()]
        try:
            self.run_all()
        finally:
            for h in hooks:
                h.remove()

    def next_calls(self) -> list[tuple[tuple, dict]]:
        """The calls of the next block: this (already modified) block's outputs in place of its hidden states."""
        out = []
        for args, kwargs in self.calls:
            hidden = _first_tensor(self.run((args, kwargs)))
            if args:
                out.append(((hidden, *args[1:]), kwargs))
            else:
                out.append(((), {**kwargs, "hidden_states": hidden}))
        return out


def _feed(stats: InputStats, module, args) -> None:
    stats.add(args[0])


def layerwise(model: nn.Module, batches: list, layers: Mapping[str, nn.Linear], *, sequential: bool | None = None,
              blocks: str | None = None, what: str = "calibration") -> Iterator[CalibrationUnit]:
    """The units in which to calibrate `layers`: each transformer block in order (its inputs produced by the blocks
    before it, as modified by the caller before asking for the next unit), then the whole model for target layers
    outside the blocks; or the whole model once when there are no blocks or `sequential` is False. Runs in eval mode
    without gradients.

    Example:
        >>> for unit in layerwise(model, batches, target_linears(model, [])):      # doctest: +SKIP
        ...     stats = {n: InputStats(l.in_features, sq=True) for n, l in unit.layers.items()}
        ...     unit.collect(stats)                                              # then change unit.layers
    """
    with _inference(model):
        found = None if sequential is False else find_blocks(model, blocks)
        if sequential and found is None:
            raise TorchslimError(f"{what}: sequential calibration needs the model's list of transformer blocks and "
                                 f"none was found; name it (blocks: 'model.layers') or set sequential: false")
        whole = [_as_call(b) for b in batches]
        if found is None:
            yield CalibrationUnit("model", model, whole, dict(layers))
            return
        prefix, block_list = found
        calls = _capture_inputs(model, block_list[0], batches, prefix, what)
        remaining = dict(layers)
        for i, block in enumerate(block_list):
            name = f"{prefix}.{i}" if prefix else str(i)
            inside = {n: m for n, m in remaining.items() if n.startswith(name + ".")}
            for n in inside:
                del remaining[n]
            unit = CalibrationUnit(name, block, calls, inside, prefix=name)
            yield unit
            if i + 1 < len(block_list):
                calls = unit.next_calls()
        if remaining:
            yield CalibrationUnit("model", model, whole, remaining)


def _capture_inputs(model: nn.Module, first: nn.Module, batches: list, prefix: str, what: str) -> list:
    calls: list[tuple[tuple, dict]] = []

    def catch(module, args, kwargs):
        calls.append(_no_cache(tuple(args), dict(kwargs)))
        raise _Stop

    hook = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            before = len(calls)
            args, kwargs = _as_call(batch)
            try:
                model(*args, **kwargs)
            except _Stop:
                pass
            if len(calls) == before:
                raise TorchslimError(f"{what}: a calibration batch ran through the model without reaching its first "
                                     f"block '{prefix}.0'; name the blocks (blocks: ...) or set sequential: false")
    finally:
        hook.remove()
    return calls


class InputStats:
    """Running statistics of a Linear layer's inputs x (flattened to rows of `width` features): the token count,
    and on request XᵀX (`hessian`), Σx² per feature (`sq`, the diagonal of XᵀX), Σ|x| and max|x| per feature
    (`absmean`, `absmax`), and a seeded sample of up to `sample_per_call` rows from each call (`samples`).

    Example:
        >>> s = InputStats(3, sq=True); s.add(torch.ones(2, 4, 3)); s.tokens, s.sq.tolist()
        (8, [8.0, 8.0, 8.0])
    """

    def __init__(self, width: int, *, hessian: bool = False, sq: bool = False, absmean: bool = False,
                 absmax: bool = False, sample_per_call: int = 0, seed: int = 0) -> None:
        self.width = width
        self.tokens = 0
        self.xtx = torch.zeros(width, width) if hessian else None
        self.sq = torch.zeros(width) if sq else None
        self.abs_sum = torch.zeros(width) if absmean else None
        self.abs_max = torch.zeros(width) if absmax else None
        self.sample_per_call = sample_per_call
        self._samples: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.width).float().cpu()
        self.tokens += x.shape[0]
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)
        if self.sq is not None:
            self.sq += x.pow(2).sum(0)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(0)
        if self.abs_max is not None:
            torch.maximum(self.abs_max, x.abs().amax(0), out=self.abs_max)
        if self.sample_per_call:
            rows = x if x.shape[0] <= self.sample_per_call else \
                x[torch.randperm(x.shape[0], generator=self._gen)[: self.sample_per_call]]
            self._samples.append(rows.clone())

    def hessian(self) -> torch.Tensor:
        """H = 2XᵀX / tokens: the Hessian of the layer's squared output error (averaged over tokens)."""
        return self.xtx * (2 / max(self.tokens, 1))

    def absmean(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)

    def samples(self) -> torch.Tensor:
        return torch.cat(self._samples) if self._samples else torch.zeros(0, self.width)


# ------------------------------------------------------------------------------------------------------- the methods
@dataclass(frozen=True)
class LLMPruner:
    """A pruning method: which input statistics it needs (``none``, ``norms`` for Σx² per feature, ``hessian`` for
    XᵀX) and `prune(weight, stats, sparsity, n_m, cfg) -> pruned weight`, on a float32 (out, in) copy."""

    stats: Literal["none", "norms", "hessian"]
    prune: Callable[[torch.Tensor, InputStats | None, float, tuple[int, int] | None, LLMPruneConfig], torch.Tensor]


LLM_PRUNERS: Registry[LLMPruner] = Registry("LLM pruning method")


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (True = prune) of the `k` lowest scores of each row of a 2-D tensor."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
    return mask


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True = prune: the m − n lowest scores of every group of m consecutive columns."""
    rows, cols = scores.shape
    return _lowest(scores.reshape(-1, m), m - n).reshape(rows, cols)


def _magnitude(w, stats, sparsity, nm, cfg) -> torch.Tensor:
    score = w.abs()
    if nm:
        mask = _nm_mask(score, *nm)
    else:  # one threshold for the whole layer, exactly round(numel · sparsity) zeros
        mask = _lowest(score.reshape(1, -1), round(score.numel() * sparsity)).reshape(score.shape)
    return w.masked_fill(mask, 0)


def _wanda(w, stats, sparsity, nm, cfg) -> torch.Tensor:
    score = w.abs() * stats.sq.sqrt()[None, :]  # |W_ij| · ‖X_j‖₂
    mask = _nm_mask(score, *nm) if nm else _lowest(score, round(w.shape[1] * sparsity))  # per output row
    return w.masked_fill(mask, 0)


def damped_inverse_factor(h: torch.Tensor, percdamp: float, what: str) -> torch.Tensor:
    """U, the upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp · mean(diag H) (UᵀU = (H + λI)⁻¹): its rows
    spread a column's error over the columns after it in SparseGPT and GPTQ. The dampening grows tenfold (up to
    three times) when H + λI is not positive definite in float32.

    Example:
        >>> u = damped_inverse_factor(torch.eye(3) * 2, 0.0, "x"); torch.allclose(u.T @ u, torch.eye(3) / 2)
        True
    """
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    mean = h.diagonal().mean().item() or 1.0
    base = percdamp if percdamp > 0 else 1e-6  # percdamp 0: undamped first, then the smallest dampening that works
    for attempt in range(4):
        damp = 0.0 if percdamp == 0 and attempt == 0 else base * mean * 10 ** attempt
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if info.item() == 0:
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info.item() == 0:
                return upper
    raise TorchslimError(f"{what}: the layer Hessian is not positive definite even with dampening; raise percdamp "
                         f"(now {percdamp}) or give more calibration tokens")


def _kill_dead(w: torch.Tensor, h: torch.Tensor) -> None:
    """Inputs that were always zero carry no information: their weights go to zero and H gets a unit diagonal."""
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0


def _sparsegpt(w, stats, sparsity, nm, cfg) -> torch.Tensor:
    w = w.clone()
    h = stats.hessian()
    _kill_dead(w, h)
    u = damped_inverse_factor(h, cfg.percdamp, "sparsegpt")
    rows, cols = w.shape
    step = max(nm[1], cfg.blocksize // nm[1] * nm[1]) if nm else cfg.blocksize  # N:M groups never straddle blocks
    pruned_so_far = 0
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        d = u1.diagonal()
        if nm is None:  # this block's share of exactly round(rows · cols · sparsity) zeros in the layer
            k = round(rows * i2 * sparsity) - pruned_so_far
            score = (w1.pow(2) / d.pow(2)[None, :]).reshape(1, -1)
            mask1 = _lowest(score, k).reshape(w1.shape)
            pruned_so_far += k
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                score = w1[:, i:i + nm[1]].pow(2) / d[i:i + nm[1]].pow(2)[None, :]
                mask1[:, i:i + nm[1]] = _lowest(score, nm[1] - nm[0])
            col = w1[:, i]
            q = col.masked_fill(mask1[:, i], 0)
            err = (col - q) / d[i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w


LLM_PRUNERS.register("magnitude", help="|W_ij|, the smallest of each layer zeroed; needs no data")(
    LLMPruner("none", _magnitude))
LLM_PRUNERS.register("wanda", help="|W_ij|·‖X_j‖₂ per output row (Sun et al. 2023); no weight update")(
    LLMPruner("norms", _wanda))
LLM_PRUNERS.register("sparsegpt", help="row-wise OBS with the layer Hessian, blockwise with lazy updates "
                                       "(Frantar & Alistarh 2023)")(LLMPruner("hessian", _sparsegpt))


# ------------------------------------------------------------------------------------------------ the public surface
def check_nm_widths(layers: Mapping[str, nn.Linear], nm: tuple[int, int] | None, what: str) -> None:
    """N:M groups run along a row's inputs: every layer's input width must be a multiple of M."""
    if nm is None:
        return
    for name, layer in layers.items():
        if layer.in_features % nm[1]:
            raise TorchslimError(f"{what}: pattern {nm[0]}:{nm[1]} needs an input width that is a multiple of {nm[1]}, "
                                 f"and layer '{name}' has {layer.in_features} inputs; exclude it (exclude: "
                                 f"['{name}']) or use pattern 'unstructured'")


def prune_llm_(model: nn.Module, calibration=None, cfg: LLMPruneConfig | None = None, **options) -> LLMPruneResult:
    """Prune the Linear layers of `model` in place with `cfg.method` (magnitude, wanda, sparsegpt) to `cfg.sparsity`
    or an N:M pattern, calibrated on `calibration` (a list of batches the model takes; not needed for magnitude).
    Keyword `options` override fields of `cfg`. Returns the per-layer sparsity.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        >>> result = prune_llm_(model, [torch.randn(4, 16)], method="wanda", pattern="2:4")
        >>> round(result.overall, 2)
        0.5
    """
    cfg = resolve_config(LLMPruneConfig, cfg, options, "prune_llm_")
    start = time.perf_counter()
    pruner = LLM_PRUNERS.get(cfg.method)
    sparsity, nm = cfg.target_sparsity, cfg.n_m
    layers = target_linears(model, cfg.exclude)
    if not layers:
        raise TorchslimError(f"prune_llm_: no nn.Linear layer to prune (exclude: {cfg.exclude})")
    check_nm_widths(layers, nm, "prune_llm_")
    sequential = False
    if pruner.stats == "none":
        for layer in layers.values():
            _apply(layer, pruner, None, sparsity, nm, cfg)
    else:
        batches = calibration_list(calibration, cfg.calibration_batches, cfg.method)
        for unit in layerwise(model, batches, layers, sequential=cfg.sequential, blocks=cfg.blocks, what=cfg.method):
            sequential = sequential or unit.name != "model"
            stats = {name: InputStats(layer.in_features, hessian=pruner.stats == "hessian",
                                      sq=pruner.stats == "norms") for name, layer in unit.layers.items()}
            unit.collect(stats)
            for name in list(stats):
                _apply(unit.layers[name], pruner, stats.pop(name), sparsity, nm, cfg)
    result = LLMPruneResult(cfg.method, cfg.pattern, sparsity, sequential=sequential)
    for name, layer in layers.items():
        result.layers[name] = (layer.weight == 0).sum().item() / layer.weight.numel()
        result.params[name] = layer.weight.numel()
    result.seconds = time.perf_counter() - start
    return result


def _apply(layer: nn.Linear, pruner: LLMPruner, stats, sparsity, nm, cfg) -> None:
    with torch.no_grad():
        w = layer.weight
        w.copy_(pruner.prune(w.detach().float(), stats, sparsity, nm, cfg).to(w.dtype))


def wanda_prune_(model: nn.Module, calibration, cfg: LLMPruneConfig | None = None, **options) -> LLMPruneResult:
    """`prune_llm_` with method wanda: zero the weights with the lowest |W_ij|·‖X_j‖₂ of each output row.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 8))
        >>> wanda_prune_(model, [torch.randn(4, 16)], sparsity=0.25).layers
        {'0': 0.25}
    """
    return prune_llm_(model, calibration, cfg, **{**options, "method": "wanda"})


def sparsegpt_prune_(model: nn.Module, calibration, cfg: LLMPruneConfig | None = None, **options) -> LLMPruneResult:
    """`prune_llm_` with method sparsegpt: OBS pruning with weight updates from the layer Hessian.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 8))
        >>> sparsegpt_prune_(model, [torch.randn(32, 16)], pattern="2:4").layers
        {'0': 0.5}
    """
    return prune_llm_(model, calibration, cfg, **{**options, "method": "sparsegpt"})


__all__ = ["LLMPruneConfig", "LLMPruneResult", "LLM_PRUNERS", "LLMPruner", "prune_llm_", "wanda_prune_",
           "sparsegpt_prune_", "InputStats", "layerwise", "calibration_list", "target_linears", "find_blocks"]
