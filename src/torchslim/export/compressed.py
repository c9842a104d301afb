"""Deep Compression's storage format: sparse relative positions + shared-weight indices, Huffman-coded, one file.

This is where a pruned, weight-shared model becomes the small file Han et al. (2016) report (LeNet-300-100: 40×).
It lives in ``export/`` because, like an ONNX file, it is something a user ships; it needs no training code.

File layout (all integers little-endian)::

    b"TSDC" | u32 header length | header (zlib-compressed UTF-8 JSON) | payload

(Version 1 files, which the loader still reads, had the JSON uncompressed; compressing it saves about two thirds of
the header, some 3% of a LeNet file.) The header is ``{"format": "torchslim-deep-compression", "version": 1, "payload_bytes", "payload_crc32",
"tensors": [...]}`` with one entry per state-dict tensor, in state-dict order: ``name``, ``shape``, ``dtype`` and
``encoding``:

* ``"sparse"`` (Conv/Linear weights): ``nnz``; ``gap_bits`` b, the width of the relative positions; ``values``
  (``"codebook"`` or ``"raw"``); ``value_dtype``; and byte ranges ``[offset, length]`` into the payload for
  ``positions`` (a Huffman stream of gap symbols), ``indices`` (a Huffman stream of codebook indices, one per
  nonzero) and ``codebook`` (the centroids) — or ``values`` (the nonzeros themselves) when sharing would not pay.
  The nonzeros' flat positions p_0 < p_1 < ... are coded as gaps g_i = p_i − p_{i−1} (p_{−1} = −1). With
  F = 2^b − 1, a gap is written as ⌊(g−1)/F⌋ filler symbols F (each: skip F positions, no weight — Han's filler
  zeros, minus the wasted index) followed by the symbol (g−1) mod F. b is chosen per layer for the fewest bytes.
* ``"raw"`` (biases, BN statistics, anything else): ``value_dtype`` and one byte range ``values``. Floats are
  stored as float16 when that is exact, else in their own dtype, so loading is always lossless.

A Huffman stream is: u32 symbol count, u8 table mode, the code lengths of a canonical code (mode 0: u32 alphabet
size then one u8 length per symbol; mode 1: u32 used count, u8 symbol width w, the used symbols as w-byte integers,
then their u8 lengths), then the bit stream, most significant bit first, zero-padded to a byte.
No pickle anywhere: loading executes nothing.

Example:
    >>> info = save_compressed(model, "lenet.tsdc")        # doctest: +SKIP
    >>> print(format_size_report(info))                    # doctest: +SKIP
    >>> load_compressed("lenet.tsdc", create_model("lenet-300-100"))   # doctest: +SKIP
"""
from __future__ import annotations

import heapq
import json
import lzma
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_path

MAGIC = b"TSDC"
FORMAT = "torchslim-deep-compression"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_HEADER_BYTES = 1 << 24  # a decompressed header larger than this is refused (a zip bomb, not a model)
MAX_CODE_BITS = 24  # bounds the decoder's lookup table (2^24 entries at worst); real streams use far fewer
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool)}


# --- canonical Huffman coding -------------------------------------------------------------------------------------

