"""An exponential moving average of a model's weights (Polyak averaging).

When the training signal moves under the model (a data-free generator that drifts, a noisy last learning rate),
the weights wander around a good point rather than settling on it; the average of the recent weights can sit
closer to it than any one of them. On DAFL (MNIST) it gave a smoother validation curve but no higher peak.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEMA:
    """``avg ← d·avg + (1 − d)·w`` after every optimizer step, for every floating-point tensor of the state dict
    (BatchNorm running statistics included); integer buffers (``num_batches_tracked``) are copied.

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so the first updates are not
    dominated by the initial weights.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> ema = WeightEMA(model, decay=0.99)
        >>> ema.update(model)
        >>> with ema.applied_to(model):
        ...     pass   # evaluate the averaged weights here; the trained ones are back afterwards
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.state[k].copy_(v)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Load the averaged weights into `model` for the duration of the block, then put its own weights back."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.updates = int(saved["updates"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
