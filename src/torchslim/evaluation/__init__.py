"""Measure every artifact the same way, in one process, and write the report.

Example:
    >>> records = evaluate([teacher_art, student_art, int8_art], data, student="student")   # doctest: +SKIP
    >>> report = build_report(records, recipe=recipe.model_dump(), data=data, threads=1, meta={})  # doctest: +SKIP
    >>> print_table(report); write_report(report, "runs/lenet")                             # doctest: +SKIP
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError
from torchslim.evaluation.measure import (
    LatencyConfig,
    accuracy,
    count_macs,
    count_params,
    file_sizes,
    latency,
    make_runner,
    measure_latencies,
)
from torchslim.evaluation.report import print_table, render_html, render_markdown, write_report

__all__ = [
    "LatencyConfig",
    "accuracy",
    "build_report",
    "compare",
    "count_macs",
    "count_params",
    "evaluate",
    "file_sizes",
    "latency",
    "make_runner",
    "measure_latencies",
    "print_table",
    "render_html",
    "render_markdown",
    "write_report",
]


def evaluate(
    artifacts: list[Artifact],
    data: Any,
    *,
    latency: LatencyConfig | None = None,
    teacher: str | None = "teacher",
    student: str | None = None,
) -> list[dict]:
    """One record per artifact, in order: accuracy, size, params, MACs, latency, and ratios to the baselines.

    ``data`` needs ``test`` (a dataset of (x, y)) and ``input_shape`` (C, H, W). ``teacher`` and ``student`` name
    the baseline artifacts for ``vs_teacher`` / ``vs_student``; a baseline that is None or not among the
    artifacts gives null ratios. All artifacts are timed in this process, interleaved (see
    :func:`measure_latencies`), with ``latency.threads`` threads.

    Example:
        >>> evaluate([teacher_art, int8_art], data, latency=LatencyConfig(threads=1))[1]["vs_teacher"]  # doctest: +SKIP
        {'speedup': {'1': 2.9, '64': 3.4}, 'compression': 3.9, 'compression_lzma': 4.2, 'accuracy_delta': -0.002}
    """
    cfg = latency or LatencyConfig()
    if not artifacts:
        raise TorchslimError("nothing to evaluate: the list of artifacts is empty")
    names = [a.name for a in artifacts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TorchslimError(f"artifact names must be unique; repeated: {', '.join(duplicates)}")

    threads_before = torch.get_num_threads()  # set_num_threads is process-wide: restore it afterwards
    try:
        runners = [make_runner(a, cfg.threads) for a in artifacts]
        records = []
        for artifact, run in zip(artifacts, runners):
            acc, errors, _ = accuracy(run, data.test)
            params = nonzero = macs = None
            if artifact.model is not None:
                params, nonzero = count_params(artifact.model)
                macs = count_macs(artifact.model, data.input_shape)
            size, size_lzma = file_sizes(artifact.path)
            records.append(
                {
                    "name": artifact.name,
                    "stage": artifact.stage,
                    "runtime": artifact.runtime,
                    "path": str(artifact.path),
                    "accuracy": acc,
                    "errors": errors,
                    "params": params,
                    "nonzero_params": nonzero,
                    "macs": macs,
                    "file_bytes": size,
                    "file_bytes_lzma": size_lzma,
                    "latency_ms": None,
                    "threads": cfg.threads,
                    "vs_teacher": None,
                    "vs_student": None,
                    "info": dict(artifact.info),
                }
            )
        for record, lat in zip(records, measure_latencies(runners, data.input_shape, cfg)):
            record["latency_ms"] = lat
    finally:
        torch.set_num_threads(threads_before)
    return add_baselines(records, teacher=teacher, student=student)


def add_baselines(records: list[dict], *, teacher: str | None = "teacher", student: str | None = None) -> list[dict]:
    """Fill ``vs_teacher`` / ``vs_student`` of every record (in place, and returned) from the named records.

    Example:
        >>> add_baselines(records, teacher="teacher", student="student")   # doctest: +SKIP
    """
    by_name = {r["name"]: r for r in records}
    for key, name in (("vs_teacher", teacher), ("vs_student", student)):
        baseline = by_name.get(name) if name is not None else None
        for record in records:
            record[key] = compare(record, baseline) if baseline is not None else None
    return records


def compare(record: dict, baseline: dict) -> dict:
    """Ratios of ``record`` to ``baseline``: above 1 means ``record`` is faster / smaller.

    ``speedup[b]`` = baseline p50 / record p50 at batch size ``b`` (for batch sizes both have);
    ``compression`` = baseline file bytes / record file bytes (``compression_lzma`` likewise for the lzma sizes);
    ``accuracy_delta`` = record accuracy − baseline accuracy (a fraction; negative means worse).

    Example:
        >>> a = {"latency_ms": {"1": {"p50": 2.0}}, "file_bytes": 400, "file_bytes_lzma": 300, "accuracy": 0.99}
        >>> b = {"latency_ms": {"1": {"p50": 0.5}}, "file_bytes": 100, "file_bytes_lzma": 100, "accuracy": 0.98}
        >>> compare(b, a)["speedup"], compare(b, a)["compression"]
        ({'1': 4.0}, 4.0)
    """
    lat, base_lat = record.get("latency_ms") or {}, baseline.get("latency_ms") or {}
    return {
        "speedup": {b: _ratio(base_lat[b]["p50"], lat[b]["p50"]) for b in lat if b in base_lat},
        "compression": _ratio(baseline["file_bytes"], record["file_bytes"]),
        "compression_lzma": _ratio(baseline["file_bytes_lzma"], record["file_bytes_lzma"]),
        "accuracy_delta": record["accuracy"] - baseline["accuracy"],
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def build_report(
    records: list[dict],
    *,
    recipe: dict,
    data: Any,
    threads: int,
    meta: dict,
    latency: LatencyConfig | None = None,
) -> dict:
    """The whole report as one JSON-ready dict: versions, machine, data, recipe, protocol and the records.

    ``meta`` (command line, seed, run directory, ...) is merged at the top level and must not reuse a key of
    the report. Pass ``latency``, the config the records were measured with, to have it written as
    ``latency_protocol`` (left null otherwise, rather than guessing the defaults were used).

    Example:
        >>> build_report(records, recipe={}, data=data, threads=1, meta={"seed": 0})["machine"]["torch"]  # doctest: +SKIP
        '2.13.0+cpu'
    """
    from torchslim import __version__

    protocol = None
    if latency is not None:
        protocol = asdict(latency)
        protocol.pop("threads")  # reported once, as the top-level "threads"
        protocol["batch_sizes"] = list(protocol["batch_sizes"])
    report = {
        "torchslim_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe,
        "data": {
            "name": getattr(data, "name", None),
            "source": _source(data),
            "normalization": getattr(data, "normalization", None),
            "sizes": {s: len(getattr(data, s)) for s in ("train", "val", "test") if getattr(data, s, None) is not None},
        },
        "threads": threads,
        "latency_protocol": protocol,
        "machine": _machine(),
        "artifacts": records,
    }
    clash = sorted(set(meta) & set(report))
    if clash:
        raise TorchslimError(f"report meta must not overwrite report fields: {', '.join(clash)}")
    return {**report, **meta}


def _source(data: Any) -> str | None:
    source = getattr(data, "source", None)
    return str(source) if isinstance(source, (str, Path, os.PathLike)) else source


def _machine() -> dict:
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
    }


def _cpu_name() -> str:
    # platform.processor() is empty or just "x86_64" on Linux; the model name is what makes timings comparable.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
