"""Observers: watch tensors, then propose a quantization grid (scale, zero_point) for a :class:`QuantSpec`.

Every observer is one class registered in :data:`OBSERVERS` by the name a recipe uses. The protocol is narrow:
``observe(x)`` any number of times, then ``qparams()`` returns ``(scale, zero_point)`` — 0-d tensors for a
per-tensor spec, shape ``[C]`` (channels on axis 0) for a per-channel one.

Example:
    >>> import torch
    >>> obs = OBSERVERS.get("minmax")(QuantSpec(bits=8, symmetric=True))
    >>> obs.observe(torch.tensor([-1.0, 0.5, 2.54]))
    >>> scale, zero_point = obs.qparams()
    >>> round(scale.item(), 6), zero_point.item()
    (0.02, 0)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from torchslim.errors import TorchslimError
from torchslim.quant.spec import QuantSpec
from torchslim.registry import Registry


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) whose grid covers [lo, hi] (widened to include 0, so that 0 is exact: zero padding and
    ReLU outputs stay exact).

    Example:
        >>> s, z = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), QuantSpec(bits=2, symmetric=False))
        >>> s.item(), z.item()   # grid {-1, 0, 1, 2} · 4/3 shifted by the zero point 1
        (1.3333333730697632, 1)
    """
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if spec.symmetric:
        scale = torch.maximum(-lo, hi) / spec.qmax
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
    # An all-zero tensor (a pruned channel) is exact on any grid; a zero scale would divide by zero.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if spec.symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zero_point = torch.clamp(spec.qmin - torch.round(lo / scale), spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point


def _fake_quant_rows(v: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """v: [C, N] quantized with one (scale, zero_point) per row: the numbers the FakeQuant module produces."""
    s, z = scale[:, None], zero_point[:, None].float()
    return (torch.clamp(torch.round(v / s) + z, spec.qmin, spec.qmax) - z) * s


class Observer:
    """Base class: keeps the running per-row min and max of everything observed (rows = channels or one row)."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """[C, N] for a per-channel spec (channels on axis 0), [1, N] otherwise."""
        x = x.detach().float()
        return x.reshape(x.shape[0], -1) if self.spec.per_channel else x.reshape(1, -1)

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range to quantize, per row; subclasses clip it."""
        return self.lo, self.hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise TorchslimError(f"{type(self).__name__} has observed no tensor: run calibration batches first")
        scale, zero_point = qparams_from_range(*self._range(), self.spec)
        if not self.spec.per_channel:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        return scale, zero_point


OBSERVERS: Registry[type[Observer]] = Registry("observer")


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The full observed range [min, max]: nothing is clipped, the step is the widest."""


@OBSERVERS.register("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of each batch's min and max (constant 0.01): one outlier batch moves it little."""

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01) -> None:
        self.c = averaging_constant
        super().__init__(spec)

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)


