"""The first hour of a new user (issue 15): every stumble they hit, as a test.

Each one ends with one line naming the problem and what to do, exit code 2, and no traceback.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from torchslim.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": {"name": "digits", "limit_train": 300, "limit_test": 100},
        "teacher": {"model": "mlp", "args": {"widths": [8]}, "train": {"epochs": 1}},
        "stages": [{"type": "finetune", "train": {"epochs": 1}}],
        "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]}}


def _recipe(tmp_path, recipe=None, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe or TINY))
    return p


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("torchslim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _mlp_state() -> dict:
    from torchslim.models import create_model

    return create_model("mlp", widths=[8], input_shape=(1, 8, 8), num_classes=10).state_dict()


# 2. --out names an existing file
def test_out_that_is_a_file_is_one_line_exit_2(tmp_path):
    somefile = tmp_path / "somefile"
    somefile.write_text("notes")
    r = subprocess.run([sys.executable, "-m", "torchslim", "run", str(_recipe(tmp_path)), "--out", str(somefile)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"torchslim: error: --out {somefile}: is a file, not a folder; give a folder for the run"
    assert somefile.read_text() == "notes"


# 3. a binary file as the recipe
def test_binary_recipe_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "model.yaml"
    p.write_bytes(b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.")
    assert main(["validate", str(p)]) == 2
    assert "not a text file" in _one_line_error(capsys)


# 4. an empty recipe, and one that names nothing to run, are refused at load, not late in `run`
@pytest.mark.parametrize("text, expected", [("", "the recipe is empty"), ("# just a comment\n", "the recipe is empty"),
                                            ("data: {name: digits}\n", "nothing to run")])
def test_empty_recipe_is_refused_by_validate(tmp_path, capsys, text, expected):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    assert main(["validate", str(p)]) == 2
    assert expected in _one_line_error(capsys)


# 5. validate load-checks the checkpoints a recipe names
def test_validate_refuses_a_truncated_teacher_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    ckpt = tmp_path / "teacher.safetensors"
    save_file(_mlp_state(), str(ckpt))
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    p = _recipe(tmp_path, {**TINY, "teacher": {**TINY["teacher"], "checkpoint": str(ckpt)}})
    assert main(["validate", str(p)]) == 2
    err = _one_line_error(capsys)
    assert "teacher.checkpoint: corrupt checkpoint" in err and "truncated" in err


def test_validate_refuses_a_checkpoint_of_another_shape(tmp_path, capsys):
    ckpt = tmp_path / "teacher.pt"
    torch.save(_mlp_state(), ckpt)
    p = _recipe(tmp_path, {**TINY, "teacher": {"model": "mlp", "args": {"widths": [16]}, "checkpoint": str(ckpt)}})
    assert main(["validate", str(p)]) == 2
    assert "does not fit the model" in _one_line_error(capsys)


# 6. what a .pt file holds, said plainly
def test_truncated_pt_is_reported_corrupt_not_refused(tmp_path):
    from torchslim.errors import TorchslimError
    from torchslim.io import load_state_dict

    p = tmp_path / "t.pt"
    torch.save(_mlp_state(), p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(TorchslimError, match=r"corrupt checkpoint .*t\.pt \(truncated") as e:
        load_state_dict(p)
    assert "refused" not in str(e.value)


def test_pickled_full_model_refusal_is_clean_and_says_what_to_save(tmp_path):
    from torchslim.errors import TorchslimError
    from torchslim.io import load_state_dict
    from torchslim.models import create_model

    p = tmp_path / "full.pt"
    torch.save(create_model("mlp", widths=[8], input_shape=(1, 8, 8)), p)
    with pytest.raises(TorchslimError) as e:
        load_state_dict(p)
    msg = str(e.value)
    assert msg.startswith("refused checkpoint") and "\x1b" not in msg and "\n" not in msg
    assert "torchslim.models.mlp.MLP" in msg and msg.endswith("torch.save(model.state_dict(), path), or safetensors")


def test_wrapped_state_dict_is_accepted_with_a_note_and_other_keys_get_a_hint(tmp_path):
    from torchslim.errors import TorchslimError
    from torchslim.io import load_state_dict

    torch.save({"model": _mlp_state(), "epoch": 3}, tmp_path / "wrapped.pt")
    notes = []
    assert set(load_state_dict(tmp_path / "wrapped.pt", log=notes.append)) == set(_mlp_state())
    assert notes == [f"{tmp_path / 'wrapped.pt'}: took the weights under the key 'model'"]
    torch.save({"net": _mlp_state(), "epoch": 3}, tmp_path / "net.pt")
    with pytest.raises(TorchslimError, match=r"keys net, epoch; the weights look to be under the key 'net'"):
        load_state_dict(tmp_path / "net.pt")


# 7. --set errors name the full field and the --set argument
def test_set_error_names_the_full_path_and_the_set_argument(capsys):
    assert main(["validate", str(ROOT / "recipes/digits.yaml"), "--set", "stages.distill.train.epochs=-3"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("torchslim: error: --set stages.distill.train.epochs=-3: stages[1].train.epochs: ")
    # a field the recipe file itself gets wrong still blames the file
    assert main(["validate", str(ROOT / "recipes/digits.yaml"), "--set", "stages.0.name=distill"]) == 2
    assert "recipes/digits.yaml: " in _one_line_error(capsys)


# 8. Ctrl-C says how to resume; --resume names the field that changed, with both values
def test_ctrl_c_prints_the_command_that_resumes(tmp_path, capsys, monkeypatch):
    import torchslim.pipeline.runner as runner

    def interrupt(recipe):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "load_data", interrupt)
    out = tmp_path / "my run"
    p = _recipe(tmp_path)
    assert main(["run", str(p), "--out", str(out), "--set", "seed=1"]) == 130
    err = capsys.readouterr().err
    assert err == (f"torchslim: interrupted; to continue: torchslim run {p} --out '{out}' --set seed=1 --resume\n")


def test_resume_names_the_changed_field_with_old_and_new_value(tmp_path, capsys):
    out, p = str(tmp_path / "o"), _recipe(tmp_path)
    assert main(["run", str(p), "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(p), "--out", out, "--resume", "--set", "teacher.train.lr=0.01"]) == 2
    err = _one_line_error(capsys)
    assert "--resume: teacher.train.lr differs from the run in" in err and "was 0.001, now 0.01" in err
    assert main(["run", str(p), "--out", out, "--resume", "--set", "stages.finetune.train.epochs=2"]) == 2
    assert "stages[0].train.epochs differs" in (err := _one_line_error(capsys)) and "was 1, now 2" in err


# 9. a finished or interrupted --out is not silently overwritten
def test_finished_out_is_refused_without_force(tmp_path, capsys):
    out, p = tmp_path / "o", _recipe(tmp_path)
    assert main(["run", str(p), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = (out / "report.json").read_bytes()
    assert main(["run", str(p), "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "holds a finished run" in err and "--force" in err
    assert (out / "report.json").read_bytes() == before
    assert main(["run", str(p), "--out", str(out), "--quiet", "--force"]) == 0
    assert main(["run", str(p), "--out", str(out), "--quiet", "--resume", "--force"]) == 2
    assert "not allowed with argument" in _one_line_error(capsys)


def test_interrupted_out_is_refused_without_resume_or_force(tmp_path, capsys):
    out, p = tmp_path / "o", _recipe(tmp_path)
    assert main(["run", str(p), "--out", str(out), "--quiet"]) == 0
    (out / "report.json").unlink()  # as if killed before the end: progress.json lists finished stages
    capsys.readouterr()
    assert main(["run", str(p), "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "holds an interrupted run (finished: teacher, finetune)" in err and "--resume" in err and "--force" in err
    assert main(["run", str(p), "--out", str(out), "--quiet", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["artifacts"]


def test_a_run_that_stopped_before_any_work_can_simply_be_run_again(tmp_path, capsys):
    """A bad field found at run time leaves recipe.yaml but no work: fixing it and running again just works."""
    out = tmp_path / "o"
    bad = _recipe(tmp_path, {**TINY, "data": {"name": "mnist", "root": str(tmp_path)}})
    assert main(["run", str(bad), "--out", str(out), "--quiet"]) == 2
    capsys.readouterr()
    assert main(["run", str(_recipe(tmp_path)), "--out", str(out), "--quiet"]) == 0
