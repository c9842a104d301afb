"""Typed records: what a stage reports about the artifact it made, and how the report shows it.

A record is a small dataclass, defined by the family that produces it (per-layer sparsity in
:mod:`torchslim.prune.schedules`, ONNX Runtime kernels in :mod:`torchslim.quant.export`, ...) and registered here
with :func:`register`. A stage puts its records in ``Artifact.info`` under their kind (``info["pruning"]``, see
:func:`as_info`); other ``info`` keys are free-form facts. Evaluation passes ``info`` through; ``report.json`` holds
each record as its ``to_json()`` under its kind, and :func:`split_info` reads it back with ``from_json`` (the report
renders a ``report.json``; ``--resume`` reloads finished stages from ``progress.json``).

The report knows no record type and reads no record field. It asks every record, whatever its kind, for
``summary()`` (``key: value`` rows of the artifact's section), ``tables()``, ``figures(artifact)`` (PNG plots,
embedded in report.html and written beside report.md), ``columns()`` (cells of the main table) and, for the speed
notes, ``quantized``, ``made_from()`` and ``speed_reasons()``.

A new record kind is one dataclass with a ``kind`` and ``@register``, plus its module in ``_HOMES`` so that a report
read back from JSON finds the class without importing every family.

Example:
    >>> rec = TrainingRecord(history=[{"epoch": 1, "loss": 0.5, "train_accuracy": 0.8, "val_accuracy": 0.9}],
    ...                      best_epoch=1, best_val_accuracy=0.9)
    >>> info = as_info(rec, opset=17)
    >>> jsonable(info)["training"]["best_epoch"]
    1
    >>> split_info(jsonable(info)) == ([rec], {"opset": 17})
    True
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

DASH = "—"

R = TypeVar("R", bound="Record")
Table = tuple[list[str], list[list[str]]]  # (headers, rows)


class Figure(NamedTuple):
    """A plot of an artifact's section: written as ``<artifact>-<slug>.png`` beside report.md (which links it) and
    embedded in report.html; ``title`` is its alt text; ``render()`` draws it (PNG bytes), only when needed."""

    slug: str
    title: str
    render: Callable[[], bytes]


@dataclasses.dataclass
class Record:
    """Base of every record. Subclasses are dataclasses with a class attribute ``kind`` (their key in
    ``Artifact.info`` and in report.json); every method below has a default, so a record overrides what it shows."""

    kind: ClassVar[str] = ""
    quantized: ClassVar[bool] = False  # the artifact is a quantized version of a float model (speed notes)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data: every field, nested records as their own ``to_json()``."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record back from :meth:`to_json`'s data (keys it does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> list[tuple[str, str]]:
        """``(key, text)`` rows listed in the artifact's section of the report."""
        return []

    def tables(self) -> list[Table]:
        """``(headers, rows)`` tables shown in the artifact's section, after its rows."""
        return []

    def figures(self, artifact: str) -> list[Figure]:
        """Plots of the artifact's section; `artifact` is the artifact's name (for titles)."""
        return []

    def columns(self) -> dict[str, str]:
        """Cells of the main artifact table, ``{header: text}``; the column appears when any artifact has it."""
        return {}

    def made_from(self) -> str | None:
        """The name of the float artifact this one was made from, when the record names it (speed notes)."""
        return None

    def speed_reasons(self) -> list[str]:
        """Why this artifact may not be faster than its float source (speed notes of a quantized artifact)."""
        return []


# ------------------------------------------------------------------------------------------------------ registry
_KINDS: dict[str, type[Record]] = {}
# Where each shipped kind is defined: a report read back from JSON imports only the modules of the kinds it holds.
_HOMES = {
    "training": __name__,
    "pruning": "torchslim.prune.schedules",
    "sparsity": "torchslim.prune.schedules",
    "prune_sensitivity": "torchslim.prune.sensitivity",
    "channel_pruning": "torchslim.prune.structured",
    "onnx_verification": "torchslim.export.onnx",
    "quantization": "torchslim.quant.export",
    "mixed_precision": "torchslim.quant.sensitivity",
    "teacher_agreement": "torchslim.distillation.kd",
    "datafree": "torchslim.pipeline.stages.distill",
    "llm_pruning": "torchslim.pipeline.stages.llm",
    "weight_only": "torchslim.pipeline.stages.llm",
    "int4_export": "torchslim.pipeline.stages.llm",
}


