"""Masks over Conv/Linear weights: which layers are pruned, masks drawn from weight scores (global, layerwise or N:M),
and `prune_`, which applies a PruneConfig once and attaches its masks to the model.

A mask is a 0/1 tensor shaped like its layer's weight; pruned weights are exact zeros in the weight tensor itself, so
a pruned model is an ordinary module. To keep the zeros while training, `prune_` attaches its :class:`Masks` to the
model as a plain attribute (never in the state dict): ``torchslim.training.fit`` re-applies them after every
optimizer step when it is given no ``after_step``. :func:`detach_masks` lets the weights grow back.

Example:
    >>> from torchslim.models import create_model
    >>> from torchslim.prune.config import PruneConfig
    >>> model = create_model("lenet-300-100")
    >>> masks = prune_(model, PruneConfig(sparsity=0.9))
    >>> round(masks.overall(), 3), attached_masks(model) is masks
    (0.9, True)
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.config import PruneConfig
from torchslim.prune.criteria import CRITERIA, magnitude

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# The model attribute that holds the attached masks (set through __dict__: not a submodule, not in the state dict).
MASKS_ATTRIBUTE = "_torchslim_masks"

V = TypeVar("V")


def prunable_layers(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Conv/Linear modules by name, minus those matching an `exclude` glob.

    Example:
        >>> list(prunable_layers(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), exclude=["2"]))
        ['0']
    """
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and not any(fnmatch.fnmatch(name, pat) for pat in exclude)}


def per_layer(value: V | Mapping[str, V], names: list[str], what: str) -> dict[str, V]:
    """Resolve one value or a glob→value map to a value per layer name (first matching glob wins).

    A layer no glob matches, or a glob that matches no layer, is an error naming it: a typo must not silently leave
    a layer at some default.

    Example:
        >>> per_layer({"fc3": 0.5, "*": 1.0}, ["fc1", "fc3"], "quality")
        {'fc1': 1.0, 'fc3': 0.5}
    """
    if not isinstance(value, Mapping):
        return {n: value for n in names}
    out: dict[str, V] = {}
    for name in names:
        match = next((pat for pat in value if fnmatch.fnmatch(name, pat)), None)
        if match is None:
            raise TorchslimError(f"{what}: layer '{name}' matches none of {list(value)}; add it or a '*' pattern")
        out[name] = value[match]
    unused = [pat for pat in value if not any(fnmatch.fnmatch(n, pat) for n in names)]
    if unused:
        raise TorchslimError(f"{what}: pattern(s) {unused} match no layer; layers: {', '.join(names)}")
    return out


