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
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchslim.formatting import DASH as _DASH
from torchslim.formatting import fmt_kb as _fmt_kb
from torchslim.formatting import fmt_ms as _fmt_ms
from torchslim.formatting import fmt_si as _fmt_si
from torchslim.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from torchslim.records import Record, json_text, jsonable, split_info

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


def _fmt_ratio(x: float | None) -> str:
    return _DASH if x is None else f"{x:.2f}×"


def _p50(record: dict, batch: str) -> float | None:
    return ((record.get("latency_ms") or {}).get(batch) or {}).get("p50")


def _speedup(record: dict, batch: str, vs: str = "vs_teacher") -> float | None:
    return ((record.get(vs) or {}).get("speedup") or {}).get(batch)


def _compression(record: dict, vs: str = "vs_teacher") -> float | None:
    """The headline compression: of the lzma sizes, so that a pruned model's zeros count (raw bytes are dense)."""
    return (record.get(vs) or {}).get("compression_lzma")


def _flags_text(record: dict) -> str:
    return "; ".join(record.get("flags") or []) or _DASH


def _ratio_columns(records: list[dict], batches: list[str]) -> list[tuple[str, Callable[[dict], str]]]:
    """Speedup and compression against the teacher, the student and each artifact's own source (each pair when
    any artifact has that baseline), then what the artifact was made from and its flags."""
    columns: list[tuple[str, Callable[[dict], str]]] = []
    at = " / ".join(f"@{b}" for b in batches)
    for vs, label in (("vs_teacher", "teacher"), ("vs_student", "student"), ("vs_source", "source")):
        if vs == "vs_source" and any(r.get("source") for r in records):
            columns.append(("made from", lambda r: str(r.get("source") or _DASH)))
        if vs == "vs_teacher" or any(r.get(vs) for r in records):
            columns += [
                (f"speedup vs {label} {at}", lambda r, vs=vs: " / ".join(_fmt_ratio(_speedup(r, b, vs)) for b in batches)),
                (f"compression vs {label}", lambda r, vs=vs: _fmt_ratio(_compression(r, vs))),
            ]
    if any(r.get("flags") for r in records):
        columns.append(("flags", _flags_text))
    return columns


def _pct(value: float | None) -> str:
    return _DASH if value is None else f"{100 * value:.2f}"


