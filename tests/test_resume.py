"""A run killed with SIGKILL in the middle of a stage resumes to exactly the numbers of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

RECIPE = {
    "seed": 3,
    "data": {"name": "digits"},
    "teacher": {"model": "mlp", "args": {"widths": [32]}, "train": {"epochs": 4, "lr": 0.003}},
    "student": {"model": "mlp", "args": {"widths": [16], "dropout": 0.1}},
    "stages": [{"type": "distill", "train": {"epochs": 150, "lr": 0.002, "schedule": "cosine"}},
               {"type": "prune", "sparsity": 0.6, "schedule": "iterative", "rounds": 2, "train": {"epochs": 2}},
               {"type": "quantize", "name": "int8", "calibration_batches": 2}],
    "evaluate": {"max_seconds": 0.01},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(recipe, out, *extra):
    return [sys.executable, "-m", "torchslim", "run", str(recipe), "--out", str(out), *extra]


def _numbers(report):
    return [(a["name"], a["accuracy"], a["errors"], a["nonzero_params"], a["file_bytes"]) for a in report["artifacts"]]


def test_sigkill_mid_stage_then_resume_gives_identical_results(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    full = subprocess.run(_cmd(recipe, tmp_path / "full"), env=ENV, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(recipe, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "distill.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.2)  # some epochs into the stage, possibly in the middle of writing a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Nothing half-written: every finished-looking file is complete and loads (temporary files may remain).
    progress = json.loads((out / "progress.json").read_text())
    assert list(progress) == ["teacher"], "the kill must land inside the distill stage"
    state = torch.load(out / "checkpoints" / "distill.pt", weights_only=True)
    assert 1 <= state["epoch"] < 150
    from safetensors.torch import load_file

    load_file(str(out / "teacher.safetensors"))
    assert not (out / "report.json").exists()

    resumed = subprocess.run(_cmd(recipe, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[teacher] finished in an earlier run" in resumed.stdout
    assert f"[distill] resumed from {ckpt} after epoch" in resumed.stdout
    a = json.loads((tmp_path / "full" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert _numbers(a) == _numbers(b)
    la = [e["loss"] for e in a["artifacts"][1]["info"]["training"]["history"]]
    lb = [e["loss"] for e in b["artifacts"][1]["info"]["training"]["history"]]
    assert la == lb and len(la) == 150
    assert not list(out.rglob("*.tmp")) and not list((out / "checkpoints").glob("*.pt"))


def test_resume_refuses_changes_to_finished_work_but_takes_changes_to_the_rest(tmp_path, capsys):
    from torchslim.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"name": "digits"}, "teacher": {"model": "mlp", "train": {"epochs": 1}},
                                      "stages": [{"type": "finetune", "train": {"epochs": 1}}],
                                      "evaluate": {"max_seconds": 0.01}}))
    out = str(tmp_path / "o")
    assert main(["run", str(recipe), "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", out, "--resume", "--set", "seed=5"]) == 2
    assert "--resume: seed differs from the run in" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", out, "--resume", "--set", "stages.finetune.train.lr=0.01"]) == 2
    assert "--resume: stages[0].train.lr differs" in capsys.readouterr().err
    # A stage added after the finished ones is new work: the resume runs only that.
    longer = yaml.safe_load(recipe.read_text())
    longer["stages"].append({"type": "export"})
    recipe.write_text(yaml.safe_dump(longer))
    assert main(["run", str(recipe), "--out", out, "--resume"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == ["teacher", "finetune", "export"]
    assert main(["run", str(recipe), "--out", str(tmp_path / "new"), "--resume"]) == 2
