"""Experiment tracking: send a run's recipe, per-epoch curves, final numbers and report files to a tracker.

A recipe asks for it in its ``log:`` section; without one, nothing is tracked (the :class:`Tracker` base class does
nothing, so the pipeline calls it unconditionally)::

    log:
      mlflow:
        tracking_uri: null       # null: sqlite:///<out>/mlflow.db (a local store inside the run directory)
        experiment: torchslim
        run_name: null           # null: the run directory's name

One MLflow run per ``torchslim run``: the resolved recipe as params (flattened: ``stages.distill.temperature``),
each training stage's epochs as metrics (``distill/loss``, ``distill/val_accuracy``, ... at step = epoch; a stage
that trains several times, such as iterative pruning's rounds, counts its epochs on across them), every artifact's
final numbers (``int8/test_accuracy``, ``int8/file_bytes``, ``int8/latency_p50_ms_b1``, ...), and the report files
with the small artifact files. Epoch metrics are sent when their stage finishes, read from the training history the
stage records (so a resumed run, a new MLflow run, still has every stage's curves). A run killed or failed is marked
KILLED or FAILED.

MLflow 3 refuses its old plain-folder store (``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true``; the default here
is what it recommends for local use, a SQLite file. Any ``tracking_uri`` MLflow accepts works (``http://host:5000``,
``sqlite:///path.db``, ``databricks``).

Example:
    >>> with track(recipe, "runs/demo") as tracker:                       # doctest: +SKIP
    ...     tracker.log_epoch("teacher", 1, {"loss": 0.9, "val_accuracy": 0.8})
    ...     tracker.log_results(report["artifacts"])
    ...     tracker.log_artifacts("runs/demo")
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from torchslim.config import Config
from torchslim.errors import TorchslimError

__all__ = ["LogSpec", "MlflowSpec", "MlflowTracker", "Tracker", "epoch_metrics", "flatten_params", "make_tracker",
           "require_mlflow", "result_metrics", "track"]

# ------------------------------------------------------------------------------------------------------- schema


class MlflowSpec(Config):
    """Where and under which names a run is logged to MLflow."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI; null: sqlite:///<out>/mlflow.db, a local "
                                                        "store inside the run directory")
    experiment: str = Field("torchslim", min_length=1, description="experiment name (created when missing)")
    run_name: str | None = Field(None, description="MLflow run name; null: the run directory's name")
    max_artifact_mb: float = Field(20.0, ge=0, description="artifact files (models, ONNX) larger than this are not "
                                                           "uploaded; the report files always are")


class LogSpec(Config):
    """The recipe's ``log:`` section: experiment trackers to send the run to (none by default)."""

    mlflow: MlflowSpec | None = Field(None, description="log the run to MLflow (pip install mlflow)")


# ------------------------------------------------------------------------------------------------------ trackers

Log = Callable[[str], None]
_STATUSES = ("FINISHED", "FAILED", "KILLED")
# Files the run directory holds that are not worth uploading: per-epoch training state, and a local store itself.
_SKIP_DIRS = ("checkpoints", "mlartifacts", "mlruns")
_SKIP_FILES = ("mlflow.db",)
_REPORT_SUFFIXES = (".json", ".md", ".html", ".png", ".yaml")