def _primary_columns(report: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """The primary metric and its change against the teacher, for a task whose primary metric is not accuracy
    (causal-lm: ``perplexity`` and ``perplexity vs teacher``, "+0.31 (worse)": lower is better there)."""
    records = report["artifacts"]
    metric = next((r.get("primary_metric") for r in records if r.get("primary_metric")), "accuracy")
    if metric == "accuracy":
        return []
    higher = ((report.get("data") or {}).get("task") or {}).get("higher_is_better", True)

    def value(r: dict) -> str:
        v = (r.get("metrics") or {}).get(metric)
        return _DASH if v is None else f"{v:.4g}"

    def delta(r: dict) -> str:
        d = (r.get("vs_teacher") or {}).get("metric_delta")
        if d is None:
            return _DASH
        if d == 0:
            return "±0"
        return f"{d:+.4g} ({'better' if (d > 0) == higher else 'worse'})"

    columns = [(metric, value)]
    if any((r.get("vs_teacher") or {}).get("metric_delta") is not None for r in records):
        columns.append((f"{metric} vs teacher", delta))
    return columns


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    records = report["artifacts"]
    batches = _batch_keys(records)
    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("artifact", lambda r: r["name"]),
        ("runtime", lambda r: r["runtime"]),
        *_primary_columns(report),
        ("accuracy %", lambda r: _pct(r.get("accuracy"))),
        ("errors", lambda r: _DASH if r.get("errors") is None else str(r["errors"])),
        ("params", lambda r: _fmt_count(r.get("params"))),
        ("nonzero", lambda r: _fmt_count(r.get("nonzero_params"))),
        ("MACs", lambda r: _fmt_si(r.get("macs"))),
        ("size KB (lzma)", lambda r: _fmt_kb(r.get("file_bytes_lzma"))),
        ("file KB", lambda r: _fmt_kb(r.get("file_bytes"))),
    ]
    columns += [(f"p50 ms @{b}", lambda r, b=b: _fmt_ms(_p50(r, b))) for b in batches]
    columns += _ratio_columns(records, batches)
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
            "Speedup = baseline p50 / artifact p50, against the teacher, the first student and the artifact's own "
            "source (the model it was made from: an int8 or ONNX file's float PyTorch model, a pruned model's dense "
            "one).",
        ),
        (
            "Accuracy",
            f"top-1 on the {report.get('split') or 'test'} split"
            + (" (the validation split: a search selects on it and keeps the test split unseen)"
               if report.get("split") == "val" else "")
            + ", measured by running each artifact in its own runtime "
            "(an ONNX artifact is run by ONNX Runtime, not by its PyTorch original).",
        ),
        (
            "Size",
            "size KB is the headline: the file that ships compressed with xz preset 9e (what a download costs), so "
            "that pruned zeros and narrow weights count; file KB is the raw file (1 KB = 1000 bytes). A model with no "
            "file is measured as its safetensors serialization in memory, its pruned layers as they would ship. "
            "Compression = baseline size / artifact size, both lzma.",
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
    ] + [("Flag", f"{r['name']} is {flag} (flagged beyond the noise of timing and lzma: 5 % slower or "
                  f"1 % larger).") for r in records for flag in r.get("flags") or []] \
      + [("Speed", note) for note in speed_notes(report)]


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
    return notes + _int4_vs_int8(records)


def _int4_vs_int8(records: list[dict]) -> list[str]:
    """Which is faster on this machine, int4 MatMulNBits or int8, when a report has both: CPUs differ (onnxruntime
    issue 23004 reports int4 slower than int8 on many), so the report says what it measured."""
    int4 = [r for r in records if r.get("stage") == "export_int4"]
    int8 = [r for r in records if r.get("runtime") == "onnxruntime" and r.get("stage") in ("quantize", "ptq", "qat")]
    notes = []
    for a in int4:
        for b in int8:
            for batch in _batch_keys([a, b]):
                x, y = _p50(a, batch), _p50(b, batch)
                if x is None or y is None:
                    continue
                faster = f"int8 ({b['name']}) is faster here" if y < x else f"int4 ({a['name']}) is faster here"
                notes.append(f"int4 MatMulNBits vs int8 at batch {batch}: {a['name']} {_fmt_ms(x)} ms, {b['name']} "
                             f"{_fmt_ms(y)} ms p50; {faster} (onnxruntime issue 23004 reports int4 slower than int8 "
                             f"on many CPUs: int4 saves file size, not necessarily time).")
    return notes


# An artifact section is a list of blocks: ("items", [(key, text)]), ("table", headers, rows), or ("figure", alt text,
# PNG file name, a function returning the PNG bytes).
_Block = tuple