class _SampleObserver(Observer):
    """Keeps, besides min and max, a uniform random sample of at most `sample_size` values per row.

    The sample is the bottom-k of random keys over everything observed, so it is uniform over all batches however
    many there are, exact (every value) for tensors smaller than `sample_size`, and seeded (the same calibration
    gives the same grid). A quarter-million values pin a 99.99th percentile and a quantization MSE well.
    """

    def __init__(self, spec: QuantSpec, sample_size: int = 2 ** 18, seed: int = 0) -> None:
        self.sample_size, self.seed = sample_size, seed
        super().__init__(spec)

    def reset(self) -> None:
        super().reset()
        self.sample: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.batches = 0

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        rows = self._rows(x)
        keys = torch.rand(rows.shape, generator=torch.Generator().manual_seed(self.seed + self.batches))
        self.batches += 1
        if self.sample is not None:
            rows, keys = torch.cat([self.sample, rows], 1), torch.cat([self.keys, keys], 1)
        if rows.shape[1] > self.sample_size:
            keys, idx = keys.topk(self.sample_size, dim=1, largest=False)
            rows = rows.gather(1, idx)
        self.sample, self.keys = rows, keys


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """Clips to the `percentile` of the values (of |x| for symmetric specs): a rare outlier no longer sets the step."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, **kwargs) -> None:
        if not 50 < percentile <= 100:
            raise TorchslimError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = percentile
        super().__init__(spec, **kwargs)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100
        if self.spec.symmetric:
            amax = torch.quantile(self.sample.abs(), p, dim=1)
            return -amax, amax
        return torch.quantile(self.sample, 1 - p, dim=1), torch.quantile(self.sample, p, dim=1)


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """The clipping range with the smallest quantization MSE on the observed values (grid search, `steps` points).

    Symmetric specs search the clipping magnitude; asymmetric ones search a common shrink factor of [min, max], then
    the top, then the bottom alone. The unclipped range is always a candidate, so the result is never worse than
    ``minmax`` on the values observed.
    """

    def __init__(self, spec: QuantSpec, steps: int = 100, **kwargs) -> None:
        self.steps = steps
        super().__init__(spec, **kwargs)

    def _error(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        scale, zero_point = qparams_from_range(lo, hi, self.spec)
        return (_fake_quant_rows(self.sample, scale, zero_point, self.spec) - self.sample).pow(2).sum(1)

    def _best(self, candidates: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        errors = torch.stack([self._error(lo, hi) for lo, hi in candidates])  # [K, C]
        pick = errors.argmin(0)
        rows = torch.arange(errors.shape[1])
        return (torch.stack([lo for lo, _ in candidates])[pick, rows],
                torch.stack([hi for _, hi in candidates])[pick, rows])

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        factors = [k / self.steps for k in range(1, self.steps + 1)]
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        if self.spec.symmetric:
            amax = torch.maximum(-lo, hi)
            return self._best([(-a * amax, a * amax) for a in factors])
        lo, hi = self._best([(a * lo, a * hi) for a in factors])
        lo, hi = self._best([(lo, a * hi) for a in factors] + [(lo, self.hi.clamp(min=0.0))])
        return self._best([(a * lo, hi) for a in factors] + [(self.lo.clamp(max=0.0), hi)])


@OBSERVERS.register("kl")
class KLObserver(_SampleObserver):
    """TensorRT's entropy calibration: the clipping threshold whose quantized histogram is closest (KL divergence) to
    the observed one, on a `bins`-bin histogram of the nonzero |x| (of x when nothing is negative)."""

    def __init__(self, spec: QuantSpec, bins: int = 2048, **kwargs) -> None:
        self.bins = bins
        super().__init__(spec, **kwargs)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = self.spec.qmax - self.spec.qmin + 1
        lo, hi = [], []
        for row, rmin, rmax in zip(self.sample, self.lo.tolist(), self.hi.tolist()):
            one_sided = rmin >= 0 and not self.spec.symmetric  # all of the unsigned grid covers [0, threshold]
            values = row if one_sided else row.abs()
            # Exact zeros (half of every ReLU output) are exact on any grid; left in bin 0 their spike dominates the
            # divergence and drags the threshold far too low.
            values = values[values != 0]
            top = max(abs(rmin), abs(rmax))
            if top == 0:
                lo.append(0.0), hi.append(0.0)
                continue
            hist = torch.histc(values, self.bins, 0.0, top).double().numpy()
            t = top * _kl_threshold_bin(hist, levels if one_sided else levels // 2) / self.bins
            lo.append(max(rmin, -t)), hi.append(min(rmax, t))
        return torch.tensor(lo), torch.tensor(hi)


def _kl_threshold_bin(hist: np.ndarray, levels: int, max_candidates: int = 256) -> int:
    """Number of histogram bins to keep: argmin over i of KL(P_i || Q_i), where P_i is the first i bins with the
    tail folded into the last one, and Q_i is the first i bins merged into `levels` bins and spread back over their
    non-empty members."""
    n = len(hist)
    if levels >= n:
        return n
    stride = max(1, math.ceil((n - levels) / max_candidates))
    candidates = list(range(levels, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)
    best_i, best_kl = n, math.inf
    for i in candidates:
        kept = hist[:i]
        p = kept.copy()
        p[-1] += hist[i:].sum()
        nonzero = kept != 0
        starts = (np.arange(levels) * i) // levels
        sums = np.add.reduceat(kept, starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(means, np.diff(np.append(starts, i))) * nonzero
        if p.sum() == 0 or q.sum() == 0:
            continue
        # An empty bin of Q under mass of P would make the divergence infinite: give empty bins a little mass, as
        # TensorRT does.
        p, q = p / p.sum(), q / q.sum()
        q = np.where(q == 0, 1e-4, q)
        q /= q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i
