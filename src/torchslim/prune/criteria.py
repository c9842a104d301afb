"""Pruning criteria: one protocol, registered by name. A criterion scores every weight of the pruned layers; higher
means more important. Masks are then drawn from the scores (globally, per layer, or N:M) in `prune.masks`.

    scores = CRITERIA.get("taylor")(layers, model=model, data=data, batches=8)   # {layer name: tensor like weight}

Three families:

* weight criteria, data-free: ``magnitude`` (|w|), ``han`` (|w| / std of the layer), ``random`` (the baseline);
* gradient criteria, a few training batches: ``taylor`` (|w·∂L/∂w| summed over batches), ``snip`` (one batch);
* activation criteria, a few training batches, whole output units: ``apoz`` (1 − average percentage of zeros after
  the ReLU) and ``entropy`` (entropy of each unit's activation histogram). They score an output channel/unit and
  give that score to every weight of it, so a cut prunes whole units (except at most one unit per cut, at the
  boundary, since masks prune exactly the number of weights asked for).

Adding a criterion is one function and one registration.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.registry import Registry

Scores = dict[str, torch.Tensor]
CRITERIA: Registry[Callable[..., Scores]] = Registry("pruning criterion")

ENTROPY_BINS = 32  # histogram bins per unit for `entropy`; ~1000 samples (8 batches of 128) fill 32 bins well


@CRITERIA.register("magnitude", help="|w| (l1) or w² (l2): the classic, needs no data")
def magnitude(layers: Mapping[str, nn.Module], *, norm: str = "l1", **_) -> Scores:
    return {name: (m.weight.detach().abs() if norm == "l1" else m.weight.detach().pow(2)) for name, m in layers.items()}


@CRITERIA.register("random", help="uniform random scores (seeded): the baseline every criterion must beat")
def random(layers: Mapping[str, nn.Module], *, seed: int = 0, **_) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.weight.shape, generator=g) for name, m in layers.items()}


def layer_std(weight: torch.Tensor) -> float:
    """σ of Han's threshold: the (unbiased) std of all the layer's weights as they are now, zeros included; 0 for a
    single weight. The `han` criterion divides by it, and `prune.han` thresholds at quality × σ, so a global cut by
    `han` scores is Han's per-layer threshold.

    Example:
        >>> round(layer_std(torch.tensor([1.0, -2.0, 3.0, -4.0])), 3)
        3.109
    """
    return weight.detach().float().std().item() if weight.numel() > 1 else 0.0


@CRITERIA.register("han", help="|w| / std(w of its layer): Han et al. 2015's quality × std threshold, one quality "
                               "for every layer")
def han(layers: Mapping[str, nn.Module], **_) -> Scores:
    """|w| / σ_layer, with σ the std of all the layer's weights (zeros included), as `prune.han` computes it.

    Why ranking this globally is Han et al.'s rule: a global cut keeps the weights whose score exceeds some t, i.e.
    |w| / σ_l > t, i.e. |w| > t · σ_l in every layer l — exactly the per-layer threshold "quality × std" of Han, Pool,
    Tran & Dally (2015), with the single quality t that makes the total sparsity the one asked for. A global
    magnitude cut instead uses one absolute threshold, so a layer whose weights are small overall (a wide layer with a
    small init scale) loses far more than its share; dividing by σ_l makes the cut relative to each layer's spread.
    With ``scope: layerwise`` the division changes no ranking inside a layer, and `han` prunes exactly like
    `magnitude`. For a quality per layer (no target sparsity) use `prune.han.han_threshold_masks`.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> with torch.no_grad(): _ = layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
        >>> [round(v, 3) for v in han({"l": layer})["l"].flatten().tolist()]   # σ = 3.109 (unbiased)
        [0.322, 0.643, 0.965, 1.287]
    """
    scores = {}
    for name, m in layers.items():
        w = m.weight.detach()
        std = layer_std(w)
        scores[name] = w.abs().float() / std if std > 0 else w.abs().float()  # σ = 0: every |w| equal, any scale
    return scores


def training_batches(data, batches: int, batch_size: int, seed: int, what: str) -> list[tuple]:
    """`batches` (inputs, labels) batches for a criterion that needs data, the same for every such criterion: from a
    DataBundle or TensorDataset, seeded random rows of the training split; from a DataLoader or any iterable of
    (inputs, labels) batches, its first `batches` batches (inputs a tensor or a dict of tensors)."""
    from torchslim.training.loop import iter_batches

    if data is None:
        raise TorchslimError(f"pruning criterion '{what}' needs the model and training data; "
                             f"data-free choices: han, magnitude, random")
    rows = getattr(data, "train", data)
    if hasattr(rows, "tensors"):
        x, y = rows.tensors[:2]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: batches * batch_size]
        return [(x[idx], y[idx]) for idx in order.split(batch_size)]
    taken = []
    for inputs, labels in iter_batches(data, batch_size):
        if len(taken) == batches:
            break
        taken.append((inputs, labels))
    if not taken:
        raise TorchslimError(f"pruning criterion '{what}' got no batches from the data it was given")
    return taken


def _grad_times_weight(layers: Mapping[str, nn.Module], model: nn.Module | None, data, batches: int,
                       batch_size: int, seed: int, what: str) -> Scores:
    """|w ⊙ ∂L/∂w| summed over `batches` training batches (cross-entropy on the labels)."""
    if model is None:
        raise TorchslimError(f"pruning criterion '{what}' needs the model and training data (gradients); "
                             f"data-free choices: han, magnitude, random")
    from torchslim.tasks import forward

    sample = training_batches(data, batches, batch_size, seed, what)
    was_training = model.training
    model.eval()  # no dropout noise in the scores; batch-norm uses its running statistics
    scores = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    for inputs, labels in sample:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(forward(model, inputs), labels).backward()
        for name, m in layers.items():
            scores[name] += (m.weight.detach() * m.weight.grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


@CRITERIA.register("taylor", help="first-order Taylor |w·∂L/∂w| over a few batches (Molchanov et al. 2017)")
def taylor(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batches: int = 8,
           batch_size: int = 128, seed: int = 0, **_) -> Scores:
    return _grad_times_weight(layers, model, data, batches, batch_size, seed, "taylor")


@CRITERIA.register("snip", help="connection sensitivity |w·∂L/∂w| on one batch, meant for untrained weights "
                                "(Lee et al. 2019)")
def snip(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batch_size: int = 128,
         seed: int = 0, **_) -> Scores:
    # SNIP normalizes by the sum over all connections; a positive scale changes no ranking, so it is left out.
    return _grad_times_weight(layers, model, data, 1, batch_size, seed, "snip")


# ------------------------------------------------------------------------------------------- activation criteria
# What is measured: the output of the ReLU that each pruned layer feeds — what the next layer actually receives.
# The model is traced with torch.fx and, from each pruned layer, its single consumer is followed through BatchNorm,
# Dropout and Identity modules to a ReLU (an nn.ReLU module, F.relu, torch.relu or Tensor.relu). With a BatchNorm in
# between, BN's shift and scale decide which units are zero: a unit whose pre-BN output is always negative can be
# always positive after BN, so the layer's own output would give the wrong APoZ. A layer that reaches no ReLU this
# way (the classifier, a ResNet block's second conv whose output meets the shortcut first) is an error naming it:
# exclude it (`prune.exclude`), the score of a unit that is not followed by its own ReLU is not defined.
_PASS_THROUGH = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Identity)
_RELU_FUNCTIONS = (F.relu, torch.relu)


def _relu_sites(model: nn.Module, layers: Mapping[str, nn.Module], what: str):
    """The traced graph and, per pruned layer, the name of the ReLU node whose output is that layer's activation."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure: say which criterion needs tracing and why
        raise TorchslimError(f"pruning criterion '{what}' traces the model with torch.fx to find each layer's ReLU, "
                             f"and tracing failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    modules = dict(gm.named_modules())
    sites: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        cur = node
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            nxt = users[0]
            if nxt.op == "call_module" and isinstance(modules[nxt.target], nn.ReLU) or \
                    nxt.op == "call_function" and nxt.target in _RELU_FUNCTIONS or \
                    nxt.op == "call_method" and nxt.target == "relu":
                sites[nxt.name] = node.target
                break
            if nxt.op == "call_module" and isinstance(modules[nxt.target], _PASS_THROUGH):
                cur = nxt
                continue
            break
    found = set(sites.values())
    missing = [name for name in layers if name not in found]
    if missing:
        raise TorchslimError(f"pruning criterion '{what}' scores a layer's units by the ReLU it feeds, and layer(s) "
                             f"{missing} feed no ReLU of their own; exclude them (prune.exclude: {missing})")
    return gm, sites


def _unit_rows(act: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The activation as (positions, units): Conv outputs are (N, C, *spatial), Linear outputs (..., out)."""
    if isinstance(layer, nn.Linear):
        return act.reshape(-1, act.shape[-1])
    return act.movedim(1, -1).reshape(-1, act.shape[1])


def _unit_means(act: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Per sample, each unit's activation averaged over its positions: (N, units)."""
    if isinstance(layer, nn.Linear):
        return act.reshape(act.shape[0], -1, act.shape[-1]).mean(1)
    return act.reshape(act.shape[0], act.shape[1], -1).mean(2)


@torch.no_grad()
def _record_activations(layers: Mapping[str, nn.Module], model: nn.Module | None, data, batches: int,
                        batch_size: int, seed: int, what: str, reduce: Callable[[torch.Tensor, nn.Module], object]
                        ) -> dict[str, list]:
    """Run `batches` training batches through the traced model (eval mode) and keep reduce(post-ReLU output, layer)
    for every pruned layer, per batch."""
    import torch.fx

    if model is None:
        raise TorchslimError(f"pruning criterion '{what}' needs the model and training data (activations); "
                             f"data-free choices: han, magnitude, random")
    sample = training_batches(data, batches, batch_size, seed, what)
    gm, sites = _relu_sites(model, layers, what)
    seen: dict[str, list] = {name: [] for name in layers}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in sites:
                layer = sites[n.name]
                seen[layer].append(reduce(out.detach(), layers[layer]))
            return out

    was_training = model.training
    model.eval()  # no dropout noise; batch-norm with its running statistics, as the model runs when deployed
    try:
        for inputs, _ in sample:
            _Recorder(gm).run(inputs)
    finally:
        model.train(was_training)
    return seen


def _broadcast(unit_scores: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A score per output unit, given to every weight of that unit (Linear rows, conv filters)."""
    w = layer.weight
    return unit_scores.float().reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()


@CRITERIA.register("apoz", help="1 − average percentage of zeros after each unit's ReLU, whole units "
                                "(Hu et al. 2016)")
def apoz(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batches: int = 8,
         batch_size: int = 128, seed: int = 0, **_) -> Scores:
    """1 − APoZ per output unit: APoZ_c = (zeros of unit c after its ReLU) / (samples × positions), over `batches`
    training batches. A unit that is almost always off carries little; every weight of unit c gets the score of c.

    Example:
        >>> scores = apoz(prunable_layers(model, exclude=["fc3"]), model=model, data=data)   # doctest: +SKIP
    """
    def zeros_and_count(act: torch.Tensor, layer: nn.Module):
        rows = _unit_rows(act, layer)
        return (rows == 0).sum(0), rows.shape[0]

    seen = _record_activations(layers, model, data, batches, batch_size, seed, "apoz", zeros_and_count)
    scores = {}
    for name, layer in layers.items():
        zeros = sum(z for z, _ in seen[name])
        count = sum(c for _, c in seen[name])
        scores[name] = _broadcast(1 - zeros.double() / count, layer)
    return scores


def _histogram_entropy(values: torch.Tensor, bins: int = ENTROPY_BINS) -> torch.Tensor:
    """Entropy (nats) of each column's histogram over `bins` equal bins spanning that column's own [min, max];
    a constant column has entropy 0. values: (samples, units) → (units,)."""
    lo, hi = values.min(0).values, values.max(0).values
    width = (hi - lo) / bins
    # The maximum falls in the last bin; a constant column puts every sample in bin 0.
    idx = torch.where(width > 0, ((values - lo) / torch.where(width > 0, width, 1.0)).floor(), 0.0)
    idx = idx.clamp(0, bins - 1).long()
    counts = torch.zeros(bins, values.shape[1], dtype=torch.float64).scatter_add_(
        0, idx, torch.ones_like(idx, dtype=torch.float64))
    p = counts / values.shape[0]
    return -(p * torch.where(p > 0, p.log(), 0.0)).sum(0)


@CRITERIA.register("entropy", help="entropy of each unit's (spatially averaged) post-ReLU activation histogram, "
                                   "whole units (Luo & Wu 2017)")
def entropy(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batches: int = 8,
            batch_size: int = 128, seed: int = 0, **_) -> Scores:
    """Per output unit: average the post-ReLU activation over its spatial positions for each sample, histogram these
    per-sample values into ENTROPY_BINS equal bins between their minimum and maximum, and take the entropy
    H = −Σ p_i log p_i. A unit whose output hardly varies over the data (always off, or constant) carries little
    information and scores low. Every weight of the unit gets its score.
    """
    seen = _record_activations(layers, model, data, batches, batch_size, seed, "entropy", _unit_means)
    return {name: _broadcast(_histogram_entropy(torch.cat(seen[name]).double()), layer)
            for name, layer in layers.items()}

