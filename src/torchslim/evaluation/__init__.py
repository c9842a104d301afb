"""Measure every artifact the same way, in one process, and write the report.

Example:
    >>> records = evaluate([teacher_art, student_art, int8_art], data, student="student")   # doctest: +SKIP
    >>> report = build_report(records, recipe=recipe.model_dump(), data=data, threads=1, meta={})  # doctest: +SKIP
    >>> print_table(report); write_report(report, "runs/lenet")                             # doctest: +SKIP
    >>> print(evaluate({"teacher": teacher, "int8": "int8.onnx"}, task, test_loader))       # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError
from torchslim.evaluation.measure import (
    LatencyConfig,
    accuracy,
    count_macs,
    count_params,
    example_batch,
    file_sizes,
    latency,
    logits_and_labels,
    make_runner,
    measure_latencies,
    memory_sizes,
)
from torchslim.evaluation.report import (_is_quantized, print_table, render_html, render_markdown, speed_notes,
                                         write_report)
from torchslim.tasks import ImageClassification, Task

__all__ = [
    "Evaluation",
    "LatencyConfig",
    "accuracy",
    "add_baselines",
    "add_sources",
    "build_report",
    "compare",
    "count_macs",
    "count_params",
    "evaluate",
    "example_batch",
    "file_sizes",
    "format_table",
    "latency",
    "machine_info",
    "make_runner",
    "measure_latencies",
    "memory_sizes",
    "print_table",
    "render_html",
    "render_markdown",
    "speed_notes",
    "write_report",
]

IN_MEMORY = "safetensors serialization in memory (no file)"  # a record's size_source for a model without a file


class Evaluation(list):
    """The records of :func:`evaluate`, one dict per artifact in order (a plain list to code that reads them), plus
    :meth:`table`, which ``print`` shows.

    Example:
        >>> print(evaluate({"teacher": teacher, "student": student}, task, test_loader))   # doctest: +SKIP
    """

    def __init__(self, records: Sequence[dict] = (), task: Task | None = None) -> None:
        super().__init__(records)
        self.task = task

    def table(self) -> str:
        """A plain-text table: name, runtime, primary metric, params / nonzero, MACs, file bytes, latency p50 per
        batch size, and the speedup over the first entry."""
        return format_table(list(self))

    def __str__(self) -> str:
        return self.table()


def evaluate(
    artifacts: Sequence[Artifact | nn.Module] | Mapping[str, nn.Module | Artifact | str | os.PathLike],
    data: Any,
    test: Any = None,
    *,
    latency: LatencyConfig | None = None,
    teacher: str | None = "teacher",
    student: str | None = None,
) -> Evaluation:
    """One record per artifact, in order: metrics, size, params, MACs, latency, and ratios to the baselines.

    `artifacts` is a list of :class:`~torchslim.artifact.Artifact` (or bare modules), or a mapping of names to an
    ``nn.Module`` (run in PyTorch eager; its size is that of its safetensors serialization, measured in memory), an
    Artifact, or the path of an ``.onnx`` file (run in ONNX Runtime). `data` is a DataBundle (its task and test
    split), a :class:`~torchslim.tasks.Task` with the test data in `test` (a DataLoader or re-iterable of
    ``(inputs, labels)`` batches, or a TensorDataset), or anything with ``test`` and ``input_shape`` (images).
    Metrics are the task's (``metrics`` in each record, and ``primary_metric``; ``accuracy`` and ``errors`` as
    always); latency and MACs run on the task's example inputs (images: standard normal; text: full-length token
    ids). ``teacher`` and ``student`` name the baseline artifacts for ``vs_teacher`` / ``vs_student``; a baseline
    that is None or not among the artifacts gives null ratios. All artifacts are timed in this process,
    interleaved (see :func:`measure_latencies`), with ``latency.threads`` threads.

    Example:
        >>> evaluate([teacher_art, int8_art], data, latency=LatencyConfig(threads=1))[1]["vs_teacher"]  # doctest: +SKIP
        {'speedup': {'1': 2.9, '64': 3.4}, 'compression': 3.9, 'compression_lzma': 4.2, 'accuracy_delta': -0.002}
        >>> print(evaluate({"teacher": teacher, "int8": "int8.onnx"}, task, test_loader).table())  # doctest: +SKIP
    """
    cfg = latency or LatencyConfig()
    artifacts = _as_artifacts(artifacts)
    if not artifacts:
        raise TorchslimError("nothing to evaluate: the list of artifacts is empty")
    names = [a.name for a in artifacts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TorchslimError(f"artifact names must be unique; repeated: {', '.join(duplicates)}")
    task, test = _task_and_test(data, test)

    sources = _source_names(artifacts)
    threads_before = torch.get_num_threads()  # set_num_threads is process-wide: restore it afterwards
    try:
        runners = [make_runner(a, cfg.threads) for a in artifacts]
        records = []
        for artifact, run, source in zip(artifacts, runners, sources):
            logits, labels = logits_and_labels(run, test)
            acc = errors = None
            if labels.ndim == 1:  # class labels; an embedding task's "labels" are reference embeddings, N×D
                if not task.num_classes:  # a task made here from a bare `input_shape`: the classes are the logits'
                    task.num_classes = int(logits.shape[1])
                errors = int((logits.argmax(axis=1) != labels).sum())
                acc = 1.0 - errors / len(labels)
            metrics = task.metrics(logits, labels)
            if "accuracy" in metrics and acc is None:  # token labels (causal-lm): the task's next-token accuracy
                acc, errors = metrics["accuracy"], metrics.get("errors")
            if "accuracy" in metrics:  # one number, whichever way it is rounded: the record's
                metrics.update(accuracy=acc, errors=errors)
            params = nonzero = macs = None
            if artifact.model is not None:
                params, nonzero = count_params(artifact.model)
                macs = _macs(artifact.model, task)
            if artifact.path is not None:
                (size, size_lzma), size_source = file_sizes(artifact.path), "file"
            else:
                (size, size_lzma), size_source = memory_sizes(artifact.model), IN_MEMORY
            records.append(
                {
                    "name": artifact.name,
                    "stage": artifact.stage,
                    "runtime": artifact.runtime,
                    "path": str(artifact.path) if artifact.path is not None else None,
                    "accuracy": acc,
                    "errors": errors,
                    "metrics": metrics,
                    "primary_metric": task.primary_metric,
                    "params": params,
                    "nonzero_params": nonzero,
                    "macs": macs,
                    "file_bytes": size,
                    "file_bytes_lzma": size_lzma,
                    "size_source": size_source,
                    "latency_ms": None,
                    "threads": cfg.threads,
                    "vs_teacher": None,
                    "vs_student": None,
                    "source": source,
                    "vs_source": None,
                    "flags": [],
                    "info": dict(artifact.info),
                }
            )
            sample = task.sample_text(run)  # a language model's few lines of text, in its own runtime
            if sample is not None:
                records[-1]["sample"] = sample
        for record, lat in zip(records, measure_latencies(runners, task, cfg)):
            record["latency_ms"] = lat
    finally:
        torch.set_num_threads(threads_before)
    return Evaluation(add_sources(add_baselines(records, teacher=teacher, student=student)), task)


def _source_names(artifacts: list[Artifact]) -> list[str | None]:
    """Each artifact's source: the one it names (``Artifact.source``), else the other PyTorch artifact whose module
    its own module is (an ONNX file or int8 artifact made from a model given beside it), else None."""
    out = []
    for art in artifacts:
        same = [a.name for a in artifacts if a is not art and a.runtime == "pytorch" and art.model is not None
                and a.model is art.model and art.runtime != "pytorch"]
        out.append(art.source or (same[0] if same else None))
    return out


def _as_artifacts(items: Any) -> list[Artifact]:
    """Artifacts from a list (Artifacts, or modules named by their class) or a mapping of names to a module, an
    Artifact or the path of an ONNX file."""
    if not isinstance(items, Mapping):
        items = list(items)
        counts = {}
        for item in items:
            if isinstance(item, nn.Module):
                counts[type(item).__name__] = counts.get(type(item).__name__, 0) + 1
        named, seen = [], {}
        for item in items:
            if isinstance(item, nn.Module):
                base = type(item).__name__.lower()
                seen[base] = seen.get(base, 0) + 1
                named.append((f"{base}-{seen[base]}" if counts[type(item).__name__] > 1 else base, item))
            else:
                named.append((None, item))
    else:
        named = list(items.items())
    out = []
    for name, item in named:
        if isinstance(item, Artifact):
            out.append(item if name is None or name == item.name else dataclasses.replace(item, name=name))
        elif isinstance(item, nn.Module):
            out.append(Artifact(name, "model", "pytorch", None, item))
        elif isinstance(item, (str, os.PathLike)) and name is not None:
            path = Path(item)
            if path.suffix != ".onnx":
                raise TorchslimError(f"evaluate: '{name}' is the file {path}; a file to evaluate is an ONNX model "
                                     f"(.onnx); give a PyTorch model as the nn.Module itself")
            out.append(Artifact(name, "file", "onnxruntime", path, None))
        else:
            raise TorchslimError(f"evaluate: cannot evaluate {name or 'an item'} of type {type(item).__name__}; "
                                 f"give an nn.Module, an Artifact or the path of an .onnx file")
    return out


def _task_and_test(data: Any, test: Any) -> tuple[Task, Any]:
    """The task whose metrics and example inputs are used, and the test data."""
    if isinstance(data, Task):
        if test is None:
            raise TorchslimError("evaluate: give the test data after the task: evaluate(artifacts, task, test_loader)")
        return data, test
    if data is None or not hasattr(data, "test"):
        raise TorchslimError(f"evaluate: data must be a Task (with the test data next) or a DataBundle, got "
                             f"{type(data).__name__}")
    task = getattr(data, "task", None)
    if task is None:  # a hand-made bundle of images without a task
        if getattr(data, "input_shape", None) is None:
            raise TorchslimError("evaluate: the data has neither a task nor an input_shape to measure latency with")
        task = ImageClassification(input_shape=data.input_shape, num_classes=getattr(data, "num_classes", 0) or 0)
    return task, data.test if test is None else test


def _macs(model: nn.Module, task: Task) -> int:
    # Images: zeros of one sample's shape, as always (MACs do not depend on the values); other tasks: their example.
    if isinstance(task, ImageClassification):
        return count_macs(model, task.input_shape)
    return count_macs(model, task.example_inputs(1))


def format_table(records: Sequence[dict]) -> str:
    """Records as a plain-text table (see :meth:`Evaluation.table`): the headline size is the lzma size (pruned
    zeros count; raw bytes beside it), speedups are over the first record and, when a record names its source (the
    model it was made from), over that source too; flags follow the table.

    Example:
        >>> print(format_table(evaluate({"a": model}, task, loader)))   # doctest: +SKIP
    """
    if not records:
        return "(no artifacts)"
    batches = list((records[0].get("latency_ms") or {}).keys())
    first = records[0]
    sources = any(r.get("vs_source") for r in records)
    header = ["name", "runtime", records[0].get("primary_metric") or "accuracy", "params / nonzero", "MACs",
              "size (lzma)", "file bytes"]
    header += [f"p50 ms @{b}" for b in batches] + [f"speedup @{b}" for b in batches]
    if sources:
        header += ["made from"] + [f"vs source @{b}" for b in batches]
    rows = []
    for r in records:
        metric = r.get("primary_metric") or "accuracy"
        value = (r.get("metrics") or {}).get(metric, r.get("accuracy") if metric == "accuracy" else None)
        lat = r.get("latency_ms") or {}
        row = [
            str(r["name"]), str(r.get("runtime", "-")), _fmt_metric(metric, value),
            "-" if r.get("params") is None else f"{r['params']:,} / {r['nonzero_params']:,}",
            "-" if r.get("macs") is None else f"{r['macs']:,}",
            "-" if r.get("file_bytes_lzma") is None else f"{r['file_bytes_lzma']:,}",
            f"- ({r['file_bytes']:,} in memory)" if r.get("size_source") == IN_MEMORY else f"{r['file_bytes']:,}",
        ]
        row += [f"{lat[b]['p50']:.3f}" if b in lat else "-" for b in batches]
        base = first.get("latency_ms") or {}
        row += [f"{base[b]['p50'] / lat[b]['p50']:.2f}x" if b in lat and b in base and lat[b]["p50"] else "-"
                for b in batches]
        if sources:
            speedup = (r.get("vs_source") or {}).get("speedup") or {}
            row += [str(r.get("source") or "-")]
            row += [f"{speedup[b]:.2f}x" if speedup.get(b) is not None else "-" for b in batches]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1, header.index("made from")} if sources else {0, 1}  # names read left-aligned; numbers right

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    threads = records[0].get("threads")
    note = f"latency: median of timed calls per batch, {threads} thread{'s' if threads != 1 else ''}; " \
           f"speedup over {first['name']}" + (" and over each artifact's source" if sources else "") + \
           "; size: the file (or in-memory safetensors) compressed with lzma, so pruned zeros count"
    flags = [f"flag: {r['name']} is {flag}" for r in records for flag in r.get("flags") or []]
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows), note, *flags])


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in ("accuracy", "macro_f1"):  # fractions, shown as percentages
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


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


# Below these margins a difference to the source is measurement noise, not a finding: interleaved timings of two
# equally fast models differ by a few percent; lzma sizes of equally sized models by a fraction of a percent.
SLOWER_MARGIN = 1.05
LARGER_MARGIN = 1.01


def add_sources(records: list[dict]) -> list[dict]:
    """Fill ``vs_source`` (:func:`compare` with the record its ``source`` names) and ``flags`` of every record (in
    place, and returned). A flag is one sentence for each way an artifact is worse than its own source: slower at a
    batch size by more than ``SLOWER_MARGIN``, or — unless it only changed format (an fp32 ONNX export) — larger in
    its headline size (``file_bytes_lzma``) by more than ``LARGER_MARGIN``. A quantized ONNX artifact is also held
    against the fp32 ONNX artifact of the same source, when there is one.

    Example:
        >>> a = {"name": "fp32", "latency_ms": {"1": {"p50": 1.0}}, "file_bytes": 400, "file_bytes_lzma": 300,
        ...      "accuracy": 0.9}
        >>> b = {"name": "int8", "source": "fp32", "latency_ms": {"1": {"p50": 2.0}}, "file_bytes": 100,
        ...      "file_bytes_lzma": 90, "accuracy": 0.9}
        >>> add_sources([a, b])[1]["flags"]
        ['slower than fp32 at batch 1 (0.50× its speed)']
    """
    by_name = {r["name"]: r for r in records}
    for record in records:
        base = by_name.get(record.get("source")) if record.get("source") is not None else None
        record["vs_source"] = compare(record, base) if base is not None and base is not record else None
        record["flags"] = []
        if record["vs_source"] is None:
            continue
        conversion = record.get("stage") == "export" and (record.get("info") or {}).get("format") != "compressed"
        record["flags"] = _flags(record["vs_source"], base["name"], size=not conversion)
        # A quantized ONNX file is also held against the fp32 ONNX file of the same source: the same runtime, so
        # int8 that ONNX Runtime runs slower than float shows even when both beat the PyTorch source.
        if _is_quantized(record) and record.get("runtime") == "onnxruntime":
            for twin in records:
                if twin is not record and twin.get("source") == base["name"] and twin.get("runtime") == "onnxruntime" \
                        and not _is_quantized(twin):
                    record["flags"] += _flags(compare(record, twin), twin["name"], size=True)
    return records


def _flags(vs: dict, baseline: str, size: bool) -> list[str]:
    flags = [f"slower than {baseline} at batch {b} ({x:.2f}× its speed)" for b, x in vs["speedup"].items()
             if x is not None and x * SLOWER_MARGIN < 1]
    lzma_ratio = vs["compression_lzma"]
    if size and lzma_ratio is not None and lzma_ratio * LARGER_MARGIN < 1:
        flags.append(f"larger than {baseline} ({1 / lzma_ratio:.2f}× its lzma size)")
    return flags


def compare(record: dict, baseline: dict) -> dict:
    """Ratios of ``record`` to ``baseline``: above 1 means ``record`` is faster / smaller.

    ``speedup[b]`` = baseline p50 / record p50 at batch size ``b`` (for batch sizes both have);
    ``compression`` = baseline file bytes / record file bytes (``compression_lzma`` likewise for the lzma sizes);
    ``accuracy_delta`` = record accuracy − baseline accuracy (a fraction; negative means worse);
    ``metric_delta`` = record − baseline in the primary metric when that is not accuracy (only then present; its
    direction is the task's: for perplexity a positive delta is worse).

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
        "accuracy_delta": None if record["accuracy"] is None or baseline["accuracy"] is None
        else record["accuracy"] - baseline["accuracy"],
        **_metric_delta(record, baseline),
    }


