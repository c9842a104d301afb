"""Pruning: registered criteria (magnitude, random, Taylor, SNIP), unstructured (layerwise or global, one-shot or
iterative) and N:M masks, Han's std threshold, and Deep Compression's k-means weight sharing with centroid
fine-tuning."""
from torchslim.prune.codebook import (
    Codebook,
    CodebookConfig,
    attach_codebooks_,
    bake_,
    finetune_codebooks,
    kmeans_1d,
    round_biases_,
    share_weights_,
)
from torchslim.prune.config import MagnitudePruneConfig, PruneConfig
from torchslim.prune.criteria import CRITERIA
from torchslim.prune.han import han_prune_, han_threshold_masks
from torchslim.prune.magnitude import Masks, magnitude_masks, masks_from_scores, nm_masks, prunable_layers, prune_

__all__ = ["PruneConfig", "CRITERIA", "masks_from_scores", "nm_masks", "MagnitudePruneConfig", "Masks",
           "magnitude_masks", "prunable_layers", "prune_",
           "CodebookConfig", "Codebook", "share_weights_", "kmeans_1d", "attach_codebooks_", "bake_",
           "finetune_codebooks", "round_biases_", "han_threshold_masks", "han_prune_"]
