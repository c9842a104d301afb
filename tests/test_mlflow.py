"""Logging a run to MLflow (`log: {mlflow: ...}` in a recipe) through torchslim.tracking.

Every MLflow test writes to a REAL local store (SQLite, what MLflow 3 recommends for local use: its plain-folder store
refuses to start by default) through the Tracker, then reads it back with `mlflow.tracking.MlflowClient`. They skip,
with the reason shown, where mlflow is not installed; the tests of the no-op tracker and of the missing-mlflow error
run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import torchslim.evaluation as ev
from torchslim.config import Config
from torchslim.data import load_dataset
from torchslim.errors import TorchslimError
from torchslim.models import create_model
from torchslim.recipe import Recipe, load_recipe
from torchslim.records import TrainingRecord, as_info
from torchslim.tracking import (
    LogSpec,
    MlflowSpec,
    MlflowTracker,
    Tracker,
    epoch_metrics,
    flatten_params,
    make_tracker,
    track,
)
from torchslim.training import TrainConfig, fit

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install mlflow)")
# MLflow's SQLite store runs on SQLAlchemy, whose own deprecation notices (e.g. `noload`, SQLAlchemy 2.1) are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*:DeprecationWarning:sqlalchemy.*",
                                        "ignore:.*noload.*:DeprecationWarning")


class _Recipe(Config):
    """The two recipe fields a tracker reads (the real Recipe has them once its `log:` section is in)."""

    seed: int = 0
    log: LogSpec = LogSpec()


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _run_of(client, experiment, name):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A real small run folder (a student trained 2 epochs, evaluated, its report written) logged by MlflowTracker
    into the default store, sqlite:///<out>/mlflow.db."""
    out = tmp_path_factory.mktemp("run") / "demo-run"
    data = load_dataset("digits", limit_train=200, limit_test=60)
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, input_shape=tuple(data.input_shape), widths=[8])
    fitted = fit(model, data.train, data.val, TrainConfig(epochs=2, lr=0.01), log=lambda msg: None)
    info = as_info(TrainingRecord.of(fitted))
    latency = ev.LatencyConfig(threads=1, batch_sizes=(1,), max_seconds=0.01, min_runs=5, warmup=1, rounds=1)
    records = ev.evaluate({"student": model}, data, latency=latency, teacher=None)
    report = ev.build_report(records, recipe={}, data=data, threads=1, meta={}, latency=latency)
    ev.write_report(report, out)
    report = json.loads((out / "report.json").read_text())
    (out / "big.onnx").write_bytes(b"\0" * 300_000)  # an artifact file over max_artifact_mb (0.2 MB) below
    recipe = load_recipe("recipes/digits.yaml")
    tracker = MlflowTracker(MlflowSpec(experiment="tests", max_artifact_mb=0.2), log=pytest.fail)
    if HAS_MLFLOW:
        tracker.start(recipe, out)
        tracker.log_stage("student", info)
        tracker.log_results(report["artifacts"])
        tracker.log_artifacts(out)
        tracker.end()
    return {"out": out, "uri": tracker.tracking_uri, "history": fitted.history, "report": report}


@needs_mlflow
def test_the_default_store_is_sqlite_inside_the_run_folder(logged):
    assert logged["uri"] == f"sqlite:///{logged['out'].resolve() / 'mlflow.db'}"
    assert (logged["out"] / "mlflow.db").is_file()
    exp = _client(logged["uri"]).get_experiment_by_name("tests")
    assert exp.artifact_location == (logged["out"] / "mlartifacts").resolve().as_uri()


@needs_mlflow
def test_params_are_the_flattened_recipe_addressed_like_set(logged):
    run = _run_of(_client(logged["uri"]), "tests", "demo-run")
    params = run.data.params
    assert params["stages.distill.temperature"] == "4.0"  # recipes/digits.yaml, addressed by stage name
    assert params["teacher.train.epochs"] == "40"
    assert params["stages.student.train.lr"] == "0.003"
    assert params["evaluate.batch_sizes"] == "[1, 64]"
    assert params["data.root"] == "null"
    assert run.data.tags["torchslim.version"] == __import__("torchslim").__version__
    assert run.info.status == "FINISHED"


@needs_mlflow
def test_epoch_metrics_are_logged_per_stage_with_step_epoch(logged):
    client = _client(logged["uri"])
    run = _run_of(client, "tests", "demo-run")
    for key in ("loss", "train_accuracy", "val_accuracy"):
        points = client.get_metric_history(run.info.run_id, f"student/{key}")
        assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == \
            [(h["epoch"], pytest.approx(h[key])) for h in logged["history"]]


@needs_mlflow
def test_final_metrics_per_artifact_match_the_report(logged):
    metrics = _run_of(_client(logged["uri"]), "tests", "demo-run").data.metrics
    record = logged["report"]["artifacts"][0]
    assert metrics["student/test_accuracy"] == pytest.approx(record["accuracy"])
    assert metrics["student/file_bytes_lzma"] == record["file_bytes_lzma"]
    assert metrics["student/macs"] == record["macs"]
    assert metrics["student/latency_p50_ms_b1"] == pytest.approx(record["latency_ms"]["1"]["p50"])


