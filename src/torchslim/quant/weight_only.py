"""Weight-only quantization of a language model's Linear layers (RTN, GPTQ, AWQ) and SmoothQuant W8A8.

    result = quantize_weights_(model, calibration, WeightOnlyConfig(method="gptq", bits=4, group_size=128))
    result.layers["blocks.0.mlp.fc1"].codes          # uint8 codes, scales and zero points: what an exporter packs

The grid: each row of a weight W (out, in) is cut into groups of `group_size` consecutive inputs (``-1``: one
group per row, per channel); each group has a scale and a zero point, asymmetric by default:
code = clamp(round(w / scale) + zero, 0, 2^bits − 1), w ≈ scale · (code − zero), with the range widened to include 0
so that 0 (a pruned weight) stays exactly 0 — the convention of GPTQ's quantizer and ONNX Runtime's MatMulNBits.
The model keeps plain float weights equal to the dequantized codes ("fake quant"), so it runs in PyTorch (and its
perplexity can be measured) and an exporter can replace each weight by its codes exactly (`nbits_onnx`).

The methods (registered in WEIGHT_ONLY_METHODS):

* ``rtn`` — round to nearest on that grid; no data.
* ``gptq`` (Frantar et al. 2022) — from the layer Hessian H = 2XᵀX (dampened by ``percdamp`` · mean diag H),
  columns are quantized one at a time and each one's error is spread over the columns not yet quantized through the
  Cholesky factor of H⁻¹, lazily in blocks of ``blocksize`` columns. ``act_order`` visits the columns by decreasing
  diag H (the inputs with the most energy first). Groups are always the original consecutive columns: a group's
  scale and zero point are fixed when its first column is reached, from the current (error-compensated) values of
  all its columns, so the codes need no reordering index (``g_idx``) at run time. Weights that are exactly zero
  (a pruned model's) stay zero: the error spread onto them is dropped, as SparseGPT's joint quantization does.
* ``awq`` (Lin et al. 2023) — per input channel scales s = mean|X|^α (normalized to √(max·min) = 1), α searched over
  ``awq_grid`` points in [0, 1) for the lowest output error of the quantized layers on calibration tokens; the
  weights are multiplied by s before quantization and the input divided by s. Layers that read one input tensor
  (q, k, v after a norm) share s, the error summed over them. Then (``awq_clip``) each group's range is shrunk to
  the ratio in {1, 0.95, ..., 0.5} that gives the lowest output error of that group.
* ``smoothquant`` (Xiao et al. 2022) — W8A8: s_j = max|X_j|^α / max|W_j|^(1−α) moves activation outliers into
  the weights, then int8 weights (symmetric per output channel by default) and int8 activations fake-quantized per
  token (dynamic) or per tensor (a static scale from the calibration maximum).

Where the input scaling goes (AWQ, SmoothQuant): the layers are grouped by the tensor they read, found by running
one calibration batch with hooks. When that tensor is the output of a norm (LayerNorm, RMSNorm: any module whose
class name ends in "Norm" with a weight per channel) or of another Linear, 1/s is folded into the norm's weight and
bias, or into that Linear's output rows; the fold is then checked by running the block (or model) again — the
output must be unchanged — and undone otherwise. AWQ keeps an unfoldable scaling as an explicit multiply
(a `ScaledInputLinear` in place of the layer); SmoothQuant, whose point is to cost nothing at run time, smooths only
the foldable groups, as in the paper (e.g. q/k/v and the first MLP layer, not the attention output or last MLP
layer). The output error AWQ minimizes is that of the layers in the group (the paper measures the attention or MLP
module's output).

Calibration is sequential over the transformer blocks (block k sees the outputs of the quantized blocks before it),
as `torchslim.prune.llm` does it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.prune.llm import (
    DEFAULT_EXCLUDE,
    CalibrationUnit,
    InputStats,
    _kill_dead,
    calibration_list,
    damped_inverse_factor,
    layerwise,
    resolve_config,
    target_linears,
)
from torchslim.registry import Registry

BITS = (2, 3, 4, 8)
METHOD_DEFAULTS = {  # bits, group_size, symmetric when left out
    "rtn": (4, 128, False), "gptq": (4, 128, False), "awq": (4, 128, False), "smoothquant": (8, -1, True),
}
AWQ_CLIP_RATIOS = [1 - i / 20 for i in range(11)]  # 1.0, 0.95, ..., 0.5: the shrink of a group's range tried


# ------------------------------------------------------------------------------------------------------- the config
class WeightOnlyConfig(Config):
    """Quantization of a language model's Linear weights (and for smoothquant its activations); see the module doc.

    `bits` in {2, 3, 4, 8}, `group_size` a divisor of every layer's input width or -1 (per channel), `symmetric`
    (zero point fixed at 2^(bits−1)); left out they follow the method (4 bits, groups of 128, asymmetric; smoothquant
    8 bits per channel symmetric). GPTQ: `act_order`, `percdamp`, `blocksize`. AWQ: `awq_grid` values of α,
    `awq_clip`. SmoothQuant: `alpha` (migration strength), `activation` granularity. `sample_tokens` calibration
    rows kept per layer for the AWQ searches. `exclude`, `sequential`, `blocks`, `calibration_batches` as in
    `LLMPruneConfig`.

    Example:
        >>> cfg = WeightOnlyConfig(method="gptq", group_size=32, act_order=True)
        >>> cfg.bits, cfg.group_size, cfg.symmetric
        (4, 32, False)
    """

    method: str = "rtn"
    bits: int | None = None
    group_size: int | None = Field(None, description="inputs per group; -1 for one group per output channel")
    symmetric: bool | None = None
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    sequential: bool | None = None
    blocks: str | None = None
    calibration_batches: int | None = Field(None, ge=1)
    act_order: bool = False
    percdamp: float = Field(0.01, ge=0, le=10)
    blocksize: int = Field(128, ge=1, le=1_000_000)
    awq_grid: int = Field(20, ge=1, le=1000)
    awq_clip: bool = True
    sample_tokens: int = Field(4096, ge=16, le=10_000_000)
    alpha: float = Field(0.5, ge=0, le=1)
    activation: Literal["per_token", "per_tensor"] = "per_token"

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method") or "rtn"
        if method not in WEIGHT_ONLY_METHODS:
            from torchslim.errors import unknown_choice

            raise ValueError(str(unknown_choice("weight quantization method", method, WEIGHT_ONLY_METHODS.names())))
        for key, default in zip(("bits", "group_size", "symmetric"), METHOD_DEFAULTS.get(method, (4, 128, False))):
            if data.get(key) is None:
                data[key] = default
        return data

    @field_validator("bits")
    @classmethod
    def _bits(cls, bits: int | None) -> int | None:
        if bits is not None and bits not in BITS:
            raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits}")
        return bits

    @field_validator("group_size")
    @classmethod
    def _group(cls, size: int | None) -> int | None:
        if size is not None and size != -1 and size < 1:
            raise ValueError(f"group_size must be -1 (per channel) or a positive number of inputs, got {size}")
        return size


# ---------------------------------------------------------------------------------------------- codes and the grid
@dataclass
class QuantizedWeight:
    """One Linear weight on a group-wise integer grid: W ≈ scales · (codes − zeros), group by group.

    codes: uint8 (out, in), in the layer's own column order; scales: float32 (out, groups); zeros: uint8
    (out, groups), the code of the value 0; group g holds inputs g·group_size ... (g+1)·group_size − 1.

    Example:
        >>> q = quantize_groupwise(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), bits=2, group_size=4)
        >>> q.codes.tolist(), q.dequantize().tolist()
        ([[0, 1, 2, 3]], [[0.0, 1.0, 2.0, 3.0]])
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) the codes stand for."""
        rows, cols = self.codes.shape
        codes = self.codes.float().reshape(rows, -1, self.group_size)
        return ((codes - self.zeros.float()[..., None]) * self.scales[..., None]).reshape(rows, cols)

    @property
    def nbytes(self) -> int:
        """Tightly packed codes, fp16 scales and packed zero points."""
        return math.ceil(self.codes.numel() * self.bits / 8) + 2 * self.scales.numel() + \
            math.ceil(self.zeros.numel() * self.bits / 8)


def _grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of w (..., n) over its last dimension, the range widened to include 0."""
    maxq = 2 ** bits - 1
    if symmetric:
        scale = w.abs().amax(-1) / (2 ** (bits - 1) - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    lo = w.amin(-1).clamp(max=0)
    hi = w.amax(-1).clamp(min=0)
    scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale, zero point 0
    return scale, torch.round(-lo / scale).clamp(0, maxq)


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def _fake(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize w (out, in) group-wise (float)."""
    rows, cols = w.shape
    g = w.reshape(rows, -1, group_size if group_size > 0 else cols)
    scale, zero = _grid(g, bits, symmetric)
    scale, zero = scale[..., None], zero[..., None]
    return ((_codes(g, scale, zero, bits) - zero) * scale).reshape(rows, cols)


def quantize_groupwise(weight: torch.Tensor, bits: int = 4, group_size: int = 128, *,
                       symmetric: bool = False) -> QuantizedWeight:
    """Round-to-nearest of a (out, in) weight on the group-wise grid (the ``rtn`` method on one tensor).

    Example:
        >>> q = quantize_groupwise(torch.randn(8, 64), bits=4, group_size=32)
        >>> q.codes.shape, q.scales.shape, int(q.codes.max()) <= 15
        (torch.Size([8, 64]), torch.Size([8, 2]), True)
    """
    _check_bits(bits)
    w = weight.detach().float()
    rows, cols = w.shape
    size = cols if group_size == -1 else group_size
    if size <= 0 or cols % size:
        raise TorchslimError(f"group_size {group_size} does not divide the input width {cols}; valid group sizes: "
                             f"{_valid_groups(cols)}")
    groups = w.reshape(rows, -1, size)
    scale, zero = _grid(groups, bits, symmetric)
    codes = _codes(groups, scale[..., None], zero[..., None], bits).reshape(rows, cols)
    return QuantizedWeight(codes.to(torch.uint8), scale.float(), zero.to(torch.uint8), bits, size)


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise TorchslimError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits}")


def _valid_groups(width: int) -> str:
    divisors = [d for d in range(8, width + 1) if width % d == 0][:10]
    return "-1 (per channel)" + "".join(f", {d}" for d in divisors)


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128, *,
                         symmetric: bool = False, act_order: bool = False, percdamp: float = 0.01,
                         blocksize: int = 128) -> QuantizedWeight:
    """GPTQ on one weight (out, in) with the Hessian of its inputs (in, in), e.g. 2XᵀX/tokens.

    Example:
        >>> x = torch.randn(256, 32); w = torch.randn(8, 32)
        >>> q = gptq_quantize_weight(w, 2 * x.T @ x / 256, bits=4, group_size=16, act_order=True)
        >>> q.scales.shape
        torch.Size([8, 2])
    """
    _check_bits(bits)
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    rows, cols = w.shape
    size = cols if group_size == -1 else group_size
    if size <= 0 or cols % size:
        raise TorchslimError(f"group_size {group_size} does not divide the input width {cols}; valid group sizes: "
                             f"{_valid_groups(cols)}")
    _kill_dead(w, h)
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    keep = w != 0  # weights already zero (pruned) stay zero: the error spread onto them is dropped
    u = damped_inverse_factor(h, percdamp, "gptq")
    groups = cols // size
    scales = torch.ones(rows, groups)
    zeros = torch.zeros(rows, groups)
    ready = torch.zeros(groups, dtype=torch.bool)
    codes = torch.zeros(rows, cols)
    group_of = (perm // size).tolist()  # the group of the column at each visiting position
    position = torch.argsort(perm)  # the visiting position of each original column
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            g = group_of[i1 + i]
            if not ready[g]:  # the group's first column: its grid from the current values of all its columns
                at = position[g * size:(g + 1) * size]
                inside, later = at[at < i2], at[at >= i2]
                current = torch.cat([w1[:, inside - i1], w[:, later] - err1[:, :i] @ u[i1:i1 + i, later]], dim=1)
                current = current * torch.cat([keep[:, inside], keep[:, later]], dim=1)
                scales[:, g], zeros[:, g] = _grid(current, bits, symmetric)
                ready[g] = True
            col = w1[:, i] * keep[:, i1 + i]
            q = _codes(col, scales[:, g], zeros[:, g], bits)
            deq = (q - zeros[:, g]) * scales[:, g]
            codes[:, perm[i1 + i]] = q
            err = (col - deq) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return QuantizedWeight(codes.to(torch.uint8), scales, zeros.to(torch.uint8), bits, size)


# --------------------------------------------------------------------------------------- layers with scaled inputs
class ScaledInputLinear(nn.Linear):
    """A Linear whose input is multiplied per channel by `input_scale` (AWQ's or SmoothQuant's 1/s, when it could
    not be folded into the op before) and, for W8A8, fake-quantized to signed int8 — per token (dynamic) or per
    tensor (the static `act_scale`) — before the matmul.

    Example:
        >>> layer = ScaledInputLinear.from_linear(nn.Linear(4, 2), input_scale=torch.full((4,), 0.5))
        >>> layer(torch.ones(1, 4)).shape
        torch.Size([1, 2])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, act_bits: int | None = None,
                 act_granularity: str = "per_token") -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.act_bits = act_bits
        self.act_granularity = act_granularity
        self.register_buffer("input_scale", None)
        self.register_buffer("act_scale", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, input_scale: torch.Tensor | None = None, act_bits: int | None = None,
                    act_granularity: str = "per_token") -> ScaledInputLinear:
        if isinstance(linear, ScaledInputLinear):  # already wrapped: combine
            new = linear
            if input_scale is not None:
                new.input_scale = input_scale if new.input_scale is None else new.input_scale * input_scale
            new.act_bits = act_bits if act_bits is not None else new.act_bits
            new.act_granularity = act_granularity
            return new
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, act_bits=act_bits,
                  act_granularity=act_granularity).to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        if input_scale is not None:
            new.input_scale = input_scale.to(linear.weight.device, linear.weight.dtype)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.act_bits:
            qmax = 2 ** (self.act_bits - 1) - 1
            if self.act_granularity == "per_tensor" and self.act_scale is not None:
                scale = self.act_scale
            else:
                scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
            x = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
        return F.linear(x, self.weight, self.bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# --------------------------------------------------------------------------- groups of layers reading one tensor
def _norm_like(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")) and \
        isinstance(w, torch.Tensor) and w.dim() == 1


def _key(t) -> tuple | None:
    return (t.data_ptr(), t.numel(), t.shape[-1]) if isinstance(t, torch.Tensor) and t.dim() else None


@dataclass
class _Group:
    layers: list[str]  # full names of the target layers that read this tensor
    producer: str | None = None  # full name of the norm or Linear that made it, if any
    others: list[str] = field(default_factory=list)  # other Linears reading the tensor (scaled, not quantized)


def _input_groups(unit: CalibrationUnit, model: nn.Module) -> tuple[list[_Group], torch.Tensor]:
    """Group the unit's target layers by the tensor they read (one probe call), with its producer; also returns the
    unit's output on that call, the reference a fold must reproduce."""
    produced: dict[tuple, tuple[str, nn.Module, torch.Tensor]] = {}
    reads: dict[str, tuple] = {}
    alive: list[torch.Tensor] = []  # kept until the end of the call, so that no address is reused by another tensor
    prefix = unit.prefix + "." if unit.prefix else ""
    hooks = []

    def made(name, module, args, out):
        if (k := _key(out)) is not None:
            produced[k] = (name, module, out)
            alive.append(out)

    def read(name, module, args):
        if args and (k := _key(args[0])) is not None:
            reads[name] = k
            alive.append(args[0])

    for n, m in unit.module.named_modules():
        full = prefix + n
        if _norm_like(m) or isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lambda mod, a, o, full=full: made(full, mod, a, o)))
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(lambda mod, a, full=full: read(full, mod, a)))
    try:
        reference = _output(unit)
    finally:
        for h in hooks:
            h.remove()
    by_key: dict[tuple, _Group] = {}
    for name in unit.layers:
        k = reads.get(name)
        if k is None:  # never called on the probe batch: a group of its own, no producer
            by_key[("unread", name)] = _Group([name])
            continue
        group = by_key.setdefault(k, _Group([]))
        group.layers.append(name)
        if k in produced and produced[k][0] not in group.layers:
            group.producer = produced[k][0]
    for name, k in reads.items():
        if name not in unit.layers and k in by_key:
            by_key[k].others.append(name)
    del alive
    return list(by_key.values()), reference


