"""Pruning: unstructured magnitude pruning (layerwise or global, one-shot or iterative), Han's std threshold, and
Deep Compression's k-means weight sharing with centroid fine-tuning."""
from torchslim.prune.codebook import (
    Codebook,
    CodebookConfig,
    attach_codebooks_,
    bake_,
    finetune_codebooks,
    kmeans_1d,
    share_weights_,
)
from torchslim.prune.config import MagnitudePruneConfig
from torchslim.prune.han import han_prune_, han_threshold_masks
from torchslim.prune.magnitude import Masks, magnitude_masks, prunable_layers, prune_

__all__ = ["MagnitudePruneConfig", "Masks", "magnitude_masks", "prunable_layers", "prune_",
           "CodebookConfig", "Codebook", "share_weights_", "kmeans_1d", "attach_codebooks_", "bake_",
           "finetune_codebooks", "han_threshold_masks", "han_prune_"]
