"""Writers for the report built by :func:`torchslim.evaluation.build_report`: JSON, markdown, HTML and a console table.

The markdown and HTML files show the same content: one table over all artifacts, notes on how each number was
measured (including :func:`speed_notes`: every quantized artifact that is not faster than its fp32 source, and why
it may not be), and a section per artifact with its stage-specific facts (``info``). The HTML file is self-contained
(inline CSS, plots embedded as base64 PNG), so it can be mailed or archived as one file. A `prune` artifact with
pruning-sensitivity curves (``info["sensitivity"]``) also gets its plot: embedded in the HTML, and written as
``<artifact>-sensitivity.png`` beside ``report.md``, which links it.

Example:
    >>> paths = write_report(report, "runs/lenet")       # doctest: +SKIP
    >>> sorted(paths)
    ['html', 'json', 'md']
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from torchslim.io import atomic_write_bytes, atomic_write_json, atomic_write_text

_DASH = "—"
_MARKERS = {"pytorch": "o", "onnxruntime": "s"}


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir`` (each atomically).

    Example:
        >>> write_report(report, "runs/lenet")["html"]    # doctest: +SKIP
        PosixPath('runs/lenet/report.html')
    """
    out = Path(out_dir)
    report = _jsonable(report)  # numpy scalars or tuples in `info` would otherwise break or change on reload
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_json(paths["json"], report)
    figures: dict[str, bytes] = {}  # rendered once, written beside report.md and embedded in report.html
    for r in report["artifacts"]:  # report.md links these; report.html embeds the same pictures
        if _curves(r) is not None:
            atomic_write_bytes(out / _sensitivity_png(r), _sensitivity_plot(r))
        if _term_history(r):
            figures[_terms_png(r)] = _terms_plot(r)
            atomic_write_bytes(out / _terms_png(r), figures[_terms_png(r)])
    atomic_write_text(paths["md"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report, figures))
    return paths


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic configs
        return _jsonable(obj.model_dump())
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(obj.tolist())
    return str(obj)


# ----------------------------------------------------------------------------------------------------------------
# Content shared by the markdown and HTML writers


def _batch_keys(records: list[dict]) -> list[str]:
    keys = {k for r in records for k in (r.get("latency_ms") or {})}
    return sorted(keys, key=int)


def _fmt_count(n: int | None) -> str:
    return _DASH if n is None else f"{n:,}"


def _fmt_si(n: int | None) -> str:
    if n is None:
        return _DASH
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _fmt_kb(n: int | None) -> str:
    return _DASH if n is None else f"{n / 1000:,.1f}"


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return _DASH
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _fmt_ratio(x: float | None) -> str:
    return _DASH if x is None else f"{x:.2f}×"


def _p50(record: dict, batch: str) -> float | None:
    return ((record.get("latency_ms") or {}).get(batch) or {}).get("p50")


def _speedup(record: dict, batch: str) -> float | None:
    return ((record.get("vs_teacher") or {}).get("speedup") or {}).get(batch)


def _compression(record: dict) -> float | None:
    return (record.get("vs_teacher") or {}).get("compression")


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    records = report["artifacts"]
    batches = _batch_keys(records)
    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("artifact", lambda r: r["name"]),
        ("runtime", lambda r: r["runtime"]),
        ("accuracy %", lambda r: f"{100 * r['accuracy']:.2f}"),
        ("errors", lambda r: str(r["errors"])),
        ("params", lambda r: _fmt_count(r.get("params"))),
        ("nonzero", lambda r: _fmt_count(r.get("nonzero_params"))),
        ("MACs", lambda r: _fmt_si(r.get("macs"))),
        ("file KB", lambda r: _fmt_kb(r.get("file_bytes"))),
        ("lzma KB", lambda r: _fmt_kb(r.get("file_bytes_lzma"))),
    ]
    columns += [(f"p50 ms @{b}", lambda r, b=b: _fmt_ms(_p50(r, b))) for b in batches]
    columns += [
        (
            "speedup vs teacher " + " / ".join(f"@{b}" for b in batches),
            lambda r: " / ".join(_fmt_ratio(_speedup(r, b)) for b in batches),
        ),
        ("compression vs teacher", lambda r: _fmt_ratio(_compression(r))),
    ]
    if any(_agreement(r) is not None for r in records):  # only runs with a distill stage get the column
        columns.append(("teacher agreement %", lambda r: _DASH if _agreement(r) is None else f"{100 * _agreement(r):.2f}"))
    return [h for h, _ in columns], [[f(r) for _, f in columns] for r in records]


