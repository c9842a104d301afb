"""A nanoGPT-style decoder for the causal-lm task: token ids N×T (int64) in, next-token logits N×T×V out.

Pre-LayerNorm blocks (x + attn(ln(x)), x + mlp(ln(x))), causal self-attention through
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``, learned positional embeddings, a GELU MLP of
4× the width, and the output projection tied to the token embedding. The module layout and parameter names are
nanoGPT's (``transformer.wte``, ``transformer.h.0.attn.c_attn``, ``lm_head``...), so layer dropping finds the blocks
at ``transformer.h`` and a nanoGPT state dict loads. It exports to ONNX (opset 17+) with dynamic batch and sequence
axes.

Example:
    >>> import torch
    >>> from torchslim.models import create_model
    >>> model = create_model("gpt", vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16).eval()
    >>> model(torch.zeros(3, 10, dtype=torch.long)).shape
    torch.Size([3, 10, 65])
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS


@dataclass
class GPTConfig:
    """The shape of a :class:`GPT` (nanoGPT's config; ``n_layer`` follows layer dropping)."""

    vocab_size: int = 65
    block_size: int = 128  # the longest context the positional embedding covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions ≤ t only."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×T×C
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        # N×T×C → N×H×T×D. unflatten and flatten name no batch or sequence size, so both stay dynamic in ONNX; the
        # head count comes from the layer's width, so a model with pruned heads reloads from its weights alone.
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(2)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT (Karpathy): token + position embeddings, ``n_layer`` blocks, a final LayerNorm, tied output head.

    ``forward(input_ids)`` takes int64 N×T ids with T ≤ ``block_size`` and returns float N×T×vocab_size logits;
    the logits at position t predict token t+1. Weights start as in nanoGPT/GPT-2: normal(0, 0.02), the residual
    projections scaled by 1/√(2·n_layer).
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one V×C matrix reads and writes tokens
        self.apply(_init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def block_size(self) -> int:
        """The longest input this model takes (its positional embedding's length)."""
        return self.config.block_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            _check_ids(input_ids, self.config)
        # Positions 0..T-1 from the input itself (not arange(T) of a Python int), so T stays dynamic in ONNX.
        pos = torch.ones_like(input_ids[0]).cumsum(0) - 1  # T
        t = self.transformer
        x = t.drop(t.wte(input_ids) + t.wpe(pos))  # N×T×C
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))  # N×T×V


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def _check_config(cfg: GPTConfig) -> None:
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TorchslimError(f"gpt {key} must be a positive whole number, got {value!r}")
    if cfg.n_embd % cfg.n_head:
        divisors = [h for h in range(1, cfg.n_embd + 1) if cfg.n_embd % h == 0 and h <= 64]
        raise TorchslimError(f"gpt n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}; valid n_head for "
                             f"this width: {', '.join(map(str, divisors))}")
    d = cfg.dropout
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
        raise TorchslimError(f"gpt dropout must be a number in [0, 1), got {d!r}")