def _metric_delta(record: dict, baseline: dict) -> dict:
    """``{"metric_delta": record − baseline}`` in the primary metric, when it is not accuracy; else nothing."""
    metric = record.get("primary_metric")
    if not metric or metric == "accuracy" or baseline.get("primary_metric") != metric:
        return {}
    ours, theirs = (record.get("metrics") or {}).get(metric), (baseline.get("metrics") or {}).get(metric)
    return {"metric_delta": None if ours is None or theirs is None else ours - theirs}


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
    """The whole report as one JSON-ready dict: versions, machine, data (with its task's description), recipe,
    protocol and the records. `data` is a DataBundle, or a Task.

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
        "data": _data_section(data),
        "threads": threads,
        "latency_protocol": protocol,
        "machine": machine_info(),
        "artifacts": records,
    }
    clash = sorted(set(meta) & set(report))
    if clash:
        raise TorchslimError(f"report meta must not overwrite report fields: {', '.join(clash)}")
    return {**report, **meta}


def _data_section(data: Any) -> dict:
    """What the report says about the data: name, source, normalization, split sizes, and the task's description
    (input shape for images, vocabulary and sequence length for text) when the data has a task."""
    if isinstance(data, Task):
        return {"name": data.name, "source": None, "normalization": None, "sizes": {}, "task": data.describe()}
    section = {
        "name": getattr(data, "name", None),
        "source": _source(data),
        "normalization": getattr(data, "normalization", None),
        "sizes": {s: len(getattr(data, s)) for s in ("train", "val", "test") if getattr(data, s, None) is not None},
    }
    task = getattr(data, "task", None)
    if isinstance(task, Task):
        section["task"] = task.describe()
    return section


def _source(data: Any) -> str | None:
    source = getattr(data, "source", None)
    return str(source) if isinstance(source, (str, Path, os.PathLike)) else source


def machine_info() -> dict:
    """What a measurement ran on, as a report and every ``bench/`` result record it: platform, CPU model name, CPU
    count, and the Python, PyTorch and ONNX Runtime versions (None when onnxruntime is not installed).

    Example:
        >>> sorted(machine_info())
        ['cpu_count', 'onnxruntime', 'platform', 'processor', 'python', 'torch']
    """
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
