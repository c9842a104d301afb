"""Weight sharing (Deep Compression, Han et al. 2016): k-means per layer, then fine-tuning of the shared centroids.

Each Conv/Linear weight is clustered into 2^bits values; only the nonzero weights are clustered, so pruned zeros stay
exactly zero and cost no centroid. Fine-tuning keeps the clusters fixed and trains the centroids: the layer weight is
a parametrization ``where(mask, centroids[index], 0)``, and autograd sums the gradients of a cluster's members into
its centroid — Han's "grouped gradient" with no hand-written update.

Example:
    >>> from torchslim.models import create_model
    >>> model = create_model("lenet-300-100")
    >>> books = share_weights_(model, CodebookConfig(bits=4))
    >>> int((model.fc1.weight.unique() != 0).sum()) <= 16
    True
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize

from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.prune.masks import per_layer, prunable_layers

if TYPE_CHECKING:
    from torchslim.training.config import TrainConfig
    from torchslim.training.loop import FitResult


class CodebookConfig(Config):
    """k-means weight sharing of Conv/Linear weights.

    ``bits`` is one width for every layer or a map from module-name globs to widths (first match wins; every shared
    layer must match one, so a typo is an error). ``init`` places the first centroids: ``linear`` spaces them evenly
    between the smallest and largest nonzero weight (Han et al.'s choice: it keeps the rare large weights),
    ``density`` at evenly spaced quantiles, ``random`` at randomly drawn weights (seeded).

    Example:
        >>> CodebookConfig(bits={"conv*": 8, "fc*": 5}).bits["fc*"]
        5
    """

    bits: int | dict[str, int] = Field(5, description="index width per weight: 2^bits centroids per layer")
    init: Literal["linear", "density", "random"] = "linear"
    iterations: int = Field(20, ge=0, le=1000, description="k-means iterations (stops early when nothing moves)")
    seed: int = Field(0, description="seed of init=random")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left unshared")
    bias_dtype: Literal["float32", "float16"] = Field(
        "float32", description="precision of the shared layers' biases: float16 halves their bytes in the compressed "
                               "file (they are rounded after sharing and again after fine-tuning)")

    @field_validator("bits")
    @classmethod
    def _check_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        widths = v.values() if isinstance(v, dict) else [v]
        if isinstance(v, dict) and not v:
            raise ValueError("bits map is empty; give a width such as 5 or a map like {'conv*': 8, 'fc*': 5}")
        for b in widths:
            if not 1 <= b <= 16:
                raise ValueError(f"bits must be between 1 and 16, got {b}")
        return v


@dataclass
class Codebook:
    """One layer's shared weights: ``weight = where(mask, centroids[index], 0)``.

    ``centroids``: (2^bits,) in the weight's dtype, ascending. ``index``: int64, the weight's shape, the cluster of
    each weight (0 where pruned). ``mask``: bool, the weight's shape, True where the weight is kept.
    """

    centroids: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor

    @property
    def bits(self) -> int:
        return max(1, (len(self.centroids) - 1).bit_length())

    def weight(self) -> torch.Tensor:
        """The dense weight this codebook stands for."""
        return torch.where(self.mask, self.centroids[self.index], self.centroids.new_zeros(()))


@torch.no_grad()
def kmeans_1d(
    values: torch.Tensor, k: int, init: str = "linear", iterations: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster a 1-D set into ``k`` centroids; returns (centroids ascending, float64; cluster of each value).

    In one dimension the nearest centroid is found by binary search among the midpoints of the sorted centroids
    (``bucketize``), so an iteration is O(n log k) time and O(n) memory, and ties go to the lower centroid, always.
    A cluster that empties keeps its centroid. Computed in float64 so sums over a million weights stay exact enough
    that CPU runs repeat bit for bit.

    Example:
        >>> c, a = kmeans_1d(torch.tensor([-2.0, -2.5, 3.0, 3.5]), 2)
        >>> c.tolist(), a.tolist()
        ([-2.25, 3.25], [0, 0, 1, 1])
    """
    x = values.detach().flatten().double()
    if x.numel() == 0:
        return torch.zeros(k, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    if init == "linear":
        c = torch.linspace(x.min().item(), x.max().item(), k, dtype=torch.float64)
    elif init == "density":
        xs = x.sort().values
        c = xs[(torch.linspace(0, 1, k, dtype=torch.float64) * (len(xs) - 1)).round().long()]
    elif init == "random":
        gen = torch.Generator().manual_seed(seed)
        c = x[torch.randint(len(x), (k,), generator=gen)].sort().values
    else:
        raise TorchslimError(f"unknown k-means init '{init}'; valid choices: density, linear, random")
    assign = _nearest(x, c)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c).sort().values
        if torch.equal(new, c):
            break
        c = new
        assign = _nearest(x, c)
    return c, assign


def _nearest(x: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(x, (sorted_centroids[1:] + sorted_centroids[:-1]) / 2)


@torch.no_grad()
def share_weights_(model: nn.Module, cfg: CodebookConfig) -> dict[str, Codebook]:
    """Replace each Conv/Linear weight by its nearest of 2^bits k-means centroids, in place; zeros stay zero.

    Example:
        >>> books = share_weights_(model, CodebookConfig(bits={"conv*": 8, "fc*": 5}))   # doctest: +SKIP
        >>> books["fc1"].centroids.shape                                                 # doctest: +SKIP
        torch.Size([32])
    """
    layers = prunable_layers(model, cfg.exclude)
    if not layers:
        raise TorchslimError("weight sharing: the model has no Conv/Linear layers left to share (check exclude)")
    _refuse_parametrized(layers)
    bits = per_layer(cfg.bits, list(layers), "codebook bits")
    books = {}
    for name, layer in layers.items():
        w = layer.weight
        mask = w != 0
        c, assign = kmeans_1d(w[mask], 2 ** bits[name], cfg.init, cfg.iterations, cfg.seed)
        index = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
        index[mask] = assign.to(w.device)
        books[name] = Codebook(c.to(w.dtype).to(w.device), index, mask)
        w.copy_(books[name].weight())
    round_biases_(model, cfg.bias_dtype, cfg.exclude)
    return books


@torch.no_grad()
def round_biases_(model: nn.Module, dtype: str = "float16", exclude: list[str] | tuple[str, ...] = ()) -> None:
    """Round the biases of Conv/Linear layers to ``dtype`` values, in place (the tensors keep their own dtype).

    The compressed file stores a float tensor as float16 when that is exact, so rounded biases cost half the bytes.
    ``"float32"`` leaves them alone.

    Example:
        >>> round_biases_(model, "float16")   # doctest: +SKIP
    """
    if dtype == "float32":
        return
    for layer in prunable_layers(model, exclude).values():
        if layer.bias is not None:
            layer.bias.copy_(layer.bias.to(getattr(torch, dtype)).to(layer.bias.dtype))


def _refuse_parametrized(layers: Mapping[str, nn.Module]) -> None:
    busy = [n for n, m in layers.items() if parametrize.is_parametrized(m, "weight")]
    if busy:
        raise TorchslimError(f"layers {busy} already have shared centroids attached; call bake_(model) first")


class SharedWeight(nn.Module):
    """Parametrization that makes a weight ``where(mask, centroids[index], 0)`` with trainable ``centroids``.

    The gradient reaching ``centroids[j]`` is the sum of the gradients of every kept weight in cluster ``j`` (the
    backward of the gather), which is exactly Deep Compression's centroid update.
    """

    def __init__(self, book: Codebook) -> None:
        super().__init__()
        self.centroids = nn.Parameter(book.centroids.detach().clone())
        self.register_buffer("index", book.index.clone())
        self.register_buffer("mask", book.mask.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # `weight` (the original) is ignored: the centroids alone define the layer until bake_().
        return torch.where(self.mask, self.centroids[self.index], self.centroids.new_zeros(()))


def attach_codebooks_(model: nn.Module, books: Mapping[str, Codebook]) -> nn.Module:
    """Make each named layer's weight a function of trainable shared centroids (see :class:`SharedWeight`).

    The plain weights are frozen (``requires_grad=False``) so an optimizer built from trainable parameters, as
    ``fit`` builds it, updates only the centroids (and biases, BN, ...).

    Example:
        >>> attach_codebooks_(model, books); fit(model, train, val, TrainConfig(epochs=1))   # doctest: +SKIP
        >>> books = bake_(model)                                                             # doctest: +SKIP
    """
    modules = dict(model.named_modules())
    missing = [n for n in books if n not in modules]
    if missing:
        raise TorchslimError(f"codebooks name layers the model does not have: {missing}")
    _refuse_parametrized({n: modules[n] for n in books})
    for name, book in books.items():
        layer = modules[name]
        if tuple(book.index.shape) != tuple(layer.weight.shape):
            raise TorchslimError(
                f"codebook for '{name}' has shape {tuple(book.index.shape)}, the weight {tuple(layer.weight.shape)}")
        parametrize.register_parametrization(layer, "weight", SharedWeight(book))
        layer.parametrizations.weight.original.requires_grad_(False)
    return model


@torch.no_grad()
def bake_(model: nn.Module) -> dict[str, Codebook]:
    """Write the trained centroids back into plain weights and remove the parametrizations; returns the codebooks.

    Example:
        >>> books = bake_(model)   # doctest: +SKIP
    """
    books = {}
    for name, layer in model.named_modules():
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        shared = [p for p in layer.parametrizations.weight if isinstance(p, SharedWeight)]
        if not shared:
            continue
        p = shared[0]
        books[name] = Codebook(p.centroids.detach().clone(), p.index.clone(), p.mask.clone())
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        layer.weight.requires_grad_(True)
    return books


def finetune_codebooks(
    model: nn.Module,
    books: Mapping[str, Codebook],
    train_set: torch.utils.data.TensorDataset,
    val_set: torch.utils.data.TensorDataset | None,
    cfg: TrainConfig,
    *,
    bias_dtype: str = "float32",
    **fit_kwargs,
) -> tuple[dict[str, Codebook], FitResult]:
    """Train the shared centroids (and the unshared parameters) with ``fit``, then bake them into the weights.

    The clusters do not change, so the model keeps ≤ 2^bits distinct nonzero values per layer and its zeros.
    Biases trained here are rounded to ``bias_dtype`` at the end (see :func:`round_biases_`).
    Returns (the trained codebooks, ``fit``'s result).

    Example:
        >>> books = share_weights_(model, CodebookConfig(bits=5))                                       # doctest: +SKIP
        >>> books, fitted = finetune_codebooks(model, books, data.train, data.val,   # doctest: +SKIP
        ...                                    TrainConfig(epochs=2, lr=1e-4))
    """
    from torchslim.training.loop import fit

    attach_codebooks_(model, books)
    try:
        result = fit(model, train_set, val_set, cfg, **fit_kwargs)
    finally:
        trained = bake_(model)
    round_biases_(model, bias_dtype)
    return trained, result
