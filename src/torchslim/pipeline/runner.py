"""Runs a recipe: the teachers, then each stage in order, then one evaluation of every artifact.

Each stage reads the run state (data, teacher, current model) and adds exactly one artifact. Stages copy the model
they start from, so every artifact in the report is the model as that stage left it.

A run survives being killed: training stages checkpoint their full state every epoch into `<out>/checkpoints/`,
and `progress.json` lists the stages already finished, each with its artifact's file and what it reported (its
records as JSON, read back as records). `run_recipe(..., resume=True)` reloads finished stages from
their artifacts (never redoing them) and continues the interrupted one from its last finished epoch. Under torchrun
every rank trains; rank 0 alone writes files, exports, quantizes and evaluates — and every rank meets the others at
the same barrier after every step, whether it ran the step or not.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from torchslim.artifact import Artifact
from torchslim.distillation.onnx_teacher import OnnxTeacher
from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_json, atomic_write_text, load_checkpoint
from torchslim.pipeline.state import Log, RunState, checkpoint_path
from torchslim.recipe import Recipe, dump_recipe
from torchslim.records import TrainingRecord, as_info, info_from_json, jsonable
from torchslim.tracking import Tracker, make_tracker, track
from torchslim.training import dist


def _checkpoints_of(out: Path, stage: str) -> list[Path]:
    """The stage's own checkpoint files: `<stage>.pt`, and `<stage>-round-<k>.pt` for pruning rounds."""
    own = checkpoint_path(out, stage)
    return [p for p in own.parent.glob("*.pt") if p == own or p.name.startswith(f"{own.stem}-round-")]


def _teacher(state: RunState, name: str) -> tuple[Artifact, nn.Module]:
    """Train or load a teacher; return its artifact and the module distillation calls."""
    from torchslim.training import fit

    spec = state.recipe.teacher_spec(name)
    torch.manual_seed(state.recipe.seed)
    model = state.create(spec)
    if spec.onnx:  # a black box: evaluated from its own file, in ONNX Runtime; nothing to count or save
        state.log(f"[{name}] ONNX Runtime teacher {spec.onnx}")
        return Artifact(name, "teacher", "onnxruntime", Path(spec.onnx), None, {"onnx": spec.onnx}), model
    if spec.checkpoint:
        load_checkpoint(model, spec.checkpoint, log=lambda msg: state.log(f"[{name}] {msg}"))
        state.log(f"[{name}] loaded {spec.checkpoint}")
        info = {"checkpoint": spec.checkpoint}
    elif state.task.name == "sentence-embedding":  # its embeddings are the targets: used as they are
        state.log(f"[{name}] {spec.describe()}: the reference embeddings, not trained")
        info = {"reference": spec.describe()}
    else:
        info = as_info(TrainingRecord.of(fit(model, state.data.train, state.data.val, spec.train,
                                             seed=state.recipe.seed, checkpoint=state.checkpoint(name), stage=name,
                                             log=state.log)))
    path = state.save(model, name, {"model": spec.model, "factory": spec.factory, "hf": spec.hf, "args": spec.args})
    return Artifact(name, "teacher", "pytorch", path, model.eval(), info), model


def _reload_teacher(state: RunState, name: str, path: Path, info: dict) -> tuple[Artifact, nn.Module]:
    model = state.create(state.recipe.teacher_spec(name))
    if isinstance(model, OnnxTeacher):
        return Artifact(name, "teacher", "onnxruntime", path, None, info), model
    return Artifact(name, "teacher", "pytorch", path, load_checkpoint(model, path).eval(), info), model


def _start(recipe: Recipe, out: Path, resume: bool) -> dict:
    """Prepare the run folder; return the finished stages recorded by an earlier, interrupted run."""
    progress = out / "progress.json"
    saved = out / "recipe.yaml"
    if out.exists() and not out.is_dir():
        raise TorchslimError(f"--out {out}: is a file, not a folder; give a folder for the run (new or earlier run's)")
    done: dict = {}
    stale_checkpoints: list[str] = []
    if resume:
        if not saved.is_file():
            raise TorchslimError(f"--resume: {out} holds no earlier run (no recipe.yaml); drop --resume to start one")
        done = json.loads(progress.read_text()) if progress.is_file() else {}
        stale_checkpoints = _resumable(yaml.safe_load(saved.read_text()), recipe.model_dump(mode="json"), done, saved)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.rglob(".*.tmp"):  # left by a kill in the middle of a write; never a finished file
            stale.unlink()
        old = [progress, *(out / "checkpoints").glob("*.pt")] if not resume else \
            [p for name in stale_checkpoints for p in _checkpoints_of(out, name)]
        for path in old:
            path.unlink(missing_ok=True)
        atomic_write_text(saved, dump_recipe(recipe))
    dist.barrier()
    return done


