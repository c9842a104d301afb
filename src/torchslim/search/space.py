"""A recipe's search space made concrete: the trial recipes it stands for, checked against the recipe schema and the
task's report before any trial runs, and the numbers a trial's report gives for each objective and constraint."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from torchslim.errors import TorchslimError, did_you_mean
from torchslim.recipe import Recipe, set_field, stage_index, validate_recipe
from torchslim.search.spec import (
    REPORT_NUMBERS,
    Constraint,
    Metric,
    Param,
    parse_constraints,
    parse_objectives,
    parse_params,
)


@dataclass
class Space:
    recipe: Recipe
    base: dict  # the resolved recipe as data, without its `search:` block: what every trial starts from
    params: list[Param]
    objectives: list[Metric]
    constraints: list[Constraint]
    artifact: str | None  # None: the last artifact of the trial

    @property
    def spec(self):
        return self.recipe.search

    def trial_recipe(self, values: dict[str, Any], teacher_checkpoint: str | None = None) -> dict:
        """The raw recipe of one trial: the base with every searched field set and the stages turned off left out
        (a field of a stage that is left out is not set)."""
        raw = copy.deepcopy(self.base)
        raw.setdefault("evaluate", {})["split"] = self.spec.select_on
        dropped = {p.path.split(".", 1)[1] for p in self.params if p.kind == "optional" and not values[p.path]}
        for p in self.params:
            if p.kind == "optional" or _stage_of(p.path) in dropped:
                continue
            set_field(raw, p.path, values[p.path], what=f"search.params.{p.path}")
        if dropped:
            raw["stages"] = [st for st in raw["stages"] if (st.get("name") or st.get("type")) not in dropped]
        if teacher_checkpoint is not None:
            raw["teacher"] = {k: v for k, v in raw["teacher"].items() if k != "train"}
            raw["teacher"]["checkpoint"] = teacher_checkpoint
        return raw

    def base_values(self) -> dict[str, Any] | None:
        """The recipe as written, as values of the space (trial 0), or None when a written value lies outside."""
        values = {}
        for p in self.params:
            if p.kind == "optional":
                values[p.path] = True
                continue
            try:
                value = _get(self.base, p.path)
            except KeyError:
                return None
            if p.kind == "choice":
                if value not in p.choices:
                    return None
            elif not (isinstance(value, (int, float)) and p.low <= value <= p.high):
                return None
            values[p.path] = value
        return values


def _stage_of(path: str) -> str | None:
    parts = path.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 1 else None


def _get(raw: dict, path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if isinstance(node, list):
            idx = int(part) if part.lstrip("-").isdigit() else stage_index(node, part)
            if idx is None:
                raise KeyError(path)
            node = node[idx]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(path)
    return node


def build_space(recipe: Recipe, task_name: str | None = None) -> Space:
    """Check the recipe's `search:` block against the recipe and (given its task's name: the data must be loaded to
    know it) the report's metrics; each problem is one TorchslimError line that names the entry."""
    if recipe.search is None:
        raise TorchslimError("the recipe has no `search:` block; add one (see docs/search.md), or use "
                             "`torchslim run` to run it as written")
    spec = recipe.search
    base = recipe.model_dump(mode="json")
    base.pop("search")
    space = Space(recipe, base, parse_params(spec), parse_objectives(spec), parse_constraints(spec), spec.artifact)
    for p in space.params:
        _check_param(space, p)
    artifacts = recipe.teacher_names() + [st.label for st in recipe.stages]
    if spec.artifact is not None and spec.artifact not in artifacts:
        raise TorchslimError(f"search.artifact: no artifact named '{spec.artifact}'{did_you_mean(spec.artifact, artifacts)}; "
                             f"artifacts: {', '.join(artifacts)}")
    optional = {p.path.split(".", 1)[1] for p in space.params if p.kind == "optional"}
    if spec.artifact is not None and spec.artifact in optional:
        raise TorchslimError(f"search.artifact: '{spec.artifact}' is a stage the search may leave out; name one that "
                             f"always runs, or leave search.artifact out (the last artifact of each trial)")
    metrics = [(f"search.objectives[{i}]", m) for i, m in enumerate(space.objectives)]
    metrics += [(f"search.constraints[{i}]", c.metric) for i, c in enumerate(space.constraints)]
    valid = list(REPORT_NUMBERS)
    if task_name is not None:
        from torchslim.tasks import TASKS

        valid = list(TASKS.get(task_name).metric_names) + valid
    for where, m in metrics:
        if task_name is not None and m.name not in valid:
            raise TorchslimError(f"{where}: '{m.name}' is not in the report{did_you_mean(m.name, valid)}; "
                                 f"valid metrics: {', '.join(valid)}, latency_ms@<batch size>, bytes")
        if m.name == "latency_ms" and m.batch_size is not None and m.batch_size not in recipe.evaluate.batch_sizes:
            raise TorchslimError(f"{where}: latency at batch size {m.batch_size} is not measured; the report measures "
                                 f"evaluate.batch_sizes {recipe.evaluate.batch_sizes}: use one of them or add it there")
        if m.name == "accuracy_drop" and recipe.teacher is None:
            raise TorchslimError(f"{where}: accuracy_drop is measured against the teacher, and the recipe has none")
    return space


