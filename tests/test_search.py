"""`torchslim search`: a real Optuna study in SQLite, real trials (recipe runs on digits), real worker processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from torchslim.cli import main
from torchslim.recipe import load_recipe

optuna = pytest.importorskip("optuna")

RECIPE = {
    "version": 1, "seed": 0, "data": {"name": "digits"},
    "teacher": {"model": "mlp", "args": {"widths": [64]}, "train": {"epochs": 3, "lr": 0.003}},
    "student": {"model": "mlp", "args": {"widths": [16]}},
    "stages": [
        {"type": "distill", "temperature": 4, "alpha": 0.1, "train": {"epochs": 2, "lr": 0.003}},
        {"type": "prune", "sparsity": 0.5, "train": {"epochs": 1, "lr": 0.001}},
        {"type": "export", "name": "onnx"},
        {"type": "quantize", "name": "int8", "mode": "dynamic"},
    ],
    "evaluate": {"threads": 1, "batch_sizes": [1], "max_seconds": 0.02},
    "search": {
        "params": {"stages.distill.temperature": [1, 8, "log"], "stages.prune.sparsity": [0.3, 0.9],
                   "student.args.widths": {"choices": [[8], [16], [32]]}, "stages.prune": "optional"},
        "objectives": ["accuracy", "latency_ms@1"], "constraints": ["accuracy_drop <= 30"],
        "trials": 3, "sampler": "random", "stop_early": None,  # every trial runs to the end (stopping: its own test)
    },
}


def write(tmp_path: Path, recipe: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def with_search(**changes) -> dict:
    recipe = json.loads(json.dumps(RECIPE))
    recipe["search"].update(changes)
    return recipe


def test_search_runs_trials_as_recipe_runs_and_writes_front(tmp_path, capsys):
    recipe = write(tmp_path, RECIPE)
    out = tmp_path / "search"
    assert main(["search", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and all(t["state"] == "complete" for t in trials)
    # Trial 0 is the recipe as written.
    assert trials[0]["values"] == {"stages.distill.temperature": 4, "stages.prune.sparsity": 0.5,
                                   "student.args.widths": [16], "stages.prune": True}
    assert len({json.dumps(t["values"], sort_keys=True) for t in trials}) == 3
    # The teacher is trained once, in shared/, and every trial loads it; its logits are computed once.
    shared = list((out / "shared").glob("teacher-*/teacher.safetensors"))
    assert len(shared) == 1
    for t in trials:
        trial_recipe = load_recipe(Path(t["folder"]) / "recipe.yaml")
        assert Path(trial_recipe.teacher.checkpoint) == shared[0].resolve()
        assert trial_recipe.evaluate.split == "val"  # selection never sees the test split
        report = json.loads((Path(t["folder"]) / "report.json").read_text())
        assert report["split"] == "val"
        assert t["numbers"]["accuracy"] == report["artifacts"][-1]["metrics"]["accuracy"]
    assert len(list((out / "shared" / "logits").glob("logits-*.safetensors"))) == 1
    # The front is non-dominated, the recommended trial is on it, and the outputs exist.
    front = summary["pareto_front"]
    assert front and summary["recommended"] in front
    done = {t["number"]: t["objectives"] for t in trials}
    for n in front:
        acc, ms = done[n]
        assert not any(a >= acc and m <= ms and (a, m) != (acc, ms) for a, m in done.values())
    assert (out / "pareto.png").stat().st_size > 5000
    recommended = load_recipe(out / "recommended.yaml")
    best = next(t for t in trials if t["number"] == summary["recommended"])
    assert recommended.teacher.checkpoint is None and recommended.evaluate.split == "test"
    assert recommended.stages[0].temperature == pytest.approx(best["values"]["stages.distill.temperature"])
    assert "| trial |" in printed and "recommended: trial" in printed
    # A trial's folder reproduces it: the same recipe run again gives the same accuracy.
    again = tmp_path / "again"
    assert main(["run", str(Path(trials[1]["folder"]) / "recipe.yaml"), "--out", str(again), "--quiet"]) == 0
    rerun = json.loads((again / "report.json").read_text())["artifacts"][-1]["metrics"]["accuracy"]
    assert rerun == pytest.approx(trials[1]["numbers"]["accuracy"], abs=1e-9)


def test_a_stage_left_out_is_absent_from_the_trial(tmp_path):
    from torchslim.search.space import build_space

    space = build_space(load_recipe(write(tmp_path, RECIPE)), "image-classification")
    values = {"stages.distill.temperature": 2.0, "stages.prune.sparsity": 0.7, "student.args.widths": [8],
              "stages.prune": False}
    raw = space.trial_recipe(values)
    assert [st["type"] for st in raw["stages"]] == ["distill", "export", "quantize"]
    assert raw["student"]["args"]["widths"] == [8] and raw["stages"][0]["temperature"] == 2.0


@pytest.mark.parametrize("change, message", [
    ({"params": {"stages.distill.temperatur": [1, 8]}}, "has no field 'temperatur' (did you mean 'temperature'?)"),
    ({"params": {"stages.distill.temperature": [5, 5]}}, "empty range [5, 5]"),
    ({"params": {"stages.prun.sparsity": [0.1, 0.5]}}, "no stage named 'prun' (did you mean 'prune'?)"),
    ({"params": {"stages.prune.sparsity": {"choices": []}}}, "empty choices"),
    ({"params": {"stages.prune.sparsity": [0.1, 2.0]}}, "the recipe is invalid"),
    ({"params": {"stages.prune.sparsity": [0.1, 0.5, "exp"]}}, "can only be `log`"),
    ({"objectives": ["accuracyy"]}, "'accuracyy' is not in the report (did you mean 'accuracy'?)"),
    ({"objectives": ["accuracy", "latency_ms@32"]}, "latency at batch size 32 is not measured"),
    ({"constraints": ["accuracy_drop is small"]}, "search.constraints[0]: cannot read"),
    ({"constraints": ["bytez <= 5"]}, "'bytez' is not in the report"),
    ({"sampler": "grid"}, "search.sampler"),
])
def test_bad_search_blocks_are_one_line_and_exit_2(tmp_path, capsys, change, message):
    recipe = write(tmp_path, with_search(**change))
    for command in (["validate", str(recipe)], ["search", str(recipe), "--out", str(tmp_path / "s")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("torchslim: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "s" / "study.db").exists()  # nothing started


def test_stop_early_stops_a_trial_worse_than_every_feasible_finished_one(tmp_path):
    from torchslim.search.run import TrialStopped, _stopper
    from torchslim.search.space import build_space

    space = build_space(load_recipe(write(tmp_path, with_search(stop_early={"after": 2, "margin": 0.01}))))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for curve, constraints in (([0.80, 0.90], [-1.0]), ([0.70, 0.85], [-2.0]), ([0.10, 0.10], [5.0])):
        study.add_trial(optuna.trial.create_trial(
            values=[curve[-1], 1.0], user_attrs={"curve": curve, "constraints": constraints,
                                                 "monitor": "val_accuracy"}))
    trial = study.ask()
    watch = _stopper(trial, space)
    watch("distill", {"epoch": 1, "val_accuracy": 0.695}, "val_accuracy")  # within the margin of the worst (0.70)
    with pytest.raises(TrialStopped, match="worse than every one of 2 finished trials"):
        watch("distill", {"epoch": 2, "val_accuracy": 0.80}, "val_accuracy")  # feasible trials had >= 0.85
    assert trial.study.trials[-1].user_attrs["curve"] == [0.695, 0.80]
    # Without a constraint on accuracy, a worse trial may still be a faster point of the front: never stopped.
    free = build_space(load_recipe(write(tmp_path, with_search(stop_early={"after": 2, "margin": 0.01},
                                                               constraints=[]), name="free.yaml")))
    unbounded = _stopper(study.ask(), free)
    for epoch, value in ((1, 0.1), (2, 0.1)):
        unbounded("distill", {"epoch": epoch, "val_accuracy": value}, "val_accuracy")


def test_two_workers_share_the_study(tmp_path):
    recipe = write(tmp_path, with_search(trials=4))
    out = tmp_path / "search"
    assert main(["search", str(recipe), "--out", str(out), "--workers", "2"]) == 0
    trials = json.loads((out / "search.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["state"] == "complete" for t in trials)
    storage = f"sqlite:///{out / 'study.db'}"
    pids = {t.user_attrs["worker"]["pid"] for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    assert len(pids) == 2  # both processes ran trials


def test_a_killed_search_resumes_without_losing_finished_trials(tmp_path):
    slow = with_search(trials=3)
    slow["stages"][0]["train"]["epochs"] = 60  # a few seconds per trial: time to kill one mid-way
    recipe = write(tmp_path, slow)
    out = tmp_path / "search"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torchslim", "search", str(recipe), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "trial 0:" in line:  # trial 0 finished; trial 1 starts now
            time.sleep(1.0)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert any("trial 0:" in line for line in seen), "".join(seen)
    storage = f"sqlite:///{out / 'study.db'}"
    before = optuna.load_study(study_name="tiny", storage=storage).trials
    assert before[0].state.name == "COMPLETE" and before[-1].state.name == "RUNNING"
    cut_off = before[-1].params

    done = subprocess.run([sys.executable, "-m", "torchslim", "search", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "will run again; every finished trial is kept" in done.stdout
    after = optuna.load_study(study_name="tiny", storage=storage).trials
    assert after[0].values == before[0].values and after[0].params == before[0].params  # kept, not rerun
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["trials"]) == 3 and all(t["state"] == "complete" for t in summary["trials"])
    assert any(t.params == cut_off and t.state.name == "COMPLETE" for t in after[2:])  # the cut-off one, again


def test_out_holding_another_search_is_refused(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", str(write(tmp_path, with_search(trials=1))), "--out", str(out)]) == 0
    other = write(tmp_path, with_search(trials=1, objectives=["accuracy"]), name="other.yaml")
    assert main(["search", str(other), "--out", str(out)]) == 2
    assert "holds a search of another recipe" in capsys.readouterr().err
    assert main(["search", str(other), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "search.json").read_text())["objectives"] == ["accuracy"]
