"""Distillation losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """α·CE(student, labels) + (1−α)·T²·KL(p_teacher,T ‖ p_student,T), batch mean.

    The T² factor keeps the soft term's gradient magnitude independent of T (Hinton et al. 2015, §2).
    """
    hard = F.cross_entropy(student_logits, labels)
    # kl_div(input=log q, target=log p, log_target=True) = Σ p (log p − log q) = KL(p ‖ q), with p the teacher.
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return alpha * hard + (1 - alpha) * temperature**2 * soft
