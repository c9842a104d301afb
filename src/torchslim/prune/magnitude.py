"""Unstructured magnitude pruning with masks that hold during fine-tuning."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.config import MagnitudePruneConfig

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


def _scores(w: torch.Tensor, norm: str) -> torch.Tensor:
    return w.abs() if norm == "l1" else w.pow(2)


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str, norm: str = "l1") -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of smallest-magnitude weights, globally or per layer.

    Exactly k = round(sparsity·n) weights are pruned (ties broken by position) so the level is what was asked.
    """
    if not layers:
        raise TorchslimError("prune: the model has no Conv/Linear layers left to prune (check prune.exclude)")
    if scope == "layerwise":
        return {name: _keep_top(_scores(m.weight, norm), sparsity) for name, m in layers.items()}
    flat = torch.cat([_scores(m.weight, norm).flatten() for m in layers.values()])
    keep = _keep_top(flat, sparsity)
    masks, offset = {}, 0
    for name, m in layers.items():
        n = m.weight.numel()
        masks[name] = keep[offset: offset + n].view_as(m.weight)
        offset += n
    return masks


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    flat = scores.flatten()
    k = int(round(sparsity * flat.numel()))
    mask = torch.ones_like(flat)
    if k > 0:
        mask[torch.argsort(flat, stable=True)[:k]] = 0
    return mask.view_as(scores)


def prune_(model: nn.Module, cfg: MagnitudePruneConfig, sparsity: float | None = None) -> Masks:
    """Zero the smallest weights of `model` in place (no retraining) and return the masks.

    Example:
        >>> masks = prune_(model, MagnitudePruneConfig(sparsity=0.9, scope="global"))   # doctest: +SKIP
        >>> round(masks.overall(), 2)                                                   # doctest: +SKIP
        0.9
    """
    layers = prunable_layers(model, cfg.exclude)
    masks = Masks(layers, magnitude_masks(layers, cfg.sparsity if sparsity is None else sparsity, cfg.scope, cfg.norm))
    masks.apply()
    return masks