def _notes(report: dict) -> list[tuple[str, str]]:
    records = report["artifacts"]
    protocol = report.get("latency_protocol") or {}
    runs = [e["runs"] for r in records for e in (r.get("latency_ms") or {}).values() if "runs" in e]
    runs_text = (f"{min(runs)}" if min(runs) == max(runs) else f"{min(runs)}–{max(runs)}") if runs else "many"
    warmup = f"{protocol['warmup']} warm-up calls" if "warmup" in protocol else "warm-up"
    rounds = f" in {protocol['rounds']} rounds" if "rounds" in protocol else ""
    seed = f" (seed {protocol['seed']})" if "seed" in protocol else ""
    data = report.get("data") or {}
    sizes = ", ".join(f"{k} {v:,}" for k, v in (data.get("sizes") or {}).items())
    source = f" from {data['source']}" if data.get("source") else ""
    norm = data.get("normalization")
    norm_text = ", ".join(f"{k} = {v}" for k, v in norm.items()) if isinstance(norm, dict) and norm else "none"
    machine = report.get("machine") or {}
    threads = report.get("threads")
    return [
        (
            "Threads",
            f"{threads} intra-op thread{'s' if threads != 1 else ''} for every artifact "
            "(ONNX Runtime: 1 inter-op thread, sequential execution).",
        ),
        (
            "Latency",
            f"wall time of one call on a fixed random batch{seed}; median (p50) and p90 of {runs_text} timed calls "
            f"per artifact and batch size, after {warmup}. All artifacts were measured in the same process, "
            f"interleaved{rounds}, so that machine noise affects all of them alike. "
            "Speedup = teacher p50 / artifact p50.",
        ),
        (
            "Accuracy",
            "top-1 on the test split, measured by running each artifact in its own runtime "
            "(an ONNX artifact is run by ONNX Runtime, not by its PyTorch original).",
        ),
        (
            "Size",
            "file KB is the size of the file that ships (1 KB = 1000 bytes); lzma KB is the same file compressed "
            "with xz preset 9e, what a download costs. Compression = teacher file bytes / artifact file bytes.",
        ),
        (
            "Params and MACs",
            "from the PyTorch module; nonzero counts the weights that are not zero (sparsity). MACs are for one "
            "sample and count convolution and linear layers only (not normalization, activations, pooling or "
            "bias), densely: zero weights count.",
        ),
        (
            "Data",
            f"{data.get('name', _DASH)}{source}; sizes: {sizes or _DASH}; normalization: {norm_text}"
            f"{_task_text(data.get('task'))}.",
        ),
        (
            "Machine",
            f"{machine.get('platform', _DASH)}, {machine.get('processor') or _DASH}, "
            f"{machine.get('cpu_count', _DASH)} CPUs; Python {machine.get('python', _DASH)}, "
            f"torch {machine.get('torch', _DASH)}, onnxruntime {machine.get('onnxruntime', _DASH)}; "
            f"torchslim {report.get('torchslim_version', _DASH)}, created {report.get('created', _DASH)}.",
        ),
    ] + [("Speed", note) for note in speed_notes(report)]


def _task_text(task: dict | None) -> str:
    """The task as the report states it: ``; task: text-classification, 2 classes, sequence length 64, ...``."""
    if not isinstance(task, dict) or not task:
        return ""
    parts = [str(task.get("task", _DASH))]
    if "num_classes" in task:
        parts.append(f"{task['num_classes']} classes")
    for key, value in task.items():
        if key in ("task", "num_classes") or value is None:
            continue
        if isinstance(value, dict):  # the tokenizer: its kind and size, not every setting
            value = ", ".join(f"{k} {v}" for k, v in value.items() if isinstance(v, (str, int, float)))
        elif isinstance(value, (list, tuple)):
            value = "×".join(map(str, value))
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "; task: " + ", ".join(parts)


