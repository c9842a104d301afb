"""`torchslim search`: an Optuna study over a recipe's `search:` space, each trial an ordinary recipe run.

Layout of ``--out``:

    study.db              the Optuna storage (SQLite) unless --storage names another database
    search-setup.json     what this folder searches (the recipe, the storage, the study name)
    shared/               work every trial reuses: the trained teacher, cached teacher logits (by content hash)
    trials/0007/          one run folder per trial: recipe.yaml, report.{md,html,json}, log.txt
    search.md, .json, pareto.png, recommended.yaml      written when the search ends (``write_search_report``)

Workers are local processes that share the study through its storage; a second machine joins by running the same
command with the same ``--storage`` URL and ``--study`` name. A search that is killed keeps every finished trial in
the storage: running it again continues the study, and trials that were cut off are run again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torchslim import __version__
from torchslim.distillation.kd import TEACHER_CACHE_ENV
from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_json
from torchslim.recipe import Recipe, dump_recipe, load_recipe, validate_recipe
from torchslim.search.space import Space, build_space, metric_value, report_numbers
from torchslim.search.spec import LOWER_IS_BETTER, Param

Log = Callable[[str], None]


class TrialStopped(Exception):
    """Raised from inside a trial's training to end it early (stop_early); the trial is recorded as pruned."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TorchslimError("torchslim search needs Optuna: pip install 'torchslim[search]' (or pip install "
                             "optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats (how a dead worker's trial is found and run again) are marked experimental: not the user's concern.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ------------------------------------------------------------------------------------------------------- the study
def storage_for(url: str):
    """An Optuna RDB storage with heartbeats, so that a trial whose worker died (on any machine) is failed and run
    again once its heartbeat is stale."""
    _optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=20, grace_period=120,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as e:  # a bad URL, a database that cannot be reached, a driver that is not installed
        raise TorchslimError(f"--storage {url}: Optuna cannot open it ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); give a database URL such as sqlite:///search.db or "
                             f"postgresql://user:pass@host/db") from None


