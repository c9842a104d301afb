"""Knowledge distillation."""
from torchslim.distillation.config import KDConfig
from torchslim.distillation.kd import distill, teacher_logits
from torchslim.distillation.losses import kd_loss

__all__ = ["KDConfig", "distill", "kd_loss", "teacher_logits"]
