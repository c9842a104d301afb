"""Structured pruning inside transformer blocks: feed-forward neurons removed for real (smaller Linear layers, not
masks), the same number in every block so the model's config still describes it and a saved Hugging Face directory
loads with ``from_pretrained``.

A feed-forward block is ``down(act(up(x)))``; neuron j is row j of `up` (and of a gated model's `gate`) and column j
of `down`. Its importance is how much it writes: the mean |activation| of j over real (non-pad) calibration tokens
times the norm of its column of `down` (``criterion="activation"``), or, without data, ‖up_j‖·‖down_j‖
(``"magnitude"``).

    pruned = prune_ffn_(student, keep=512, calibration=[ids[:64], ids[64:128]])   # 1536 → 512 per block
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError

# (ups, down) module names inside one block: BERT family, DistilBERT, Llama/Mistral, GPT-2-style zoo GPTs, OPT/ViT.
_FFN_NAMES = ((("intermediate.dense",), "output.dense"), (("ffn.lin1",), "ffn.lin2"),
              (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), (("mlp.c_fc",), "mlp.c_proj"),
              (("mlp.fc",), "mlp.proj"), (("fc1",), "fc2"), (("mlp.fc1",), "mlp.fc2"))
_CONFIG_KEYS = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim")
CRITERIA = ("activation", "magnitude")


def ffn_layers(model: nn.Module) -> list[tuple[list[nn.Linear], nn.Linear]]:
    """The feed-forward (ups, down) Linear layers of every transformer block, in order.

    Example:
        >>> [(len(ups), down.in_features) for ups, down in ffn_layers(bert)]   # doctest: +SKIP
        [(1, 1536), (1, 1536), (1, 1536)]
    """
    from torchslim.models.hf import transformer_layers

    found = []
    for i, block in enumerate(transformer_layers(model)):
        modules = dict(block.named_modules())
        for ups, down in _FFN_NAMES:
            if all(isinstance(modules.get(u), nn.Linear) for u in ups) and isinstance(modules.get(down), nn.Linear):
                found.append(([modules[u] for u in ups], modules[down]))
                break
        else:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise TorchslimError(f"block {i} has no feed-forward layers torchslim knows (looked for "
                                 f"{', '.join(d for _, d in _FFN_NAMES)}; its Linear layers: {', '.join(linears)})")
    return found


def _batches(calibration: Any) -> list:
    if isinstance(calibration, (torch.Tensor, dict)):
        return [calibration]
    return list(calibration)


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def _real_tokens(batch: Any, pad_id: int) -> torch.Tensor | None:
    """N×L mask of the tokens that are not padding, when the batch says (token ids, or an attention mask)."""
    if isinstance(batch, dict):
        if "attention_mask" in batch:
            return batch["attention_mask"].bool()
        batch = batch.get("input_ids")
    if isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    if isinstance(batch, torch.Tensor) and not batch.is_floating_point() and batch.dim() == 2:
        return batch.ne(pad_id)
    return None


@torch.no_grad()
def ffn_importance(model: nn.Module, calibration: Iterable | None = None, criterion: str = "activation",
                   pad_id: int = 0) -> list[torch.Tensor]:
    """One score per feed-forward neuron of every block (higher = keep). See the module docstring."""
    if criterion not in CRITERIA:
        raise TorchslimError(f"unknown feed-forward importance '{criterion}'; valid choices: {', '.join(CRITERIA)}")
    layers = ffn_layers(model)
    if criterion == "magnitude":
        return [sum(u.weight.norm(dim=1) for u in ups) * down.weight.norm(dim=0) for ups, down in layers]
    if calibration is None:
        raise TorchslimError("criterion 'activation' needs calibration batches (token ids); or use "
                             "criterion='magnitude'")
    batches = _batches(calibration)
    if not batches:
        raise TorchslimError("the calibration data is empty: give at least one batch of token ids")
    sums = [torch.zeros(down.in_features) for _, down in layers]
    counts = [0.0]
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(k):
        def pre(_module, inputs):
            a = inputs[0].detach().abs().float()
            mask = state["mask"]
            if mask is not None and a.dim() == 3 and mask.shape == a.shape[:2]:
                a = a * mask.unsqueeze(-1)
            sums[k].add_(a.reshape(-1, a.shape[-1]).sum(0))
        return pre

    handles = [down.register_forward_pre_hook(hook(k)) for k, (_, down) in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = _real_tokens(batch, pad_id)
            state["mask"] = mask
            counts[0] += float(mask.sum()) if mask is not None else 1.0
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s / max(counts[0], 1.0) * down.weight.norm(dim=0) for s, (_, down) in zip(sums, layers)]


@torch.no_grad()
def prune_ffn_(model: nn.Module, keep: int | float, calibration: Iterable | None = None,
               criterion: str = "activation", pad_id: int = 0) -> dict[str, Any]:
    """Keep the `keep` most important feed-forward neurons of every transformer block (an int, or a fraction of
    the width), removing the rest for real; in place. The model's config (``intermediate_size`` and its kin) follows,
    so ``save_hf_model`` writes a directory that ``from_pretrained`` loads. Returns what was done.

    Example:
        >>> info = prune_ffn_(student, keep=512, calibration=batches)     # doctest: +SKIP
        >>> info["width"], info["kept"]
        (1536, 512)
    """
    layers = ffn_layers(model)
    widths = {down.in_features for _, down in layers}
    if len(widths) != 1:
        raise TorchslimError(f"the blocks' feed-forward widths differ ({sorted(widths)}); prune_ffn_ keeps the same "
                             f"number in every block")
    width = widths.pop()
    if isinstance(keep, float) and not isinstance(keep, bool):
        if not 0 < keep <= 1:
            raise TorchslimError(f"keep {keep}: a fraction must be in (0, 1], or give a whole number of neurons")
        keep = max(1, round(keep * width))
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= width:
        raise TorchslimError(f"keep {keep!r}: must be a whole number of neurons in 1..{width} (the feed-forward "
                             f"width) or a fraction in (0, 1]")
    scores = ffn_importance(model, calibration, criterion, pad_id)
    for (ups, down), score in zip(layers, scores):
        idx = score.topk(keep).indices.sort().values
        for up in ups:
            _keep_rows(up, idx)
        _keep_columns(down, idx)
    config = getattr(getattr(model, "model", model), "config", None)
    for key in _CONFIG_KEYS:
        if config is not None and isinstance(getattr(config, key, None), int):
            setattr(config, key, keep)
    return {"criterion": criterion, "width": width, "kept": keep, "blocks": len(layers)}


def _keep_rows(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[idx].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[idx].clone())
    layer.out_features = len(idx)


def _keep_columns(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[:, idx].clone())
    layer.in_features = len(idx)