def _resumable(before: dict, now: dict, done: dict, saved: Path) -> list[str]:
    """Check that a resumed run only changes what has not run yet; return stages whose checkpoints are stale.

    Everything a finished stage depended on (version, seed, data, teacher, student, the finished stages) must be
    unchanged. Unfinished stages may change — e.g. a lower learning rate after a NaN — and then restart from
    their first epoch.
    """
    def refuse(where: str, old, new) -> TorchslimError:
        fields = _differences(old, new, where)
        shown = "; ".join(f"{f}: was {_show(a)}, now {_show(b)}" for f, a, b in fields[:3])
        shown += f"; and {len(fields) - 3} more" if len(fields) > 3 else ""
        return TorchslimError(f"--resume: {', '.join(f for f, _, _ in fields[:3])} differ{'s' if len(fields) == 1 else ''}"
                              f" from the run in {saved.parent} ({shown}), and finished work depends on it; "
                              f"use a new --out, or --force to start over")

    changed = [key for key in ("version", "seed", "data", "teacher", "teachers", "student")
               if (before.get(key) or None) != (now.get(key) or None)]  # `teachers: []` and no key are the same
    if changed and done:
        raise refuse(changed[0], before.get(changed[0]), now.get(changed[0]))
    old_stages = before.get("stages", [])
    stale = (["teacher"] + [t["name"] for t in now.get("teachers") or []]) if changed else []
    for i, st in enumerate(now["stages"]):
        name = st["name"] or st["type"]
        same = not changed and i < len(old_stages) and old_stages[i] == st
        if name in done and not same:
            raise refuse(f"stages[{i}]", old_stages[i] if i < len(old_stages) else None, st)
        if not same:
            stale.append(name)
    return stale


def _differences(old, new, where: str) -> list[tuple[str, object, object]]:
    """Every leaf field that differs between two resolved recipe sections: [(path, old value, new value)]."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(key), new.get(key), f"{where}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [(where, old, new)]


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_out(out: str | Path, resume: bool, force: bool) -> None:
    """Refuse to start a run in a folder that holds an earlier one, unless told what to do with it: `resume`
    (continue it) or `force` (start over, replacing its files). A folder with no finished work is simply reused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TorchslimError(f"--out {out}: is a file, not a folder; give a folder for the run")
    if resume or force or not out.is_dir():
        return
    if (out / "report.json").is_file():
        raise TorchslimError(f"--out {out} holds a finished run (report.json); add --force to run again and replace "
                             f"it, or give a new --out")
    progress = out / "progress.json"
    finished = list(json.loads(progress.read_text())) if progress.is_file() else []
    if finished or list((out / "checkpoints").glob("*.pt")):
        what = f"finished: {', '.join(finished)}" if finished else "a stage was part way through"
        raise TorchslimError(f"--out {out} holds an interrupted run ({what}); add --resume to continue it, or "
                             f"--force to start over")


def load_data(recipe: Recipe):
    """The recipe's data set, split and ready (images normalised, text tokenized)."""
    from torchslim.data import load_dataset

    data = load_dataset(**recipe.data.load_options())
    if recipe.data.task == "sentence-embedding":
        from torchslim.tasks.sentence_embedding import as_sentence_embedding

        data = as_sentence_embedding(data)
    return data


def _check_stages(recipe: Recipe, state: RunState) -> None:
    for i, st in enumerate(recipe.stages):
        try:
            st.check(state)
        except TorchslimError as e:
            raise TorchslimError(f"stages[{i}] ({st.label}): {e}") from None


