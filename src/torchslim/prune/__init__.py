"""Pruning: registered criteria (magnitude, han, random, Taylor, SNIP, APoZ, entropy), schedules (one-shot,
iterative, gradual AGP, lottery tickets with rewinding), unstructured (layerwise or global, one-shot or
iterative, or per layer from a sensitivity analysis) and N:M masks with their packed storage, Han's std
threshold, structured channel removal to a MACs target, and Deep Compression's k-means weight sharing with
centroid fine-tuning; language models pruned layer by layer from calibration data (magnitude, Wanda, SparseGPT;
unstructured or 2:4) in `llm`; transformer feed-forward neurons and attention heads removed for real in `transformer`.

The modules, from the bottom up: `config` (PruneConfig), `criteria` (scores), `masks` (layers, masks, `prune_`),
`nm`, `han`, `sensitivity`, `schedules` (the training drivers), `structured`, `codebook`. None imports this package.
"""
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
from torchslim.prune.latency import (
    LatencyTable,
    latency_key,
    layer_latency_curves,
    plan_widths,
    plot_latency_curves,
    prune_channels_to_latency,
    snap_width,
)
from torchslim.prune.llm import (
    LLM_PRUNERS,
    LLMPruneConfig,
    LLMPruneResult,
    prune_llm_,
    sparsegpt_prune_,
    wanda_prune_,
)
from torchslim.prune.masks import (
    Masks,
    attach_masks,
    attached_masks,
    detach_masks,
    hold_zeros,
    magnitude_masks,
    masks_from_scores,
    nm_masks,
    prunable_layers,
    prune_,
)
from torchslim.prune.nm import NMPacked, nm_bytes, pack_nm, unpack_nm
from torchslim.prune.schedules import (
    GradualPruner,
    LotteryResult,
    agp_sparsity,
    gradual_prune,
    iterative_prune,
    lottery_ticket,
    prune_with_schedule,
    reinitialize_,
)
from torchslim.prune.sensitivity import layer_sensitivity, plot_sensitivity_curves, sparsities_from_sensitivity
from torchslim.prune.structured import (
    CHANNEL_IMPORTANCE,
    ChannelPruneConfig,
    prune_channels_,
    prune_channels_to_target,
    resize_to_state_dict_,
)
from torchslim.prune.transformer import (AttentionLayers, attention_layers, ffn_importance, ffn_layers, head_importance,
                                        prune_ffn_, prune_heads_)
from torchslim.prune.transformer_latency import prune_ffn_to_latency_, prune_heads_to_latency_

__all__ = ["PruneConfig", "CRITERIA", "masks_from_scores", "nm_masks", "MagnitudePruneConfig", "Masks",
           "magnitude_masks", "prunable_layers", "prune_", "attach_masks", "attached_masks", "detach_masks", "hold_zeros",
           "CodebookConfig", "Codebook", "share_weights_", "kmeans_1d", "attach_codebooks_", "bake_",
           "finetune_codebooks", "round_biases_", "han_threshold_masks", "han_prune_",
           "NMPacked", "nm_bytes", "pack_nm", "unpack_nm",
           "GradualPruner", "LotteryResult", "agp_sparsity", "gradual_prune", "iterative_prune", "lottery_ticket",
           "prune_with_schedule", "reinitialize_",
           "layer_sensitivity", "plot_sensitivity_curves", "sparsities_from_sensitivity",
           "ChannelPruneConfig", "CHANNEL_IMPORTANCE", "prune_channels_", "prune_channels_to_target",
           "resize_to_state_dict_",
           "LatencyTable", "latency_key", "layer_latency_curves", "plan_widths", "plot_latency_curves",
           "prune_channels_to_latency", "snap_width",
           "LLMPruneConfig", "LLMPruneResult", "LLM_PRUNERS", "prune_llm_", "wanda_prune_", "sparsegpt_prune_",
           "prune_ffn_", "ffn_importance", "ffn_layers", "prune_ffn_to_latency_",
           "AttentionLayers", "attention_layers", "head_importance", "prune_heads_", "prune_heads_to_latency_"]
