"""Compare finished runs: one table over the artifacts of several run directories, and one HTML page that puts them
on the same accuracy-vs-size and accuracy-vs-latency axes.

Each run directory holds the ``report.json`` that ``torchslim run`` wrote. Numbers are read from it as they are, never
re-measured, so latencies of two runs are comparable only when both were measured alike: :func:`compare_runs` checks
what each report says about its machine (CPU, CPU count, platform), its thread count and its torchslim, PyTorch and
ONNX Runtime versions, and says in :attr:`Comparison.warnings` where they differ (the CLI prints each on stderr; the
HTML page shows them in a banner above the table). Keys a report lacks are read as "not recorded", never an error.

Example:
    >>> comparison = compare_runs(["runs/t4", "runs/t8"], out="compare.html")   # doctest: +SKIP
    >>> print(comparison.table())                                                # doctest: +SKIP
    >>> comparison.warnings                                                      # doctest: +SKIP
    []
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.errors import TorchslimError
from torchslim.formatting import DASH as _DASH
from torchslim.formatting import fmt_kb as _fmt_kb
from torchslim.formatting import fmt_ms as _fmt_ms
from torchslim.formatting import fmt_si as _fmt_si

__all__ = ["Comparison", "Run", "compare_runs"]

_FRACTIONS = ("accuracy", "macro_f1")  # metrics stored as fractions and shown as percentages
# Markers for runs (colours come from matplotlib's cycle), so a printout in grey still tells the runs apart.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclass
class Run:
    """One run directory: the name it goes by in the comparison, and its ``report.json`` as read."""

    name: str
    path: Path
    report: dict

    @property
    def artifacts(self) -> list[dict]:
        return [a for a in self.report.get("artifacts") or [] if isinstance(a, dict)]


@dataclass
class Comparison:
    """The runs being compared, what differs in how they were measured, and where the HTML page went.

    ``rows()`` gives one row per artifact (``run/artifact``) with the columns of ``headers()``; ``table()`` is the
    same as aligned text; ``html()`` is the self-contained page that ``compare_runs(out=...)`` writes.
    """

    runs: list[Run]
    warnings: list[str] = field(default_factory=list)
    html_path: Path | None = None

    def batch_sizes(self) -> list[str]:
        """Every latency batch size any artifact was timed at, smallest first (as report.json keys: "1", "64")."""
        keys = {k for run in self.runs for a in run.artifacts for k in (a.get("latency_ms") or {})}
        return sorted(keys, key=_int_or_inf)

    def metric(self) -> str:
        """The primary metric's name when every artifact has the same one, else "primary metric"."""
        names = {_metric_name(a) for run in self.runs for a in run.artifacts}
        return names.pop() if len(names) == 1 else "primary metric"

    def headers(self) -> list[str]:
        batches = self.batch_sizes()
        metric = self.metric()
        return (["run/artifact", "runtime", f"{metric} %" if metric in _FRACTIONS else metric,
                 "file KB", "lzma KB", "MACs"]
                + [f"p50 ms @{b}" for b in batches]
                + [f"speedup @{b}" for b in batches]
                + ["compression (lzma)"])

    def rows(self) -> list[list[str]]:
        """One row per artifact, in run order then report order. Speedup and compression are each run's own (its
        artifact vs its teacher, measured in the same process), so they stay fair when the runs' machines differ."""
        batches = self.batch_sizes()
        mixed = self.metric() == "primary metric"
        rows = []
        for run in self.runs:
            for a in run.artifacts:
                name, value = _metric_name(a), _metric_value(a)
                text = _fmt_metric(name, value, percent_sign=False)
                vs_teacher = a.get("vs_teacher") if isinstance(a.get("vs_teacher"), dict) else {}
                speedups = vs_teacher.get("speedup") if isinstance(vs_teacher.get("speedup"), dict) else {}
                rows.append(
                    [f"{run.name}/{a.get('name', '?')}", str(a.get("runtime") or _DASH),
                     f"{name} {_fmt_metric(name, value)}" if mixed else text,
                     _fmt_kb(a.get("file_bytes")), _fmt_kb(a.get("file_bytes_lzma")), _fmt_si(a.get("macs"))]
                    + [_fmt_ms(_p50(a, b)) for b in batches]
                    + [_fmt_ratio(speedups.get(b)) for b in batches]
                    # lzma sizes, as the report's headline: pruned zeros count
                    + [_fmt_ratio(vs_teacher.get("compression_lzma", vs_teacher.get("compression")))]
                )
        return rows

    def table(self) -> str:
        """The comparison as aligned plain text (the warnings are in :attr:`warnings`; ``str()`` adds them).

        Example:
            >>> print(compare_runs(["runs/a", "runs/b"]).table())    # doctest: +SKIP
        """
        headers, rows = self.headers(), self.rows()
        widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

        def line(cells: list[str]) -> str:
            # The first two columns (names) read left-aligned; numbers line up on the right.
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        lines = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
        lines += ["", "speedup and compression: each artifact vs the teacher of its own run (same process)."]
        return "\n".join(lines)

    def __str__(self) -> str:
        """The table, then each warning (``torchslim compare`` prints the warnings on stderr instead)."""
        return "\n".join([self.table()] + [f"warning: {w}" for w in self.warnings])

    def html(self) -> str:
        """The comparison as one self-contained HTML page: a warning banner (when the runs were measured
        differently), the table, one accuracy-vs-size plot and one accuracy-vs-latency plot per batch size, each with
        one colour and marker per run, and where each run came from."""
        esc = html.escape
        title = "torchslim comparison: " + ", ".join(run.name for run in self.runs)
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
        if self.warnings:
            parts.append('<div class="warning" role="alert"><b>Not measured alike</b> — compare latencies across '
                         "these runs with care:<ul>"
                         + "".join(f"<li>{esc(w)}</li>" for w in self.warnings) + "</ul></div>")
        parts.append(_html_table(self.headers(), self.rows()))
        parts.append("<p>Speedup and compression: each artifact vs the teacher of its own run, measured in the same "
                     "process.</p>")
        parts.append('<div class="plots">')
        for alt, png in self._plots():
            parts.append(f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
        parts += ["</div>", "<h2>Runs</h2>", "<ul>"]
        for run in self.runs:
            parts.append(f"<li><b>{esc(run.name)}</b>: <code>{esc(str(run.path))}</code> — "
                         f"{esc(_describe(run))}</li>")
        parts.append("</ul></body></html>")
        return "\n".join(parts) + "\n"

    def write_html(self, path: str | os.PathLike) -> Path:
        """Write :meth:`html` to `path` (atomically; folders are created) and return the path."""
        from torchslim.io import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.html())
        self.html_path = path
        return path

    def _plots(self) -> list[tuple[str, bytes]]:
        metric = self.metric()
        label = f"{metric} (%)" if metric in _FRACTIONS else metric
        size = {run.name: [(a, _kb(a.get("file_bytes_lzma"))) for a in run.artifacts] for run in self.runs}
        plots = [("accuracy vs lzma size", _scatter(size, "lzma size (KB, log scale)", label,
                                                    f"{label} vs download size"))]
        for b in self.batch_sizes():
            lat = {run.name: [(a, _p50(a, b)) for a in run.artifacts] for run in self.runs}
            plots.append((f"accuracy vs latency at batch {b}",
                          _scatter(lat, f"p50 latency at batch {b} (ms, log scale)", label,
                                   f"{label} vs latency (batch {b})")))
        return plots


