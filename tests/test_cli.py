"""The real command line, as a user runs it: exit codes and one-line errors from a separate process."""
import subprocess
import sys

import pytest


def _torchslim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "torchslim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("what,expected", [("models", "lenet5"), ("datasets", "fashion-mnist"), ("stages", "distill")])
def test_list(what, expected):
    r = _torchslim("list", what)
    assert r.returncode == 0 and expected in r.stdout.split()


def test_bad_recipe_exits_2_with_one_line_and_no_traceback(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("teacher: {model: mlp}\nstages:\n  - {type: prune, sparsity: 2}\n")
    r = _torchslim("run", str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "stages[0].sparsity: Input should be less than 1" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_unknown_option_exits_2():
    r = _torchslim("run", "x.yaml", "--sett", "a=b")
    assert r.returncode == 2 and "unrecognized arguments: --sett" in r.stderr