def register(cls: type[R]) -> type[R]:
    """Class decorator: make a record kind known, so that its JSON is read back as the record."""
    if not cls.kind:
        raise ValueError(f"record {cls.__name__} has no kind")
    if _KINDS.get(cls.kind, cls) is not cls:
        raise ValueError(f"record kind '{cls.kind}' is registered twice ({_KINDS[cls.kind].__name__}, {cls.__name__})")
    _KINDS[cls.kind] = cls
    return cls


def record_type(kind: str) -> type[Record] | None:
    """The record class of `kind` (importing its family module on first use), or None for a key that is no kind."""
    if kind not in _KINDS and kind in _HOMES:
        importlib.import_module(_HOMES[kind])
    return _KINDS.get(kind)


def kinds() -> list[str]:
    """Every record kind: the shipped ones and any registered since."""
    return sorted(set(_HOMES) | set(_KINDS))


# ------------------------------------------------------------------------------------------------- info helpers
def as_info(*records: Record | None, **facts: Any) -> dict[str, Any]:
    """An ``Artifact.info``: each record under its kind (None is skipped), then the free-form `facts`.

    Example:
        >>> as_info(None, checkpoint="t.safetensors")
        {'checkpoint': 't.safetensors'}
    """
    info: dict[str, Any] = {}
    for rec in records:
        if rec is None:
            continue
        if rec.kind in info:
            raise ValueError(f"two '{rec.kind}' records for one artifact")
        info[rec.kind] = rec
    clash = sorted(k for k in facts if k in info or k in _HOMES or k in _KINDS)
    if clash:
        raise ValueError(f"info keys {clash} are record kinds; put the record itself there")
    return {**info, **facts}


def split_info(info: Mapping[str, Any]) -> tuple[list[Record], dict[str, Any]]:
    """(the records of an ``info``, in order, and its free-form facts). A record may be the object itself or its
    JSON under its kind (as in report.json); JSON that does not fit its kind's record stays a fact."""
    records: list[Record] = []
    facts: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, Record):
            records.append(value)
            continue
        cls = record_type(key) if isinstance(value, Mapping) else None
        if cls is None:
            facts[key] = value
            continue
        try:
            records.append(cls.from_json(value))
        except (TypeError, ValueError, KeyError):  # JSON of another shape, e.g. a report.json of an older torchslim
            facts[key] = value
    return records, facts


def info_from_json(info: Mapping[str, Any]) -> dict[str, Any]:
    """An ``info`` read from JSON (progress.json, report.json) with its records as objects again."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        records, _ = split_info({key: value})
        out[key] = records[0] if records else value
    return out


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON data: records by ``to_json()``, numpy scalars and arrays, tensors, paths, dataclasses and
    pydantic models converted; dict keys as strings; tuples as lists.

    Example:
        >>> jsonable({1: (0.5, None)})
        {'1': [0.5, None]}
    """
    if isinstance(obj, Record):
        return obj.to_json()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic configs
        return jsonable(obj.model_dump())
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(obj.tolist())
    return str(obj)


# --------------------------------------------------------------------------------------------- text for records
def number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def percent(x: Any, digits: int = 2) -> str:
    """A fraction as a percentage (``0.9912`` → ``99.12 %``); a dash when it is not a number."""
    return f"{100 * x:.{digits}f} %" if number(x) else DASH