# Speed notes: is every quantized artifact faster than the float model it came from?

_QUANT_STAGES = ("quantize", "ptq", "qat")
# Float compute ops as they appear in ONNX Runtime's optimized graph: a layer left in float runs as one of these.
_FLOAT_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NhwcConv")
_CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_TINY_MACS = 20e6  # MACs per call below which fixed per-call costs (session run, conversions) rival the arithmetic


def _is_quantized(record: dict) -> bool:
    info = record.get("info") or {}
    return "kernels" in info or "quant" in info or info.get("mode") in ("static", "dynamic") or (
        record.get("stage") in _QUANT_STAGES)


def _sources(records: list[dict]) -> list[str | None]:
    """The PyTorch model each record was made from: ``info["source"]`` if given, else the record itself for a
    PyTorch artifact, else the nearest PyTorch artifact before it (a pipeline stage starts from the current model,
    which is the last PyTorch artifact)."""
    sources, last = [], None
    for r in records:
        own = r.get("runtime") == "pytorch" and not _is_quantized(r)  # a float PyTorch model is its own source
        if own:
            last = r["name"]
        sources.append((r.get("info") or {}).get("source") or (r["name"] if own else last))
    return sources


def _reasons(record: dict, batch: str) -> list[str]:
    info = record.get("info") or {}
    kernels: dict = info.get("kernels") or {}
    reasons = []
    # A PyTorch artifact has no ORT graph to read; its maker may list the layer types it left in float instead.
    floats = {op: n for op, n in kernels.items() if op in _FLOAT_OPS and n} or dict(info.get("float_layers") or {})
    if floats:
        count = sum(floats.values())
        reasons.append(f"{count} layer{'s' if count != 1 else ''} left in float ({', '.join(sorted(floats))})")
    if kernels:
        from torchslim.quant.export import INT8_KERNELS

        if not any(kernels.get(op) for op in INT8_KERNELS):
            reasons.append("ONNX Runtime fused no int8 kernels, so it ran float layers plus conversions")
        conversions = sum(kernels.get(op, 0) for op in _CONVERSIONS)
        if conversions > 2 and floats:  # one Quantize at the input and one Dequantize at the output are inevitable
            reasons.append(f"{conversions} int8↔float conversions (QuantizeLinear/DequantizeLinear) around them")
    if info.get("mode") == "dynamic":
        reasons.append("dynamic quantization measures and quantizes every activation on each call")
    macs = record.get("macs")
    if macs is not None and macs * int(batch) < _TINY_MACS:
        millions = macs / 1e6
        per_call = f"{millions:.2g} M MACs" if millions < 10 else f"{millions:.0f} M MACs"
        per_call += f" × {batch}" if batch != "1" else ""
        reasons.append(f"the model is tiny ({per_call} per call), so per-call overhead dominates")
    if not reasons:
        reasons.append("the int8 kernels' requantization between layers costs as much as the narrower arithmetic "
                       "saves for this model on this CPU")
    return reasons


