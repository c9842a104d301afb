"""Pruning: unstructured magnitude pruning, layerwise or global, one-shot or iterative."""
from torchslim.prune.config import MagnitudePruneConfig
from torchslim.prune.magnitude import Masks, magnitude_masks, prunable_layers, prune_

__all__ = ["MagnitudePruneConfig", "Masks", "magnitude_masks", "prunable_layers", "prune_"]