def json_text(value: Any, limit: int | None = None) -> str:
    """A value as one line of JSON (strings as they are), whole, or cut at `limit` characters when given. The report
    shows a record row holding a JSON object (a config) as a table of its fields, so rows keep it whole."""
    text = value if isinstance(value, str) else json.dumps(jsonable(value))
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def png(fig: Any) -> bytes:
    """The PNG bytes of a matplotlib Figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- training
@register
@dataclasses.dataclass
class TrainingRecord(Record):
    """What a training run reports (a teacher, `train`, `finetune`, `distill`, `qat`, ...): one entry per epoch
    (``epoch``, ``loss``, ``train_accuracy``, ``val_accuracy``, ``lr``, ``seconds`` and, when the loss has several
    terms — distillation — ``terms``: the per-epoch mean of each weighted term), the kept epoch and its validation
    accuracy, and why training stopped early (None when it ran every epoch).

    Training curves are every family's, so this record lives here rather than in one family; it reads
    :class:`torchslim.training.FitResult` by its attributes (:meth:`of`).
    """

    kind = "training"
    history: list[dict] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    stopped: str | None = None

    @classmethod
    def of(cls, result: Any) -> TrainingRecord:
        """The record of a ``fit`` result (``history``, ``best_epoch``, ``best_val_accuracy``, ``stopped``)."""
        return cls(list(result.history), result.best_epoch, result.best_val_accuracy, getattr(result, "stopped", None))

    def _term_epochs(self) -> list[dict]:
        return [h for h in self.history if isinstance(h, Mapping) and isinstance(h.get("terms"), Mapping)
                and h["terms"]]

    def _term_names(self) -> list[str]:
        return list(dict.fromkeys(k for h in self._term_epochs() for k in h["terms"]))

    def summary(self) -> list[tuple[str, str]]:
        if not self.history:
            return []
        last = self.history[-1] if isinstance(self.history[-1], Mapping) else {}
        loss = last.get("loss")
        # A task judged by another metric (causal-lm: val_perplexity, lower is better) chose the epoch by it.
        metric = next((k for k in last if k.startswith("val_") and k != "val_accuracy" and not k.endswith("_raw")
                       and number(last[k])), None)
        text = f"{len(self.history)} epoch{'s' if len(self.history) != 1 else ''}; last: " + ", ".join(
            [f"loss {loss:.4g}" if number(loss) else f"loss {DASH}",
             f"train {percent(last.get('train_accuracy'))}", f"val {percent(last.get('val_accuracy'))}"]
            + ([f"val {metric.removeprefix('val_')} {last[metric]:.4g}"] if metric else []))
        if self.best_epoch is not None and metric:
            kept = next((h.get(metric) for h in self.history if isinstance(h, Mapping)
                         and h.get("epoch") == self.best_epoch), None)
            text += f"; kept epoch {self.best_epoch} (val {metric.removeprefix('val_')} " \
                    f"{kept:.4g})" if number(kept) else f"; kept epoch {self.best_epoch}"
        elif self.best_epoch is not None:
            text += f"; kept epoch {self.best_epoch} (val {percent(self.best_val_accuracy)})"
        rows = [("training", text)]
        if self.stopped:
            rows.append(("stopped early", self.stopped))
        return rows

    def tables(self) -> list[Table]:
        history = self._term_epochs()
        if not history:
            return []
        first, last = history[0], history[-1]

        def cell(h: Mapping, k: str) -> str:
            v = h["terms"].get(k)
            return f"{v:.4g}" if number(v) else DASH

        rows = [[k, cell(first, k), cell(last, k)] for k in self._term_names()]
        rows.append(["total", f"{first.get('loss', float('nan')):.4g}", f"{last.get('loss', float('nan')):.4g}"])
        return [(["loss term (weighted)", f"epoch {first.get('epoch', 1)}",
                  f"epoch {last.get('epoch', len(history))}"], rows)]

    def figures(self, artifact: str) -> list[Figure]:
        if not self._term_epochs():
            return []
        return [Figure("loss-terms", f"loss terms of {artifact} per epoch", lambda: self.loss_terms_plot(artifact))]

    def loss_terms_plot(self, artifact: str) -> bytes:
        """Per-epoch mean of each weighted loss term (log y when all are positive: terms differ by decades)."""
        from matplotlib.figure import Figure as MplFigure
        from matplotlib.ticker import MaxNLocator

        history, names = self._term_epochs(), self._term_names()
        fig = MplFigure(figsize=(6, 4.2), dpi=100)  # fixed margins: a constrained layout doubles the time with log y
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
        ax = fig.subplots()
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        values = []
        for k in names:
            ys = [h["terms"].get(k) for h in history]
            ax.plot(epochs, ys, marker="o" if len(epochs) < 30 else None, markersize=3, label=k)
            values += [y for y in ys if number(y)]
        totals = [h.get("loss") for h in history]
        if len(names) > 1 and all(number(t) for t in totals):
            ax.plot(epochs, totals, color="black", linestyle="--", linewidth=1, label="total")
            values += totals
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("per-epoch mean of the weighted term")
        ax.set_title(f"{artifact}: distillation loss terms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        return png(fig)


__all__ = ["DASH", "Figure", "Record", "Table", "TrainingRecord", "as_info", "info_from_json", "json_text",
           "jsonable", "kinds", "number", "percent", "png", "record_type", "register", "split_info"]