def _sampler(space: Space, worker: int):
    optuna = _optuna()
    spec = space.spec
    seed = space.recipe.seed * 1000 + worker  # workers must not propose the same points
    # Constraints reach the samplers through trial.set_constraint (in _objective).
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=max(2, min(10, spec.trials // 3)))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population)


def _directions(space: Space) -> list[str]:
    return ["minimize" if m.lower_is_better else "maximize" for m in space.objectives]


def _counted(trial) -> bool:
    """A trial that took its place in the budget: finished, stopped early, or failed on its own (not cut off)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def _alive(worker: dict | None) -> bool:
    if not worker or worker.get("host") != socket.gethostname():
        return True  # another machine's worker: its heartbeat tells
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study, out: Path, log: Log) -> int:
    """Trials cut off by a kill (their worker on this machine is gone, or they were interrupted): mark them failed,
    remove their half-written folders, and queue their parameters to run again. Returns how many."""
    _optuna()
    from optuna.trial import TrialState

    again = 0
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        cut = (t.state == TrialState.RUNNING and not _alive(t.user_attrs.get("worker"))) or \
              (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))
        if not cut or t.number in retried:
            continue
        if t.state == TrialState.RUNNING:  # attributes first: a finished trial can no longer be changed
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        folder = t.user_attrs.get("folder")
        if folder and Path(folder).is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        again += 1
    if again:
        log(f"{again} trial(s) cut off by the earlier stop will run again; every finished trial is kept")
    return again


# ---------------------------------------------------------------------------------------------------- shared work
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def shared_teacher(space: Space, out: Path, log: Log) -> str | None:
    """Train the recipe's teacher once for every trial, under a hash of everything it depends on, and return its
    checkpoint (None when there is nothing to share: no teacher to train, or the search varies it)."""
    recipe = space.recipe
    t = recipe.teacher
    if t is None or t.onnx or t.checkpoint or recipe.teachers or recipe.data.task == "sentence-embedding":
        return None
    if any(p.path.split(".")[0] in ("teacher", "teachers", "data", "seed", "version") for p in space.params):
        return None
    what = {k: space.base[k] for k in ("version", "seed", "data", "teacher")}
    key = hashlib.sha256(json.dumps([what, __version__], sort_keys=True).encode()).hexdigest()[:12]
    folder = out / "shared" / f"teacher-{key}"
    with _locked(out / "shared" / f"teacher-{key}.lock"):
        if not (folder / "report.json").is_file():
            log(f"training the teacher once for every trial: {folder}")
            from torchslim.pipeline import run_recipe

            raw = {k: v for k, v in space.base.items() if k not in ("stages", "teachers")}
            teacher_recipe = validate_recipe(raw, source="teacher")
            with _file_log(folder / "log.txt") as flog:
                def tee(msg: str) -> None:  # once per search, and minutes long: show its epochs too
                    flog(msg)
                    if msg.startswith("[teacher]"):
                        log(msg)
                run_recipe(teacher_recipe, folder, log=tee, resume=(folder / "recipe.yaml").is_file())
        else:
            log(f"teacher: reused {folder / 'teacher.safetensors'} (same data, model and training)")
    return str((folder / "teacher.safetensors").resolve())


@contextmanager
def _file_log(path: Path) -> Iterator[Log]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        def log(msg: str) -> None:
            fh.write(msg + "\n")
            fh.flush()
        yield log


# ----------------------------------------------------------------------------------------------------------- trials
def _suggest(trial, p: Param) -> Any:
    if p.kind == "optional":
        return trial.suggest_categorical(p.path, [True, False])
    if p.kind == "choice":
        plain = all(isinstance(c, (bool, int, float, str)) or c is None for c in p.choices)
        if plain:
            return trial.suggest_categorical(p.path, list(p.choices))
        shown = [json.dumps(c) for c in p.choices]  # Optuna stores plain values only: lists travel as JSON text
        return json.loads(trial.suggest_categorical(p.path, shown))
    if p.kind == "int":
        return trial.suggest_int(p.path, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.path, p.low, p.high, log=p.log)


def _stopper(trial, space: Space) -> Callable[[str, dict, str], None]:
    """The epoch watcher of one trial: records its validation curve in the study, and stops it when it is worse
    than every finished trial that met the constraints was at the same epoch (by more than the margin)."""
    _optuna()
    from optuna.trial import TrialState

    stop = space.spec.stop_early
    curve: list[float] = []
    study = trial.study

    def watch(stage: str, record: dict, monitor: str) -> None:
        value = record.get(monitor)
        if value is None:
            return
        curve.append(float(value))
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("monitor", monitor)
        metric = monitor.removeprefix("val_")
        # Stopping is sound only when a constraint bounds what is monitored: then a trial below every trial that met
        # it is heading for a miss. Without one, a worse score may still buy a faster model on the Pareto front.
        bounded = any(c.metric.name in (metric, "accuracy_drop" if metric == "accuracy" else metric)
                      for c in space.constraints)
        if stop is None or not bounded:
            return
        step = len(curve) - 1
        higher = metric not in LOWER_IS_BETTER
        peers = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            c = t.user_attrs.get("curve") or []
            feasible = all(v <= 0 for v in t.user_attrs.get("constraints") or [])
            if feasible and t.user_attrs.get("monitor") == monitor and len(c) > step:
                peers.append(c[step])
        if len(peers) < stop.after:
            return
        worst = min(peers) if higher else max(peers)
        if (value < worst - stop.margin) if higher else (value > worst + stop.margin):
            raise TrialStopped(f"{stage} epoch {record.get('epoch')}: {monitor} {value:.4f} is worse than every one "
                               f"of {len(peers)} finished trials that met the constraints at the same epoch "
                               f"(worst {worst:.4f}, margin {stop.margin:g})")
    return watch


def _objective(trial, space: Space, out: Path, teacher: str | None, log: Log):
    optuna = _optuna()
    from torchslim.pipeline import run_recipe
    from torchslim.training import watch_epochs

    values = {p.path: _suggest(trial, p) for p in space.params}
    folder = out / "trials" / f"{trial.number:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    trial.set_user_attr("folder", str(folder))
    trial.set_user_attr("values", values)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    t0 = time.perf_counter()
    try:
        recipe = validate_recipe(space.trial_recipe(values, teacher), source=f"trial {trial.number}")
        with _file_log(folder / "log.txt") as flog, watch_epochs(_stopper(trial, space)):
            report = run_recipe(recipe, folder, log=flog)
    except TrialStopped as e:
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("stopped", str(e))
        log(f"trial {trial.number}: stopped early ({e})")
        raise optuna.TrialPruned(str(e)) from None
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr("interrupted", True)
        raise
    except Exception as e:  # one trial's failure (a missed latency budget, a bug) must not end the search
        message = " ".join(str(e).split()) if isinstance(e, TorchslimError) else f"{type(e).__name__}: {e}"
        trial.set_user_attr("error", message[:500])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(traceback.format_exc())
        log(f"trial {trial.number}: failed: {message[:300]}")
        raise
    numbers = report_numbers(report, space)
    objectives = [metric_value(report, m, space.artifact) for m in space.objectives]
    violations = [c.violation(metric_value(report, c.metric, space.artifact)) for c in space.constraints]
    trial.set_user_attr("numbers", numbers)
    trial.set_user_attr("constraints", violations)
    for c, v in zip(space.constraints, violations):
        trial.set_constraint(c.text, v)
    trial.set_user_attr("seconds", time.perf_counter() - t0)
    if any(v is None for v in objectives):
        missing = [m.label for m, v in zip(space.objectives, objectives) if v is None]
        message = f"the report has no {', '.join(missing)} for artifact {numbers['artifact']}"
        trial.set_user_attr("error", message)
        log(f"trial {trial.number}: failed: {message}")
        raise TorchslimError(f"trial {trial.number}: {message}")
    shown = ", ".join(f"{m.label} {_fmt(v)}" for m, v in zip(space.objectives, objectives))
    ok = "" if all(v <= 0 for v in violations) else "  (misses a constraint)"
    log(f"trial {trial.number}: {shown}{ok}  [{time.perf_counter() - t0:.0f} s]")
    return tuple(objectives) if len(objectives) > 1 else objectives[0]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


# ---------------------------------------------------------------------------------------------------------- workers
def _worker_main(job: dict) -> None:
    """One worker process: load the recipe and the study, run trials until the budget is spent."""
    import torch

    threads = job["threads"]
    torch.set_num_threads(threads)
    worker = job["worker"]

    def log(msg: str) -> None:
        print(f"[worker {worker}] {msg}", flush=True)

    parent = os.getppid()
    try:
        recipe = load_recipe(job["recipe"], job["overrides"])
        space = build_space(recipe, job["task"])
        _work(space, Path(job["out"]), job["storage"], job["study"], worker, job["teacher"], job["trials"],
              job["deadline"], log, orphaned=lambda: os.getppid() != parent)
    except KeyboardInterrupt:
        sys.exit(130)
    except TorchslimError as e:
        print(f"torchslim: error: [worker {worker}] {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _work(space: Space, out: Path, storage_url: str, study_name: str, worker: int, teacher: str | None,
          trials: int, deadline: float | None, log: Log, orphaned: Callable[[], bool] = lambda: False) -> None:
    optuna = _optuna()
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage_for(storage_url),
                              sampler=_sampler(space, worker))

    def enough(study) -> bool:
        """The budget is spent: trials finished and running reach it, or the time is up."""
        all_trials = study.get_trials(deepcopy=False)
        taken = sum(_counted(t) for t in all_trials) + sum(t.state == TrialState.RUNNING for t in all_trials)
        # A worker whose search process is gone (killed) starts no more trials: run the search again to continue.
        return taken >= trials or (deadline is not None and time.time() >= deadline) or orphaned()

    while not enough(study):
        study.optimize(lambda t: _objective(t, space, out, teacher, log), n_trials=1, catch=(Exception,))


def run_search(recipe_path: str, out: str | Path, overrides: list[str] | tuple[str, ...] = (), workers: int = 1,
               trials: int | None = None, storage: str | None = None, study: str | None = None,
               force: bool = False, log: Log = print) -> tuple[dict, Space]:
    """Run (or continue) the search a recipe's `search:` block describes; write its report into `out` and return
    its summary (what search.json holds) and the space.

    Example:
        >>> run_search("recipes/fashion-mnist-search.yaml", "runs/search", workers=2)   # doctest: +SKIP
    """
    from torchslim.pipeline import check_recipe
    from torchslim.search.report import write_search_report

    optuna = _optuna()
    recipe = load_recipe(recipe_path, overrides)
    if recipe.search is None:
        raise TorchslimError(f"{recipe_path}: the recipe has no `search:` block; add one (docs/search.md), or "
                             f"`torchslim run` it as written")
    if workers < 1:
        raise TorchslimError(f"--workers {workers}: give 1 or more")
    summary = check_recipe(recipe)
    space = build_space(recipe, summary["task"])
    if recipe.search.select_on == "val" and not summary["val"]:
        raise TorchslimError("search.select_on: val, but the data has no validation split; set data.val_size (e.g. "
                             "0.1), or select_on: test")
    out = Path(out)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study or Path(recipe_path).stem
    budget = trials if trials is not None else recipe.search.trials
    if budget < 0:
        raise TorchslimError(f"--trials {budget}: give 0 or more (0: only the shared work, such as the teacher)")
    _claim(out, recipe, storage, name, force)
    directions = _directions(space)
    study_obj = optuna.create_study(study_name=name, storage=storage_for(storage), directions=directions,
                                    load_if_exists=True)
    if list(study_obj.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise TorchslimError(f"--study {name}: that study already exists in {storage} with other objectives; give "
                             f"another --study name")
    recover_interrupted(study_obj, out, log)
    if not study_obj.get_trials(deepcopy=False):
        base = space.base_values()
        if base is not None:  # trial 0: the recipe as written, measured like every other trial
            study_obj.enqueue_trial({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                                     for k, v in base.items()})
    done = sum(_counted(t) for t in study_obj.get_trials(deepcopy=False))
    log(f"search: {len(space.params)} parameters, objectives {', '.join(m.label for m in space.objectives)}"
        + (f", constraints {'; '.join(c.text for c in space.constraints)}" if space.constraints else "")
        + f"; {done} of {budget} trials done; {workers} worker(s); storage {storage}, study '{name}'")
    import torch

    threads = torch.get_num_threads()
    cache_env = os.environ.get(TEACHER_CACHE_ENV)
    procs: list = []
    try:
        # Every worker trains and times with the recipe's threads, as the trials' reports say: the shared teacher too.
        torch.set_num_threads(recipe.evaluate.threads)
        teacher = shared_teacher(space, out, log)
        deadline = time.time() + 60 * recipe.search.timeout_minutes if recipe.search.timeout_minutes else None
        job = {"recipe": str(recipe_path), "overrides": list(overrides), "out": str(out), "storage": storage,
               "study": name, "teacher": teacher, "trials": budget, "deadline": deadline,
               "threads": recipe.evaluate.threads, "task": summary["task"]}
        t0 = time.perf_counter()
        os.environ[TEACHER_CACHE_ENV] = str((out / "shared" / "logits").resolve())  # the workers inherit it
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=({**job, "worker": w},), daemon=False)
                 for w in range(2, workers + 1)]
        for p in procs:
            p.start()
        _work(space, out, storage, name, 1, teacher, budget, deadline, lambda m: log(f"[worker 1] {m}"))
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
        if cache_env is None:
            os.environ.pop(TEACHER_CACHE_ENV, None)
        else:
            os.environ[TEACHER_CACHE_ENV] = cache_env
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed:
        log(f"warning: {len(failed)} worker process(es) ended with exit code {', '.join(map(str, failed))}")
    summary = write_search_report(optuna.load_study(study_name=name, storage=storage_for(storage)), space, out,
                                  seconds=time.perf_counter() - t0, workers=workers)
    return summary, space


def report_only(recipe_path: str, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
                storage: str | None = None, study: str | None = None) -> tuple[dict, Space]:
    """Write the report of a search's trials so far (while it runs, or after it was stopped)."""
    optuna = _optuna()
    out = Path(out)
    recipe = load_recipe(recipe_path, overrides)
    space = build_space(recipe)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise TorchslimError(f"--out {out}: no search there (no study.db); run torchslim search first")
    name = study or Path(recipe_path).stem
    try:
        loaded = optuna.load_study(study_name=name, storage=storage_for(storage))
    except KeyError:
        raise TorchslimError(f"--study {name}: no such study in {storage}") from None
    return write_search_report(loaded, space, out), space


def _claim(out: Path, recipe: Recipe, storage: str, name: str, force: bool) -> None:
    """`out` holds this search (continue it), nothing (start it), or another search (refuse unless --force)."""
    meta = out / "search-setup.json"
    this = {"recipe": recipe.model_dump(mode="json"), "storage": storage, "study": name}
    if meta.is_file():
        before = json.loads(meta.read_text()).get("search", {})
        same = before.get("recipe") == this["recipe"] and before.get("study") == name
        if not same and not force:
            raise TorchslimError(f"--out {out} holds a search of another recipe or study; give a new --out, or "
                                 f"--force to start over there")
        if not same or force:
            for part in ("trials", "shared", "study.db", "search.md", "search.json", "pareto.png", "recommended.yaml"):
                path = out / part
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    elif out.is_dir() and any(p.name != "shared" for p in out.iterdir()) and not force:
        # `shared/` alone is work an earlier search left (a teacher, logits): kept by content hash, safe to reuse.
        raise TorchslimError(f"--out {out} is a folder with other files in it; give a new or empty --out for a "
                             f"search")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta, {"search": this, "recipe_yaml": dump_recipe(recipe)})