def _png_name(artifact: str, slug: str) -> str:
    """A figure's file name beside the report: the artifact name made safe for a path and a markdown link."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(artifact)).strip("-.") + f"-{slug}.png"


def _flat(value: Any, prefix: str = "") -> list[list[str]]:
    """``[key, text]`` rows of a nested mapping, nested keys joined by dots (``train.epochs``); a list of numbers or
    strings as one comma-separated cell."""
    if isinstance(value, dict) and value:
        return [row for k, v in value.items() for row in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) or v is None for v in value):
        return [[prefix, ", ".join(map(str, value)) or "(none)"]]
    return [[prefix, _cell(value)]]


def _readable(key: str, value: Any) -> list[_Block]:
    """A free-form fact (or a record's row holding a JSON object, such as a config) as a section shows it: a
    ``key: value`` row for a plain value, a table of its fields for a mapping, a table with one row per entry for a
    list of mappings (an epoch history) — never a cut line of JSON."""
    if isinstance(value, str) and value.startswith(("{", "[")):
        try:
            value = json.loads(value)
        except ValueError:
            return [("items", [(key, value)])]
    if isinstance(value, dict) and value:
        return [("table", [key, "value"], _flat(value))]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        fields = list(dict.fromkeys(k for v in value for k in v))
        return [("table", fields, [[_cell(v.get(f)) for f in fields] for v in value])]
    return [("items", [(key, value if isinstance(value, str) else json_text(value, limit=300))])]


def _cell(value: Any) -> str:
    if value is None:
        return _DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json_text(value, limit=300)


def _sections(report: dict) -> list[tuple[str, list[_Block]]]:
    sections = []
    for r in report["artifacts"]:
        records, facts = _records(r)
        name = str(r["name"])
        items = [("stage", str(r.get("stage"))), ("runtime", str(r.get("runtime"))), ("file", str(r.get("path")))]
        if r.get("source"):
            items.append(("made from", str(r["source"])))
        tables: list[_Block] = []
        rows = [row for rec in records for row in rec.summary()] + list(facts.items())
        for key, value in rows:
            for block in _readable(str(key), value):
                if block[0] == "items":
                    items += block[1]
                else:
                    tables.append(block)
        items += [("flag", flag) for flag in r.get("flags") or []]
        blocks: list[_Block] = [("items", items), *tables]
        for rec in records:
            blocks += [("table", headers, rows) for headers, rows in rec.tables()]
            blocks += [("figure", fig.title, _png_name(name, fig.slug), fig.render) for fig in rec.figures(name)]
        sections.append((name, blocks))
    return sections


# Generated text (causal-lm): what each artifact writes after the same prompt, with the same seed


def _samples(report: dict) -> tuple[str, list[tuple[str, str]]] | None:
    """(how the samples were drawn, [(artifact, prompt + its continuation)]), or None when no record has one."""
    found = [(str(r["name"]), r["sample"]) for r in report["artifacts"] if isinstance(r.get("sample"), dict)]
    if not found:
        return None
    first = found[0][1]
    how = (f"Each artifact continues the same prompt ({len(first.get('prompt', ''))} characters from the test split) "
           f"by {first.get('max_new_tokens')} tokens sampled at temperature {first.get('temperature')}"
           f"{'' if first.get('top_k') is None else ', top-k ' + str(first['top_k'])}, seed {first.get('seed')}, "
           f"run in its own runtime; each block is the prompt, then the artifact's continuation.")
    return how, [(name, str(sample.get("prompt", "")) + str(sample.get("text", ""))) for name, sample in found]


def _md_samples(report: dict) -> list[str]:
    samples = _samples(report)
    if not samples:
        return []
    lines = ["", "## Generated text", "", samples[0]]
    for name, text in samples[1]:
        fence = "````" if "```" in text else "```"
        lines += ["", f"**{_md_cell(name)}**", "", fence + "text", text.rstrip("\n"), fence]
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_TEXT_COLUMNS = ("made from", "flags")  # text columns of the main table, left-aligned among the numbers


def _numeric(headers: list[str], right_from: int) -> list[bool]:
    return [i >= right_from and h not in _TEXT_COLUMNS for i, h in enumerate(headers)]


def _md_table(headers: list[str], rows: list[list[str]], right_from: int = 0) -> list[str]:
    align = ["---:" if num else "---" for num in _numeric(headers, right_from)]
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
    lines += _md_samples(report)
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
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1800px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flags { min-width: 16em; color: #a33; }
.wide { overflow-x: auto; }
.wide table { font-size: 0.82em; }
.wide th, .wide td { padding: 0.3em 0.45em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { max-width: 100%; border: 1px solid #ddd; }
li { margin: 0.3em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _html_table(headers: list[str], rows: list[list[str]], right_from: int = 0) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    cell = ['<td class="num">' if num else f'<td class="{h}">' if h in _TEXT_COLUMNS else "<td>"
            for h, num in zip(headers, _numeric(headers, right_from))]
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
        f'<div class="wide">{_html_table(headers, rows, right_from=2)}</div>',
        '<div class="plots">',
    ]
    for alt, png in _plots(report):
        parts.append(f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    parts.append("</div>")
    samples = _samples(report)
    if samples:
        parts += [f"<h2>Generated text</h2><p>{esc(samples[0])}</p>"]
        parts += [f"<h3>{esc(name)}</h3><pre>{esc(text)}</pre>" for name, text in samples[1]]
    parts += ["<h2>How this was measured</h2>", "<ul>"]
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
    """Two PNGs: accuracy vs lzma size, and accuracy vs p50 latency with one panel per measured batch size."""
    records = report["artifacts"]
    batches = _batch_keys(records)
    size = [(r, r.get("file_bytes_lzma") / 1000 if r.get("file_bytes_lzma") else None) for r in records]
    plots = [("accuracy vs lzma size",
              _png(_scatter_figure([(size, "size, lzma (KB, log scale)", "")], "Accuracy vs download size")))]
    if batches:
        panels = [([(r, _p50(r, b)) for r in records], "p50 latency (ms, log scale)", f"batch {b}") for b in batches]
        plots.append((f"accuracy vs latency at batch {', '.join(batches)}",
                      _png(_scatter_figure(panels, "Accuracy vs latency"))))
    return plots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_NEAR = 0.05  # points closer than this (in fractions of the axes, both ways) are drawn as one group with one label


def _groups(points: list[tuple[str, str, float, float]]) -> list[list[tuple[str, str, float, float]]]:
    """Points (name, runtime, x, y) that would sit on one another, grouped: by log x and y, in fractions of the
    panel's ranges (an fp32 ONNX export and its PyTorch original often share size and accuracy)."""
    if not points:
        return []
    lx = [math.log10(p[2]) for p in points]
    ys = [p[3] for p in points]
    wx, wy = (max(lx) - min(lx)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[int]] = []
    for i in range(len(points)):
        for g in groups:
            if any(abs(lx[i] - lx[j]) / wx < _NEAR and abs(ys[i] - ys[j]) / wy < _NEAR for j in g):
                g.append(i)
                break
        else:
            groups.append([i])
    return [[points[i] for i in g] for g in groups]


def _scatter_figure(panels: list[tuple[list[tuple[dict, float | None]], str, str]], title: str) -> Any:
    """A matplotlib Figure: one panel per ``(points, x label, panel title)``, accuracy (%) up, log x, a marker
    shape per runtime. Points that coincide are spread a little sideways and share one label naming them all; the
    x ticks are thinned until no two tick labels overlap."""
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state (and backend) untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 4.8 * len(panels)), 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    runtimes: dict[str, Any] = {}
    for ax, (points, xlabel, subtitle) in zip(axes, panels):
        pts = [(str(r["name"]), str(r["runtime"]), x, 100 * r["accuracy"]) for r, x in points
               if x is not None and x > 0 and r.get("accuracy") is not None]
        for k, group in enumerate(_groups(pts)):
            span = math.log10(max(p[2] for p in pts) / min(p[2] for p in pts)) or 1.0
            for i, (name, runtime, x, y) in enumerate(group):
                # Sideways by 1.5 % of the panel per extra point: the markers stay visible, the values barely move.
                shift = 10 ** ((i - (len(group) - 1) / 2) * 0.015 * span)
                color = f"C{list(runtimes).index(runtime) if runtime in runtimes else len(runtimes)}"
                runtimes[runtime] = ax.scatter([x * shift], [y], marker=_MARKERS.get(runtime, "^"), s=55,
                                               facecolors="none", edgecolors=color, linewidths=1.6, label=runtime)
            x = math.exp(sum(math.log(p[2]) for p in group) / len(group))
            y = sum(p[3] for p in group) / len(group)
            label = "\n".join(p[0] for p in group)
            # Cycle the label offset so that labels of neighbouring groups do not sit on one another.
            ax.annotate(label, (x, y), xytext=(8, (4, -12, 14)[k % 3]), textcoords="offset points", fontsize=8,
                        va="center")
        ax.set_xscale("log")
        ax.margins(x=0.18, y=0.15)
        ax.set_xlabel(xlabel)
        if subtitle:
            ax.set_title(subtitle, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(title)
    if runtimes:
        axes[-1].legend(list(runtimes.values()), list(runtimes), title="runtime", fontsize=8, loc="best")
    for ax in axes:
        _fit_ticks(fig, ax)
    return fig


def _fit_ticks(fig: Any, ax: Any) -> None:
    """Plain x tick numbers ("200", "0.05"), as many as fit: 1-2-3-5 steps, then 1-2-5, then decades, then every
    other decade, whichever first leaves no two tick labels overlapping."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    for subs, numticks in (((1.0, 2.0, 3.0, 5.0), 12), ((1.0, 2.0, 5.0), 10), ((1.0,), 8), ((1.0,), 4)):
        ax.xaxis.set_major_locator(LogLocator(subs=subs, numticks=numticks))
        if not overlapping_labels(fig, ax):
            return


def overlapping_labels(fig: Any, ax: Any = None) -> list[tuple[str, str]]:
    """Pairs of x tick labels of `ax` (every axes of `fig` when None) whose drawn boxes overlap, plus the axis labels
    that overlap a tick label; empty when the figure reads cleanly."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # lays out the ticks the locator picks for the final limits
    pairs = []
    for a in [ax] if ax is not None else fig.axes:
        lo, hi = a.get_xlim()
        ticks = [t for t in a.xaxis.get_major_ticks() if t.label1.get_visible() and t.label1.get_text()
                 and lo <= t.get_loc() <= hi]
        boxes = [(t.label1.get_text(), t.label1.get_window_extent(renderer)) for t in ticks]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i][1].overlaps(boxes[j][1]):
                    pairs.append((boxes[i][0], boxes[j][0]))
        label = a.xaxis.label.get_window_extent(renderer)
        pairs += [(text, a.xaxis.label.get_text()) for text, box in boxes if box.overlaps(label)]
    return pairs


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
    table = Table(title="torchslim report", box=box.SIMPLE_HEAD)
    table.add_column("artifact")
    table.add_column("runtime")
    columns: list[tuple[str, Callable[[dict], str]]] = [
        *_primary_columns(report),
        ("acc %", lambda r: _pct(r.get("accuracy"))),
        ("errors", lambda r: _DASH if r.get("errors") is None else str(r["errors"])),
        ("nonzero", lambda r: _fmt_count(r.get("nonzero_params"))),
        ("MACs", lambda r: _fmt_si(r.get("macs"))),
        ("size KB (lzma)", lambda r: _fmt_kb(r.get("file_bytes_lzma"))),
        ("file KB", lambda r: _fmt_kb(r.get("file_bytes"))),
    ]
    columns += [(f"p50 ms @{b}", lambda r, b=b: _fmt_ms(_p50(r, b))) for b in batches]
    columns += [c for c in _ratio_columns(records, batches) if c[0] != "flags"]  # flags: whole lines below
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "made from" else "right")
    for r in records:
        # escape: a name like "student[int8]" would otherwise be read as rich markup
        table.add_row(escape(str(r["name"])), str(r["runtime"]), *(escape(f(r)) for _, f in columns))
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
        "in the same process, interleaved; speedup and compression (of the lzma sizes) are relative to the teacher, "
        "the first student and each artifact's own source (the model it was made from)."
    )
    for r in records:
        for flag in r.get("flags") or []:
            console.print(f"[bold yellow]flag[/]: {escape(str(r['name']))} is {escape(flag)}")