def check_recipe(recipe: Recipe) -> dict:
    """Everything short of training: load the data and build the teacher and student, so that a bad model
    argument or a missing data file shows up before any work starts. Returns a short summary."""
    data = load_data(recipe)
    state = RunState(recipe, Path("."), data, lambda m: None)
    summary = {"data": data.name, "task": data.task.name, "train": len(data.train),
               "val": len(data.val) if data.val is not None else 0, "test": len(data.test),
               "input_shape": list(data.input_shape), "num_classes": data.num_classes}
    roles = [("teacher", recipe.teacher), ("student", recipe.student)]
    roles += [(f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]
    for role, spec in roles:
        if spec is None:
            continue
        try:
            model = state.create(spec)
        except TorchslimError as e:
            raise TorchslimError(f"{role}: {e}") from None
        if getattr(spec, "checkpoint", None):  # corrupt, truncated or of another shape: say so now, not mid-run
            try:
                load_checkpoint(model, spec.checkpoint)
            except TorchslimError as e:
                raise TorchslimError(f"{role}.checkpoint: {e}") from None
        entry = {"model": spec.describe(), "params": sum(p.numel() for p in model.parameters())}
        if role.startswith("teachers["):
            summary.setdefault("teachers", {})[spec.name] = entry
        else:
            summary[role] = entry
    _check_stages(recipe, state)
    make_tracker(recipe.log)  # a recipe that logs to MLflow needs mlflow: say so before any work
    return summary


def run_recipe(recipe: Recipe, out: str | Path, log: Log = print, resume: bool = False) -> dict | None:
    """Run every stage of `recipe` into the folder `out`, evaluate all artifacts, write the report; return it (as
    report.json holds it: plain JSON data, each artifact's records under their kind in its ``info``).

    With `resume`, finished stages are reloaded from `out` and the interrupted one continues from its last epoch.
    Under torchrun, ranks other than 0 train alongside and return None.

    Example:
        >>> report = run_recipe(load_recipe("recipes/digits.yaml"), "runs/demo")   # doctest: +SKIP
    """
    dist.init()
    log = log if dist.is_main() else (lambda msg: None)
    out = Path(out)
    done = _start(recipe, out, resume)
    # The recipe's `log:` trackers (none: a no-op), rank 0 only; the run is marked FINISHED, FAILED or KILLED.
    with track(recipe, out, enabled=dist.is_main(), log=log) as tracker:
        return _run(recipe, out, log, done, tracker)


def _run(recipe: Recipe, out: Path, log: Log, done: dict, tracker: Tracker) -> dict | None:
    """The body of :func:`run_recipe`, inside its tracker: teachers, stages, evaluation, report."""
    from torchslim.evaluation import LatencyConfig, build_report, evaluate, write_report

    torch.manual_seed(recipe.seed)
    data = load_data(recipe)
    log(f"data: {recipe.data.name} from {data.source}: {len(data.train)} train / {len(data.val) if data.val else 0} val / "
        f"{len(data.test)} test, input {tuple(data.input_shape)}, {data.num_classes} classes"
        + (f"; {dist.world()} processes" if dist.world() > 1 else ""))
    state = RunState(recipe, out, data, log)
    _check_stages(recipe, state)
    _save_tokenizer(state)

    for name in recipe.teacher_names():
        t0 = time.perf_counter()
        if name in done:
            art, model = _reload_teacher(state, name, Path(done[name]["path"]), info_from_json(done[name]["info"]))
            log(f"[{name}] finished in an earlier run: reloaded {art.path.name}")
        else:
            art, model = _teacher(state, name)
            _finish(state, done, name, art)
        if state.teacher is None and art.runtime == "pytorch":
            # A task whose labels come from the teacher (sentence-embedding) relabels the data once, here.
            state.data = state.task.with_teacher(state.data, model)
        state.teacher = state.teacher or model
        state.teachers[name] = model
        if art.runtime == "pytorch":
            state.model = state.model or model  # the first teacher is the current model
        _add(state, art, t0)
        tracker.log_stage(art.name, art.info)  # its epochs, from the training history its records hold

    for i, st in enumerate(recipe.stages):
        t0 = time.perf_counter()
        if st.label in done:
            art = st.reload(state, Path(done[st.label]["path"]), info_from_json(done[st.label]["info"]))
            log(f"[{st.label}] finished in an earlier run: reloaded {art.path.name}")
        elif st.every_rank or dist.is_main():
            art = _finish(state, done, st.label, st.run(state, recipe.seed + i + 1))
        else:
            # Export and quantization write files and change no weights: rank 0 alone runs them, the others wait
            # for it here (at the barrier `_finish` ends with) and record where its artifact will be.
            dist.barrier()
            art = Artifact(st.label, st.type, st.runtime, out / st.label, state.model, {})
        if st.makes_student:
            state.student = state.student or st.label
        if art.runtime == "pytorch":
            state.model = art.model
        _add(state, art, t0)
        tracker.log_stage(art.name, art.info)  # its epochs, from the training history its records hold

    if not dist.is_main():
        return None
    ev = recipe.evaluate
    log(f"evaluating {len(state.artifacts)} artifacts (threads={ev.threads}, batch sizes {ev.batch_sizes})")
    latency = LatencyConfig(threads=ev.threads, batch_sizes=tuple(ev.batch_sizes), max_seconds=ev.max_seconds)
    judged = state.data
    if ev.split == "val":
        if state.data.val is None:
            raise TorchslimError("evaluate.split: val, but the data has no validation split; set data.val_size")
        judged = dataclasses.replace(state.data, test=state.data.val)
    records = evaluate(state.artifacts, judged, latency=latency,
                       teacher=(recipe.teacher_names() or [None])[0], student=state.student)
    report = build_report(records, recipe=recipe.model_dump(mode="json"), data=judged, threads=ev.threads,
                          meta={"stage_seconds": state.seconds, "processes": dist.world(), "split": ev.split},
                          latency=latency)
    report = jsonable(report)  # what report.json holds: records as their JSON under their kind
    write_report(report, out)
    tracker.log_results(report["artifacts"])
    tracker.log_artifacts(out)
    return report


def _finish(state: RunState, done: dict, name: str, art: Artifact) -> Artifact:
    """Record a finished step (rank 0), drop its checkpoints, and meet the other ranks."""
    if dist.is_main():
        done[name] = {"path": str(art.path), "info": jsonable(art.info)}
        atomic_write_json(state.out / "progress.json", done)
        for ckpt in _checkpoints_of(state.out, name):
            ckpt.unlink()
    dist.barrier()
    return art


def _add(state: RunState, art: Artifact, t0: float) -> None:
    state.artifacts.append(art)
    state.seconds[art.name] = time.perf_counter() - t0


def _save_tokenizer(state: RunState) -> None:
    """A text model ships with the tokenizer that made its inputs: `<out>/tokenizer.json`."""
    tokenizer = getattr(state.task, "tokenizer", None)
    if tokenizer is not None and dist.is_main():
        tokenizer.save(state.out / "tokenizer.json")