def huffman_code_lengths(counts: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Code length (bits) of each symbol of an optimal prefix code for ``counts``; 0 for unused symbols.

    A lone used symbol gets 1 bit. If the optimal code is deeper than ``max_bits``, the counts are halved (keeping
    every used symbol ≥ 1) until it fits — a small loss only on extreme distributions.

    Example:
        >>> huffman_code_lengths(np.array([5, 1, 1, 0, 2])).tolist()
        [1, 3, 3, 0, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        out[used] = 1
    if len(used) <= 1:
        return out
    c = counts[used]
    while True:
        lengths = _tree_depths(c.tolist())
        if lengths.max() <= max_bits:
            break
        c = (c + 1) // 2
    out[used] = lengths
    return out


def _tree_depths(counts: list[int]) -> np.ndarray:
    # Leaves are nodes 0..m-1; merged nodes are numbered in creation order, so ties break the same way every run.
    m = len(counts)
    heap = [(c, i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * m - 1)
    node = m
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    depth = [0] * (2 * m - 1)
    for i in range(2 * m - 3, -1, -1):  # root is 2m-2; a parent is always created after its children
        depth[i] = depth[parent[i]] + 1
    return np.array(depth[:m], dtype=np.uint8)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: symbols sorted by (length, symbol) take consecutive code values."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    code, prev = 0, 0
    for s in order.tolist():
        n = int(lengths[s])
        code <<= n - prev
        if code >= 1 << n:
            raise ValueError("Huffman code lengths are not a valid prefix code")
        codes[s], prev = code, n
        code += 1
    return codes


def _table_bytes(lengths: np.ndarray) -> bytes:
    used = np.flatnonzero(lengths)
    alphabet = int(used[-1]) + 1 if len(used) else 0
    dense = struct.pack("<BI", 0, alphabet) + lengths[:alphabet].astype(np.uint8).tobytes()
    width = 1 if alphabet <= 1 << 8 else 2 if alphabet <= 1 << 16 else 4
    sparse = (struct.pack("<BIB", 1, len(used), width) + used.astype(f"<u{width}").tobytes()
              + lengths[used].astype(np.uint8).tobytes())
    return dense if len(dense) <= len(sparse) else sparse


def huffman_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    """One self-contained Huffman stream (table + bits) for a 1-D array of non-negative integer symbols.

    Example:
        >>> s = np.array([0, 0, 0, 1, 2, 0])
        >>> huffman_decode(huffman_encode(s)).tolist()
        [0, 0, 0, 1, 2, 0]
    """
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if counts is None:
        counts = np.bincount(symbols) if len(symbols) else np.zeros(0, dtype=np.int64)
    lengths = huffman_code_lengths(counts)
    head = struct.pack("<I", len(symbols)) + _table_bytes(lengths)
    if len(symbols) == 0:
        return head
    codes = _canonical_codes(lengths)
    n = lengths[symbols].astype(np.int64)  # (N,) bits of each symbol
    total = int(n.sum())
    # Bit j of the output belongs to symbol k = repeat(arange(N), n)[j] at position t = j - start[k] within its code.
    start = np.cumsum(n) - n
    which = np.repeat(np.arange(len(symbols)), n)
    shift = np.repeat(start + n - 1, n) - np.arange(total)
    bits = ((codes[symbols][which] >> shift) & 1).astype(np.uint8)
    return head + np.packbits(bits).tobytes()


def huffman_decode(data: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`huffman_encode`; raises ``ValueError`` on a stream that is not one (length, table)."""
    data = memoryview(data)
    count, pos = _unpack("<I", data, 0)
    mode, pos = _unpack("<B", data, pos)
    if mode == 0:
        alphabet, pos = _unpack("<I", data, pos)
        lengths = np.frombuffer(_take(data, pos, alphabet), dtype=np.uint8).copy()
        pos += alphabet
    elif mode == 1:
        used_n, pos = _unpack("<I", data, pos)
        width, pos = _unpack("<B", data, pos)
        if width not in (1, 2, 4):
            raise ValueError(f"bad symbol width {width}")
        used = np.frombuffer(_take(data, pos, used_n * width), dtype=f"<u{width}").astype(np.int64)
        pos += used_n * width
        lens = np.frombuffer(_take(data, pos, used_n), dtype=np.uint8)
        pos += used_n
        if len(used) and (np.any(np.diff(used) <= 0)):
            raise ValueError("Huffman table symbols out of order")
        lengths = np.zeros(int(used[-1]) + 1 if len(used) else 0, dtype=np.uint8)
        lengths[used] = lens
    else:
        raise ValueError(f"unknown Huffman table mode {mode}")
    if count == 0:
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} stray bytes after an empty stream")
        return np.zeros(0, dtype=np.int64)
    if not lengths.any() or lengths.max() > MAX_CODE_BITS:
        raise ValueError("Huffman table has no symbols or a code longer than the format allows")
    codes = _canonical_codes(lengths)
    depth = int(lengths.max())
    # Lookup table over every `depth`-bit window: the symbol whose code is its prefix, and that code's length.
    table_sym = np.zeros(1 << depth, dtype=np.int64)
    table_len = np.zeros(1 << depth, dtype=np.int64)  # 0 marks a window no code matches (incomplete code)
    for s in np.flatnonzero(lengths).tolist():
        n = int(lengths[s])
        lo = int(codes[s]) << (depth - n)
        table_sym[lo: lo + (1 << (depth - n))] = s
        table_len[lo: lo + (1 << (depth - n))] = n
    payload = np.frombuffer(data[pos:], dtype=np.uint8)
    bits = np.concatenate([np.unpackbits(payload), np.zeros(depth, dtype=np.uint8)]).astype(np.int64)
    nbits = len(bits) - depth
    window = np.zeros(nbits, dtype=np.int64)
    for j in range(depth):  # window[i] = the `depth` bits starting at bit i
        window = (window << 1) | bits[j: j + nbits]
    sym_at, len_at = table_sym[window].tolist(), table_len[window].tolist()
    out = [0] * count
    p = 0
    # The start of each code depends on the previous one, so this walk is sequential (about 0.1 µs per symbol).
    for k in range(count):
        if p >= nbits or len_at[p] == 0:
            raise ValueError(f"bit stream ends or breaks after {k} of {count} symbols")
        out[k] = sym_at[p]
        p += len_at[p]
    if (p + 7) // 8 != len(payload):
        raise ValueError(f"bit stream has {len(payload)} bytes, the symbols use {(p + 7) // 8}")
    return np.array(out, dtype=np.int64)


def _unpack(fmt: str, data: memoryview, pos: int) -> tuple[int, int]:
    size = struct.calcsize(fmt)
    return struct.unpack_from(fmt, _take(data, pos, size))[0], pos + size


def _take(data: memoryview, pos: int, n: int) -> memoryview:
    if n < 0 or pos + n > len(data):
        raise ValueError(f"stream ends early: needs {n} bytes at offset {pos}, has {len(data) - pos}")
    return data[pos: pos + n]


def _huffman_size(counts: np.ndarray) -> int:
    """Bytes :func:`huffman_encode` would write for a symbol histogram, without encoding."""
    lengths = huffman_code_lengths(counts)
    return 4 + len(_table_bytes(lengths)) + (int((counts * lengths).sum()) + 7) // 8


# --- relative positions ------------------------------------------------------------------------------------------

def _gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    filler = (1 << bits) - 1
    g1 = np.diff(positions, prepend=-1) - 1  # gap − 1 ≥ 0
    per = g1 // filler + 1  # fillers + the final symbol, per nonzero
    out = np.full(int(per.sum()), filler, dtype=np.int64)
    out[np.cumsum(per) - 1] = g1 % filler
    return out


def _gap_counts(positions: np.ndarray, bits: int) -> np.ndarray:
    filler = (1 << bits) - 1
    g1 = np.diff(positions, prepend=-1) - 1
    counts = np.bincount(g1 % filler, minlength=filler + 1)
    counts[filler] += int((g1 // filler).sum())
    return counts


def _positions_from_symbols(symbols: np.ndarray, bits: int, numel: int) -> np.ndarray:
    filler = (1 << bits) - 1
    if len(symbols) and (symbols.max() > filler or symbols[-1] == filler):
        raise ValueError(f"relative positions hold symbols outside the {bits}-bit alphabet or end in a filler")
    is_filler = symbols == filler
    pos = np.cumsum(np.where(is_filler, filler, symbols + 1)) - 1
    pos = pos[~is_filler]
    if len(pos) and pos[-1] >= numel:
        raise ValueError(f"position {pos[-1]} is past the tensor's {numel} elements")
    return pos


def _best_gap_bits(positions: np.ndarray) -> int:
    if len(positions) == 0:
        return 1
    widest = max(1, min(16, int(positions[-1] + 1).bit_length()))
    return min(range(1, widest + 1), key=lambda b: (_huffman_size(_gap_counts(positions, b)), b))


# --- save / load -------------------------------------------------------------------------------------------------

def _storage_dtype(t: torch.Tensor) -> torch.dtype:
    """float16 when every value survives the round trip (bit for bit, so -0.0 and NaN payloads too), else own dtype."""
    if t.dtype in (torch.float32, torch.float64, torch.bfloat16):
        back = t.to(torch.float16).to(t.dtype)
        if torch.equal(_bits_of(back), _bits_of(t)):
            return torch.float16
    return t.dtype


def _bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def _raw_bytes(t: torch.Tensor, dtype: torch.dtype) -> bytes:
    return _bits_of(t.detach().cpu().to(dtype)).numpy().tobytes()


def _from_raw(data: memoryview, dtype: torch.dtype, numel: int) -> torch.Tensor:
    size = torch.empty(0, dtype=dtype).element_size()
    if len(data) != numel * size:
        raise ValueError(f"holds {len(data)} bytes, expected {numel} × {size}")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).clone()


def _dtype(name: Any) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return _DTYPES[name]


def save_compressed(
    model: nn.Module, path: str | os.PathLike, codebooks: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``model``'s state dict in the Deep Compression format (atomically); returns the size breakdown.

    Conv/Linear weights are stored sparse: relative positions and codebook indices, each Huffman-coded. Their
    codebook is the given one (``codebooks[layer]`` from ``share_weights_``/``bake_``) or else the layer's distinct
    nonzero values, used only when that is smaller than storing the values. Everything is stored losslessly, so
    :func:`load_compressed` gives a model whose outputs are ``torch.equal`` to this one's.

    The breakdown: ``file_bytes``, ``header_bytes``, ``fp32_bytes`` (the state dict at 4 bytes per element),
    ``ratio`` (fp32_bytes / file_bytes), per-tensor ``tensors[name]`` = {positions, indices, codebook, values} bytes
    (+ nnz, gap_bits, index_bits), and two baselines for the same content: ``fixed_width_bytes`` (every symbol at
    its full width, Han's pre-Huffman number) and ``lzma_bytes`` (lzma over byte-aligned symbol arrays).

    Example:
        >>> info = save_compressed(model, "runs/lenet.tsdc", books)   # doctest: +SKIP
        >>> round(info["ratio"])                                      # doctest: +SKIP
        31
    """
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise TorchslimError("save_compressed: the model has parametrized weights; call bake_(model) first")
    from torchslim.prune.masks import prunable_layers

    sparse_names = {f"{name}.weight": name for name in prunable_layers(model)}
    state = model.state_dict()
    unknown = [n for n in (codebooks or {}) if f"{n}.weight" not in sparse_names]
    if unknown:
        raise TorchslimError(f"save_compressed: codebooks name layers that are not Conv/Linear in the model: {unknown}")
    chunks: list[bytes] = []
    offset = 0
    entries, sizes = [], {}
    fixed_total, lzma_parts = 0, []

    def add(data: bytes) -> list[int]:
        nonlocal offset
        chunks.append(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    for name, t in state.items():
        t = t.detach().cpu()
        entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if name in sparse_names and t.is_floating_point():
            book = (codebooks or {}).get(sparse_names[name])
            entry, size, fixed, lz = _encode_sparse(entry, t, book, name)
            lzma_parts.append(lz)
        else:
            dtype = _storage_dtype(t) if t.is_floating_point() else t.dtype
            raw = _raw_bytes(t, dtype)
            entry.update(encoding="raw", value_dtype=str(dtype).removeprefix("torch."))
            entry["sections"] = {"values": raw}
            size, fixed = {"values": len(raw)}, len(raw)
            lzma_parts.append(raw)
        entry["sections"] = {k: add(v) for k, v in entry["sections"].items()}
        entries.append(entry)
        sizes[name] = size
        fixed_total += fixed
    payload = b"".join(chunks)
    header = zlib.compress(json.dumps({"format": FORMAT, "version": VERSION, "payload_bytes": len(payload),
                                       "payload_crc32": zlib.crc32(payload), "tensors": entries},
                                      separators=(",", ":")).encode(), 9)
    blob = MAGIC + struct.pack("<I", len(header)) + header + payload
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    fp32 = sum(4 * v.numel() for v in state.values())
    overhead = len(blob) - len(payload)
    return {"path": str(path), "file_bytes": len(blob), "header_bytes": overhead, "fp32_bytes": fp32,
            "ratio": fp32 / len(blob), "tensors": sizes,
            "fixed_width_bytes": fixed_total + overhead,
            "lzma_bytes": len(lzma.compress(b"".join(lzma_parts), preset=9 | lzma.PRESET_EXTREME)) + overhead}


def _encode_sparse(entry: dict, t: torch.Tensor, book: Any, name: str) -> tuple[dict, dict, int, bytes]:
    flat = t.reshape(-1)
    pos_t = torch.nonzero(flat).flatten()
    positions = pos_t.numpy().astype(np.int64)
    values = flat[pos_t]
    if book is not None:
        if not torch.equal(book.weight().cpu().to(t.dtype), t):
            raise TorchslimError(f"save_compressed: '{name}' no longer equals its codebook (trained since sharing?); "
                                 "call bake_(model) and pass the codebooks it returns, or omit them")
        centroids = book.centroids.detach().cpu().to(t.dtype)
        index = book.index.cpu().reshape(-1)[pos_t].numpy().astype(np.int64)
    else:
        centroids, inverse = torch.unique(values, return_inverse=True)
        index = inverse.numpy().astype(np.int64)
    k = len(centroids)
    index_bits = max(1, (k - 1).bit_length())
    value_dtype = _storage_dtype(centroids if k else values)
    item = torch.empty(0, dtype=value_dtype).element_size()
    # Sharing pays when the codebook plus an index per weight is smaller than the weights themselves.
    use_book = book is not None or k * item + (len(values) * index_bits + 7) // 8 < len(values) * t.element_size()
    gap_bits = _best_gap_bits(positions)
    gap_symbols = _gap_symbols(positions, gap_bits)
    sections = {"positions": huffman_encode(gap_symbols, _gap_counts(positions, gap_bits))}
    fixed = (len(gap_symbols) * gap_bits + 7) // 8
    lz = gap_symbols.astype(np.uint8 if gap_bits <= 8 else np.uint16).tobytes()
    if use_book:
        value_dtype = _storage_dtype(centroids)
        sections["indices"] = huffman_encode(index, np.bincount(index, minlength=k))
        sections["codebook"] = _raw_bytes(centroids, value_dtype)
        fixed += (len(index) * index_bits + 7) // 8 + len(sections["codebook"])
        lz += index.astype(np.uint8 if index_bits <= 8 else np.uint16).tobytes() + sections["codebook"]
    else:
        value_dtype = _storage_dtype(values)
        sections["values"] = _raw_bytes(values, value_dtype)
        fixed += len(sections["values"])
        lz += sections["values"]
    entry.update(encoding="sparse", nnz=len(positions), gap_bits=gap_bits,
                 values="codebook" if use_book else "raw", value_dtype=str(value_dtype).removeprefix("torch."),
                 sections=sections)
    size = {s: len(sections.get(s, b"")) for s in ("positions", "indices", "codebook", "values")}
    size.update(nnz=len(positions), gap_bits=gap_bits, index_bits=index_bits if use_book else None)
    return entry, size, fixed, lz


def load_compressed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a :func:`save_compressed` file into ``model`` (a fresh model of the same architecture) and return it.

    A file that is not one, is truncated or corrupt, or does not fit the model raises :class:`TorchslimError`
    naming the file and the problem.

    Example:
        >>> model = load_compressed("runs/lenet.tsdc", create_model("lenet-300-100"))   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"compressed model not found: {path}")
    blob = memoryview(path.read_bytes())
    if len(blob) < 8 or bytes(blob[:4]) != MAGIC:
        raise TorchslimError(f"{path} is not a torchslim compressed model (no {MAGIC!r} signature)")
    (header_len,) = struct.unpack_from("<I", blob, 4)
    if 8 + header_len > len(blob):
        raise TorchslimError(f"{path} is truncated: the header needs {header_len} bytes, "
                             f"the file has {len(blob) - 8} after the signature")
    try:
        header = json.loads(_header_text(bytes(blob[8: 8 + header_len])))
        fmt, version = header["format"], header["version"]
        expected, crc, entries = int(header["payload_bytes"]), int(header["payload_crc32"]), list(header["tensors"])
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise TorchslimError(f"{path} has a corrupt header: {type(e).__name__}: {e}") from None
    if fmt != FORMAT or version not in READABLE_VERSIONS:
        raise TorchslimError(f"{path}: unsupported format {fmt!r} version {version!r}; this torchslim reads "
                             f"{FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))}")
    payload = blob[8 + header_len:]
    if len(payload) != expected:
        raise TorchslimError(f"{path} is {'truncated' if len(payload) < expected else 'too long'}: "
                             f"{len(payload)} payload bytes, the header says {expected}")
    if zlib.crc32(payload) != crc:
        raise TorchslimError(f"{path} is corrupt: the payload checksum does not match the header")
    own = model.state_dict()
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    missing, extra = [k for k in own if k not in names], [k for k in names if k not in own]
    if missing or extra:
        raise TorchslimError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {}
    for entry in entries:
        name = entry["name"]
        try:
            state[name] = _decode_tensor(entry, payload)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise TorchslimError(f"{path} is corrupt: tensor '{name}': {e}") from None
        if state[name].shape != own[name].shape:
            raise TorchslimError(f"{path} does not fit the model: '{name}' has shape {tuple(state[name].shape)}, "
                                 f"model expects {tuple(own[name].shape)}")
    model.load_state_dict(state)
    return model


def _header_text(raw: bytes) -> bytes:
    """The header's JSON: stored as is in version 1 files, zlib-compressed since version 2."""
    if raw[:1] == b"{":
        return raw
    inflate = zlib.decompressobj()
    text = inflate.decompress(raw, MAX_HEADER_BYTES)
    if inflate.unconsumed_tail:
        raise ValueError(f"the header inflates to more than {MAX_HEADER_BYTES} bytes")
    return text


def _decode_tensor(entry: dict, payload: memoryview) -> torch.Tensor:
    shape, dtype = [int(s) for s in entry["shape"]], _dtype(entry["dtype"])
    numel = int(np.prod(shape, dtype=np.int64))
    value_dtype = _dtype(entry["value_dtype"])

    def section(key: str) -> memoryview:
        start, length = (int(v) for v in entry["sections"][key])
        if start < 0 or length < 0 or start + length > len(payload):
            raise ValueError(f"section '{key}' lies outside the payload")
        return payload[start: start + length]

    if entry["encoding"] == "raw":
        return _from_raw(section("values"), value_dtype, numel).to(dtype).reshape(shape)
    if entry["encoding"] != "sparse":
        raise ValueError(f"unknown encoding {entry['encoding']!r}")
    gap_bits, nnz = int(entry["gap_bits"]), int(entry["nnz"])
    if not 1 <= gap_bits <= 16:
        raise ValueError(f"gap width {gap_bits} is outside 1..16")
    positions = _positions_from_symbols(huffman_decode(section("positions")), gap_bits, numel)
    if len(positions) != nnz:
        raise ValueError(f"{len(positions)} positions decoded, the header says {nnz}")
    if entry["values"] == "codebook":
        size = torch.empty(0, dtype=value_dtype).element_size()
        centroids = _from_raw(section("codebook"), value_dtype, len(section("codebook")) // size).to(dtype)
        index = huffman_decode(section("indices"))
        if len(index) != nnz or (nnz and index.max() >= len(centroids)):
            raise ValueError("codebook indices do not match the nonzeros or the codebook size")
        values = centroids[torch.from_numpy(index)]
    else:
        values = _from_raw(section("values"), value_dtype, nnz).to(dtype)
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(positions)] = values
    return flat.reshape(shape)


def format_size_report(info: Mapping[str, Any]) -> str:
    """The breakdown from :func:`save_compressed` as a plain-text table (bytes; 1 KB = 1000 bytes).

    Example:
        >>> print(format_size_report(save_compressed(model, "m.tsdc")))   # doctest: +SKIP
    """
    lines = [f"{'tensor':<24}{'nnz':>9}{'gap b':>6}{'idx b':>6}{'positions':>11}{'indices':>9}{'codebook':>9}"
             f"{'values':>9}"]
    for name, s in info["tensors"].items():
        lines.append(f"{name:<24}{s.get('nnz', ''):>9}{s.get('gap_bits') or '':>6}{s.get('index_bits') or '':>6}"
                     f"{s.get('positions', 0):>11}{s.get('indices', 0):>9}{s.get('codebook', 0):>9}"
                     f"{s.get('values', 0):>9}")
    lines.append(f"header {info['header_bytes']} B; file {info['file_bytes']} B = {info['file_bytes'] / 1000:.1f} KB; "
                 f"fp32 state dict {info['fp32_bytes'] / 1000:.1f} KB; ratio {info['ratio']:.1f}×")
    lines.append(f"same content without Huffman (fixed width): {info['fixed_width_bytes'] / 1000:.1f} KB "
                 f"({info['fp32_bytes'] / info['fixed_width_bytes']:.1f}×); lzma over byte-aligned symbols: "
                 f"{info['lzma_bytes'] / 1000:.1f} KB ({info['fp32_bytes'] / info['lzma_bytes']:.1f}×)")
    return "\n".join(lines)
