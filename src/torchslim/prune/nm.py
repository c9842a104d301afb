"""N:M semi-structured storage: per group of M consecutive weights, the N kept values and their positions.

The layout (per weight, rows = output channels, each row the flattened ``in·kh·kw`` reduction dimension as
`nm_masks` groups it):

* ``values``: (groups, N), the kept values of each group in position order, in the weight's dtype — or fp16 when
  every kept value survives fp16 unchanged (then the round trip is still exact and values cost half);
* ``indices``: each kept value's position in its group as a ⌈log₂ M⌉-bit integer, bit-packed little-endian into
  bytes, group after group (first index in the lowest bits). For 2:4 that is 2 bits per kept value, one nibble per
  group — the per-value metadata size of the 2:4 format NVIDIA's sparse tensor cores read (their kernels also
  reorder the metadata words for their tile layout, which is a runtime concern, not a storage one).

Bytes = N·G·value_bytes + ⌈N·G·⌈log₂ M⌉ / 8⌉ for G groups (:func:`nm_bytes`). Nothing is pickled: the fields are
plain tensors plus a shape, a dtype name and two integers.

Example:
    >>> w = torch.tensor([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 4.0]])
    >>> packed = pack_nm(w, 2, 4)
    >>> packed.values.tolist(), packed.indices.tolist()     # positions (1, 3) and (0, 3): 0b11_01, 0b11_00
    ([[1.5, -2.0], [3.0, 4.0]], [205])
    >>> torch.equal(unpack_nm(packed), w), packed.nbytes, nm_bytes(8, 2, 4, value_bytes=2)
    (True, 9, 9)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.errors import TorchslimError

_HALF_SOURCES = (torch.float32, torch.float64)  # dtypes whose values may fit fp16 exactly (saving bytes)


def index_bits(m: int) -> int:
    """⌈log₂ m⌉: bits that name one position among `m` (2 for m = 4, 3 for m = 8).

    Example:
        >>> [index_bits(m) for m in (2, 4, 5, 8)]
        [1, 2, 3, 3]
    """
    return max(1, (m - 1).bit_length())


def _check_nm(n: int, m: int) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, m)) or not 0 < n < m:
        raise TorchslimError(f"N:M = {n}:{m}: need whole numbers with 0 < N < M (e.g. 2:4)")


@dataclass(frozen=True)
class NMPacked:
    """One weight in N:M storage (see the module docstring for the layout)."""

    values: torch.Tensor  # (groups, n), dtype == value_dtype
    indices: torch.Tensor  # uint8, ⌈groups·n·bits / 8⌉ bytes
    shape: tuple[int, ...]  # the dense weight's shape
    dtype: torch.dtype  # the dense weight's dtype (what unpack_nm returns)
    n: int
    m: int

    @property
    def bits(self) -> int:
        return index_bits(self.m)

    @property
    def nbytes(self) -> int:
        """Bytes of values + packed indices (the shape and N:M are a few bytes of header, left out)."""
        return self.values.numel() * self.values.element_size() + self.indices.numel()

    @property
    def dense_bytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * torch.empty((), dtype=self.dtype).element_size()


def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1) if weight.dim() >= 2 else weight.reshape(1, -1)


def pack_nm(weight: torch.Tensor, n: int, m: int, *, half_when_exact: bool = True) -> NMPacked:
    """Pack a weight that has at most `n` nonzeros in every group of `m` consecutive inputs.

    A group with fewer than `n` nonzeros stores zeros at its lowest free positions, so every group holds exactly
    `n` entries (a fixed-size layout, as the hardware format has). A group with more than `n` nonzeros is an error
    naming it: prune with ``pattern: "N:M"`` first.

    Example:
        >>> packed = pack_nm(torch.tensor([[1.0, 0.0, 0.0, 2.0]]), 2, 4)
        >>> packed.values.dtype, packed.nbytes   # 1.0 and 2.0 are exact in fp16
        (torch.float16, 5)
    """
    _check_nm(n, m)
    w = weight.detach()
    rows = _rows(w)
    if rows.shape[1] % m:
        raise TorchslimError(f"pack {n}:{m}: the weight of shape {tuple(w.shape)} has {rows.shape[1]} inputs per "
                             f"output, not a multiple of {m}")
    groups = rows.reshape(-1, m)
    nonzero = groups != 0
    counts = nonzero.sum(1)
    over = (counts > n).nonzero()
    if len(over):
        g = int(over[0])
        row, col = divmod(g * m, rows.shape[1])
        raise TorchslimError(f"weight does not satisfy {n}:{m}: {int((counts > n).sum())} group(s) have more than "
                             f"{n} nonzeros, the first at row {row}, inputs {col}..{col + m - 1} "
                             f"({int(counts[g])} nonzeros); prune with pattern '{n}:{m}' first")
    # Nonzeros first, then zeros, each in position order (a stable sort); keep n; store them in position order.
    positions = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :n].sort(dim=1).values
    values = groups.gather(1, positions)
    if half_when_exact and w.dtype in _HALF_SOURCES and torch.equal(values.half().to(w.dtype), values):
        values = values.half()
    return NMPacked(values.contiguous(), _pack_bits(positions.flatten(), index_bits(m)), tuple(w.shape), w.dtype, n, m)


def unpack_nm(packed: NMPacked) -> torch.Tensor:
    """The dense weight back, in its own dtype and shape: exactly the tensor that was packed.

    Example:
        >>> w = torch.tensor([[0.0, 0.1, 0.2, 0.0]])
        >>> torch.equal(unpack_nm(pack_nm(w, 2, 4)), w)
        True
    """
    count = packed.values.numel()
    positions = _unpack_bits(packed.indices, packed.bits, count).view(-1, packed.n)
    dense = torch.zeros(positions.shape[0], packed.m, dtype=packed.dtype, device=packed.values.device)
    dense.scatter_(1, positions.to(dense.device), packed.values.to(packed.dtype))
    return dense.reshape(packed.shape)


def nm_bytes(numel: int, n: int, m: int, value_bytes: int = 4) -> int:
    """Bytes of N:M storage for a weight of `numel` elements: kept·value_bytes + ⌈kept·⌈log₂ m⌉ / 8⌉ with
    kept = numel·n/m.

    Example:
        >>> nm_bytes(4096 * 4096, 2, 4, value_bytes=2)   # fp16 2:4: 9/16 of the dense 32 MiB
        18874368
    """
    _check_nm(n, m)
    if numel % m:
        raise TorchslimError(f"nm_bytes: {numel} elements are not a whole number of groups of {m}")
    kept = numel // m * n
    return kept * value_bytes + -(-kept * index_bits(m) // 8)


def nm_storage(layers: Mapping[str, nn.Module], n: int, m: int) -> dict:
    """Packed vs dense weight bytes of each layer and in total, each layer checked to unpack exactly.

    Returns ``{"pattern", "dense_bytes", "packed_bytes", "ratio" (dense / packed), "layers": {name: {"dense_bytes",
    "packed_bytes", "value_dtype"}}}``; weights only (biases stay dense either way).

    Example:
        >>> nm_storage(prunable_layers(model, cfg.exclude), 2, 4)["ratio"]     # doctest: +SKIP
        1.777...
    """
    rows = {}
    for name, layer in layers.items():
        packed = pack_nm(layer.weight, n, m)
        if not torch.equal(unpack_nm(packed), layer.weight.detach()):  # a bug, never a user error
            raise AssertionError(f"N:M round trip of '{name}' is not exact")
        rows[name] = {"dense_bytes": packed.dense_bytes, "packed_bytes": packed.nbytes,
                      "value_dtype": str(packed.values.dtype).removeprefix("torch.")}
    dense = sum(r["dense_bytes"] for r in rows.values())
    packed_total = sum(r["packed_bytes"] for r in rows.values())
    return {"pattern": f"{n}:{m}", "dense_bytes": dense, "packed_bytes": packed_total,
            "ratio": dense / packed_total if packed_total else None, "layers": rows}


def _pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Little-endian bit stream of `bits`-bit unsigned integers, as bytes (uint8)."""
    v = values.to(torch.int64).cpu()
    stream = ((v[:, None] >> torch.arange(bits)) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)])
    return (stream.view(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)


def _unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    stream = ((data.cpu().to(torch.int64)[:, None] >> torch.arange(8)) & 1).flatten()[: count * bits]
    return (stream.view(count, bits) << torch.arange(bits)).sum(1)


__all__ = ["NMPacked", "index_bits", "nm_bytes", "nm_storage", "pack_nm", "unpack_nm"]
