"""Int4 (and 2/8-bit) weights in ONNX Runtime: each quantized Linear's MatMul (or Gemm) becomes a com.microsoft
MatMulNBits node fed with that layer's own codes, scales and zero points — the GPTQ/AWQ weights themselves, not a
re-quantization.

    torch.onnx.export(model, (ids,), "model.onnx", dynamo=False)          # the model quantize_weights_ returned
    info = export_matmul_nbits("model.onnx", result, "model.int4.onnx")   # result: quantize_weights_'s

MatMulNBits (ONNX Runtime contrib op) computes Y = A · dequant(B)ᵀ (+ bias) with B block-quantized along K:
for a Linear with K inputs and N outputs and blocks of `block_size` inputs (the quantization group),

* ``B``: uint8 (N, K / block_size, block_size · bits / 8): each row's codes, block after block, packed low bits
  first (4 bits: the code of input 2i in the low nibble of a byte, of input 2i + 1 in the high nibble);
* ``scales``: float (N, K / block_size);
* ``zero_points``: uint8 (N, ⌈(K / block_size) · bits / 8⌉), packed the same way, each row padded to whole bytes;
* attributes K, N, bits, block_size (a power of two, at least 16) and optionally accuracy_level.

Which node is which layer: the exporter matches weights by value — a MatMul whose B is an initializer of shape
(K, N) (the TorchScript exporter folds the transpose of a Linear's weight into it), or one fed by Transpose of an
(N, K) initializer, or a Gemm with an (N, K) initializer and transB = 1 — to the layer whose dequantized weight it is
closest to. Export the ONNX from the model `quantize_weights_` returned: its norms carry AWQ's and SmoothQuant's
folded scales and its weights equal the codes (then the match is exact); for RTN and GPTQ the float model's ONNX
also works (the closest weight is the layer's own, within quantization error).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from torchslim.errors import TorchslimError
from torchslim.quant.weight_only import QuantizedWeight, WeightOnlyResult

NBITS_BITS = (2, 4, 8)  # the code widths MatMulNBits reads
MATCH_TOLERANCE = 0.5  # relative distance ‖B − dequant‖ / ‖dequant‖ above which a weight is not the layer's


def _pack_low_first(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned `bits`-bit integers along the last axis into bytes, the first value in the lowest bits; the last
    axis is padded with zeros to whole bytes."""
    per_byte = 8 // bits
    pad = -values.shape[-1] % per_byte
    v = np.pad(values.astype(np.uint8), [(0, 0)] * (values.ndim - 1) + [(0, pad)])
    v = v.reshape(*v.shape[:-1], -1, per_byte)
    out = np.zeros(v.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        out |= (v[..., i] << (i * bits)).astype(np.uint8)
    return out


def pack_matmul_nbits(q: QuantizedWeight, name: str = "layer") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, scales, zero_points) of one layer in MatMulNBits' layout (see the module docstring).

    Example:
        >>> import torch
        >>> from torchslim.quant.weight_only import quantize_groupwise
        >>> b, scales, zp = pack_matmul_nbits(quantize_groupwise(torch.randn(8, 64), bits=4, group_size=32))
        >>> b.shape, scales.shape, zp.shape
        ((8, 2, 16), (8, 2), (8, 1))
    """
    _check_exportable(q, name)
    n, k = q.shape
    blocks = k // q.group_size
    codes = q.codes.numpy().reshape(n, blocks, q.group_size)
    b = _pack_low_first(codes, q.bits)
    zero_points = _pack_low_first(q.zeros.numpy().reshape(n, blocks), q.bits)
    return b, q.scales.float().numpy().astype(np.float32), zero_points


def _check_exportable(q: QuantizedWeight, name: str) -> None:
    if q.bits not in NBITS_BITS:
        raise TorchslimError(f"layer '{name}': MatMulNBits takes {', '.join(map(str, NBITS_BITS))}-bit codes, "
                             f"and it was quantized to {q.bits} bits; quantize with bits 4 (or 2, 8)")
    size = q.group_size
    if size < 16 or size & (size - 1):
        raise TorchslimError(f"layer '{name}': MatMulNBits needs a block size that is a power of two of at least 16, "
                             f"and the layer's group size is {size} (with group_size -1, its input width); "
                             f"quantize with group_size 16, 32, 64 or 128")


def _weights(graph) -> tuple[dict, dict]:
    """Candidate Linear weights of the graph: {node index: (W (N, K) float32, initializer name, bias name | None)},
    and the initializers by name."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    found = {}
    for i, node in enumerate(graph.node):
        if node.op_type == "MatMul" and len(node.input) == 2:
            b = node.input[1]
            if b in inits and len(inits[b].dims) == 2:
                found[i] = (numpy_helper.to_array(inits[b]).astype(np.float32).T, b, None)
            elif b in made_by and made_by[b].op_type == "Transpose" and made_by[b].input[0] in inits:
                t = made_by[b]
                perm = [a.ints for a in t.attribute if a.name == "perm"]
                src = inits[t.input[0]]
                if len(src.dims) == 2 and (not perm or list(perm[0]) == [1, 0]):
                    found[i] = (numpy_helper.to_array(src).astype(np.float32), t.input[0], None)
        elif node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits:
            attrs = {a.name: a for a in node.attribute}
            alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
            beta = attrs["beta"].f if "beta" in attrs else 1.0
            trans_a = attrs["transA"].i if "transA" in attrs else 0
            trans_b = attrs["transB"].i if "transB" in attrs else 0
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if alpha != 1.0 or trans_a or (bias is not None and (beta != 1.0 or bias not in inits or
                                                                   len(inits[bias].dims) != 1)):
                continue
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            found[i] = (w if trans_b else w.T, node.input[1], bias)
    return found, inits