def _output(unit: CalibrationUnit) -> torch.Tensor:
    from torchslim.prune.llm import _first_tensor

    return _first_tensor(unit.run(unit.calls[0])).detach().clone()


def _fold(group: _Group, s: torch.Tensor, unit: CalibrationUnit, model: nn.Module, reference: torch.Tensor) -> bool:
    """Fold 1/s into the group's producer and s into its layers' columns; keep it only if the unit's output is
    unchanged (anything else reading the producer's output would change). Returns whether it was kept."""
    p = None if group.producer is None else model.get_submodule(group.producer)  # by name: it may have been rewrapped
    if p is None or not (_norm_like(p) and p.weight.numel() == s.numel() or
                         isinstance(p, nn.Linear) and p.out_features == s.numel()):
        return False
    readers = [model.get_submodule(n) for n in group.layers + group.others]
    tensors = _fold_tensors(p, readers)  # held: the ids of fresh `.data` views would not identify them again
    saved = [t.detach().clone() for t in tensors]
    with torch.no_grad():
        _scale_producer(p, 1 / s)
        for layer in readers:
            layer.weight.mul_(s.to(layer.weight.dtype)[None, :])
        out = _output(unit)
    tol = 1e-4 * reference.abs().max().item() + 1e-6
    if out.shape == reference.shape and torch.allclose(out.float(), reference.float(), rtol=1e-3, atol=tol):
        return True
    with torch.no_grad():
        for t, before in zip(tensors, saved):
            t.copy_(before)
    return False


