"""The shape of the pipeline: every stage is one registered class whose `run` only calls a family, and the recipe
schema, `torchslim list stages`, torchrun and resume learn about a stage from that class alone."""
import inspect

import pytest

from torchslim.pipeline import STAGES, STAGE_TYPES
from torchslim.recipe import Recipe


@pytest.mark.parametrize("name", STAGES.names())
def test_stage_run_is_a_few_lines_that_call_a_family(name):
    lines = inspect.getsource(STAGES.get(name).run).splitlines()
    assert len(lines) <= 25, f"{name}.run has {len(lines)} lines: move method logic into its family"


def test_the_recipe_schema_is_built_from_the_registered_stage_classes():
    assert set(STAGE_TYPES) == set(STAGES.names())
    recipe = Recipe.model_validate({"teacher": {"model": "mlp"}, "student": {"model": "mlp"},
                                    "stages": [{"type": "distill"}, {"type": "export"}]})
    assert [type(s) for s in recipe.stages] == [STAGES.get("distill"), STAGES.get("export")]


def test_traits_say_who_runs_a_stage_and_where_its_artifact_runs():
    trains = {n for n in STAGES.names() if STAGES.get(n).every_rank}
    assert trains == {"train", "distill", "datafree", "prune", "prune_channels", "finetune", "share", "qat"}
    stages = Recipe.model_validate({"teacher": {"model": "mlp"}, "student": {"model": "mlp"}, "stages": [
        {"type": "distill"}, {"type": "distill", "name": "d2", "init": "current"}, {"type": "export"},
        {"type": "export", "name": "dc", "format": "compressed"}, {"type": "quantize"}]}).stages
    assert [s.makes_student for s in stages] == [True, False, False, False, False]
    assert [s.runtime for s in stages] == ["pytorch", "pytorch", "onnxruntime", "pytorch", "onnxruntime"]
