"""Training: one loop (`fit`), its config, and the optimizer/schedule factories."""
from torchslim.training.config import TrainConfig
from torchslim.training.ema import WeightEMA
from torchslim.training.loop import (
    FitResult,
    StopTraining,
    accuracy_of,
    cross_entropy_loss,
    fit,
    iter_batches,
    predict,
    split_batch,
    task_of,
    train,
    validate,
    watch_epochs,
)

__all__ = ["TrainConfig", "FitResult", "StopTraining", "WeightEMA", "fit", "predict", "accuracy_of",
           "cross_entropy_loss", "train", "iter_batches", "split_batch", "task_of", "validate",
           "watch_epochs"]
