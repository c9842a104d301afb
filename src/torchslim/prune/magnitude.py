"""Masks from weight scores (global, layerwise or N:M), held during fine-tuning; `prune_` applies a PruneConfig."""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.config import PruneConfig

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Conv/Linear modules by name, minus those matching an `exclude` glob."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and not any(fnmatch.fnmatch(name, pat) for pat in exclude)}


class Masks:
    """Binary masks over layer weights. `apply()` after each optimizer step keeps pruned weights at zero."""

    def __init__(self, layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
        self.layers, self.masks = layers, masks

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.layers[name].weight.mul_(mask)

    def sparsity(self) -> dict[str, float]:
        """Fraction of zero weights per layer, measured on the weights themselves."""
        return {name: (m.weight == 0).float().mean().item() for name, m in self.layers.items()}

    def overall(self) -> float:
        zeros = sum((m.weight == 0).sum().item() for m in self.layers.values())
        return zeros / max(1, sum(m.weight.numel() for m in self.layers.values()))


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str, norm: str = "l1") -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of smallest-magnitude weights, globally or per layer."""
    from torchslim.prune.criteria import magnitude

    return masks_from_scores(layers, magnitude(layers, norm=norm), sparsity, scope)


@torch.no_grad()
def masks_from_scores(layers: dict[str, nn.Module], scores: dict[str, torch.Tensor],
                      sparsity: float | Mapping[str, float], scope: str) -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of lowest-scored weights, globally or per layer; a mapping
    {layer: sparsity} (from `prune.sensitivity`) prunes each layer to its own level, whatever `scope`.

    Exactly k = round(sparsity·n) weights are pruned (ties broken by position) so the level is what was asked.
    Weights that are already zero rank lowest whatever their score, so iterative pruning only ever removes more.
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
    """Zero the lowest-scored weights of `model` in place (no retraining) and return the masks.

    `data` (a DataBundle) is needed by gradient criteria (taylor, snip) only. ``scope="sensitivity"`` needs the
    per-layer levels as `sparsity` ({layer: fraction}, e.g. ``sensitivity_plan(...)["sparsities"]``).

    Example:
        >>> masks = prune_(model, PruneConfig(sparsity=0.9, scope="global"))   # doctest: +SKIP
        >>> round(masks.overall(), 2)                                          # doctest: +SKIP
        0.9
    """
    from torchslim.prune.criteria import CRITERIA

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
    return masks