def compare_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> Comparison:
    """Read the ``report.json`` of each run directory and compare them; with `out`, write the HTML page there.

    A directory that holds no ``report.json``, or one that is not valid JSON or not a torchslim report, raises
    :class:`TorchslimError` naming it. A path to a ``report.json`` itself is taken as its folder. Runs are named by
    their folder's name (with as many parent folders as it takes to tell two apart).

    Example:
        >>> c = compare_runs(["runs/t4", "runs/t8"], out="compare.html")   # doctest: +SKIP
        >>> print(c.table()); print(*c.warnings, sep="\\n")                   # doctest: +SKIP
    """
    if not run_dirs:
        raise TorchslimError("compare: give at least one run directory (a folder holding report.json)")
    paths = [_run_dir(p) for p in run_dirs]
    seen: dict[Path, str] = {}
    for given, path in zip(run_dirs, paths):
        key = path.resolve()
        if key in seen:
            raise TorchslimError(f"compare: {given} is the same run as {seen[key]}; give each run once")
        seen[key] = str(given)
    names = _names(paths)
    runs = [Run(name, path, _read_report(path)) for name, path in zip(names, paths)]
    comparison = Comparison(runs, _warnings(runs))
    if out is not None:
        comparison.write_html(out)
    return comparison


# ----------------------------------------------------------------------------------------------------------------
# Reading runs


def _run_dir(given: str | os.PathLike) -> Path:
    path = Path(given)
    if path.name == "report.json" and path.is_file():
        return path.parent
    if not path.exists():
        raise TorchslimError(f"compare: {given}: no such folder (give run directories written by `torchslim run`)")
    if not path.is_dir():
        raise TorchslimError(f"compare: {given} is a file, not a run directory (a folder holding report.json)")
    if not (path / "report.json").is_file():
        raise TorchslimError(f"compare: {given} is not a run: it holds no report.json (written at the end of "
                             f"`torchslim run`; an unfinished run has none yet)")
    return path


