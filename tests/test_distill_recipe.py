"""Distill stages with feature losses and two teachers, end to end on digits; the report's curves and agreement;
recipe errors; and an interrupted CRD stage resuming to bit-identical weights."""
import json

import pytest
import torch
import yaml

from torchslim.cli import main
from torchslim.pipeline import run_recipe
from torchslim.recipe import validate_recipe

RECIPE = {
    "seed": 1,
    "data": {"name": "digits"},
    "teacher": {"model": "mlp", "args": {"widths": [32, 32]}, "train": {"epochs": 3, "lr": 0.003}},
    "teachers": [{"name": "t2", "model": "mlp", "args": {"widths": [48, 32]}, "train": {"epochs": 3, "lr": 0.003}}],
    "student": {"model": "mlp", "args": {"widths": [32]}},
    "stages": [
        # FitNets' first stage: hints only, from the first teacher ...
        # (fc1 has 32 units in both, so the hint needs no adapter and carries over to the next stage as it is).
        {"type": "distill", "name": "hint", "teachers": ["teacher"], "train": {"epochs": 2, "lr": 0.003, "keep": "last"},
         "losses": [{"name": "fitnet", "student": "fc1", "teacher": "fc1", "weight": 1.0}]},
        # ... then, from the hinted student, kd from both teachers plus two feature losses.
        {"type": "distill", "init": "current", "teacher_weights": [2, 1], "train": {"epochs": 3, "lr": 0.003},
         "losses": ["kd", {"name": "fitnet", "student": "fc1", "teacher": "fc1", "weight": 1.0},
                    {"name": "similarity", "student": "relu1", "teacher": "relu2", "from_teacher": "t2"}]},
    ],
    "evaluate": {"max_seconds": 0.01},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    torch.set_num_threads(1)
    (tmp / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(tmp / "r.yaml"), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out", json.loads((tmp / "out" / "report.json").read_text())


def test_two_teachers_and_feature_losses_train_a_student(run):
    out, report = run
    art = {a["name"]: a for a in report["artifacts"]}
    assert list(art) == ["teacher", "t2", "hint", "distill"]
    assert art["t2"]["stage"] == "teacher" and (out / "t2.safetensors").is_file()  # each teacher is an artifact
    info = art["distill"]["info"]
    assert info["teachers"] == ["teacher", "t2"]
    history = info["training"]["history"]
    assert [set(h["terms"]) for h in history] == [{"kd", "fitnet", "similarity"}] * 3
    for h in history:
        assert h["loss"] == pytest.approx(sum(h["terms"].values()), rel=1e-6)
    # init: current starts from the hinted student, so its hint term starts where the hint stage left it.
    hint = art["hint"]["info"]["training"]["history"]
    assert history[0]["terms"]["fitnet"] < 0.6 * hint[0]["terms"]["fitnet"]
    assert info["init_from"] == "hint" and "init_from" not in art["hint"]["info"]
    agreement = info["teacher_agreement"]
    assert set(agreement) == {"combined", "teachers"} and set(agreement["teachers"]) == {"teacher", "t2"}
    assert all(0 <= v <= 1 for v in [agreement["combined"], *agreement["teachers"].values()])
    assert agreement["combined"] > 0.6 and art["distill"]["accuracy"] > 0.6
    assert art["distill"]["vs_teacher"] is not None  # the first teacher is the baseline


def test_report_shows_loss_curves_and_agreement(run):
    out, report = run
    md = (out / "report.md").read_text()
    assert "teacher agreement % |" in md.splitlines()[2]
    agree = 100 * report["artifacts"][3]["info"]["teacher_agreement"]["combined"]
    assert f"| {agree:.2f} |" in md
    assert "| loss term (weighted) | epoch 1 | epoch 3 |" in md and "![loss terms of distill per epoch](distill-loss-terms.png)" in md
    for name in ("hint", "distill"):
        assert (out / f"{name}-loss-terms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count('<img alt="loss terms of') == 2
    assert "teacher–student top-1 agreement (test set)" in page


@pytest.mark.parametrize("change,expected", [
    ({"stages.1.losses.1.student": "fc_1"},
     "stages[1] (distill): losses[1].student: unknown module 'fc_1' in the student (did you mean 'fc1'?); valid names include"),
    ({"stages.1.losses.2.teacher": "relu_1"}, "losses[2].teacher: unknown module 'relu_1' in the teacher 't2' (did you mean 'relu1'?)"),
    ({"stages.1.losses.2.from_teacher": "t22"}, "stages[1].losses[2].from_teacher: unknown teacher 't22' (did you mean 't2'?)"),
    ({"stages.0.teachers": "[teachr]"}, "stages[0].teachers: unknown teacher 'teachr' (did you mean 'teacher'?)"),
    ({"stages.1.teacher_weights": "[1, 2, 3]"}, "stages[1].teacher_weights: 3 weights for 2 teachers (teacher, t2)"),
    ({"stages.0.init": "current"}, "stages[0].init: 'current' continues from the model of an earlier stage"),
    ({"stages.1.losses.0": "{name: kd, temprature: 2}"}, "stages[1].losses[0]: unknown option 'temprature' of loss 'kd'"),
    ({"teachers.0.name": "teacher"}, "teachers[0].name: two teachers are named 'teacher'"),
    ({"teachers.0.trian": "{}"}, "teachers[0].trian: unknown field (did you mean 'train'?)"),
])
def test_validate_catches_bad_distill_settings(tmp_path, capsys, change, expected):
    from torchslim.recipe import apply_override

    raw = yaml.safe_load(yaml.safe_dump(RECIPE))
    for k, v in change.items():
        apply_override(raw, f"{k}={v}")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_no_losses_is_hinton_kd_exactly_as_before():
    stage = validate_recipe(RECIPE).stages[1].model_copy(update={"losses": []})
    assert stage.temperature == 4.0 and stage.alpha == 0.1 and stage.init == "current"
    base = validate_recipe({"teacher": {"model": "mlp"}, "student": {"model": "mlp"}, "stages": [{"type": "distill"}]})
    st = base.stages[0]
    assert (st.losses, st.teachers, st.teacher_weights, st.teacher_combine, st.init) == ([], None, None, "logits", "fresh")


class _Interrupt(Exception):
    pass


def test_interrupted_crd_stage_resumes_to_identical_weights(tmp_path):
    """The memory bank and its normalization constants are training state: killed after epoch 1 and resumed, the
    student ends bit-identical to an uninterrupted run (a re-initialized bank would change the gradients)."""
    recipe = validate_recipe({
        "seed": 2, "data": {"name": "digits"},
        "teacher": {"model": "mlp", "args": {"widths": [32]}, "train": {"epochs": 1, "lr": 0.003}},
        "student": {"model": "mlp", "args": {"widths": [16]}},
        "stages": [{"type": "distill", "train": {"epochs": 3, "lr": 0.003, "schedule": "cosine"},
                    "losses": ["kd", {"name": "crd", "student": "relu1", "teacher": "relu1", "negatives": 64,
                                      "feat_dim": 16}]}],
        "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]},
    })
    run_recipe(recipe, tmp_path / "full", log=lambda m: None)

    def stop_in_epoch_2(msg):
        if msg.startswith("[distill] epoch   2/3"):  # logged before epoch 2 is checkpointed
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_recipe(recipe, tmp_path / "cut", log=stop_in_epoch_2)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "distill.pt", weights_only=True)
    assert state["epoch"] == 1 and state["extra_state"]["terms.1.memory_s"].shape == (1293, 16)
    assert state["extra_state"]["terms.1.z"].min() > 0  # set on the first batch
    logs = []
    run_recipe(recipe, tmp_path / "cut", log=logs.append, resume=True)
    assert any("resumed from" in m and "after epoch 1" in m for m in logs)
    full = (tmp_path / "full" / "distill.safetensors").read_bytes()
    assert (tmp_path / "cut" / "distill.safetensors").read_bytes() == full