class Masks:
    """Binary masks over layer weights. `apply()` after each optimizer step keeps pruned weights at zero."""

    def __init__(self, layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
        self.layers, self.masks = layers, masks

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            weight = self.layers[name].weight
            if weight.shape != mask.shape:  # e.g. channels were removed after pruning: these masks no longer fit
                raise TorchslimError(f"pruning mask of layer '{name}' has shape {tuple(mask.shape)}, the weight "
                                     f"{tuple(weight.shape)}; detach the old masks (torchslim.prune.detach_masks)")
            weight.mul_(mask)

    def sparsity(self) -> dict[str, float]:
        """Fraction of zero weights per layer, measured on the weights themselves."""
        return {name: (m.weight == 0).float().mean().item() for name, m in self.layers.items()}

    def overall(self) -> float:
        zeros = sum((m.weight == 0).sum().item() for m in self.layers.values())
        return zeros / max(1, sum(m.weight.numel() for m in self.layers.values()))


def attach_masks(model: nn.Module, masks: Masks) -> Masks:
    """Attach `masks` to `model` (replacing any attached before), so that training holds them; returns them.

    They live in a plain attribute, not in the state dict; ``copy.deepcopy(model)`` copies them along, bound to the
    copy's layers. ``torchslim.training.fit`` applies them after every step when it is given no ``after_step``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 2))
        >>> layers = prunable_layers(model)
        >>> masks = attach_masks(model, Masks(layers, {"0": torch.ones(2, 4)}))
        >>> attached_masks(model) is masks
        True
    """
    model.__dict__[MASKS_ATTRIBUTE] = masks
    return masks


def attached_masks(model: nn.Module) -> Masks | None:
    """The masks attached to `model` (by :func:`prune_` or :func:`attach_masks`), or None.

    Example:
        >>> attached_masks(nn.Linear(2, 2)) is None
        True
    """
    return model.__dict__.get(MASKS_ATTRIBUTE)


def detach_masks(model: nn.Module) -> Masks | None:
    """Remove the masks attached to `model` and return them (None when it had none): later training may then grow
    the pruned weights back. The weights themselves are left as they are (the zeros stay until trained).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> masks = prune_(model, PruneConfig(sparsity=0.5))
        >>> detach_masks(model) is masks, detach_masks(model)
        (True, None)
    """
    return model.__dict__.pop(MASKS_ATTRIBUTE, None)


def hold_zeros(model: nn.Module, min_sparsity: float = 0.01) -> Masks | None:
    """Masks that hold the zeros `model` already has (a pruned model from a file), or None when it has fewer than
    `min_sparsity` zeros in its Conv/Linear weights (a dense model has no zeros worth holding).

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> with torch.no_grad():
        ...     _ = layer.weight[:2].zero_()
        >>> hold_zeros(nn.Sequential(layer)).overall()
        0.5
    """
    layers = prunable_layers(model)
    masks = Masks(layers, {n: (m.weight != 0).float() for n, m in layers.items()})
    return masks if masks.overall() > min_sparsity else None


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str,
                    norm: str = "l1") -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of smallest-magnitude weights, globally or per layer.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> _ = layer.weight.data.copy_(torch.tensor([[0.1, -2.0, 0.3, 4.0]]))
        >>> magnitude_masks({"l": layer}, 0.5, "layerwise")["l"].tolist()
        [[0.0, 1.0, 0.0, 1.0]]
    """
    return masks_from_scores(layers, magnitude(layers, norm=norm), sparsity, scope)


@torch.no_grad()
def masks_from_scores(layers: dict[str, nn.Module], scores: dict[str, torch.Tensor],
                      sparsity: float | Mapping[str, float], scope: str) -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of lowest-scored weights, globally or per layer; a mapping
    {layer: sparsity} (from `prune.sensitivity`) prunes each layer to its own level, whatever `scope`.

    Exactly k = round(sparsity·n) weights are pruned (ties broken by position) so the level is what was asked.
    Weights that are already zero rank lowest whatever their score, so iterative pruning only ever removes more.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> masks_from_scores({"l": layer}, {"l": torch.tensor([[4.0, 1.0, 3.0, 2.0]])}, 0.5, "global")["l"].tolist()
        [[1.0, 0.0, 1.0, 0.0]]
    """
    if not layers:
        raise TorchslimError("prune: the model has no Conv/Linear layers left to prune (check prune.exclude)")
    ranked = {name: torch.where(m.weight == 0, float("-inf"), scores[name].float()) for name, m in layers.items()}
    if isinstance(sparsity, Mapping):
        missing = [name for name in layers if name not in sparsity]
        if missing:
            raise TorchslimError(f"prune: per-layer sparsities name no level for layer(s) {missing}")
        keep = {name: _keep_top(ranked[name], sparsity[name]) for name in layers}
    elif scope == "layerwise":
        keep = {name: _keep_top(ranked[name], sparsity) for name in layers}
    else:
        flat = _keep_top(torch.cat([ranked[name].flatten() for name in layers]), sparsity)
        sizes = [m.weight.numel() for m in layers.values()]
        keep = {name: part.view_as(m.weight) for (name, m), part in zip(layers.items(), flat.split(sizes))}
    # A weight pruned earlier stays pruned, even when asked for less sparsity than the model already has.
    return {name: keep[name] * (m.weight != 0) for name, m in layers.items()}


