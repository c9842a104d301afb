"""Token-level distillation losses for language models: each position's next-token distribution of the student is
pulled toward the teacher's, and the divergences are averaged over tokens.

- ``forward-kl``: KL(p_teacher ‖ p_student) — mean-seeking: the student spreads mass over everything the teacher
  allows (Hinton KD per token, without the hard-label term).
- ``reverse-kl``: KL(p_student ‖ p_teacher) — mode-seeking: the student may drop the teacher's unlikely tokens but is
  punished for mass where the teacher has none (MiniLLM, Gu et al. 2024).
- ``jsd``: the generalized Jensen–Shannon divergence of GKD (Agarwal et al. 2024) with mixture
  m = β·p_teacher + (1−β)·p_student: β·KL(p_teacher ‖ m) + (1−β)·KL(p_student ‖ m); β = 0.5 is the symmetric JSD,
  at most log 2.

Logits are (..., V): N×T×V for a causal LM (every position is one token), N×V for a classifier (every row is one).
Probabilities are softmax(logits / temperature), and each loss is multiplied by temperature² (as Hinton KD), so its
gradient keeps its size when the temperature changes; at temperature 1 the loss is the divergence itself. Tokens
whose label is negative (``-100``, Hugging Face's "ignore") are left out of the mean.

In a recipe, a distill stage lists them (a hard-label term beside is ``ce``; ``kd`` works per token too):

    stages:
      - type: distill
        losses: [{name: reverse-kl}, {name: ce, weight: 0.1}]

Example:
    >>> import torch
    >>> s, t = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, 0.0]]])
    >>> float(forward_kl(s, t)), float(reverse_kl(s, t)), float(jsd(s, t))
    (0.0, 0.0, 0.0)
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.config import Config
from torchslim.distillation.losses import LOSSES, DistillLoss, LossInputs
from torchslim.errors import TorchslimError


def _token_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits as (tokens, V), the tokens whose label is negative dropped."""
    if student_logits.shape != teacher_logits.shape:
        raise TorchslimError(f"token distillation needs student and teacher logits of one shape (the same "
                             f"vocabulary and length); got {tuple(student_logits.shape)} and "
                             f"{tuple(teacher_logits.shape)}")
    s, t = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2)
    if labels is not None and labels.numel() == len(s) and not labels.is_floating_point():
        keep = labels.reshape(-1) >= 0
        if not bool(keep.all()):
            s, t = s[keep], t[keep]
    return s, t


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities: Σ p (log p − log q)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of T²·KL(p_teacher ‖ p_student), p = softmax(logits / T).

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3)]])   # p_t = (1/4, 3/4), p_s = (1/2, 1/2)
        >>> round(float(forward_kl(s, t)), 6) == round(0.25 * math.log(0.5) + 0.75 * math.log(1.5), 6)
        True
    """
    s, t = _token_rows(student_logits, teacher_logits, labels)
    if not len(s):
        return student_logits.sum() * 0.0
    kl = _kl_rows(F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1))
    return temperature**2 * kl.mean()


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of T²·KL(p_student ‖ p_teacher) (MiniLLM's objective, per token)."""
    s, t = _token_rows(student_logits, teacher_logits, labels)
    if not len(s):
        return student_logits.sum() * 0.0
    kl = _kl_rows(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1))
    return temperature**2 * kl.mean()


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0,
        labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of T²·[β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)], m = β·p_t + (1−β)·p_s (GKD's generalized JSD;
    β in (0, 1), 0.5 the symmetric Jensen–Shannon divergence)."""
    if not 0.0 < beta < 1.0:
        raise TorchslimError(f"jsd beta must be in (0, 1), got {beta!r} (for the limits use forward-kl or reverse-kl)")
    s, t = _token_rows(student_logits, teacher_logits, labels)
    if not len(s):
        return student_logits.sum() * 0.0
    log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    # log m = logsumexp(log β + log p_t, log(1−β) + log p_s): stable where either probability underflows.
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1 - beta)]), dim=0)
    div = beta * _kl_rows(log_t, log_m) + (1 - beta) * _kl_rows(log_s, log_m)
    return temperature**2 * div.mean()


def teacher_generated(
    teacher: nn.Module,
    prompts: torch.Tensor,
    block_size: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    task: Any = None,
    batch_size: int = 256,
) -> TensorDataset:
    """A transfer set the teacher writes (sequence-level KD, Kim & Rush 2016; GKD's on-policy data): each row of
    `prompts` (int64 N×P, 1 ≤ P ≤ block_size) is continued by sampling from the teacher to ``block_size + 1`` tokens,
    and the rows are ``(seq[:, :-1], seq[:, 1:])`` — blocks like the data's, carrying `task` so that training knows
    its loss and metric. Distill on them with the token losses (the targets are the teacher's own samples).

    Example:
        >>> prompts = data.train.tensors[0][torch.randperm(len(data.train))[:512], :8]     # doctest: +SKIP
        >>> sampled = teacher_generated(teacher, prompts, 64, task=data.task)               # doctest: +SKIP
        >>> distill(student, teacher, sampled, KDConfig(losses=["forward-kl"]), cfg, val=data.val)  # doctest: +SKIP
    """
    from torchslim.models.gpt import generate

    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.dim() != 2 or not 1 <= prompts.shape[1] <= block_size:
        raise TorchslimError(f"prompts must be int64 N×P token ids with 1 ≤ P ≤ block_size ({block_size}), got shape "
                             f"{tuple(prompts.shape)}")
    parts = [generate(teacher, chunk, max_new_tokens=block_size + 1 - prompts.shape[1], temperature=temperature,
                      top_k=top_k, seed=seed + i, block_size=block_size)
             for i, chunk in enumerate(prompts.split(batch_size))]
    seq = torch.cat(parts)  # N × (block_size + 1)
    rows = TensorDataset(seq[:, :-1], seq[:, 1:])
    rows.task = task
    return rows


class TokenKDOptions(Config):
    temperature: float = Field(1.0, gt=0, le=100, description="softmax temperature of both distributions")


class JSDOptions(TokenKDOptions):
    beta: float = Field(0.5, gt=0, lt=1, description="mixture weight of the teacher: m = β·p_t + (1−β)·p_s")


class _TokenDivergence(DistillLoss):
    Options = TokenKDOptions
    layers = 0
    needs_teacher_logits = True


@LOSSES.register("forward-kl")
class ForwardKLLoss(_TokenDivergence):
    """KL(teacher ‖ student) per token (or per row), averaged; temperature (default 1), × T²."""

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return forward_kl(inputs.student_logits, inputs.teacher_logits, self.options.temperature, inputs.labels)


@LOSSES.register("reverse-kl")
class ReverseKLLoss(_TokenDivergence):
    """KL(student ‖ teacher) per token, averaged (MiniLLM: mode-seeking); temperature (default 1), × T²."""

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return reverse_kl(inputs.student_logits, inputs.teacher_logits, self.options.temperature, inputs.labels)


@LOSSES.register("jsd")
class JSDLoss(_TokenDivergence):
    """Generalized Jensen–Shannon divergence per token (GKD), β (default 0.5) and temperature (default 1), × T²."""

    Options = JSDOptions

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        o = self.options
        return jsd(inputs.student_logits, inputs.teacher_logits, o.beta, o.temperature, inputs.labels)