class Tracker:
    """What the pipeline tells a tracker. This base class does nothing: it is the tracker of a recipe without a
    ``log:`` section, and of every torchrun rank but 0.

    Example:
        >>> t = Tracker(); t.start({"seed": 0}, "runs/x"); t.log_epoch("teacher", 1, {"loss": 0.5}); t.end()
    """

    def start(self, recipe: Any, out: str | os.PathLike) -> None:
        """Open a run for `recipe` (a Recipe or its dict) writing into the folder `out`; log its params."""

    def log_epoch(self, stage: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One epoch of a training stage: ``{name: number}`` (nested dicts such as ``terms`` are flattened)."""

    def log_results(self, records: list[dict]) -> None:
        """The final numbers of every artifact: the ``artifacts`` records of report.json."""

    def log_artifacts(self, directory: str | os.PathLike) -> None:
        """The run directory's report files, and its artifact files that are small enough."""

    def end(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED, FAILED or KILLED."""

    def log_stage(self, name: str, info: Mapping[str, Any]) -> None:
        """Every epoch a finished stage trained, read from its artifact's ``info`` (the training histories its
        records hold, e.g. ``info["training"].history``, or each pruning round's); step = epoch, counted on across
        several trainings in one stage.

        Example:
            >>> Tracker().log_stage("student", {"training": {"history": [{"epoch": 1, "loss": 0.7}]}})
        """
        for step, metrics in enumerate(epoch_metrics(info), start=1):
            self.log_epoch(name, step, metrics)


def epoch_metrics(info: Mapping[str, Any]) -> list[dict[str, float]]:
    """The numbers of every epoch trained for one artifact, in order: each training history found in its ``info``
    (records as their JSON), concatenated; a history seen twice (a summary repeating the last round) counts once.

    Example:
        >>> epoch_metrics({"pruning": {"rounds": [{"history": [{"epoch": 1, "loss": 0.9}]},
        ...                                       {"history": [{"epoch": 1, "loss": 0.5, "terms": {"kd": 0.2}}]}]}})
        [{'loss': 0.9}, {'loss': 0.5, 'terms.kd': 0.2}]
    """
    from torchslim.records import jsonable

    seen: set[str] = set()
    epochs: list[dict[str, float]] = []
    for history in _histories(jsonable(dict(info))):
        key = json.dumps(history, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        epochs += [_numbers(h, exclude=("epoch",)) for h in history]
    return epochs


def _histories(obj: Any) -> Iterator[list[dict]]:
    """Every list of per-epoch dicts under a ``history`` key, depth first in document order."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "history" and isinstance(value, list) and value and all(isinstance(h, dict) for h in value):
                yield value
            else:
                yield from _histories(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _histories(value)


def _numbers(d: Mapping[str, Any], prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """The numbers of `d` (NaN and inf too), nested dicts flattened with dots (``terms.kd``); None and text dropped."""
    out: dict[str, float] = {}
    for key, value in d.items():
        if key in exclude:
            continue
        if isinstance(value, Mapping):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def flatten_params(recipe: Any) -> dict[str, str]:
    """The recipe as flat ``{dotted.key: text}`` params: stages and teachers are addressed by name as ``--set``
    addresses them (``stages.distill.temperature``), other lists are one value (``evaluate.batch_sizes: [1, 64]``).

    Example:
        >>> flatten_params({"seed": 0, "stages": [{"type": "prune", "name": None, "sparsity": 0.9}],
        ...                 "evaluate": {"batch_sizes": [1, 64]}})
        {'seed': '0', 'stages.prune.type': 'prune', 'stages.prune.name': 'null', 'stages.prune.sparsity': '0.9', \
'evaluate.batch_sizes': '[1, 64]'}
    """
    raw = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                label = item.get("name") or item.get("type") or i
                walk(item, f"{key}.{label}")
        else:
            out[key] = value if isinstance(value, str) else json.dumps(value)  # YAML spelling: null, true, [1, 64]

    walk(raw, "")
    return out


def result_metrics(records: list[dict]) -> dict[str, float]:
    """The final numbers of every artifact record (report.json's ``artifacts``) as ``{artifact/name: value}``:
    its task metrics as ``test_<metric>``, sizes, counts, p50/p90 latency per batch size, and its ratios to the
    teacher. Keys a record lacks are skipped.

    Example:
        >>> result_metrics([{"name": "int8", "metrics": {"accuracy": 0.98}, "file_bytes": 1200,
        ...                  "latency_ms": {"1": {"p50": 0.02, "p90": 0.03}}, "vs_teacher": {"speedup": {"1": 3.0}}}])
        {'int8/test_accuracy': 0.98, 'int8/file_bytes': 1200.0, 'int8/latency_p50_ms_b1': 0.02, \
'int8/latency_p90_ms_b1': 0.03, 'int8/speedup_vs_teacher_b1': 3.0}
    """
    out: dict[str, float] = {}
    for r in records:
        name = str(r.get("name"))
        metrics = r.get("metrics") if isinstance(r.get("metrics"), Mapping) else {"accuracy": r.get("accuracy")}
        values = {f"test_{k}": v for k, v in metrics.items()}
        values.update({k: r.get(k) for k in ("params", "nonzero_params", "macs", "file_bytes", "file_bytes_lzma")})
        for batch, lat in (r.get("latency_ms") or {}).items():
            if isinstance(lat, Mapping):
                values.update({f"latency_{q}_ms_b{batch}": lat.get(q) for q in ("p50", "p90")})
        for base in ("teacher", "student"):
            ratios = r.get(f"vs_{base}") if isinstance(r.get(f"vs_{base}"), Mapping) else {}
            for batch, speedup in (ratios.get("speedup") or {}).items():
                values[f"speedup_vs_{base}_b{batch}"] = speedup
            values[f"compression_vs_{base}"] = ratios.get("compression")
        out.update({f"{name}/{k}": float(v) for k, v in values.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


class MlflowTracker(Tracker):
    """Logs one MLflow run through ``mlflow.tracking.MlflowClient`` (no global ``mlflow.start_run`` state).

    `log` receives a warning when MLflow fails after the run has started: tracking then stops, the run goes on (its
    report is on disk either way). A failure in :meth:`start` (a bad URI, an unreachable server) is a
    TorchslimError, before any work.

    Example:
        >>> t = MlflowTracker(MlflowSpec(experiment="demo")); t.start(recipe, "runs/demo"); t.end()   # doctest: +SKIP
    """

    def __init__(self, spec: MlflowSpec, log: Log = print) -> None:
        self.spec = spec
        self.warn = log
        self.client: Any = None
        self.run_id: str | None = None
        self.out: Path | None = None
        self.tracking_uri: str | None = None

    def start(self, recipe: Any, out: str | os.PathLike) -> None:
        require_mlflow()
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from torchslim import __version__

        self.out = Path(out)
        self.tracking_uri = self.spec.tracking_uri or f"sqlite:///{self.out.resolve() / 'mlflow.db'}"
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment = self.client.get_experiment_by_name(self.spec.experiment)
            if experiment is None:
                experiment_id = self.client.create_experiment(self.spec.experiment,
                                                              artifact_location=self._artifact_location())
            else:
                experiment_id = experiment.experiment_id
            run = self.client.create_run(experiment_id, run_name=self.spec.run_name or self.out.resolve().name,
                                         tags={"torchslim.version": __version__, "torchslim.out": str(self.out)})
            self.run_id = run.info.run_id
            self._batch(params=flatten_params(recipe))
        except (MlflowException, OSError) as e:  # a bad URI, an unreachable server (requests' errors are OSErrors)
            raise TorchslimError(f"log.mlflow: {_one_line(e)} (tracking_uri {self.tracking_uri})") from None

    def log_epoch(self, stage: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        self._safely(lambda: self._batch(metrics={f"{stage}/{k}": v for k, v in _numbers(metrics).items()},
                                         step=int(epoch)))

    def log_results(self, records: list[dict]) -> None:
        self._safely(lambda: self._batch(metrics=result_metrics(records)))

    def log_artifacts(self, directory: str | os.PathLike) -> None:
        root = Path(directory)
        limit = self.spec.max_artifact_mb * 1e6

        def upload() -> None:
            skipped = []
            for path in sorted(p for p in root.iterdir() if p.is_file()):
                if path.name in _SKIP_FILES or path.name.startswith("."):
                    continue
                if path.suffix not in _REPORT_SUFFIXES and path.stat().st_size > limit:
                    skipped.append(path.name)
                    continue
                self.client.log_artifact(self.run_id, str(path))
            if skipped:  # say what is missing, so nobody looks for a model the run chose not to upload
                self.client.set_tag(self.run_id, "torchslim.not_uploaded", ", ".join(skipped))

        self._safely(upload)

    def end(self, status: str = "FINISHED") -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, not {status!r}")
        self._safely(lambda: self.client.set_terminated(self.run_id, status))
        self.run_id = None

    # ------------------------------------------------------------------------------------------------ helpers
    def _artifact_location(self) -> str | None:
        """For a new experiment in a local SQLite store: artifacts in ``mlartifacts/`` beside the database file
        (MLflow's own default is ``./mlruns`` in whatever the working directory is). Else the server decides."""
        uri = self.tracking_uri or ""
        if uri.startswith("sqlite:///"):
            return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return None

    def _batch(self, params: Mapping[str, str] | None = None, metrics: Mapping[str, float] | None = None,
               step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        # MLflow takes at most 100 params and 1000 metrics per batch; values are cut to its 6000-character limit.
        items = [Param(k[:250], str(v)[:6000]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)
        now = _millis()
        values = [Metric(k[:250], v, now, step) for k, v in (metrics or {}).items()]
        for i in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=values[i:i + 1000], synchronous=True)

    def _safely(self, call: Callable[[], None]) -> None:
        if self.run_id is None:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 — a tracking failure must not end hours of training
            self.warn(f"warning: MLflow logging failed, tracking stops for this run: {_one_line(e)}")
            self.run_id = None


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


def require_mlflow() -> Any:
    """The ``mlflow`` module, or a TorchslimError telling how to install it."""
    try:
        import mlflow
    except ImportError:
        raise TorchslimError("log.mlflow: the recipe logs to MLflow, but mlflow is not installed; "
                             "pip install mlflow (or remove the `log: mlflow:` section)") from None
    return mlflow


def make_tracker(spec: LogSpec | None, log: Log = print) -> Tracker:
    """The tracker a recipe's ``log:`` section asks for: MLflow, or the no-op :class:`Tracker`. Checks that mlflow is
    installed when it is asked for (so ``torchslim validate`` can say so before any work).

    Example:
        >>> type(make_tracker(LogSpec())).__name__
        'Tracker'
    """
    if spec is None or spec.mlflow is None:
        return Tracker()
    require_mlflow()
    return MlflowTracker(spec.mlflow, log)


@contextmanager
def track(recipe: Any, out: str | os.PathLike, *, enabled: bool = True, log: Log = print) -> Iterator[Tracker]:
    """Start the tracker `recipe.log` asks for (the no-op one when `enabled` is False: torchrun ranks but 0), and end
    it FINISHED, KILLED (Ctrl-C) or FAILED (any other exception, which goes on up).

    Example:
        >>> with track(recipe, "runs/demo", enabled=dist.is_main()) as tracker:   # doctest: +SKIP
        ...     tracker.log_stage("teacher", artifact.info)
    """
    tracker = make_tracker(getattr(recipe, "log", None), log) if enabled else Tracker()
    tracker.start(recipe, out)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