@torch.no_grad()
def nm_masks(layers: dict[str, nn.Module], scores: dict[str, torch.Tensor], n: int, m: int) -> dict[str, torch.Tensor]:
    """N:M semi-structured masks: in every group of `m` consecutive weights along the input dimension (a Linear row,
    or a conv filter's in_channels·kh·kw flattened), keep the `n` best-scored. 2:4 is what sparse tensor cores run.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> nm_masks({"l": layer}, {"l": torch.tensor([[4.0, 1.0, 3.0, 2.0]])}, 2, 4)["l"].tolist()
        [[1.0, 0.0, 1.0, 0.0]]
    """
    masks = {}
    for name, layer in layers.items():
        w = layer.weight
        rows = w.reshape(w.shape[0], -1)  # (out, in·kh·kw): the reduction dimension is contiguous
        if rows.shape[1] % m:
            raise TorchslimError(f"prune pattern {n}:{m}: layer '{name}' has {rows.shape[1]} inputs per output, not a "
                                 f"multiple of {m}; exclude it (prune.exclude) or choose another M")
        groups = torch.where(rows == 0, float("-inf"), scores[name].reshape_as(rows).float()).reshape(-1, m)
        keep = torch.zeros_like(groups)
        keep.scatter_(1, groups.topk(n, dim=1).indices, 1.0)
        masks[name] = keep.reshape(w.shape) * (w != 0)  # a weight pruned earlier stays pruned
    return masks


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    flat = scores.flatten()
    k = int(round(sparsity * flat.numel()))
    mask = torch.ones_like(flat)
    if k > 0:
        mask[torch.argsort(flat, stable=True)[:k]] = 0
    return mask.view_as(scores)


def prune_(model: nn.Module, cfg: PruneConfig, sparsity: float | Mapping[str, float] | None = None,
           data=None) -> Masks:
    """Zero the lowest-scored weights of `model` in place (no retraining), attach the masks to it and return them.

    The masks replace any attached earlier (they include its zeros: a pruned weight stays pruned), and
    ``torchslim.training.fit`` holds them after every step unless it is given its own ``after_step``;
    :func:`detach_masks` removes them. `data` (a DataBundle) is needed by gradient and activation criteria only.
    ``scope="sensitivity"`` needs the per-layer levels as `sparsity` ({layer: fraction}, e.g.
    ``sensitivity_plan(...)["sparsities"]``).

    Example:
        >>> from torchslim.models import create_model
        >>> model = create_model("lenet-300-100")
        >>> masks = prune_(model, PruneConfig(sparsity=0.9, scope="global"))
        >>> round(masks.overall(), 2)
        0.9
    """
    if cfg.scope == "sensitivity" and not isinstance(sparsity, Mapping):
        raise TorchslimError("prune scope 'sensitivity' needs one sparsity per layer: pass "
                             "sparsity=sensitivity_plan(model, data, cfg)['sparsities'] (torchslim.prune.sensitivity)")
    layers = prunable_layers(model, cfg.exclude)
    scores = CRITERIA.get(cfg.criterion)(layers, model=model, data=data, norm=cfg.norm, batches=cfg.criterion_batches)
    if cfg.n_m is not None:
        chosen = nm_masks(layers, scores, *cfg.n_m)
    else:
        chosen = masks_from_scores(layers, scores, cfg.sparsity if sparsity is None else sparsity, cfg.scope)
    masks = Masks(layers, chosen)
    masks.apply()
    return attach_masks(model, masks)


__all__ = ["MASKS_ATTRIBUTE", "Masks", "attach_masks", "attached_masks", "detach_masks", "magnitude_masks",
           "masks_from_scores", "nm_masks", "per_layer", "prunable_layers", "prune_"]