def speed_notes(report: dict) -> list[str]:
    """One plain sentence for every quantized artifact and batch size at which it is NOT faster than the fp32
    artifact of the same source model (for an ONNX artifact its fp32 ONNX export if the report has one, else the
    PyTorch model; ``info["source"]`` names the source explicitly, else it is the last float PyTorch artifact before
    it, as in a pipeline), with the
    likely reasons read from the record: layers left in float (``info["kernels"]`` from ``ort_kernels``, or
    ``info["float_layers"]``, {layer type: count}, for a PyTorch artifact), dynamic
    quantization, a tiny model.

    Example:
        >>> report = {"artifacts": [
        ...     {"name": "teacher", "runtime": "pytorch", "macs": 800_000, "latency_ms": {"1": {"p50": 0.05}}},
        ...     {"name": "onnx", "stage": "export", "runtime": "onnxruntime", "latency_ms": {"1": {"p50": 0.018}}},
        ...     {"name": "int8", "stage": "ptq", "runtime": "onnxruntime", "macs": 800_000,
        ...      "info": {"kernels": {"QLinearConv": 2}}, "latency_ms": {"1": {"p50": 0.020}}}]}
        >>> print(*speed_notes(report))  # doctest: +ELLIPSIS
        int8 is not faster than onnx at batch 1 (0.020 vs 0.018 ms p50): the model is tiny (0.8 M MACs per call), ...
    """
    records = report.get("artifacts") or []
    sources = _sources(records)
    notes = []
    for record, source in zip(records, sources):
        if not _is_quantized(record) or source is None:
            continue
        # An ONNX artifact is compared with the float ONNX export of its source (same runtime) when there is one; a
        # PyTorch one (e.g. torchao) with its float PyTorch source.
        fp32_onnx = [r for r, s in zip(records, sources) if s == source and r.get("runtime") == "onnxruntime"
                     and not _is_quantized(r) and record.get("runtime") == "onnxruntime"]
        pytorch = [r for r in records if r["name"] == source and r.get("runtime") == "pytorch" and r is not record]
        baseline = (fp32_onnx or pytorch or [None])[0]
        if baseline is None:
            continue
        for batch in _batch_keys([record]):
            ours, theirs = _p50(record, batch), _p50(baseline, batch)
            if ours is None or theirs is None or ours < theirs:
                continue
            notes.append(f"{record['name']} is not faster than {baseline['name']} at batch {batch} "
                         f"({_fmt_ms(ours)} vs {_fmt_ms(theirs)} ms p50): {'; '.join(_reasons(record, batch))}.")
    return notes


# An artifact section is a list of blocks: ("items", [(key, value)]) or ("table", headers, rows).
_Block = tuple


def _sections(report: dict) -> list[tuple[str, list[_Block]]]:
    sections = []
    for r in report["artifacts"]:
        info = dict(r.get("info") or {})
        items = [("stage", str(r.get("stage"))), ("runtime", str(r.get("runtime"))), ("file", str(r.get("path")))]
        blocks: list[_Block] = []
        verification = info.pop("verification", None)
        if isinstance(verification, dict):
            diff = verification.get("max_abs_diff")
            agree = verification.get("top1_agreement")
            items.append(
                (
                    "ONNX verification",
                    f"max |ONNX − PyTorch| = {diff:.3g}" if isinstance(diff, (int, float)) else f"max abs diff {diff}",
                )
            )
            if isinstance(agree, (int, float)):
                items.append(("top-1 agreement", f"{100 * agree:.2f} %" if agree <= 1 else str(agree)))
        sparsity = info.pop("sparsity", None)
        sensitivity = info.pop("sensitivity") if _curves(r) is not None else None
        agreement = info.pop("teacher_agreement", None)
        if isinstance(agreement, dict) and agreement:
            each = ", ".join(f"{k} {100 * v:.2f} %" for k, v in agreement.items() if k != "combined")
            items.append(("teacher–student top-1 agreement (test set)",
                          f"{100 * agreement.get('combined', float('nan')):.2f} %" + (f" (each: {each})" if each else "")))
        for key, value in info.items():
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            items.append((str(key), text if len(text) <= 300 else text[:297] + "..."))
        blocks.append(("items", items))
        if isinstance(sparsity, dict) and sparsity:
            rows = [[str(layer), f"{100 * float(s):.2f}"] for layer, s in sparsity.items()]
            blocks.append(("table", ["layer", "sparsity %"], rows))
        elif sparsity is not None:
            blocks[0][1].append(("sparsity", str(sparsity)))
        if sensitivity is not None:
            blocks += _sensitivity_blocks(r, sensitivity)
        if _term_history(r):
            blocks += _terms_blocks(r)
        sections.append((str(r["name"]), blocks))
    return sections


# Pruning sensitivity (`prune` with scope: sensitivity): info["sensitivity"] = {"curves": {layer: [[s, acc], ...]},
# "dense_accuracy", "sparsities" (chosen per layer), ...}. A plot block is ("plot", alt text, PNG file name, record).


