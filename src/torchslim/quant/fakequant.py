"""Uniform affine fake quantization (2-8 bits) with a straight-through estimator, and optional LSQ step sizes.

``fake_quantize`` rounds a float tensor to its integer grid and maps it back to floats:
``x̂ = (clamp(round(x / s) + z, qmin, qmax) − z) · s``. The forward pass sees exactly the values an integer kernel
would; the backward pass treats ``round`` as the identity (straight-through), so the gradient is 1 where x lies inside
the grid's range and 0 where it was clipped. With a learnable step (LSQ, Esser et al. 2020) the scale gets the
gradient ``round(x/s) − x/s`` inside the range and ``qmin−z`` / ``qmax−z`` outside, times ``1/√(N·qmax)``.

Example:
    >>> import torch
    >>> fq = FakeQuant(QuantSpec(bits=4, symmetric=True))
    >>> fq.observe_and_freeze(torch.tensor([-1.0, 0.7]))
    >>> fq(torch.tensor([0.33, 5.0]))            # step 1/7: 0.33 → 2/7, 5.0 clipped to 7/7
    tensor([0.2857, 1.0000])
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant.observers import OBSERVERS
from torchslim.quant.spec import QuantSpec

__all__ = ["QuantSpec", "FakeQuant", "fake_quantize", "effective_scale"]


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    """round(v) forward, identity backward."""
    return v + (torch.round(v) - v).detach()


def _scale_gradient(t: torch.Tensor, factor: float) -> torch.Tensor:
    """t forward; gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return (t - t * factor).detach() + t * factor


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  axis: int | None = None, grad_scale: float | None = None) -> torch.Tensor:
    """Quantize-dequantize `x` on the grid (scale, zero_point, [qmin, qmax]); per-channel along `axis` if given.

    Gradients: straight-through for x inside the range, zero outside (the clamp blocks them); `scale` receives LSQ's
    gradient (scaled by `grad_scale`) when it requires grad.

    Example:
        >>> fake_quantize(torch.tensor([0.26, -3.0]), torch.tensor(0.1), torch.tensor(0), -8, 7)
        tensor([ 0.3000, -0.8000])
    """
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    if grad_scale is not None:
        scale = _scale_gradient(scale, grad_scale)
    zp = zero_point.to(x.dtype)
    q = torch.clamp(_round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def effective_scale(fq: FakeQuant) -> torch.Tensor:
    """The step `fq` quantizes with: its scale, kept positive when it is learned (a step trained through zero would
    flip the grid)."""
    return fq.scale.clamp_min(1e-8) if fq.learnable else fq.scale


class FakeQuant(nn.Module):
    """Fake-quantizes a weight or activation tensor on the grid of `spec`.

    Holds an observer (chosen by name from ``OBSERVERS``) and, once calibrated, the ``scale`` and ``zero_point``
    buffers (a learnable ``scale`` parameter with ``learnable=True``). While ``observing`` it records its input and
    passes it through unchanged; ``freeze()`` turns the observations into the grid. ``enabled=False`` makes it the
    identity. Per-channel specs need ``channels`` (the size of axis 0).

    Example:
        >>> fq = FakeQuant(QuantSpec(bits=8, symmetric=False), "percentile", percentile=99.0)
        >>> fq.observing = True
        >>> _ = fq(torch.randn(1000)); fq.freeze()
        >>> bool(fq.calibrated), fq.zero_point.dtype
        (True, torch.int32)
    """

    def __init__(self, spec: QuantSpec, observer: str = "minmax", *, kind: Literal["weight", "activation"] = "activation",
                 channels: int = 1, learnable: bool = False, **observer_options) -> None:
        super().__init__()
        if spec.per_channel and kind != "weight":
            raise TorchslimError("per-channel quantization applies to weights only; set per_channel: false for "
                                 "activations")
        self.spec, self.kind, self.observer_name, self.learnable = spec, kind, observer, learnable
        self.observer = OBSERVERS.get(observer)(spec, **observer_options)
        shape = (channels,) if spec.per_channel else ()
        if learnable:
            self.scale = nn.Parameter(torch.ones(shape))
        else:
            self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observing = False
        self.enabled = True

    def freeze(self) -> None:
        """Set scale and zero point from what the observer saw, stop observing, and free the observer's memory."""
        scale, zero_point = self.observer.qparams()
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
            self.calibrated.fill_(True)
        self.observing = False
        self.observer.reset()

    def observe_and_freeze(self, x: torch.Tensor) -> None:
        """Grid from this one tensor alone (weights: their range is known without data)."""
        self.observer.reset()
        self.observer.observe(x.detach())
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observing:
            self.observer.observe(x.detach())
            return x
        if not self.calibrated:
            raise TorchslimError("a FakeQuant module has no grid yet: run torchslim.quant.calibrate(model, batches) "
                                 "(or ptq) before using the quantized model")
        grad_scale = None
        if self.learnable:
            # LSQ: N is the number of values sharing one step (a weight tensor or channel, one sample's features).
            n = x.numel() if self.kind == "weight" and not self.spec.per_channel else x[0].numel()
            grad_scale = 1.0 / math.sqrt(n * max(self.spec.qmax, 1))
        return fake_quantize(x, effective_scale(self), self.zero_point, self.spec.qmin, self.spec.qmax,
                             axis=0 if self.spec.per_channel else None, grad_scale=grad_scale)

    def extra_repr(self) -> str:
        grid = "symmetric" if self.spec.symmetric else "asymmetric"
        granularity = "per-channel" if self.spec.per_channel else "per-tensor"
        lsq = ", learnable (LSQ)" if self.learnable else ""
        return f"{self.kind}, {self.spec.bits}-bit {grid} {granularity}, observer={self.observer_name}{lsq}"