def _fold_tensors(producer: nn.Module, readers: list[nn.Module]) -> list[torch.Tensor]:
    out = [producer.weight.data] + ([producer.bias.data] if getattr(producer, "bias", None) is not None else [])
    return out + [r.weight.data for r in readers]


def _scale_producer(p: nn.Module, factor: torch.Tensor) -> None:
    factor = factor.to(p.weight.dtype)
    if isinstance(p, nn.Linear):
        p.weight.mul_(factor[:, None])
    else:
        p.weight.mul_(factor)
    if getattr(p, "bias", None) is not None:
        p.bias.mul_(factor)


# ----------------------------------------------------------------------------------------------------- the methods
@dataclass
class WeightOnlyResult:
    """What `quantize_weights_` did: the (same, modified) model and each layer's codes; `scales` holds the input
    scalings AWQ/SmoothQuant applied (layer → s) and `folded` the layers whose 1/s went into the op before them."""

    model: nn.Module
    method: str
    bits: int
    group_size: int
    layers: dict[str, QuantizedWeight] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)  # layer → the norm or Linear its 1/s was folded into
    sequential: bool = False
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes, scales and zero points of all quantized layers."""
        return sum(q.nbytes for q in self.layers.values())


Method = Callable[[nn.Module, list | None, dict[str, nn.Linear], WeightOnlyConfig, WeightOnlyResult], None]
WEIGHT_ONLY_METHODS: Registry[Method] = Registry("weight quantization method")


def _set_weight(layer: nn.Linear, q: QuantizedWeight) -> None:
    with torch.no_grad():
        layer.weight.copy_(q.dequantize().to(layer.weight.dtype))


@WEIGHT_ONLY_METHODS.register("rtn", help="round to nearest, group-wise; no calibration data")
def _rtn(model, batches, layers, cfg, result) -> None:
    for name, layer in layers.items():
        result.layers[name] = q = quantize_groupwise(layer.weight, cfg.bits, cfg.group_size, symmetric=cfg.symmetric)
        _set_weight(layer, q)


@WEIGHT_ONLY_METHODS.register("gptq", help="column-by-column with error compensation from the layer Hessian "
                                           "(Frantar et al. 2022)")
def _gptq(model, batches, layers, cfg, result) -> None:
    for unit in _units(model, batches, layers, cfg, result):
        stats = {name: InputStats(layer.in_features, hessian=True) for name, layer in unit.layers.items()}
        unit.collect(stats)
        for name in list(stats):
            h = stats.pop(name).hessian()
            layer = unit.layers[name]
            result.layers[name] = q = gptq_quantize_weight(
                layer.weight, h, cfg.bits, cfg.group_size, symmetric=cfg.symmetric, act_order=cfg.act_order,
                percdamp=cfg.percdamp, blocksize=cfg.blocksize)
            _set_weight(layer, q)


def _units(model, batches, layers, cfg, result):
    for unit in layerwise(model, batches, layers, sequential=cfg.sequential, blocks=cfg.blocks, what=cfg.method):
        result.sequential = result.sequential or unit.name != "model"
        yield unit


def awq_search_scales(weights: list[torch.Tensor], x: torch.Tensor, x_absmean: torch.Tensor, bits: int = 4,
                      group_size: int = 128, *, symmetric: bool = False, grid: int = 20) -> tuple[torch.Tensor, float]:
    """AWQ's search: s = x_absmean^α / √(max·min) for α in {0, 1/grid, ...}, the one with the lowest squared output
    error Σ‖x Wᵀ − (x/s) Q(W·s)ᵀ‖² over `weights` (all reading the input sampled in `x`, (tokens, in)).
    Returns (s, α). α = 0 is plain round-to-nearest, so the error found is never above RTN's on `x`.

    Example:
        >>> x = torch.randn(64, 32); x[:, 0] *= 30
        >>> s, alpha = awq_search_scales([torch.randn(8, 32)], x, x.abs().mean(0), group_size=16)
        >>> s.shape
        torch.Size([32])
    """
    x = x.float()
    refs = [x @ w.float().T for w in weights]
    best = (math.inf, torch.ones_like(x_absmean), 0.0)
    for step in range(grid):
        alpha = step / grid
        s = x_absmean.float().pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = sum((x @ (_fake(w.float() * s[None, :], bits, group_size, symmetric) / s[None, :]).T - r).pow(2).sum()
                  .item() for w, r in zip(weights, refs))
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def awq_clip_(weight: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = 128, *,
              symmetric: bool = False, ratios=AWQ_CLIP_RATIOS) -> torch.Tensor:
    """Shrink each group's range (per row) to the ratio with the lowest output error of that group on `x`
    (tokens, in), in place; returns the chosen ratio per (row, group).

    Example:
        >>> w = torch.randn(4, 32); ratio = awq_clip_(w, torch.randn(50, 32), group_size=16); ratio.shape
        torch.Size([4, 2])
    """
    rows, cols = weight.shape
    size = cols if group_size == -1 else group_size
    chosen = torch.ones(rows, cols // size)
    for g in range(cols // size):
        sl = slice(g * size, (g + 1) * size)
        wg = weight[:, sl].float()
        xg = x[:, sl].float()
        ref = xg @ wg.T  # (tokens, rows): this group's part of the output
        lo, hi = wg.amin(1, keepdim=True).clamp(max=0), wg.amax(1, keepdim=True).clamp(min=0)
        best = torch.full((rows,), math.inf)
        for r in ratios:
            clipped = torch.maximum(torch.minimum(wg, hi * r), lo * r)
            err = (xg @ _fake(clipped, bits, -1, symmetric).T - ref).pow(2).mean(0)
            better = err < best
            best = torch.where(better, err, best)
            chosen[better, g] = r
        r = chosen[:, g:g + 1]
        with torch.no_grad():
            weight[:, sl] = torch.maximum(torch.minimum(wg, hi * r), lo * r).to(weight.dtype)
    return chosen


@WEIGHT_ONLY_METHODS.register("awq", help="activation-aware per-channel scales searched for the lowest output "
                                          "error, then range clipping (Lin et al. 2023)")
def _awq(model, batches, layers, cfg, result) -> None:
    per_call = max(1, math.ceil(cfg.sample_tokens / max(len(batches), 1)))
    for unit in _units(model, batches, layers, cfg, result):
        groups, reference = _input_groups(unit, model)
        stats = {name: InputStats(layer.in_features, absmean=True, sample_per_call=per_call)
                 for name, layer in unit.layers.items()}
        unit.collect(stats)
        samples = {}
        for group in groups:
            first = stats[group.layers[0]]
            x = first.samples()
            weights = [unit.layers[n].weight.detach() for n in group.layers]
            s, _ = awq_search_scales(weights, x, first.absmean(), cfg.bits, cfg.group_size,
                                     symmetric=cfg.symmetric, grid=cfg.awq_grid)
            if _fold(group, s, unit, model, reference):
                for n in group.layers:
                    result.folded[n] = group.producer
            else:
                for n in group.layers:
                    layer = model.get_submodule(n)
                    with torch.no_grad():
                        layer.weight.mul_(s.to(layer.weight.dtype)[None, :])
                    _replace(model, n, ScaledInputLinear.from_linear(layer, input_scale=1 / s))
            for n in group.layers:
                result.scales[n] = s
                samples[n] = x / s[None, :]
        for name in unit.layers:
            layer = model.get_submodule(name)
            if cfg.awq_clip:
                awq_clip_(layer.weight.data, samples[name], cfg.bits, cfg.group_size, symmetric=cfg.symmetric)
            result.layers[name] = q = quantize_groupwise(layer.weight, cfg.bits, cfg.group_size,
                                                         symmetric=cfg.symmetric)
            _set_weight(layer, q)


def _smooth_unit(unit: CalibrationUnit, model: nn.Module, alpha: float,
                 result: WeightOnlyResult) -> dict[str, InputStats]:
    """SmoothQuant's migration in one unit: s_j = max|X_j|^α / max|W_j|^(1−α), folded where the fold checks out.
    Returns each layer's input statistics, max|X| already divided by s."""
    groups, reference = _input_groups(unit, model)
    stats = {name: InputStats(layer.in_features, absmax=True) for name, layer in unit.layers.items()}
    unit.collect(stats)
    for group in groups:
        act = stats[group.layers[0]].abs_max
        w_max = torch.stack([model.get_submodule(n).weight.detach().abs().amax(0).float()
                             for n in group.layers + group.others]).amax(0)
        s = (act.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
        if _fold(group, s, unit, model, reference):
            for n in group.layers:
                result.scales[n] = s
                result.folded[n] = group.producer
                stats[n].abs_max = stats[n].abs_max / s
    return stats


@WEIGHT_ONLY_METHODS.register("smoothquant", help="migrate activation outliers into the weights, then int8 weights "
                                                  "and int8 activations (Xiao et al. 2022)")
def _smoothquant(model, batches, layers, cfg, result) -> None:
    for unit in _units(model, batches, layers, cfg, result):
        stats = _smooth_unit(unit, model, cfg.alpha, result)
        for name in unit.layers:
            layer = model.get_submodule(name)
            result.layers[name] = q = quantize_groupwise(layer.weight, cfg.bits, cfg.group_size,
                                                         symmetric=cfg.symmetric)
            _set_weight(layer, q)
            new = ScaledInputLinear.from_linear(layer, act_bits=8, act_granularity=cfg.activation)
            if cfg.activation == "per_tensor":
                new.act_scale = (stats[name].abs_max.max().clamp(min=1e-8) / 127).to(layer.weight.dtype)
            _replace(model, name, new)


# ----------------------------------------------------------------------------------------------- the public surface
def _check_groups(layers: Mapping[str, nn.Linear], cfg: WeightOnlyConfig) -> None:
    for name, layer in layers.items():
        if cfg.group_size != -1 and layer.in_features % cfg.group_size:
            raise TorchslimError(f"group_size {cfg.group_size} does not divide the input width {layer.in_features} "
                                 f"of layer '{name}'; valid group sizes: {_valid_groups(layer.in_features)} "
                                 f"(or exclude the layer)")


def quantize_weights_(model: nn.Module, calibration=None, cfg: WeightOnlyConfig | None = None,
                      **options) -> WeightOnlyResult:
    """Quantize the Linear weights of `model` in place with `cfg.method` (rtn, gptq, awq, smoothquant), calibrated
    on `calibration` (a list of batches the model takes; rtn needs none). Keyword `options` override fields of
    `cfg`. The model keeps float weights equal to the dequantized codes; the result holds the codes per layer.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
        >>> result = quantize_weights_(model, [torch.randn(16, 64)], method="gptq", bits=4, group_size=32)
        >>> sorted(result.layers), result.layers["0"].scales.shape
        (['0', '2'], torch.Size([32, 2]))
    """
    if cfg is not None and options.get("method", cfg.method) != cfg.method:
        # Another method than cfg's: the bits, group size and symmetry cfg took from its own method's defaults go.
        defaults = dict(zip(("bits", "group_size", "symmetric"), METHOD_DEFAULTS[cfg.method]))
        given = {k: v for k, v in cfg.model_dump(exclude_unset=True).items() if k not in defaults or v != defaults[k]}
        cfg, options = None, {**given, **options}
    cfg = resolve_config(WeightOnlyConfig, cfg, options, "quantize_weights_")
    start = time.perf_counter()
    layers = target_linears(model, cfg.exclude)
    if not layers:
        raise TorchslimError(f"quantize_weights_: no nn.Linear layer to quantize (exclude: {cfg.exclude})")
    _check_groups(layers, cfg)
    result = WeightOnlyResult(model, cfg.method, cfg.bits, cfg.group_size)
    batches = None if cfg.method == "rtn" else calibration_list(calibration, cfg.calibration_batches, cfg.method)
    WEIGHT_ONLY_METHODS.get(cfg.method)(model, batches, layers, cfg, result)
    result.seconds = time.perf_counter() - start
    return result


def rtn_quantize_(model: nn.Module, cfg: WeightOnlyConfig | None = None, **options) -> WeightOnlyResult:
    """`quantize_weights_` with method rtn (no calibration data).

    Example:
        >>> rtn_quantize_(nn.Sequential(nn.Linear(64, 8)), bits=3, group_size=32).layers["0"].bits
        3
    """
    return quantize_weights_(model, None, cfg, **{**options, "method": "rtn"})


def gptq_quantize_(model: nn.Module, calibration, cfg: WeightOnlyConfig | None = None,
                   **options) -> WeightOnlyResult:
    """`quantize_weights_` with method gptq.

    Example:
        >>> gptq_quantize_(nn.Sequential(nn.Linear(64, 8)), [torch.randn(32, 64)], group_size=32).method
        'gptq'
    """
    return quantize_weights_(model, calibration, cfg, **{**options, "method": "gptq"})


def awq_quantize_(model: nn.Module, calibration, cfg: WeightOnlyConfig | None = None,
                  **options) -> WeightOnlyResult:
    """`quantize_weights_` with method awq.

    Example:
        >>> awq_quantize_(nn.Sequential(nn.Linear(64, 8)), [torch.randn(32, 64)], group_size=32).method
        'awq'
    """
    return quantize_weights_(model, calibration, cfg, **{**options, "method": "awq"})


def smoothquant_(model: nn.Module, calibration, cfg: WeightOnlyConfig | None = None,
                 **options) -> WeightOnlyResult:
    """`quantize_weights_` with method smoothquant: smoothing, int8 weights, int8 activations (fake quant).

    Example:
        >>> model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 8))
        >>> smoothquant_(model, [torch.randn(4, 16)], alpha=0.5).folded
        {'1': '0'}
    """
    return quantize_weights_(model, calibration, cfg, **{**options, "method": "smoothquant"})


def smooth_activations_(model: nn.Module, calibration, alpha: float = 0.5, *, exclude=None,
                        sequential: bool | None = None, blocks: str | None = None,
                        calibration_batches: int | None = None) -> dict[str, torch.Tensor]:
    """SmoothQuant's smoothing alone, in place: per input channel s_j = max|X_j|^α / max|W_j|^(1−α), 1/s folded into
    the norm (or Linear) before each group of layers and s into their weights. The float model computes the same
    function (up to rounding); returns the scales per smoothed layer.

    Example:
        >>> model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 8))
        >>> list(smooth_activations_(model, [torch.randn(4, 16)]))
        ['1']
    """
    cfg = resolve_config(WeightOnlyConfig, None, {
        "method": "smoothquant", "alpha": alpha, "exclude": list(DEFAULT_EXCLUDE if exclude is None else exclude),
        "sequential": sequential, "blocks": blocks, "calibration_batches": calibration_batches},
        "smooth_activations_")
    layers = target_linears(model, cfg.exclude)
    batches = calibration_list(calibration, cfg.calibration_batches, "smooth_activations_")
    result = WeightOnlyResult(model, "smooth", 32, -1)
    for unit in layerwise(model, batches, layers, sequential=cfg.sequential, blocks=cfg.blocks, what="smooth"):
        _smooth_unit(unit, model, cfg.alpha, result)
    return result.scales


__all__ = ["WeightOnlyConfig", "WeightOnlyResult", "QuantizedWeight", "WEIGHT_ONLY_METHODS", "quantize_weights_",
           "rtn_quantize_", "gptq_quantize_", "awq_quantize_", "smoothquant_", "smooth_activations_",
           "quantize_groupwise", "gptq_quantize_weight", "awq_search_scales", "awq_clip_", "ScaledInputLinear"]
