"""Distillation losses for transformer encoders: TinyBERT's hidden states (Jiao et al. 2020), MiniLM's attention
distributions and value relations (Wang et al. 2020) and MiniLM v2's query/key/value relations (Wang et al. 2021).

These losses read the inside of a Hugging Face encoder (BERT family, DistilBERT; bare, or wrapped as
``HFSequenceClassifier`` / ``HFSentenceEncoder``), so they take no module names: :class:`TransformerTaps` puts
forward hooks on the embeddings, on the transformer blocks and on the blocks' query/key/value projections. The
attention probabilities are recomputed from Q and K, softmax(Q·Kᵀ/√d_head + mask), which works whatever attention
kernel the model runs (eager, sdpa, flash): ``output_attentions`` is not needed.

Padding never counts: the attention mask is the one the model received (the torchslim wrappers derive it from pad
id 0), padded keys are masked out of every softmax and padded positions out of every mean.

    with TransformerTaps(student, hidden=[-1], qkv=[-1]) as taps:
        student(ids)                                    # ids: (N, L), padded with 0
        taps.hidden[1]                                  # (N, L, D): the output of block 1 (of 2)
        attention_log_probs(taps.query[1], taps.key[1], taps.layer_heads[1], taps.mask).exp()   # (N, H, L, L)
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from torchslim.config import Config
from torchslim.distillation.losses import LOSSES, DistillLoss, LossInputs
from torchslim.distillation.taps import make_adapter, unwrap
from torchslim.errors import TorchslimError
from torchslim.models.hf import HFSentenceEncoder, HFSequenceClassifier, transformer_layers

# Where a block's self-attention projections live, by family: BERT / RoBERTa / ELECTRA / MiniLM, DistilBERT.
_QKV_NAMES = (("attention.self.query", "attention.self.key", "attention.self.value"),
              ("attention.q_lin", "attention.k_lin", "attention.v_lin"))


# ------------------------------------------------------------------------------------------------------- functions
def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """TinyBERT's uniform layer map: student block i ↔ teacher block (i+1)·Lt/Ls − 1 (0-based, rounded down), so the
    last blocks meet and the others are spread evenly.

    Example:
        >>> uniform_layer_map(4, 12)
        {0: 2, 1: 5, 2: 8, 3: 11}
    """
    if student_layers < 1 or teacher_layers < 1:
        raise TorchslimError(f"a layer map needs at least one layer on each side, got student {student_layers}, "
                             f"teacher {teacher_layers}")
    return {i: max((i + 1) * teacher_layers // student_layers - 1, 0) for i in range(student_layers)}


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                      projection: nn.Module | None = None) -> torch.Tensor:
    """TinyBERT's hidden-state loss: MSE(projection(student), teacher) over the non-pad positions, the mean over
    those positions and the teacher's D features. `student` (N, L, Ds), `teacher` (N, L, Dt), `mask` (N, L), true
    (or 1) at real tokens; `projection` maps Ds to Dt (TinyBERT's W_h) when the widths differ.

    Example:
        >>> h = torch.randn(2, 5, 8)
        >>> float(hidden_state_loss(h, h))
        0.0
    """
    if projection is not None:
        student = projection(student)
    if student.shape != teacher.shape:
        raise TorchslimError(f"hidden states of different shapes: student {list(student.shape)}, teacher "
                             f"{list(teacher.shape)}; give a projection from the student's width to the teacher's")
    sq = (student - teacher).pow(2).mean(-1)  # (N, L)
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp_min(1)


def attention_log_probs(q: torch.Tensor, k: torch.Tensor, heads: int, mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Log attention probabilities per head, log softmax(Q_h·K_hᵀ/√d_head) over the keys, padded keys masked out:
    exactly the attention a BERT layer applies. `q`, `k` (N, L, D) are the outputs of the query and key projections,
    split into `heads` heads of D/heads; `mask` (N, L) is true at real tokens. Returns (N, heads, L, L).

    Example:
        >>> q = torch.randn(1, 3, 8)
        >>> p = attention_log_probs(q, q, heads=2, mask=torch.tensor([[1, 1, 0]])).exp()
        >>> p.shape, float(p[0, 0, 0, 2]), round(float(p[0, 1, 2].sum()), 4)
        (torch.Size([1, 2, 3, 3]), 0.0, 1.0)
    """
    n, lq, d = q.shape
    if d % heads or k.shape[-1] % heads:
        raise TorchslimError(f"{heads} heads do not divide the width {d}")
    qh = q.reshape(n, lq, heads, d // heads).transpose(1, 2)  # (N, H, L, d_head)
    kh = k.reshape(n, k.shape[1], heads, k.shape[-1] // heads).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])  # (N, H, Lq, Lk)
    if mask is not None:
        # The most negative finite number, not −inf: exp gives exactly 0 and the log stays finite, so a KL term
        # 0·(log p − log q) at a padded key is 0, never NaN.
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def qkv_relations(x: torch.Tensor, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's self-attention relations of one of Q, K or V: log softmax(X_h·X_hᵀ/√(D/heads)) per relation head,
    padded keys masked out. `x` (N, L, D); `heads` need not be the model's attention heads (MiniLM v2's relation
    heads), it must divide D. Returns (N, heads, L, L) log-probabilities.

    Example:
        >>> qkv_relations(torch.randn(2, 4, 16), heads=8).shape
        torch.Size([2, 8, 4, 4])
    """
    return attention_log_probs(x, x, heads, mask)


def relation_kl_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) between two (N, H, L, L) tensors of log-distributions over the last axis (attention
    probabilities or relations, as :func:`attention_log_probs` / :func:`qkv_relations` give them), summed over the
    keys and averaged over the heads and the non-pad query positions (MiniLM's L_AT, L_VR and v2's relation loss).
    Padded keys, where both distributions are 0, add nothing.

    Example:
        >>> q = torch.randn(2, 5, 8)
        >>> float(relation_kl_loss(qkv_relations(q, 2), qkv_relations(q, 2)))
        0.0
    """
    if student.shape != teacher.shape:
        raise TorchslimError(f"relations of different shapes: student {list(student.shape)}, teacher "
                             f"{list(teacher.shape)} (the head counts must agree)")
    kl = teacher.exp() * (teacher - student)  # (N, H, Lq, Lk)
    if mask is None:
        return kl.sum(-1).mean()
    real = mask.bool()
    kl = kl.masked_fill(~real[:, None, None, :], 0).sum(-1)  # (N, H, Lq)
    rows = real[:, None, :].to(kl.dtype)
    return (kl * rows).sum() / (rows.sum() * kl.shape[1]).clamp_min(1)


# ---------------------------------------------------------------------------------------------------------- hooks
def _config_value(config, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a torchslim wrapper (its `.model`), or the model itself."""
    return model.model if isinstance(model, (HFSequenceClassifier, HFSentenceEncoder)) else model


def _resolve_layer(i: int, n: int, what: str, role: str) -> int:
    if not -n <= i < n:
        raise TorchslimError(f"{what} {i} is out of range: the {role} has {n} layers (valid: 0..{n - 1}, or "
                             f"-{n}..-1 counting from the end)")
    return i % n


class TransformerTaps:
    """Forward hooks on a Hugging Face encoder (or a torchslim wrapper around one) that keep, for every forward:
    ``mask`` (N, L) bool, true at real tokens (the attention mask the model got, else ``input_ids != pad_id``);
    ``embedding_output`` (N, L, D) when `embeddings`; ``hidden[i]`` (N, L, D), the output of block i, for the blocks
    in `hidden`; ``query[i]``, ``key[i]``, ``value[i]`` (N, L, D), the outputs of block i's self-attention
    projections, for the blocks in `qkv`. Layer indices may count from the end (−1: the last); the dicts are keyed by
    the index counted from 0. ``num_layers``, ``heads`` and ``width`` describe the model (its config), and for the
    blocks in `qkv`, ``layer_heads[i]`` and ``qkv_width[i]`` the attention heads and projection width of block i (fewer
    after head pruning). Tensors keep their autograd graph. A context manager: the hooks are removed on exit.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                             intermediate_size=32))
        >>> with TransformerTaps(bert, hidden=[-1], qkv=[0]) as taps:
        ...     _ = bert(torch.tensor([[2, 5, 7, 0]]))
        ...     taps.mask.tolist(), tuple(taps.hidden[1].shape), tuple(taps.query[0].shape), taps.layer_heads
        ([[True, True, True, False]], (1, 4, 16), (1, 4, 16), {0: 2})
    """

    def __init__(self, model: nn.Module, hidden: Iterable[int] = (), qkv: Iterable[int] = (),
                 embeddings: bool = False, role: str = "model") -> None:
        self.root = unwrap(model)
        self.inner = _hf_model(self.root)
        self.role = role
        blocks = transformer_layers(self.inner)
        self.num_layers = len(blocks)
        config = getattr(self.inner, "config", None)
        self.heads = _config_value(config, "num_attention_heads", "n_heads")
        self.width = _config_value(config, "hidden_size", "dim", "d_model")
        if self.heads is None or self.width is None:
            raise TorchslimError(f"the {role} ({type(self.inner).__name__}) has no config with its number of "
                                 f"attention heads and hidden size; transformer losses need a Hugging Face model")
        pad = getattr(self.root, "pad_id", None)
        self.pad_id = pad if pad is not None else (getattr(config, "pad_token_id", None) or 0)
        self.hidden_layers = list(dict.fromkeys(_resolve_layer(i, self.num_layers, "layer", role) for i in hidden))
        self.qkv_layers = list(dict.fromkeys(_resolve_layer(i, self.num_layers, "layer", role) for i in qkv))
        self._targets: list[tuple[nn.Module, str, int | None]] = []  # (module, where its output goes, layer)
        if embeddings:
            emb = getattr(getattr(self.inner, "base_model", self.inner), "embeddings", None)
            if not isinstance(emb, nn.Module):
                raise TorchslimError(f"cannot find the embeddings module of the {role} ({type(self.inner).__name__})")
            self._targets.append((emb, "embedding_output", None))
        for i in self.hidden_layers:
            self._targets.append((blocks[i], "hidden", i))
        self.layer_heads: dict[int, int] = {}  # per block: a head-pruned block has fewer than `heads`
        self.qkv_width: dict[int, int] = {}
        for i in self.qkv_layers:
            attention, projections = self._projections(blocks[i], i)
            for kind, module in zip(("query", "key", "value"), projections):
                self._targets.append((module, kind, i))
            self.layer_heads[i] = _config_value(attention, "num_attention_heads", "n_heads") or self.heads
            self.qkv_width[i] = projections[0].out_features
        self._handles: list = []
        self.clear()

    def _projections(self, block: nn.Module, i: int) -> tuple[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear]]:
        """The self-attention module of block `i` and its query, key and value projections."""
        modules = dict(block.named_modules())
        for names in _QKV_NAMES:
            if all(isinstance(modules.get(n), nn.Linear) for n in names):
                return modules[names[0].rpartition(".")[0]], tuple(modules[n] for n in names)
        looked = "; ".join("/".join(names) for names in _QKV_NAMES)
        raise TorchslimError(f"cannot find the query/key/value projections in layer {i} of the {self.role} "
                             f"({type(block).__name__}; looked for {looked}); attention losses support BERT-family "
                             f"and DistilBERT encoders")

    def clear(self) -> None:
        """Forget the last forward's tensors (done at the start of every forward)."""
        self.mask: torch.Tensor | None = None
        self.embedding_output: torch.Tensor | None = None
        self.hidden: dict[int, torch.Tensor] = {}
        self.query: dict[int, torch.Tensor] = {}
        self.key: dict[int, torch.Tensor] = {}
        self.value: dict[int, torch.Tensor] = {}

    def __enter__(self) -> TransformerTaps:
        self._handles.append(self.inner.register_forward_pre_hook(self._inputs, with_kwargs=True))
        for module, kind, i in self._targets:
            self._handles.append(module.register_forward_hook(self._keep(kind, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def _inputs(self, module, args, kwargs) -> None:
        self.clear()
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is None or mask.dim() != 2:  # no mask, or a ready-made 4-D one: derive it from the token ids
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = ids.ne(self.pad_id) if isinstance(ids, torch.Tensor) else None
        self.mask = mask.bool() if mask is not None else None

    def _keep(self, kind: str, i: int | None):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output  # older blocks return tuples
            if kind == "embedding_output":
                self.embedding_output = out
            else:
                getattr(self, kind)[i] = out
            if self.mask is None:  # inputs_embeds without a mask: every position is real
                self.mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return hook


# ---------------------------------------------------------------------------------------------------------- modules
class _TransformerLoss(DistillLoss):
    """A loss that hooks the student and the teacher themselves (it takes no module names): the objective calls
    ``attach(student, teacher)`` for the duration of training, which checks the options against the two models and
    returns the context manager that holds the hooks."""

    layers = 0

    def attach(self, student: nn.Module, teacher: nn.Module) -> contextlib.AbstractContextManager:
        s, t = self._make_taps(student, teacher)
        stack = contextlib.ExitStack()
        stack.enter_context(s)
        stack.enter_context(t)
        self._pair = (s, t)  # plain objects, not submodules: the models are not parts of this loss
        stack.callback(setattr, self, "_pair", None)
        return stack

    def _make_taps(self, student: nn.Module, teacher: nn.Module) -> tuple[TransformerTaps, TransformerTaps]:
        raise NotImplementedError  # pragma: no cover - each loss overrides it

    def _features(self) -> tuple[TransformerTaps, TransformerTaps, torch.Tensor | None]:
        pair = getattr(self, "_pair", None)
        if pair is None:
            raise TorchslimError(f"{type(self).__name__} reads the models through hooks: train it with distill / "
                                 f"build_objective, whose taps() attach them")
        s, t = pair
        return s, t, s.mask  # both models read the same inputs: one mask


def _num_layers(model: nn.Module) -> int:
    return len(transformer_layers(unwrap(model)))


def _layer_pairs(layer_map: dict[int, int], student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    """(student, teacher) block indices counted from 0; an index out of range is an error naming the valid ones."""
    ns, nt = _num_layers(student), _num_layers(teacher)
    return [(_resolve_layer(i, ns, "layer_map: student layer", "student"),
             _resolve_layer(j, nt, "layer_map: teacher layer", "teacher")) for i, j in layer_map.items()]


_LAYER_MAP_HELP = "student block → teacher block, 0-based (negative: counted from the end), e.g. {0: 1, 1: 3}"


class HiddenOptions(Config):
    layer_map: dict[int, int] | None = Field(
        None, min_length=1,
        description=_LAYER_MAP_HELP + "; default: TinyBERT's uniform map, student i ↔ teacher (i+1)·Lt/Ls − 1")
    embeddings: bool = Field(True, description="also match the embedding layers' outputs (TinyBERT's embedding "
                                               "term, through a projection of its own)")


@LOSSES.register("hidden")
class HiddenStateLoss(_TransformerLoss):
    """TinyBERT hidden states (Jiao et al. 2020): Σ over mapped blocks of MSE(W_h·h_s, h_t), pads masked; weight 1.

    Plus the embeddings' term (W_e·e_s vs e_t); W_h and W_e are learned with the student when the widths differ."""

    Options = HiddenOptions

    def _make_taps(self, student, teacher):
        o = self.options
        layer_map = o.layer_map or uniform_layer_map(_num_layers(student), _num_layers(teacher))
        self.pairs = _layer_pairs(layer_map, student, teacher)
        s = TransformerTaps(student, hidden=[i for i, _ in self.pairs], embeddings=o.embeddings, role="student")
        t = TransformerTaps(teacher, hidden=[j for _, j in self.pairs], embeddings=o.embeddings, role="teacher")
        self.widths = (s.width, t.width)
        return s, t

    def setup(self, student, teacher, train_labels) -> None:
        ds, dt = self.widths
        # One W_h shared by the blocks and one W_e for the embeddings, as in TinyBERT; the identity when equal.
        self.projection = make_adapter((1, ds), (1, dt), "hidden")
        self.embedding_projection = make_adapter((1, ds), (1, dt), "hidden") if self.options.embeddings else None

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s, t, mask = self._features()
        loss = sum(hidden_state_loss(s.hidden[i], t.hidden[j], mask, self.projection) for i, j in self.pairs)
        if self.options.embeddings:
            loss = loss + hidden_state_loss(s.embedding_output, t.embedding_output, mask, self.embedding_projection)
        return loss


class LayerMapOptions(Config):
    layer_map: dict[int, int] | None = Field(None, min_length=1,
                                             description=_LAYER_MAP_HELP + "; default: the last blocks, {-1: -1}")


class _PerHeadLoss(_TransformerLoss):
    """MiniLM v1: teacher and student compared head by head on mapped blocks (default: the last of each)."""

    Options = LayerMapOptions
    _name: ClassVar[str] = ""

    def _make_taps(self, student, teacher):
        self.pairs = _layer_pairs(self.options.layer_map or {-1: -1}, student, teacher)
        s = TransformerTaps(student, qkv=[i for i, _ in self.pairs], role="student")
        t = TransformerTaps(teacher, qkv=[j for _, j in self.pairs], role="teacher")
        for i, j in self.pairs:
            if s.layer_heads[i] != t.layer_heads[j]:
                raise TorchslimError(
                    f"{self._name} compares the attention head by head, so student and teacher need the same number "
                    f"of heads: the student has {s.layer_heads[i]} (layer {i}), the teacher {t.layer_heads[j]} "
                    f"(layer {j}); use minilm-v2, whose relation heads need not match the models' heads")
        return s, t

    def _log_probs(self, taps: TransformerTaps, i: int, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - each loss overrides it

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s, t, mask = self._features()
        return sum(relation_kl_loss(self._log_probs(s, i, mask), self._log_probs(t, j, mask), mask)
                   for i, j in self.pairs)


@LOSSES.register("attention-kl")
class AttentionKLLoss(_PerHeadLoss):
    """MiniLM attention (Wang et al. 2020): KL(teacher ‖ student) of each head's attention probabilities; weight 1.

    Recomputed from Q and K with the padding mask, on the last blocks (or a layer map); equal head counts."""

    _name = "attention-kl"

    def _log_probs(self, taps, i, mask):
        return attention_log_probs(taps.query[i], taps.key[i], taps.layer_heads[i], mask)


@LOSSES.register("value-relation")
class ValueRelationLoss(_PerHeadLoss):
    """MiniLM value relation (Wang et al. 2020): KL(teacher ‖ student) of softmax(V·Vᵀ/√d_head) per head; weight 1.

    On the last blocks (or a layer map); equal head counts."""

    _name = "value-relation"

    def _log_probs(self, taps, i, mask):
        return qkv_relations(taps.value[i], taps.layer_heads[i], mask)


class MiniLMv2Options(Config):
    teacher_layer: int = Field(-1, description="teacher block whose relations are taught, 0-based (negative: counted "
                                               "from the end); MiniLM v2 takes an upper-middle one for large teachers")
    student_layer: int = Field(-1, description="student block that learns them (default: the last)")
    relation_heads: int | None = Field(None, ge=1, description="relation heads that Q, K and V are split into, on "
                                                               "both sides; must divide both widths (default: the "
                                                               "student's attention heads)")
    relations: list[Literal["query", "key", "value"]] = Field(
        ["query", "key", "value"], min_length=1,
        description="which self-relations: Q-Q, K-K, V-V (default all three)")

    @field_validator("relations")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"relations lists one twice: {v}")
        return v


@LOSSES.register("minilm-v2")
class MiniLMv2Loss(_TransformerLoss):
    """MiniLM v2 (Wang et al. 2021): KL of the Q-Q, K-K, V-V self-attention relations, any head counts; weight 1.

    Σ over the relations of KL(teacher ‖ student) of softmax(X·Xᵀ/√d_r), X split into `relation_heads` heads on both
    sides (independent of the models' heads), from one teacher block to one student block."""

    Options = MiniLMv2Options

    def _make_taps(self, student, teacher):
        o = self.options
        ns, nt = _num_layers(student), _num_layers(teacher)
        self.layers_compared = (_resolve_layer(o.student_layer, ns, "student_layer", "student"),
                                _resolve_layer(o.teacher_layer, nt, "teacher_layer", "teacher"))
        s = TransformerTaps(student, qkv=[self.layers_compared[0]], role="student")
        t = TransformerTaps(teacher, qkv=[self.layers_compared[1]], role="teacher")
        i, j = self.layers_compared
        r = o.relation_heads or s.layer_heads[i]
        ws, wt = s.qkv_width[i], t.qkv_width[j]
        if ws % r or wt % r:
            valid = [d for d in range(1, min(ws, wt) + 1) if ws % d == 0 and wt % d == 0]
            raise TorchslimError(f"relation_heads {r} must divide the query/key/value width of the student ({ws}) "
                                 f"and of the teacher ({wt}); valid choices: {', '.join(map(str, valid))}")
        self.relation_heads = r
        return s, t

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s, t, mask = self._features()
        i, j = self.layers_compared
        r = self.relation_heads
        return sum(relation_kl_loss(qkv_relations(getattr(s, kind)[i], r, mask),
                                    qkv_relations(getattr(t, kind)[j], r, mask), mask)
                   for kind in self.options.relations)
