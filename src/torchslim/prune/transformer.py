"""Structured pruning inside transformer blocks: feed-forward neurons removed for real (smaller Linear layers, not
masks), the same number in every block so the model's config still describes it and a saved Hugging Face directory
loads with ``from_pretrained``.

A feed-forward block is ``down(act(up(x)))``; neuron j is row j of `up` (and of a gated model's `gate`) and column j
of `down`. Its importance is how much it writes: the mean |activation| of j over real (non-pad) calibration tokens
times the norm of its column of `down` (``criterion="activation"``), or, without data, ‖up_j‖·‖down_j‖
(``"magnitude"``).

Attention heads go the same way (:func:`prune_heads_`): head h is its rows of the query, key and value layers and
its columns of the output layer; its importance is the mean norm of what it writes through the output layer on
calibration tokens, or ‖W_value,h‖·‖W_out,h‖ without data.

    pruned = prune_ffn_(student, keep=512, calibration=[ids[:64], ids[64:128]])   # 1536 → 512 per block
    pruned = prune_heads_(student, keep=8, calibration=[ids[:64]])                 # 12 → 8 heads per block
"""
from __future__ import annotations

import dataclasses
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
    """The calibration batches of an activation criterion, as a list; a missing or empty one is one line."""
    if calibration is None:
        raise TorchslimError("criterion 'activation' needs calibration batches (token ids); or use "
                             "criterion='magnitude'")
    batches = [calibration] if isinstance(calibration, (torch.Tensor, dict)) else list(calibration)
    if not batches:
        raise TorchslimError("the calibration data is empty: give at least one batch of token ids")
    return batches


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
    batches = _batches(calibration)
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


# ---------------------------------------------------------------------------------------------------- attention heads
# (query, key, value, output, the attention module) names inside one block. A fused model's query is its qkv layer
# (rows: all queries, all keys, all values) and has no key or value.
_ATTENTION_NAMES = (
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "attention.self"),
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn"),
    ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "attention"),
    ("attn.c_attn", None, None, "attn.c_proj", "attn"),
)
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
HEAD_CRITERIA = ("activation", "magnitude")


@dataclasses.dataclass
class AttentionLayers:
    """One block's attention: its Linear layers, heads and head size. `kv_heads` < `heads` is grouped-query attention
    (query heads ``g·G … g·G + G − 1`` share key/value head g, G = heads / kv_heads)."""
    module: nn.Module
    query: nn.Linear
    key: nn.Linear | None
    value: nn.Linear | None
    out: nn.Linear
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def fused(self) -> bool:
        return self.key is None