def _curves(record: dict) -> dict | None:
    sens = (record.get("info") or {}).get("sensitivity")
    return sens["curves"] if isinstance(sens, dict) and isinstance(sens.get("curves"), dict) else None


def _sensitivity_png(record: dict) -> str:
    """The PNG's file name beside the report: the artifact name made safe for a path and a markdown link."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(record["name"])).strip("-.") + "-sensitivity.png"


def _sensitivity_plot(record: dict) -> bytes:
    from torchslim.prune.sensitivity import render_sensitivity_curves

    sens = record["info"]["sensitivity"]
    return render_sensitivity_curves(sens["curves"], dense_accuracy=sens.get("dense_accuracy"),
                                     chosen=sens.get("sparsities"),
                                     title=f"{record['name']}: pruning sensitivity, one layer at a time")


def _sensitivity_blocks(record: dict, sens: dict) -> list[_Block]:
    curves, chosen, sizes = sens["curves"], sens.get("sparsities") or {}, sens.get("params") or {}
    levels = sorted({float(p[0]) for points in curves.values() for p in points})
    dense = sens.get("dense_accuracy")
    summary = (f"each layer pruned alone ({sens.get('criterion', 'magnitude')}) on {sens.get('samples', '?')} "
               f"validation rows; dense accuracy {100 * dense:.2f} %" if isinstance(dense, (int, float)) else
               "each layer pruned alone")
    if isinstance(sens.get("tolerance_points"), (int, float)) and isinstance(sens.get("target"), (int, float)):
        summary += (f"; shared tolerance {sens['tolerance_points']:.2f} points gives the chosen sparsities, "
                    f"{100 * sens['target']:.1f} % of the weights overall")
    rows = []
    for layer, points in curves.items():
        acc = {float(p[0]): float(p[1]) for p in points}
        rows.append([str(layer), _fmt_count(sizes.get(layer))]
                    + [f"{100 * acc[s]:.2f}" if s in acc else _DASH for s in levels]
                    + [f"{100 * float(chosen[layer]):.2f}" if layer in chosen else _DASH])
    headers = ["layer", "weights"] + [f"acc % @{100 * s:g}%" for s in levels] + ["chosen sparsity %"]
    return [("items", [("sensitivity", summary)]), ("table", headers, rows),
            ("plot", f"pruning sensitivity of {record['name']}", _sensitivity_png(record), record)]


# Distillation: info["history"][i]["terms"] = {term: per-epoch mean of the weighted term} (a distill stage with
# `losses`), info["teacher_agreement"] = {"combined": fraction, <teacher>: fraction, ...}. A figure block is
# ("figure", alt text, PNG file name, a function returning the PNG bytes).


def _agreement(record: dict) -> float | None:
    agreement = (record.get("info") or {}).get("teacher_agreement")
    value = agreement.get("combined") if isinstance(agreement, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _term_history(record: dict) -> list[dict]:
    """[{"epoch": e, "terms": {...}}, ...] of a record whose history has per-term means, else []."""
    history = (record.get("info") or {}).get("history")
    if not isinstance(history, list):
        return []
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("terms"), dict) and h["terms"]]


def _terms_png(record: dict) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(record["name"])).strip("-.") + "-loss-terms.png"


def _terms_blocks(record: dict) -> list[_Block]:
    history = _term_history(record)
    names = list(dict.fromkeys(k for h in history for k in h["terms"]))
    first, last = history[0], history[-1]

    def cell(h: dict, k: str) -> str:
        v = h["terms"].get(k)
        return _DASH if not isinstance(v, (int, float)) else f"{v:.4g}"

    rows = [[k, cell(first, k), cell(last, k)] for k in names]
    rows.append(["total", f"{first.get('loss', float('nan')):.4g}", f"{last.get('loss', float('nan')):.4g}"])
    headers = ["loss term (weighted)", f"epoch {first.get('epoch', 1)}", f"epoch {last.get('epoch', len(history))}"]
    return [("table", headers, rows),
            ("figure", f"loss terms of {record['name']} per epoch", _terms_png(record), lambda: _terms_plot(record))]


def _terms_plot(record: dict) -> bytes:
    """Per-epoch mean of each weighted loss term (log y when all are positive: terms differ by decades)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = _term_history(record)
    names = list(dict.fromkeys(k for h in history for k in h["terms"]))
    fig = Figure(figsize=(6, 4.2), dpi=100)  # fixed margins: a constrained layout doubles the time with a log axis
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    ax = fig.subplots()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    values = []
    for k in names:
        ys = [h["terms"].get(k) for h in history]
        ax.plot(epochs, ys, marker="o" if len(epochs) < 30 else None, markersize=3, label=k)
        values += [y for y in ys if isinstance(y, (int, float))]
    totals = [h.get("loss") for h in history]
    if len(names) > 1 and all(isinstance(t, (int, float)) for t in totals):
        ax.plot(epochs, totals, color="black", linestyle="--", linewidth=1, label="total")
        values += totals
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("per-epoch mean of the weighted term")
    ax.set_title(f"{record['name']}: distillation loss terms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]], right_from: int = 0) -> list[str]:
    align = ["---:" if i >= right_from else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict) -> str:
    """The report as markdown: the artifact table, how it was measured, and one section per artifact.

    Example:
        >>> print(render_markdown(report))                # doctest: +SKIP
    """
    headers, rows = _table(report)
    lines = [f"# torchslim report: {report.get('data', {}).get('name') or 'run'}", ""]
    lines += _md_table(headers, rows, right_from=2)
    lines += ["", "## How this was measured", ""]
    lines += [f"- **{label}**: {text}" for label, text in _notes(report)]
    lines += ["", "## Artifacts"]
    for title, blocks in _sections(report):
        lines += ["", f"### {title}", ""]
        for block in blocks:
            if block[0] == "items":
                lines += ([""] if lines[-1] else []) + [f"- {k}: {_md_cell(v)}" for k, v in block[1]]
            elif block[0] == "plot":
                lines += ["", f"![{block[1]}]({block[2]})"]
            elif block[0] == "figure":
                lines += ["", f"![{block[1]}]({block[2]})"]
            else:
                lines += [""] + _md_table(block[1], block[2], right_from=1)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { max-width: 100%; border: 1px solid #ddd; }
li { margin: 0.3em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _html_table(headers: list[str], rows: list[list[str]], right_from: int = 0) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    cell = ['<td class="num">' if i >= right_from else "<td>" for i in range(len(headers))]
    body = "".join(
        "<tr>" + "".join(f"{cell[i]}{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict, figures: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page: table, two plots (base64 PNG), notes, artifact sections.
    `figures` ({PNG file name: bytes}) are per-artifact pictures already rendered; any missing are rendered here.

    Example:
        >>> Path("report.html").write_text(render_html(report))   # doctest: +SKIP
    """
    esc = html.escape
    headers, rows = _table(report)
    title = f"torchslim report: {report.get('data', {}).get('name') or 'run'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        _html_table(headers, rows, right_from=2),
        '<div class="plots">',
    ]
    for alt, png in _plots(report):
        parts.append(f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    parts += ["</div>", "<h2>How this was measured</h2>", "<ul>"]
    parts += [f"<li><b>{esc(label)}</b>: {esc(text)}</li>" for label, text in _notes(report)]
    parts += ["</ul>", "<h2>Artifacts</h2>"]
    for name, blocks in _sections(report):
        parts.append(f"<h3>{esc(name)}</h3>")
        for block in blocks:
            if block[0] == "items":
                parts.append("<ul>" + "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in block[1]) + "</ul>")
            elif block[0] == "plot":
                png = base64.b64encode(_sensitivity_plot(block[3])).decode("ascii")
                parts.append(f'<div class="plots"><img alt="{esc(block[1])}" src="data:image/png;base64,{png}"></div>')
            elif block[0] == "figure":
                png = base64.b64encode((figures or {}).get(block[2]) or block[3]()).decode("ascii")
                parts.append(f'<div class="plots"><img alt="{esc(block[1])}" src="data:image/png;base64,{png}"></div>')
            else:
                parts.append(_html_table(block[1], block[2], right_from=1))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _plots(report: dict) -> list[tuple[str, bytes]]:
    """Two PNGs: accuracy vs lzma size, and accuracy vs p50 latency at the smallest batch size."""
    records = report["artifacts"]
    batches = _batch_keys(records)
    size = [(r, r.get("file_bytes_lzma") / 1000 if r.get("file_bytes_lzma") else None) for r in records]
    plots = [("accuracy vs lzma size", _scatter(size, "lzma size (KB, log scale)", "Accuracy vs download size"))]
    if batches:
        b = batches[0]
        lat = [(r, _p50(r, b)) for r in records]
        plots.append(
            (
                f"accuracy vs latency at batch {b}",
                _scatter(lat, f"p50 latency at batch {b} (ms, log scale)", f"Accuracy vs latency (batch {b})"),
            )
        )
    return plots


def _scatter(points: list[tuple[dict, float | None]], xlabel: str, title: str) -> bytes:
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state (and backend) untouched.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(6, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    by_runtime: dict[str, list[tuple[str, float, float]]] = {}
    for r, x in points:
        if x is not None and x > 0:
            by_runtime.setdefault(str(r["runtime"]), []).append((str(r["name"]), x, 100 * r["accuracy"]))
    k = 0
    for runtime, pts in by_runtime.items():
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], marker=_MARKERS.get(runtime, "^"), s=50, label=runtime)
        for name, x, y in pts:
            # Cycle the label offset: an exported model sits on top of its PyTorch original in the size plot.
            ax.annotate(name, (x, y), xytext=(6, (4, -11, 15)[k % 3]), textcoords="offset points", fontsize=8)
            k += 1
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.12)
    xs = [p[1] for pts in by_runtime.values() for p in pts]
    if xs:
        # Plain numbers ("200", "0.05") instead of 2×10^2; within two decades, label 1-2-3-5 steps.
        subs = (1.0,) if max(xs) / min(xs) > 100 else (1.0, 2.0, 3.0, 5.0)
        ax.xaxis.set_major_locator(LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if by_runtime:
        ax.legend(title="runtime", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Console


def print_table(report: dict, console: Any = None) -> None:
    """Print the main columns as a ``rich`` table, with the thread count and how times were taken below it.

    Example:
        >>> print_table(report)                           # doctest: +SKIP
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    console = console or Console()
    records = report["artifacts"]
    batches = _batch_keys(records)
    first = batches[0] if batches else None
    table = Table(title="torchslim report", box=box.SIMPLE_HEAD)
    table.add_column("artifact")
    table.add_column("runtime")
    for header in ["acc %", "errors", "nonzero", "MACs", "lzma KB"] + [f"p50 ms @{b}" for b in batches]:
        table.add_column(header, justify="right")
    if first is not None:
        table.add_column(f"speedup @{first}", justify="right")
    table.add_column("compression", justify="right")
    for r in records:
        row = [
            escape(str(r["name"])),  # a name like "student[int8]" would otherwise be read as rich markup
            str(r["runtime"]),
            f"{100 * r['accuracy']:.2f}",
            str(r["errors"]),
            _fmt_count(r.get("nonzero_params")),
            _fmt_si(r.get("macs")),
            _fmt_kb(r.get("file_bytes_lzma")),
        ]
        row += [_fmt_ms(_p50(r, b)) for b in batches]
        if first is not None:
            row.append(_fmt_ratio(_speedup(r, first)))
        row.append(_fmt_ratio(_compression(r)))
        table.add_row(*row)
    # Logs and pipes get rich's default 80 columns, which would cut the numbers to "1.2…"; print them whole there.
    width = console.width
    if not console.is_terminal:
        console.width = max(width, Measurement.get(console, console.options.update_width(1000), table).maximum)
    try:
        console.print(table)
    finally:
        console.width = width
    threads = report.get("threads")
    console.print(
        f"{threads} thread{'s' if threads != 1 else ''}; times are medians (p50) measured in one run, all artifacts "
        "in the same process, interleaved; speedup and compression are relative to the teacher."
    )
