"""Training: one loop (`fit`), its config, and the optimizer/schedule factories."""
from torchslim.train.config import TrainConfig
from torchslim.train.loop import FitResult, accuracy_of, cross_entropy_loss, fit, predict

__all__ = ["TrainConfig", "FitResult", "fit", "predict", "accuracy_of", "cross_entropy_loss"]