def _head_dim(module: nn.Module, out: nn.Linear) -> int:
    for attr in ("head_dim", "attention_head_size"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    heads = next((getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
    if not heads:
        raise TorchslimError(f"{type(module).__name__} says neither its head size nor its number of heads")
    return out.in_features // heads


def attention_layers(model: nn.Module) -> list[AttentionLayers]:
    """The self-attention layers of every transformer block, in order: BERT family (MiniLM, RoBERTa), DistilBERT,
    Llama family (Mistral, Qwen, SmolLM; grouped-query attention too) and the zoo's GPT.

    Example:
        >>> [(a.heads, a.head_dim) for a in attention_layers(bert)]   # doctest: +SKIP
        [(12, 32), (12, 32), (12, 32)]
    """
    from torchslim.models.hf import transformer_layers

    found = []
    for i, block in enumerate(transformer_layers(model)):
        modules = dict(block.named_modules())
        for q, k, v, o, attn in _ATTENTION_NAMES:
            names = [n for n in (q, k, v, o) if n is not None]
            if all(isinstance(modules.get(n), nn.Linear) for n in names) and attn in modules:
                out = modules[o]
                d = _head_dim(modules[attn], out)
                key = modules[k] if k else None
                found.append(AttentionLayers(modules[attn], modules[q], key, modules[v] if v else None, out,
                                             out.in_features // d, (key.out_features if key else out.in_features) // d,
                                             d))
                break
        else:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise TorchslimError(f"block {i} has no attention layers torchslim knows (looked for "
                                 f"{', '.join(q for q, *_ in _ATTENTION_NAMES)}; its Linear layers: "
                                 f"{', '.join(linears)})")
    return found


@torch.no_grad()
def head_importance(model: nn.Module, calibration: Iterable | None = None, criterion: str = "activation",
                    pad_id: int = 0) -> list[torch.Tensor]:
    """One score per query head of every block (higher = keep). ``"activation"``: the mean norm of what the head
    writes into the residual stream (its slice of the output layer applied to its context vectors) over real
    calibration tokens; ``"magnitude"`` (no data): ‖W_value,h‖·‖W_out,h‖."""
    if criterion not in HEAD_CRITERIA:
        raise TorchslimError(f"unknown head importance '{criterion}'; valid choices: {', '.join(HEAD_CRITERIA)}")
    layers = attention_layers(model)
    if criterion == "magnitude":
        scores = []
        for a in layers:
            out = a.out.weight.unflatten(1, (a.heads, a.head_dim)).norm(dim=(0, 2))
            value = a.value.weight if a.value is not None else a.query.weight[2 * a.out.in_features:]
            v = value.unflatten(0, (a.kv_heads, a.head_dim)).norm(dim=(1, 2))
            scores.append(out * v.repeat_interleave(a.heads // a.kv_heads))
        return scores
    batches = _batches(calibration)
    sums = [torch.zeros(a.heads) for a in layers]
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(k):
        a = layers[k]
        w = a.out.weight.unflatten(1, (a.heads, a.head_dim)).float()  # hidden × H × d

        def pre(_module, inputs):
            x = inputs[0].detach().float()
            ctx = x.unflatten(-1, (a.heads, a.head_dim))  # ... × H × d
            norms = torch.einsum("...hd,ohd->...ho", ctx, w).norm(dim=-1)  # ... × H
            mask = state["mask"]
            if mask is not None and norms.dim() == 3 and mask.shape == norms.shape[:2]:
                norms = norms * mask.unsqueeze(-1)
            sums[k].add_(norms.reshape(-1, a.heads).sum(0))
        return pre

    handles = [a.out.register_forward_pre_hook(hook(k)) for k, a in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            state["mask"] = _real_tokens(batch, pad_id)
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums


def _rows(heads: torch.Tensor, head_dim: int, offset: int = 0) -> torch.Tensor:
    return (offset + heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


@torch.no_grad()
def prune_heads_(model: nn.Module, keep: int | float, calibration: Iterable | None = None,
                 criterion: str = "activation", pad_id: int = 0) -> dict[str, Any]:
    """Keep the `keep` most important attention heads of every transformer block (an int, or a fraction of the
    heads), removing the rest for real (smaller query/key/value and output layers); in place. Grouped-query models
    lose whole groups (a key/value head with its query heads), so `keep` is then a multiple of the group size. A Llama-
    family config follows (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``), so ``save_hf_model``
    writes a directory ``from_pretrained`` loads; a BERT config cannot say "fewer heads of the same size", so such a
    model ships as ONNX or a torchslim checkpoint. Returns what was done.

    Example:
        >>> info = prune_heads_(student, keep=8, calibration=batches)     # doctest: +SKIP
        >>> info["heads"], info["kept"]
        (12, 8)
    """
    layers = attention_layers(model)
    shapes = {(a.heads, a.kv_heads, a.head_dim) for a in layers}
    if len(shapes) != 1:
        raise TorchslimError(f"the blocks' attention shapes differ ({sorted(shapes)}); prune_heads_ keeps the same "
                             f"number of heads in every block")
    heads, kv_heads, d = shapes.pop()
    group = heads // kv_heads
    if isinstance(keep, float) and not isinstance(keep, bool):
        if not 0 < keep <= 1:
            raise TorchslimError(f"keep {keep}: a fraction must be in (0, 1], or give a whole number of heads")
        keep = max(group, round(keep * heads / group) * group)
    valid = list(range(group, heads + 1, group))
    if isinstance(keep, bool) or not isinstance(keep, int) or keep not in valid:
        raise TorchslimError(f"keep {keep!r}: heads kept per block must be one of {', '.join(map(str, valid))}"
                             + (f" (whole groups of {group} query heads sharing a key/value head)" if group > 1 else
                                " (the block has that many heads)") + ", or a fraction in (0, 1]")
    scores = head_importance(model, calibration, criterion, pad_id)
    for a, score in zip(layers, scores):
        kept_groups = score.view(kv_heads, group).sum(1).topk(keep // group).indices.sort().values
        q_heads = (kept_groups.unsqueeze(1) * group + torch.arange(group)).flatten()
        if a.fused:  # one qkv layer: the kept heads' rows of each third
            width = heads * d
            _keep_rows(a.query, torch.cat([_rows(q_heads, d, part * width) for part in range(3)]))
        else:
            _keep_rows(a.query, _rows(q_heads, d))
            _keep_rows(a.key, _rows(kept_groups, d))
            _keep_rows(a.value, _rows(kept_groups, d))
        _keep_columns(a.out, _rows(q_heads, d))
        for attr in _HEAD_ATTRS:
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, keep)
        for attr, value in (("all_head_size", keep * d), ("num_key_value_heads", keep // group)):
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, value)
    config = getattr(getattr(model, "model", model), "config", None)
    follows = config is not None and isinstance(getattr(config, "num_key_value_heads", None), int)
    if follows:  # head_dim is explicit in a Llama-family config, so fewer heads keep their size
        config.head_dim = d
        config.num_attention_heads, config.num_key_value_heads = keep, keep // group
    return {"criterion": criterion, "heads": heads, "kept": keep, "kv_heads_kept": keep // group, "head_dim": d,
            "blocks": len(layers), "config_follows": follows}