def _read_report(path: Path) -> dict:
    file = path / "report.json"
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TorchslimError(f"compare: {file} is corrupt: not valid JSON (line {e.lineno}, column {e.colno}: "
                             f"{e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TorchslimError(f"compare: cannot read {file}: {e}") from None
    artifacts = report.get("artifacts") if isinstance(report, dict) else None
    if not isinstance(artifacts, list) or not all(isinstance(a, dict) and "name" in a for a in artifacts):
        raise TorchslimError(f"compare: {file} is not a torchslim report: it needs an 'artifacts' list of records "
                             f"with a 'name' each")
    return report


def _names(paths: list[Path]) -> list[str]:
    """Each run's folder name, with parent folders added until no two runs share a name."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # unreachable: distinct resolved paths differ in some suffix


# ----------------------------------------------------------------------------------------------------------------
# Were the runs measured alike?

# (what differs, how to read it from a report) — latency depends on each; accuracy does not.
_MEASURED_BY: list[tuple[str, Any]] = [
    ("machines", lambda r: _machine_text(_section(r, "machine"))),
    ("thread counts", lambda r: r.get("threads")),
    ("torchslim versions", lambda r: r.get("torchslim_version")),
    ("PyTorch versions", lambda r: _section(r, "machine").get("torch")),
    ("ONNX Runtime versions", lambda r: _section(r, "machine").get("onnxruntime")),
]


def _warnings(runs: list[Run]) -> list[str]:
    """One sentence per way the runs were measured differently (a value a report lacks counts as its own value,
    "not recorded": a run whose machine is unknown cannot be assumed to match)."""
    if len(runs) < 2:
        return []
    out = []
    for what, read in _MEASURED_BY:
        values = [read(run.report) for run in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            each = "; ".join(f"{run.name}: {'not recorded' if v is None else v}" for run, v in zip(runs, values))
            out.append(f"runs measured with different {what} ({each}); latencies and speedups across runs are not "
                       f"comparable")
    return out


def _section(report: dict, key: str) -> dict:
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def _machine_text(machine: dict) -> str | None:
    """The CPU model, CPU count and platform: what decides how fast the same model runs."""
    if not machine or not any(machine.get(k) for k in ("processor", "cpu_count", "platform")):
        return None
    return (f"{machine.get('processor') or '?'}, {machine.get('cpu_count') or '?'} CPUs, "
            f"{machine.get('platform') or '?'}")


def _describe(run: Run) -> str:
    r = run.report
    data = _section(r, "data")
    return (f"data {data.get('name') or _DASH}; {_machine_text(_section(r, 'machine')) or 'machine not recorded'}; "
            f"threads {r.get('threads', _DASH)}; torchslim {r.get('torchslim_version', _DASH)}; "
            f"created {r.get('created', _DASH)}")


# ----------------------------------------------------------------------------------------------------------------
# Values and formatting (report.json keys, read defensively: another version may lack or add some)


def _int_or_inf(key: str) -> float:
    try:
        return int(key)
    except (TypeError, ValueError):
        return float("inf")


def _metric_name(a: dict) -> str:
    return str(a.get("primary_metric") or "accuracy")


def _metric_value(a: dict) -> float | None:
    name = _metric_name(a)
    metrics = a.get("metrics") if isinstance(a.get("metrics"), dict) else {}
    value = metrics.get(name, a.get("accuracy") if name == "accuracy" else None)
    return value if isinstance(value, (int, float)) else None


def _plot_value(a: dict) -> float | None:
    value = _metric_value(a)
    return None if value is None else (100 * value if _metric_name(a) in _FRACTIONS else value)


def _p50(a: dict, batch: str) -> float | None:
    entry = (a.get("latency_ms") or {}).get(batch)
    value = entry.get("p50") if isinstance(entry, dict) else None
    return value if isinstance(value, (int, float)) else None


def _kb(n: Any) -> float | None:
    return n / 1000 if isinstance(n, (int, float)) and n > 0 else None


def _fmt_metric(name: str, value: float | None, percent_sign: bool = True) -> str:
    if value is None:
        return _DASH
    if name in _FRACTIONS:
        return f"{100 * value:.2f}" + ("%" if percent_sign else "")
    return f"{value:.4g}"


def _fmt_ratio(x: Any) -> str:
    return f"{x:.2f}×" if isinstance(x, (int, float)) else _DASH


# ----------------------------------------------------------------------------------------------------------------
# HTML and plots

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { max-width: 100%; border: 1px solid #ddd; }
.warning { background: #fff4d6; border: 1px solid #e0b000; padding: 0.6em 1em; margin: 1em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{"" if i < 2 else " class=num"}>{esc(c)}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _scatter(points: dict[str, list[tuple[dict, float | None]]], xlabel: str, ylabel: str, title: str) -> bytes:
    """One scatter plot, log x: one colour and marker per run (the legend), each point labelled with its artifact."""
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state (and backend) untouched.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    xs, k = [], 0
    for i, (run, pts) in enumerate(points.items()):
        shown = [(str(a.get("name")), x, y) for a, x in pts if x is not None and x > 0
                 and (y := _plot_value(a)) is not None]
        if not shown:
            continue
        ax.scatter([p[1] for p in shown], [p[2] for p in shown], marker=_MARKERS[i % len(_MARKERS)], s=50,
                   color=f"C{i % 10}", label=run, alpha=0.85)
        for name, x, y in shown:
            # Cycle the label offset: an exported model sits on top of its PyTorch original in the size plot.
            ax.annotate(name, (x, y), xytext=(6, (4, -11, 15)[k % 3]), textcoords="offset points", fontsize=8,
                        color=f"C{i % 10}")
            k += 1
        xs += [p[1] for p in shown]
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    if xs:
        # Plain numbers ("200", "0.05") instead of 2×10^2; within two decades, label 1-2-3-5 steps.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if max(xs) / min(xs) > 100 else (1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(title="run", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