def _check_param(space: Space, p: Param) -> None:
    """Every value that spans the parameter gives a valid recipe (each choice; both ends of a range; the stage left
    out), so that a typo in a path or an impossible value fails now, not after an hour of trials."""
    where = f"search.params.{p.path}"
    stage = _stage_of(p.path)
    if stage is not None and stage_index(space.base["stages"], stage) is None:
        names = [st.get("name") or st.get("type") for st in space.base["stages"]]
        raise TorchslimError(f"{where}: no stage named '{stage}'{did_you_mean(stage, names)}; stages: "
                             f"{', '.join(names) or '(none)'}")
    if p.kind != "optional":
        try:
            _get(space.base, p.path)
        except KeyError:
            section, _, last = p.path.rpartition(".")
            free = section.endswith(".args") or section in ("student.args", "teacher.args")
            if not free:  # a model's `args` are free-form: the model checks them when it is built
                try:
                    fields = list(_get(space.base, section)) if section else list(space.base)
                except (KeyError, TypeError):
                    fields = []
                raise TorchslimError(f"{where}: {section or 'the recipe'} has no field '{last}'"
                                     f"{did_you_mean(last, fields)}"
                                     + (f"; valid fields: {', '.join(map(str, fields))}" if fields else "")) from None
    for value in p.bounds():
        values = {q.path: (value if q is p else _first(q, space)) for q in space.params}
        raw = space.trial_recipe(values)
        shown = "left out" if p.kind == "optional" else json.dumps(value)
        try:
            validate_recipe(raw, source="trial")
        except TorchslimError as e:
            raise TorchslimError(f"{where}: with {p.path} {shown}, the recipe is invalid: "
                                 f"{str(e).removeprefix('trial: ')}") from None


def _first(p: Param, space: Space) -> Any:
    base = space.base_values()
    if base is not None:
        return base[p.path]
    return True if p.kind == "optional" else p.bounds()[0] if p.kind == "choice" else (
        int(p.low) if p.kind == "int" else p.low)


def artifact_of(report: dict, name: str | None) -> dict:
    arts = report["artifacts"]
    if name is None:
        return arts[-1]
    for a in arts:
        if a["name"] == name:
            return a
    raise TorchslimError(f"the report has no artifact '{name}'")


def metric_value(report: dict, metric: Metric, artifact: str | None) -> float | None:
    """One number of one artifact of a report (report.json as data)."""
    a = artifact_of(report, artifact)
    if metric.name == "latency_ms":
        batch = metric.batch_size if metric.batch_size is not None else report["recipe"]["evaluate"]["batch_sizes"][0]
        cell = (a.get("latency_ms") or {}).get(str(batch))
        return None if cell is None else float(cell["p50"])
    if metric.name == "accuracy_drop":
        delta = (a.get("vs_teacher") or {}).get("accuracy_delta")
        return None if delta is None else -100.0 * float(delta)
    if metric.name in (a.get("metrics") or {}):
        value = a["metrics"][metric.name]
    else:
        value = a.get(metric.name)
    return None if value is None else float(value)


def report_numbers(report: dict, space: Space) -> dict[str, float | None]:
    """Every number a search table or plot shows for a trial: its objectives and constraints, the primary metric,
    latency at each measured batch size and the file size."""
    a = artifact_of(report, space.artifact)
    wanted = [*space.objectives, *(c.metric for c in space.constraints), Metric(a["primary_metric"]),
              Metric("file_bytes"), *(Metric("latency_ms", int(b)) for b in report["recipe"]["evaluate"]["batch_sizes"])]
    out: dict[str, Any] = {"artifact": a["name"], "primary_metric": a["primary_metric"]}
    for m in wanted:
        out[m.label] = metric_value(report, m, space.artifact)
    return out
