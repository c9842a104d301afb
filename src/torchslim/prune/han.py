"""Han et al.'s layerwise pruning threshold: prune |w| < quality × std(w) in each layer (Han, Pool, Tran, Dally 2015).

Unlike a target sparsity, the quality parameter adapts to each layer's spread: wide layers with many small weights
lose more. The 2015 paper pairs it with retraining at 1/10 of the learning rate, repeated. The registered criterion
``han`` (|w| / σ) is the same rule with one quality for every layer, chosen so that a global cut reaches a target
sparsity.

Example:
    >>> from torchslim.models import create_model
    >>> from torchslim.prune.masks import prunable_layers
    >>> layers = prunable_layers(create_model("lenet-300-100"))
    >>> masks = han_threshold_masks(layers, {"fc3": 0.5, "*": 1.0})
    >>> 0.5 < 1 - masks["fc1"].mean().item() < 0.7   # about 58% of a uniform layer lies within one std
    True
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune.criteria import layer_std
from torchslim.prune.masks import Masks, attach_masks, per_layer, prunable_layers


@torch.no_grad()
def han_threshold_masks(
    layers: Mapping[str, nn.Module], quality: float | Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """Masks keeping the weights with |w| ≥ quality × std(w), per layer; ``quality`` is one value or glob→value.

    The std is taken over all of the layer's weights as they are now (zeros included), so that repeated calls
    during iterative pruning follow the 2015 paper's Caffe code.
    """
    if not layers:
        raise TorchslimError("prune: the model has no Conv/Linear layers left to prune (check exclude)")
    q = per_layer(quality, list(layers), "prune quality")
    for name, v in q.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise TorchslimError(f"prune quality for '{name}' must be a number ≥ 0, got {v!r}")
    masks = {}
    for name, layer in layers.items():
        w = layer.weight
        std = torch.tensor(layer_std(w), dtype=w.dtype)
        masks[name] = (w.abs() >= q[name] * std).to(w.dtype) if w.numel() > 1 else torch.ones_like(w)
    return masks


def han_prune_(
    model: nn.Module, quality: float | Mapping[str, float], exclude: list[str] | tuple[str, ...] = ()
) -> Masks:
    """Zero each layer's weights below quality × std, in place; attach the masks to the model (training holds them,
    as after :func:`~torchslim.prune.masks.prune_`) and return them.

    Example:
        >>> masks = han_prune_(model, {"fc3": 0.5, "*": 1.5})   # doctest: +SKIP
    """
    layers = prunable_layers(model, exclude)
    masks = Masks(layers, han_threshold_masks(layers, quality))
    masks.apply()
    return attach_masks(model, masks)