def export_matmul_nbits(onnx_model, quantized: Mapping[str, QuantizedWeight] | WeightOnlyResult, out_path, *,
                        accuracy_level: int | None = None) -> dict:
    """Write a copy of `onnx_model` (a path or ModelProto) in which the MatMul/Gemm of every layer in `quantized`
    (`quantize_weights_`'s result or its ``layers``) is a MatMulNBits node with that layer's codes. Every layer must
    be found; returns ``{"path", "nodes": {layer: node name}, "weight_bytes_before", "weight_bytes_after"}``.

    `accuracy_level` (ONNX Runtime: 0/1 float32 compute, 4 int8 compute of A) is left out unless given.

    Example:
        >>> info = export_matmul_nbits("model.onnx", result, "model.int4.onnx")      # doctest: +SKIP
        >>> info["weight_bytes_before"] / info["weight_bytes_after"]                 # doctest: +SKIP
        6.4
    """
    import onnx
    from onnx import helper, numpy_helper

    layers = dict(quantized.layers if isinstance(quantized, WeightOnlyResult) else quantized)
    if not layers:
        raise TorchslimError("export_matmul_nbits: no quantized layers given")
    for name, q in layers.items():
        _check_exportable(q, name)
    model = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's proto stays as it was
    graph = model.graph
    candidates, inits = _weights(graph)
    # Each layer takes the node whose weight is nearest to its dequantized weight (relative Frobenius distance).
    assigned: dict[str, list[int]] = {}
    for name, q in layers.items():
        deq = q.dequantize().numpy()
        norm = float(np.linalg.norm(deq)) or 1.0
        best, best_d = [], math.inf
        for i, (w, init, _) in candidates.items():
            if w.shape != deq.shape:
                continue
            d = float(np.linalg.norm(w - deq)) / norm
            if d < best_d - 1e-9:
                best, best_d = [i], d
            elif abs(d - best_d) <= 1e-9:
                best.append(i)  # one weight used by several nodes (tied), or an identical copy
        if not best or best_d > MATCH_TOLERANCE:
            shape = f"{deq.shape[0]}x{deq.shape[1]}"
            raise TorchslimError(f"export_matmul_nbits: layer '{name}' ({shape}) matches no MatMul/Gemm weight of the "
                                 f"ONNX graph (nearest relative distance {best_d:.3g}); export the ONNX from the model "
                                 f"quantize_weights_ returned")
        assigned[name] = best
    claimed: dict[int, str] = {}
    for name, nodes in assigned.items():
        for i in nodes:
            if i in claimed:
                raise TorchslimError(f"export_matmul_nbits: layers '{claimed[i]}' and '{name}' both match the node "
                                     f"'{graph.node[i].name}'; their weights are identical")
            claimed[i] = name
    before = after = 0
    new_nodes = {}
    names: dict[str, str] = {}
    for name, nodes in assigned.items():
        q = layers[name]
        b, scales, zp = pack_matmul_nbits(q, name)
        n, k = q.shape
        safe = name.replace(".", "_")
        tensors = [numpy_helper.from_array(b, f"{safe}_nbits_B"),
                   numpy_helper.from_array(scales, f"{safe}_nbits_scales"),
                   numpy_helper.from_array(zp, f"{safe}_nbits_zero_points")]
        graph.initializer.extend(tensors)
        before += n * k * 4
        after += b.nbytes + scales.nbytes + zp.nbytes
        for i in nodes:
            old = graph.node[i]
            bias = candidates[i][2]
            inputs = [old.input[0], *(t.name for t in tensors)] + (["", bias] if bias else [])
            attrs = {"K": k, "N": n, "bits": q.bits, "block_size": q.group_size}
            if accuracy_level is not None:
                attrs["accuracy_level"] = accuracy_level
            node_name = (old.name or safe) + "_MatMulNBits"
            new_nodes[i] = helper.make_node("MatMulNBits", inputs, list(old.output), name=node_name,
                                            domain="com.microsoft", **attrs)
            names[name] = node_name
    kept = [new_nodes.get(i, node) for i, node in enumerate(graph.node)]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused(graph)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return {"path": str(out), "nodes": names, "weight_bytes_before": before, "weight_bytes_after": after}


def _drop_unused(graph) -> None:
    """Remove nodes whose outputs nobody reads (the Transposes of replaced weights) and unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for node in graph.node for i in node.input} | outputs
        dead = [node for node in graph.node if node.output and not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for node in graph.node for i in node.input} | outputs
    removed = {t.name for t in graph.initializer if t.name not in used}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in removed]  # old exporters list initializers as inputs too
    del graph.input[:]
    graph.input.extend(inputs)


__all__ = ["export_matmul_nbits", "pack_matmul_nbits", "NBITS_BITS"]