@needs_mlflow
def test_report_files_are_uploaded_and_large_artifact_files_are_named_not_uploaded(logged):
    client = _client(logged["uri"])
    run = _run_of(client, "tests", "demo-run")
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "report.html"} <= files
    assert "big.onnx" not in files and "mlflow.db" not in files
    assert run.data.tags["torchslim.not_uploaded"] == "big.onnx"
    local = client.download_artifacts(run.info.run_id, "report.json", str(logged["out"].parent))
    assert json.loads(Path(local).read_text())["artifacts"][0]["name"] == "student"


@needs_mlflow
@pytest.mark.parametrize("error, status", [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_run_that_raises_is_marked_failed_or_killed(logged, tmp_path, error, status):
    spec = MlflowSpec(tracking_uri=logged["uri"], experiment="tests", run_name=f"raises-{status}")
    with pytest.raises(error), track(_Recipe(log=LogSpec(mlflow=spec)), tmp_path) as tracker:
        tracker.log_epoch("teacher", 1, {"loss": 2.0, "terms": {"kd": 0.5}})
        raise error("stop")
    run = _run_of(_client(logged["uri"]), "tests", f"raises-{status}")
    assert run.info.status == status
    assert run.data.metrics == {"teacher/loss": 2.0, "teacher/terms.kd": 0.5}


@needs_mlflow
def test_a_bad_tracking_uri_is_one_line_before_any_work(tmp_path):
    tracker = MlflowTracker(MlflowSpec(tracking_uri="nosuchscheme://x"))
    with pytest.raises(TorchslimError, match=r"^log\.mlflow: .*nosuchscheme") as err:
        tracker.start(_Recipe(), tmp_path)
    assert "\n" not in str(err.value)


@needs_mlflow
@pytest.mark.skipif("log" not in Recipe.model_fields, reason="recipe.py has no `log:` section yet (not wired)")
def test_torchslim_run_with_a_log_section_logs_every_stage(logged, tmp_path, capsys):
    from torchslim.cli import main

    out = tmp_path / "e2e"
    argv = ["run", "recipes/digits.yaml", "--out", str(out), "--quiet", "--set", "teacher.train.epochs=2",
            "--set", "stages=[{type: train, name: student, train: {epochs: 2}}, {type: export, name: onnx-fp32}]",
            "--set", "evaluate.max_seconds=0.01", "--set", "evaluate.batch_sizes=[1]",
            "--set", f"log={{mlflow: {{tracking_uri: '{logged['uri']}', experiment: e2e}}}}"]
    assert main(argv) == 0, capsys.readouterr().err
    client = _client(logged["uri"])
    run = _run_of(client, "e2e", "e2e")
    assert run.info.status == "FINISHED"
    for stage in ("teacher", "student"):
        assert [p.step for p in client.get_metric_history(run.info.run_id, f"{stage}/loss")] == [1, 2]
    assert {"teacher/test_accuracy", "student/test_accuracy", "onnx-fp32/test_accuracy"} <= set(run.data.metrics)
    assert {"report.json", "onnx-fp32.onnx", "recipe.yaml"} <= {f.path for f in client.list_artifacts(run.info.run_id)}


# ---------------------------------------------------------------------------------------- without mlflow too


def test_no_log_section_tracks_nothing(tmp_path):
    assert type(make_tracker(LogSpec())) is Tracker
    with track(_Recipe(), tmp_path) as tracker:
        tracker.log_stage("teacher", {"training": {"history": [{"epoch": 1, "loss": 1.0}]}})
        tracker.log_results([{"name": "teacher", "accuracy": 0.9}])
        tracker.log_artifacts(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_asking_for_mlflow_without_mlflow_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(TorchslimError, match=r"mlflow is not installed; pip install mlflow"):
        make_tracker(LogSpec(mlflow=MlflowSpec()))


def test_epochs_of_several_trainings_in_one_stage_count_on_and_repeats_count_once():
    last = {"epoch": 1, "loss": 0.5, "val_accuracy": None, "terms": {"kd": 0.2}}
    info = {"pruning": {"rounds": [{"history": [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.7}]},
                                   {"history": [last]}],
                        "history": [last]},  # a summary repeating the last round's history
            "training": TrainingRecord(history=[{"epoch": 1, "loss": 0.4}])}
    assert epoch_metrics(info) == [{"loss": 0.9}, {"loss": 0.7}, {"loss": 0.5, "terms.kd": 0.2}, {"loss": 0.4}]
    steps = []

    class Recording(Tracker):
        def log_epoch(self, stage, epoch, metrics):
            steps.append((stage, epoch, metrics["loss"]))

    Recording().log_stage("prune", info)
    assert steps == [("prune", 1, 0.9), ("prune", 2, 0.7), ("prune", 3, 0.5), ("prune", 4, 0.4)]


def test_flatten_params_addresses_stages_and_teachers_by_name():
    params = flatten_params({"teachers": [{"name": "t2", "model": "mlp"}],
                             "stages": [{"type": "distill", "name": None, "alpha": 0.1},
                                        {"type": "export", "name": "onnx"}],
                             "student": {"args": {}}, "flag": True})
    assert params == {"teachers.t2.name": "t2", "teachers.t2.model": "mlp", "stages.distill.type": "distill",
                      "stages.distill.name": "null", "stages.distill.alpha": "0.1", "stages.onnx.type": "export",
                      "stages.onnx.name": "onnx", "student.args": "{}", "flag": "true"}
