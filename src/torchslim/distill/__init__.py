"""Knowledge distillation."""
from torchslim.distill.config import KDConfig
from torchslim.distill.kd import distill, teacher_logits
from torchslim.distill.losses import kd_loss

__all__ = ["KDConfig", "distill", "kd_loss", "teacher_logits"]
