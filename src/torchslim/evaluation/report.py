"""Writers for the report built by :func:`torchslim.evaluation.build_report`: JSON, markdown, HTML and a console table.

The markdown and HTML files show the same content: one table over all artifacts, notes on how each number was
measured (including :func:`speed_notes`: every quantized artifact that is not faster than its fp32 source, and why
it may not be), and a section per artifact with what its stage reported. The HTML file is self-contained (inline
CSS, plots embedded as base64 PNG), so it can be mailed or archived as one file.

What a stage reports are typed records (:mod:`torchslim.records`) in the artifact's ``info``, under their kind. This
module knows none of them: it asks each record for its rows, tables, plots (each written as
``<artifact>-<slug>.png`` beside ``report.md``, which links it, and embedded in the HTML) and main-table columns, and
lists the other ``info`` keys as ``key: value``.

Example:
    >>> paths = write_report(report, "runs/lenet")       # doctest: +SKIP
    >>> sorted(paths)                                  # doctest: +SKIP
    ['html', 'json', 'md']
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchslim.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from torchslim.records import Record, json_text, jsonable, split_info

_DASH = "—"
_MARKERS = {"pytorch": "o", "onnxruntime": "s"}


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir`` (each atomically).

    Example:
        >>> write_report(report, "runs/lenet")["html"]    # doctest: +SKIP
        PosixPath('runs/lenet/report.html')
    """
    out = Path(out_dir)
    report = jsonable(report)  # records, numpy scalars or tuples in `info` would otherwise break or change on reload
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_json(paths["json"], report)
    figures: dict[str, bytes] = {}  # rendered once: written beside report.md (which links them), embedded in the HTML
    for _, blocks in _sections(report):
        for block in blocks:
            if block[0] == "figure":
                figures[block[2]] = block[3]()
                atomic_write_bytes(out / block[2], figures[block[2]])
    atomic_write_text(paths["md"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report, figures))
    return paths


def _records(record: dict) -> tuple[list[Record], dict]:
    """(the typed records of an artifact record, its other info keys)."""
    return split_info(record.get("info") or {})


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
    # Columns the records add (a distill stage's teacher agreement), for every artifact, when any artifact has one.
    extra = {id(r): {k: v for rec in _records(r)[0] for k, v in rec.columns().items()} for r in records}
    for header in dict.fromkeys(h for cells in extra.values() for h in cells):
        columns.append((header, lambda r, h=header: extra[id(r)].get(h, _DASH)))
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
        elif key == "classes":  # the label names, as the data named them
            value = " / ".join(map(str, value[:20])) + (f" / … ({len(value)} in all)" if len(value) > 20 else "")
        elif isinstance(value, (list, tuple)):
            value = "×".join(map(str, value))
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "; task: " + ", ".join(parts)


# Speed notes: is every quantized artifact faster than the float model it came from?

_QUANT_STAGES = ("quantize", "ptq", "qat")
_TINY_MACS = 20e6  # MACs per call below which fixed per-call costs (session run, conversions) rival the arithmetic


def _is_quantized(record: dict) -> bool:
    """A record of it says so (``Record.quantized``), or a quantizing stage made it."""
    return any(rec.quantized for rec in _records(record)[0]) or record.get("stage") in _QUANT_STAGES


def _sources(records: list[dict]) -> list[str | None]:
    """The PyTorch model each record was made from: the one a record of it names (``Record.made_from()``), else the
    record itself for a float PyTorch artifact, else the nearest PyTorch artifact before it (a pipeline stage starts
    from the current model, which is the last PyTorch artifact)."""
    sources, last = [], None
    for r in records:
        own = r.get("runtime") == "pytorch" and not _is_quantized(r)  # a float PyTorch model is its own source
        if own:
            last = r["name"]
        named = next((rec.made_from() for rec in _records(r)[0] if rec.made_from()), None)
        sources.append(named or (r["name"] if own else last))
    return sources


def _reasons(record: dict, batch: str) -> list[str]:
    reasons = [reason for rec in _records(record)[0] for reason in rec.speed_reasons()]
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
    PyTorch model; a record may name the source, e.g. ``QuantizationRecord.source``, else it is the last float
    PyTorch artifact before it, as in a pipeline), with the likely reasons its records give
    (``Record.speed_reasons()``: layers left in float, dynamic quantization, ...) and whether the model is tiny.

    Example:
        >>> report = {"artifacts": [
        ...     {"name": "teacher", "runtime": "pytorch", "macs": 800_000, "latency_ms": {"1": {"p50": 0.05}}},
        ...     {"name": "onnx", "stage": "export", "runtime": "onnxruntime", "latency_ms": {"1": {"p50": 0.018}}},
        ...     {"name": "int8", "stage": "ptq", "runtime": "onnxruntime", "macs": 800_000,
        ...      "info": {"quantization": {"kernels": {"QLinearConv": 2}}}, "latency_ms": {"1": {"p50": 0.020}}}]}
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


# An artifact section is a list of blocks: ("items", [(key, text)]), ("table", headers, rows), or ("figure", alt text,
# PNG file name, a function returning the PNG bytes).
_Block = tuple


def _png_name(artifact: str, slug: str) -> str:
    """A figure's file name beside the report: the artifact name made safe for a path and a markdown link."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(artifact)).strip("-.") + f"-{slug}.png"


def _sections(report: dict) -> list[tuple[str, list[_Block]]]:
    sections = []
    for r in report["artifacts"]:
        records, facts = _records(r)
        name = str(r["name"])
        items = [("stage", str(r.get("stage"))), ("runtime", str(r.get("runtime"))), ("file", str(r.get("path")))]
        items += [row for rec in records for row in rec.summary()]
        items += [(str(key), json_text(value)) for key, value in facts.items()]
        blocks: list[_Block] = [("items", items)]
        for rec in records:
            blocks += [("table", headers, rows) for headers, rows in rec.tables()]
            blocks += [("figure", fig.title, _png_name(name, fig.slug), fig.render) for fig in rec.figures(name)]
        sections.append((name, blocks))
    return sections


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