def _check_ids(input_ids: torch.Tensor, cfg: GPTConfig) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TorchslimError(f"gpt takes int64 token ids of shape N×T, got {shape}")
    if input_ids.shape[1] > cfg.block_size:
        raise TorchslimError(f"gpt input of {input_ids.shape[1]} tokens is longer than the model's block_size "
                             f"{cfg.block_size}; give at most {cfg.block_size} tokens (data.block_size ≤ "
                             f"{cfg.block_size}) or build the model with args.block_size ≥ {input_ids.shape[1]}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size):
        raise TorchslimError(f"gpt token id {int(input_ids.max())} is outside the vocabulary 0..{cfg.vocab_size - 1}"
                             f"; the model's vocab_size must match the data's")


def keep_layers(model: GPT, layers: Sequence[int]) -> GPT:
    """Keep only the blocks at the indices `layers` (in that order), in place; returns `model`.

    A half-depth student that starts from the teacher's weights: ``keep_layers(copy.deepcopy(teacher), [0, 2])``
    (DistilBERT keeps every other layer). ``model.config.n_layer`` follows. The same as
    :func:`torchslim.models.hf.drop_layers`, which finds the blocks of any transformer (here ``transformer.h``).

    Example:
        >>> teacher = create_gpt(vocab_size=65, n_layer=4, n_head=2, n_embd=32, block_size=16)
        >>> len(keep_layers(copy.deepcopy(teacher), [0, 2]).transformer.h)
        2
    """
    from torchslim.models.hf import drop_layers

    return drop_layers(model, list(layers) if isinstance(layers, tuple) else layers)


@torch.no_grad()
def generate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor | Sequence[int],
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    *,
    block_size: int | None = None,
) -> torch.Tensor:
    """Sample `max_new_tokens` tokens after `prompt_ids` (a 1-D sequence, or N×T for N samples at once); returns
    prompt + sample, int64, of the prompt's shape plus the new tokens.

    `model` is a module (called in eval mode) or any function from N×T ids to N×T×V logits (an ONNX Runtime runner).
    Each step feeds the last `block_size` tokens (default ``model.block_size``), divides the last position's logits
    by `temperature`, keeps the `top_k` largest (None: all) and draws from the softmax with a generator seeded by
    `seed`, so the same seed gives the same text. `temperature` 0 takes the most likely token (greedy).

    Example:
        >>> model = create_gpt(vocab_size=65, n_layer=1, n_head=1, n_embd=8, block_size=8)
        >>> generate(model, [1, 2, 3], max_new_tokens=5, seed=0).shape
        torch.Size([8])
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TorchslimError(f"max_new_tokens must be a whole number ≥ 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise TorchslimError(f"temperature must be a number ≥ 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise TorchslimError(f"top_k must be a positive whole number or None, got {top_k!r}")
    ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    single = ids.dim() == 1
    ids = ids.unsqueeze(0) if single else ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise TorchslimError(f"prompt_ids must be a non-empty 1-D sequence of ids or N×T, got shape {tuple(ids.shape)}")
    block_size = block_size or getattr(model, "block_size", None)
    if not block_size:
        raise TorchslimError("generate: give block_size, the longest context the model takes")
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    gen = torch.Generator().manual_seed(seed)
    try:
        for _ in range(max_new_tokens):
            logits = torch.as_tensor(model(ids[:, -block_size:]))[:, -1, :].float()  # N×V, the next token
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
            ids = torch.cat([ids, nxt], dim=1)
    finally:
        if was_training:
            model.train()
    return ids[0] if single else ids


def create_gpt(*, vocab_size: int = 65, block_size: int = 128, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
               dropout: float = 0.0) -> GPT:
    """A :class:`GPT` of this shape (what the registered ``gpt*`` models build).

    Example:
        >>> sum(p.numel() for p in create_gpt(n_layer=4, n_embd=128).parameters())
        817408
    """
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=dropout))


def _vocab(num_classes: int, vocab_size: int | None) -> int:
    # A language model's classes are its tokens: the pipeline passes both, a user may give either.
    return num_classes if vocab_size is None else vocab_size


@MODELS.register("gpt", help="nanoGPT decoder (causal-lm): n_layer, n_head, n_embd, block_size, dropout; default "
                             "4 layers × 128 wide")
def gpt(*, num_classes: int = 65, vocab_size: int | None = None, block_size: int = 128, n_layer: int = 4,
        n_head: int = 4, n_embd: int = 128, dropout: float = 0.0) -> GPT:
    """nanoGPT decoder; vocab_size from the data (default num_classes: a language model's classes are its tokens)."""
    return create_gpt(vocab_size=_vocab(num_classes, vocab_size), block_size=block_size, n_layer=n_layer,
                      n_head=n_head, n_embd=n_embd, dropout=dropout)


@MODELS.register("gpt-nano", help="nanoGPT decoder, 2 layers × 64 wide, 2 heads, block 128 (~0.1 M params)")
def gpt_nano(*, num_classes: int = 65, vocab_size: int | None = None, block_size: int = 128, n_layer: int = 2,
             n_head: int = 2, n_embd: int = 64, dropout: float = 0.0) -> GPT:
    """nanoGPT decoder, 2 layers × 64 wide, 2 heads."""
    return gpt(num_classes=num_classes, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
               n_head=n_head, n_embd=n_embd, dropout=dropout)


@MODELS.register("gpt-mini", help="nanoGPT decoder, 4 layers × 128 wide, 4 heads, block 128 (~0.8 M params)")
def gpt_mini(*, num_classes: int = 65, vocab_size: int | None = None, block_size: int = 128, n_layer: int = 4,
             n_head: int = 4, n_embd: int = 128, dropout: float = 0.0) -> GPT:
    """nanoGPT decoder, 4 layers × 128 wide, 4 heads."""
    return gpt(num_classes=num_classes, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
               n_head=n_head, n_embd=n_embd, dropout=dropout)


@MODELS.register("gpt-shakespeare", help="nanoGPT's shakespeare_char model: 6 layers × 384, 6 heads, block 256, "
                                         "dropout 0.2 (~10.7 M params; a GPU's model)")
def gpt_shakespeare(*, num_classes: int = 65, vocab_size: int | None = None, block_size: int = 256, n_layer: int = 6,
                    n_head: int = 6, n_embd: int = 384, dropout: float = 0.2) -> GPT:
    """nanoGPT's config/train_shakespeare_char.py model (val loss ~1.47 after 5000 iterations on a GPU)."""
    return gpt(num_classes=num_classes, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
               n_head=n_head, n_embd=n_embd, dropout=dropout)


for _builder in (gpt, gpt_nano, gpt_mini, gpt_shakespeare):
    _builder.tasks = ("causal-lm",)  # what `model does not fit the data` lists for other tasks leaves them out
