"""Every class of bad recipe ends with exit code 2 and one line naming the field — never a traceback."""
from pathlib import Path

import pytest
import yaml

from torchslim.cli import main
from torchslim.recipe import apply_override, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
BASE = {
    "version": 1, "seed": 0, "data": {"name": "digits"},
    "teacher": {"model": "mlp", "args": {"widths": [16]}, "train": {"epochs": 1}},
    "student": {"model": "mlp", "args": {"widths": [8]}},
    "stages": [{"type": "distill", "temperature": 4, "train": {"epochs": 1}}, {"type": "prune", "sparsity": 0.5}],
}


def _run(tmp_path, capsys, recipe, *extra):
    p = tmp_path / "r.yaml"
    p.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    code = main(["validate", str(p), *extra])
    err = capsys.readouterr().err
    return code, err


def _with(**changes):
    r = yaml.safe_load(yaml.safe_dump(BASE))
    for k, v in changes.items():
        apply_override(r, f"{k}={v}")
    return r


@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe_path):
    load_recipe(recipe_path)


@pytest.mark.parametrize("recipe,expected", [
    # unknown keys, with a did-you-mean
    (_with(seeed=1), "seeed: unknown field (did you mean 'seed'?)"),
    (_with(**{"stages.distill.temprature": 3}), "stages[0].temprature: unknown field (did you mean 'temperature'?)"),
    (_with(**{"teacher.train.epoch": 3}), "teacher.train.epoch: unknown field (did you mean 'epochs'?)"),
    # wrong types
    (_with(**{"stages.distill.temperature": "hot"}), "stages[0].temperature: Input should be a valid number"),
    (_with(**{"teacher.train.epochs": "[1, 2]"}), "teacher.train.epochs: Input should be a valid integer"),
    (_with(data="3"), "data: expected a mapping of fields"),
    # bad values, with the valid choices where there is a list
    (_with(**{"stages.prune.sparsity": 1.5}), "stages[1].sparsity: Input should be less than 1"),
    (_with(**{"teacher.train.optimizer": "adagrad"}), "teacher.train.optimizer: Input should be 'sgd', 'adam' or 'adamw'"),
    (_with(**{"stages.0.type": "distil"}), "stages[0].type: unknown stage type 'distil' (did you mean 'distill'?); valid choices: datafree, distill, export"),
    (_with(version=2), "this torchslim reads recipe version 1, not 2"),
    # names a registry does not know
    (_with(**{"teacher.model": "lenet-5"}), "teacher.model: unknown model 'lenet-5' (did you mean 'lenet5'?)"),
    (_with(**{"data.name": "mnst"}), "data.name: unknown dataset 'mnst' (did you mean 'mnist'?)"),
    ({"teacher": {"model": "mlp"}, "stages": [{"type": "mixed"}]}, "give exactly one of `budget` (size) or `tolerance_points`"),
    # missing files
    (_with(**{"teacher.checkpoint": "nope.safetensors"}), "teacher.checkpoint: file not found: nope.safetensors"),
    (_with(**{"data.root": "/no/such/folder"}), "data.root: folder not found: /no/such/folder"),
    # a stage that needs something no earlier stage made
    (_with(teacher="null"), "stages[0] (distill): needs a `teacher:` section to distill from"),
    (_with(student="null"), "stages[0] (distill): needs a `student:` section"),
    ({"stages": [{"type": "quantize"}]}, "stages[0] (quantize): needs a model, but no teacher and no earlier train/distill"),
    (_with(**{"stages.prune.name": "distill"}), "two artifacts would be named 'distill'"),
    # not YAML / not a mapping
    ("stages: [\n", "not valid YAML at line"),
    ("- a\n- b\n", "a recipe is a mapping of fields"),
])
def test_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys, recipe, expected):
    code, err = _run(tmp_path, capsys, recipe)
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("override,expected", [
    ("stages.distil.temperature=8", "no stage named 'distil' (did you mean 'distill'?); stages: distill, prune"),
    ("stages.7.temperature=8", "index 7 out of range"),
    ("seed", "expected KEY=VALUE"),
])
def test_bad_set_is_one_line_and_exit_2(tmp_path, capsys, override, expected):
    code, err = _run(tmp_path, capsys, BASE, "--set", override)
    assert code == 2 and expected in err and err.count("\n") == 1


def test_set_overrides_any_field_and_parses_yaml_values(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(BASE))
    r = load_recipe(p, ["stages.distill.temperature=8", "student.args.widths=[4, 4]", "stages.1.scope=layerwise",
                        "evaluate.threads=2"])
    assert r.stages[0].temperature == 8.0 and r.student.args["widths"] == [4, 4]
    assert r.stages[1].scope == "layerwise" and r.evaluate.threads == 2


def test_missing_recipe_file(capsys):
    assert main(["run", "/no/such/recipe.yaml"]) == 2
    assert "recipe not found: /no/such/recipe.yaml" in capsys.readouterr().err


def test_list_unknown_target_lists_choices(capsys):
    assert main(["list", "model"]) == 2
    assert "did you mean 'models'?" in capsys.readouterr().err
