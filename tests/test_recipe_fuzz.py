"""Property: any mutation of a shipped recipe ends with exit code 0 or 2 — and for 2, one line — never a traceback.

`torchslim validate` runs everything short of training (schema, names, files, data loading, model construction),
so it is where a bad recipe must be caught.
"""
import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchslim.cli import main

RECIPES = {p.name: yaml.safe_load(p.read_text()) for p in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))}
EXAMPLES = 500

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    """Every path to a value in the recipe (dict keys and list indices)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _parent(recipe, path):
    node = recipe
    for k in path[:-1]:
        node = node[k]
    return node


@st.composite
def mutated_recipes(draw):
    name = draw(st.sampled_from(sorted(RECIPES)))
    recipe = copy.deepcopy(RECIPES[name])
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(recipe))
        kind = draw(st.sampled_from(["delete", "wrong_type", "out_of_range", "stage_type", "data_path", "new_key"]))
        stages = [s for s in recipe.get("stages") or [] if isinstance(s, dict)] \
            if isinstance(recipe.get("stages"), list) else []
        if kind == "stage_type" and stages:
            draw(st.sampled_from(stages))["type"] = draw(st.text(min_size=1, max_size=10))
        elif kind == "data_path":
            if not isinstance(recipe.get("data"), dict):
                recipe["data"] = {"name": "digits"}
            recipe["data"]["root"] = draw(st.sampled_from(["/nonexistent", "", ".", "/etc/passwd"]))
        elif kind == "new_key":
            recipe[draw(st.text(min_size=1, max_size=8))] = draw(ODD_VALUES)
        elif paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(recipe, path)
            if kind == "delete":
                del parent[path[-1]]
            elif kind == "wrong_type":
                parent[path[-1]] = draw(ODD_VALUES)
            else:
                parent[path[-1]] = draw(st.sampled_from([-1, 0, -0.5, 1.5, 10**12, 1e300, -10**9]))
    return name, recipe


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=mutated_recipes())
def test_mutated_recipe_exits_0_or_2_with_one_line(case, tmp_path_factory, capsys):
    name, recipe = case
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_text(yaml.safe_dump(recipe))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("torchslim: error: "), err
