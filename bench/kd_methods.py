"""Distillation methods side by side (RepDistiller's table, scaled to the CPU): Fashion-MNIST, teacher resnet20,
student resnet8, every registered feature loss combined with KD, two seeds each, the same epochs for every row.

    python bench/kd_methods.py time                 # ms per training sample of each kind of row -> pick a budget
    python bench/kd_methods.py table                # rows: student, kd, <loss>+kd for each loss, best combination
    python bench/kd_methods.py multi                # resnet20 + lenet5, resnet20 + resnet20 (seed 1) -> resnet8,
                                                    # vs each teacher alone

Every run is a separate process with 1 thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)); `--jobs 2` runs two of
them at once (the two seeds). Each finished run is kept under bench/out/kd-methods/runs/, so an interrupted table
continues where it stopped; the teachers are trained once and cached in bench/out/kd-methods/.
Results: bench/results/kd-methods.{json,md} and kd-multi.{json,md}. Needs TORCHSLIM_DATA (default ../shared/data).

Setup (RepDistiller, Tian et al. 2020, scaled down): SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, cosine
schedule (theirs: step decay over 240 epochs), no augmentation, the last epoch's weights. KD: T 4, 0.9 soft / 0.1 hard.
Feature terms at RepDistiller's weights and layers: FitNet 100 on layer2; AT 1000 on each of layer1-3; SP 3000 on
layer3; RKD 1 on the pooled features; FSP 50 on (stem, layer1), (layer1, layer2), (layer2, layer3) (RepDistiller
also pre-trains FSP's student alone first; not here); CRD 0.8 on the pooled features, 128-d heads, --negatives
negatives per sample from other classes (theirs: 16384).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "kd-methods"
RESULTS = ROOT / "bench" / "results"


def _features(negatives: int) -> dict[str, list[dict]]:
    """RepDistiller's layer choices on CIFAR ResNets, in torchslim's module names (resnet8 and resnet20 have the same
    stage widths 16/32/64, so no adapter is needed; `relu` is the stem's output, `flatten` the pooled features)."""
    return {
        "fitnet": [{"name": "fitnet", "student": "layer2", "teacher": "layer2"}],
        "attention": [{"name": "attention", "student": layer, "teacher": layer} for layer in ("layer1", "layer2", "layer3")],
        "similarity": [{"name": "similarity", "student": "layer3", "teacher": "layer3"}],
        "rkd": [{"name": "rkd", "student": "flatten", "teacher": "flatten"}],
        "fsp": [{"name": "fsp", "student": [a, b], "teacher": [a, b]}
                for a, b in (("relu", "layer1"), ("layer1", "layer2"), ("layer2", "layer3"))],
        "crd": [{"name": "crd", "student": "flatten", "teacher": "flatten", "negatives": negatives}],
    }


TEACHERS = {  # name: (model, seed); trained on the first --teacher-train-size rows
    "resnet20": ("resnet20", 0),
    "lenet5": ("lenet5", 1),  # a different architecture
    "resnet20-b": ("resnet20", 1),  # the same architecture, another seed
}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TORCHSLIM_DATA": os.environ.get("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))}


def _train_config(epochs: int):
    from torchslim.training import TrainConfig

    return TrainConfig(epochs=epochs, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64,
                       schedule="cosine", keep="last")


def _data(train_size: int):
    from torchslim.data import load_dataset

    return load_dataset("fashion-mnist", val_size=0, limit_train=train_size)


def _teacher_path(name: str, args) -> Path:
    return OUT / f"teacher-{name}-n{args.teacher_train_size}-e{args.teacher_epochs}.safetensors"


def _load_teacher(name: str, args, data):
    from torchslim import load_checkpoint
    from torchslim.models import create_model

    model = create_model(TEACHERS[name][0], num_classes=data.num_classes, input_shape=data.input_shape)
    return load_checkpoint(model, _teacher_path(name, args)).eval()


# ------------------------------------------------------------------------------------------------- one run (worker)
def train_teacher(name: str, args) -> dict:
    """Train one teacher on the first `teacher_train_size` rows and cache it (1 thread)."""
    import torch

    from torchslim import save_checkpoint
    from torchslim.models import create_model
    from torchslim.training import accuracy_of, fit

    torch.set_num_threads(1)
    data = _data(args.teacher_train_size)
    model_name, seed = TEACHERS[name]
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape)
    t0 = time.perf_counter()
    fit(model, data.train, None, _train_config(args.teacher_epochs), seed=seed, stage=f"teacher {name}",
        log=lambda m: print(m, flush=True))
    info = {"teacher": name, "model": model_name, "seed": seed, "train_size": args.teacher_train_size,
            "epochs": args.teacher_epochs, "seconds": round(time.perf_counter() - t0, 1),
            "test_accuracy": accuracy_of(model, data.test)}
    _teacher_test_logits(name, args, data, model)
    path = _teacher_path(name, args)
    save_checkpoint(model, path, info)
    return info


def _teacher_test_logits(name: str, args, data, model=None):
    """The teacher's logits on the test split, computed once and kept beside its weights (every run needs them for
    the agreement, and a resnet20 pass over 10,000 images costs more than a short student run's training)."""
    import torch

    from torchslim.io import atomic_path
    from torchslim.training import predict

    path = _teacher_path(name, args).with_suffix(".test-logits.pt")
    if path.is_file():
        return torch.load(path, weights_only=True)
    logits = predict(model if model is not None else _load_teacher(name, args, data), data.test.tensors[0])
    with atomic_path(path) as tmp:
        torch.save(logits, tmp)
    return logits


def run_one(row: str, losses: list[dict] | None, teachers: list[str], seed: int, args, combine: str = "logits") -> dict:
    """Train one resnet8 student (1 thread) and measure it on the whole test split."""
    import torch

    from torchslim.distillation import KDConfig, combine_logits, distill
    from torchslim.models import create_model
    from torchslim.training import fit, predict

    torch.set_num_threads(1)
    data = _data(args.train_size)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    student = create_model("resnet8", num_classes=data.num_classes, input_shape=data.input_shape)
    train = _train_config(args.epochs)
    log = lambda m: print(f"[{row} s{seed}] {m}", flush=True)  # noqa: E731
    record = {"row": row, "seed": seed, "teachers": teachers, "losses": losses, "combine": combine}
    if losses is None:
        result = fit(student, data.train, None, train, seed=seed, stage="student", log=log)
    else:
        kd = KDConfig(losses=losses, teacher_combine=combine)
        models = {name: _load_teacher(name, args, data) for name in teachers}
        result = distill(student, models, data, kd, train, seed=seed, stage="distill", log=log)
    x_test, y_test = data.test.tensors
    predicted = predict(student, x_test).argmax(1)
    acc = (predicted == y_test).float().mean().item()
    if losses is not None:
        # The same measure as torchslim.distillation.teacher_agreement, from the cached teacher test logits.
        each = {name: _teacher_test_logits(name, args, data) for name in teachers}
        combined = combine_logits(list(each.values()), None, combine, kd.kd_temperature())
        record["teacher_agreement"] = {"combined": (predicted == combined.argmax(1)).float().mean().item()}
        if len(each) > 1:
            record["teacher_agreement"].update(
                {name: (predicted == logits.argmax(1)).float().mean().item() for name, logits in each.items()})
    record.update(accuracy=acc, errors=round((1 - acc) * len(data.test)), seconds=round(time.perf_counter() - t0, 1),
                  history=result.history, train_size=args.train_size, epochs=args.epochs)
    return record


# -------------------------------------------------------------------------------------------------------- scheduling
def _run_dir(args) -> Path:
    return OUT / "runs" / f"n{args.train_size}-e{args.epochs}-t{args.teacher_train_size}x{args.teacher_epochs}-k{args.negatives}"


def _worker_cmd(kind: str, payload: dict, args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", kind, json.dumps(payload),
            *_budget_argv(args)]


def _budget_argv(args) -> list[str]:
    return ["--train-size", str(args.train_size), "--epochs", str(args.epochs),
            "--teacher-train-size", str(args.teacher_train_size), "--teacher-epochs", str(args.teacher_epochs),
            "--negatives", str(args.negatives)]


def _schedule(jobs: list[dict], args) -> None:
    """Run jobs ({"out": path, "kind", "payload", "after": [paths]}) as worker processes, at most --jobs at once, each
    once its prerequisites exist; a job whose output exists is skipped (an interrupted table resumes)."""
    pending = [j for j in jobs if not Path(j["out"]).is_file()]
    running: list[tuple[dict, subprocess.Popen, object]] = []
    logs = _run_dir(args) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        for job, proc, fh in list(running):
            if proc.poll() is not None:
                fh.close()
                running.remove((job, proc, fh))
                if proc.returncode != 0:
                    raise SystemExit(f"job {Path(job['out']).name} failed (exit {proc.returncode}); see {fh.name}")
                print(f"done: {Path(job['out']).name}", flush=True)
        ready = [j for j in pending if all(Path(p).is_file() for p in j.get("after", []))]
        while ready and len(running) < args.jobs:
            job = ready.pop(0)
            pending.remove(job)
            fh = open(logs / (Path(job["out"]).stem + ".log"), "w")
            print(f"start: {Path(job['out']).name}", flush=True)
            proc = subprocess.Popen(_worker_cmd(job["kind"], {**job["payload"], "out": str(job["out"])}, args),
                                    env=_env(), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
            running.append((job, proc, fh))
        if pending and not running and not ready:
            raise SystemExit("deadlock: jobs wait for files no job makes")
        time.sleep(1.0)


def _teacher_jobs(names: list[str], args) -> list[dict]:
    return [{"out": _teacher_path(n, args), "kind": "teacher", "payload": {"teacher": n}} for n in names]


def _row_jobs(rows: dict[str, dict], args) -> list[dict]:
    jobs = []
    for row, spec in rows.items():
        for seed in args.seeds:
            after = [_teacher_path(t, args) for t in spec.get("teachers", [])] if spec.get("losses") else []
            jobs.append({"out": _run_dir(args) / f"{row}-s{seed}.json", "kind": "run",
                         "payload": {"row": row, "seed": seed, **spec}, "after": after})
    return jobs


def _collect(rows: dict[str, dict], args) -> list[dict]:
    return [json.loads((_run_dir(args) / f"{row}-s{seed}.json").read_text()) for row in rows for seed in args.seeds]


# ------------------------------------------------------------------------------------------------------- summaries
def _summary(records: list[dict]) -> list[dict]:
    import statistics

    out = []
    for row in dict.fromkeys(r["row"] for r in records):
        runs = [r for r in records if r["row"] == row]
        accs = [100 * r["accuracy"] for r in runs]
        agree = [100 * r["teacher_agreement"]["combined"] for r in runs if "teacher_agreement" in r]
        out.append({"row": row, "accuracy_mean": round(statistics.mean(accs), 3),
                    "accuracy_min": round(min(accs), 2), "accuracy_max": round(max(accs), 2),
                    "per_seed": {str(r["seed"]): round(100 * r["accuracy"], 2) for r in runs},
                    "agreement_mean": round(statistics.mean(agree), 2) if agree else None,
                    "seconds_mean": round(statistics.mean(r["seconds"] for r in runs), 1),
                    "losses": runs[0]["losses"], "teachers": runs[0]["teachers"]})
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _machine() -> dict:
    from torchslim.evaluation import machine_info

    return {**machine_info(), "torch_threads_per_process": 1}


def _write(name: str, payload: dict, md: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {RESULTS / (name + '.json')} and .md")


def _budget_text(args, seconds: float, teachers: list[dict]) -> str:
    t = ", ".join(f"{x['teacher']} {100 * x['test_accuracy']:.2f}% ({x['seconds']:.0f} s)" for x in teachers)
    return (f"Budget: student {args.train_size} training rows × {args.epochs} epochs for every row and seed; teachers "
            f"trained once on {args.teacher_train_size} rows × {args.teacher_epochs} epochs ({t}). Test: all 10,000 "
            f"Fashion-MNIST test images. 1 thread per process, {args.jobs} processes at once on "
            f"{os.cpu_count()} CPUs; wall time of this command {seconds / 60:.1f} min (cached runs and teachers "
            f"are not re-run).")


# ------------------------------------------------------------------------------------------------------- commands
def cmd_table(args) -> int:
    t0 = time.perf_counter()
    features = _features(args.negatives)
    kd = {"name": "kd"}
    rows: dict[str, dict] = {"student": {"losses": None, "teachers": []},
                             "kd": {"losses": [kd], "teachers": ["resnet20"]}}
    rows.update({f"{m}+kd": {"losses": [kd, *specs], "teachers": ["resnet20"]} for m, specs in features.items()})
    _schedule(_teacher_jobs(["resnet20"], args) + _row_jobs(rows, args), args)
    single = _summary(_collect(rows, args))
    # The best combination: kd plus the two feature losses that did best alone (mean over seeds).
    ranked = sorted((r for r in single if r["row"].endswith("+kd")), key=lambda r: -r["accuracy_mean"])
    best = [r["row"].removesuffix("+kd") for r in ranked[:2]]
    combo = {f"{'+'.join(best)}+kd": {"losses": [kd, *[s for m in best for s in features[m]]], "teachers": ["resnet20"]}}
    _schedule(_row_jobs(combo, args), args)
    records = _collect({**rows, **combo}, args)
    summary = _summary(records)
    teacher = json.loads(_teacher_path("resnet20", args).with_suffix(".json").read_text())
    by = {r["row"]: r for r in summary}
    combo_row = next(iter(combo))
    targets = [
        {"what": "kd beats the student alone", "value": round(by["kd"]["accuracy_mean"] - by["student"]["accuracy_mean"], 3),
         "ok": by["kd"]["accuracy_mean"] > by["student"]["accuracy_mean"]},
        {"what": f"best combination ({combo_row}) beats kd",
         "value": round(by[combo_row]["accuracy_mean"] - by["kd"]["accuracy_mean"], 3),
         "ok": by[combo_row]["accuracy_mean"] > by["kd"]["accuracy_mean"]},
    ]
    seconds = time.perf_counter() - t0
    command = " ".join([Path(sys.executable).name, "bench/kd_methods.py", *sys.argv[1:]])
    payload = {"experiment": "kd-methods", "command": command, "seconds": round(seconds, 1), "machine": _machine(),
               "threads_per_process": 1, "jobs": args.jobs, "seeds": args.seeds,
               "budget": {"train_size": args.train_size, "epochs": args.epochs, "teacher_train_size":
                          args.teacher_train_size, "teacher_epochs": args.teacher_epochs, "negatives": args.negatives},
               "teacher": teacher, "best_combination": best, "targets": targets, "summary": summary, "runs": records}
    md = [f"# Distillation methods: resnet20 → resnet8 on Fashion-MNIST (`{command}`)", "",
          _budget_text(args, seconds, [teacher]), "",
          f"| row | top-1 % (mean of {len(args.seeds)} seeds) | per seed | Δ vs student | Δ vs kd | "
          "teacher agreement % | s per run |", "|---|---:|---|---:|---:|---:|---:|"]
    md.append(f"| teacher resnet20 | {100 * teacher['test_accuracy']:.2f} | — | — | — | — | {teacher['seconds']:.0f} |")
    for r in summary:
        seeds = " / ".join(f"{v:.2f}" for v in r["per_seed"].values())
        md.append(f"| {r['row']} | {r['accuracy_mean']:.2f} | {seeds} | "
                  f"{r['accuracy_mean'] - by['student']['accuracy_mean']:+.2f} | "
                  f"{r['accuracy_mean'] - by['kd']['accuracy_mean']:+.2f} | "
                  f"{_pct(r['agreement_mean'])} | {r['seconds_mean']:.0f} |")
    md += ["", "| target | Δ points | met |", "|---|---:|---|"]
    md += [f"| {t['what']} | {t['value']:+.3f} | {'yes' if t['ok'] else 'NO'} |" for t in targets]
    md += ["", "Rows `<loss>+kd` add that loss at RepDistiller's weight and layers to KD (T 4, 0.9 soft / 0.1 hard); "
           f"the best combination adds the two best single feature losses ({', '.join(best)}) together. "
           "Differences below the seed-to-seed spread (see per seed) are noise."]
    _write("kd-methods", payload, md)
    return 0


def cmd_multi(args) -> int:
    import torch

    from torchslim.distillation import combine_logits

    t0 = time.perf_counter()
    kd = [{"name": "kd"}]
    first = "resnet20"
    pairs = [(first, second) for second in args.second]
    rows = {f"kd from {first}": {"losses": kd, "teachers": [first]}}
    for a, b in pairs:
        rows[f"kd from {b}"] = {"losses": kd, "teachers": [b]}
        rows[f"kd from {a} + {b} (mean logits)"] = {"losses": kd, "teachers": [a, b]}
        rows[f"kd from {a} + {b} (mean probabilities)"] = {"losses": kd, "teachers": [a, b], "combine": "probs"}
    names = list(dict.fromkeys([first, *args.second]))
    _schedule(_teacher_jobs(names, args) + _row_jobs(rows, args), args)
    records = _collect(rows, args)
    summary = _summary(records)
    by = {r["row"]: r for r in summary}
    teachers = [json.loads(_teacher_path(n, args).with_suffix(".json").read_text()) for n in names]
    # Each pair's own ensemble on the test set: what the combined soft targets are worth as a classifier.
    torch.set_num_threads(1)
    data = _data(args.train_size)
    y = data.test.tensors[1]
    ensembles, targets = {}, []
    for a, b in pairs:
        logits = [_teacher_test_logits(n, args, data) for n in (a, b)]
        ensembles[f"{a} + {b}"] = {how: (combine_logits(logits, how=how, temperature=4.0).argmax(1) == y)
                                   .float().mean().item() for how in ("logits", "probs")}
        best_single = max(by[f"kd from {a}"]["accuracy_mean"], by[f"kd from {b}"]["accuracy_mean"])
        for how in ("mean logits", "mean probabilities"):
            row = by[f"kd from {a} + {b} ({how})"]
            targets.append({"what": f"{a} + {b} ({how}) beat either teacher alone (vs the better single-teacher row)",
                            "value": round(row["accuracy_mean"] - best_single, 3),
                            "ok": row["accuracy_mean"] > best_single})
    seconds = time.perf_counter() - t0
    command = " ".join([Path(sys.executable).name, "bench/kd_methods.py", *sys.argv[1:]])
    payload = {"experiment": "kd-multi", "command": command, "seconds": round(seconds, 1), "machine": _machine(),
               "threads_per_process": 1, "jobs": args.jobs, "seeds": args.seeds,
               "budget": {"train_size": args.train_size, "epochs": args.epochs, "teacher_train_size":
                          args.teacher_train_size, "teacher_epochs": args.teacher_epochs},
               "teachers": teachers, "teacher_ensemble_accuracy": ensembles, "targets": targets, "summary": summary,
               "runs": records}
    md = [f"# Two teachers → resnet8 on Fashion-MNIST (`{command}`)", "", _budget_text(args, seconds, teachers), "",
          "| teacher | top-1 % |", "|---|---:|"]
    md += [f"| {t['teacher']} ({t['model']}, seed {t['seed']}) | {100 * t['test_accuracy']:.2f} |" for t in teachers]
    for pair, acc in ensembles.items():
        md += [f"| ensemble {pair}, mean logits | {100 * acc['logits']:.2f} |",
               f"| ensemble {pair}, mean probabilities at T=4 | {100 * acc['probs']:.2f} |"]
    md += ["", f"| student row (KD, T 4, α 0.1; two teachers weighted equally) | top-1 % (mean of {len(args.seeds)} "
           "seeds) | per seed | agreement with its (combined) teacher % |", "|---|---:|---|---:|"]
    for r in summary:
        md.append(f"| {r['row']} | {r['accuracy_mean']:.2f} | {' / '.join(f'{v:.2f}' for v in r['per_seed'].values())} "
                  f"| {_pct(r['agreement_mean'])} |")
    md += ["", "| target | Δ points | met |", "|---|---:|---|"]
    md += [f"| {t['what']} | {t['value']:+.3f} | {'yes' if t['ok'] else 'NO'} |" for t in targets]
    _write("kd-multi", payload, md)
    return 0


def cmd_time(args) -> int:
    """ms per training sample (1 thread) for each kind of row, and the projected wall time of `table`."""
    import torch

    from torchslim.distillation import KDConfig, build_objective
    from torchslim.models import create_model

    torch.set_num_threads(1)
    data = _data(512)
    x, y = data.train.tensors
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10, input_shape=data.input_shape).eval()
    features = _features(args.negatives)
    kinds = {"student": None, "kd": [{"name": "kd"}], **{f"{m}+kd": [{"name": "kd"}, *s] for m, s in features.items()}}
    ms = {}
    # A few optimizer steps timed by hand, not fit(): only the per-sample cost of each loss is wanted here.
    for row, losses in kinds.items():
        student = create_model("resnet8", num_classes=10, input_shape=data.input_shape)
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
        if losses is None:
            def step(xb, yb, ib, obj=None):
                return torch.nn.functional.cross_entropy(student(xb), yb)
            ctx, obj = None, None
        else:
            obj = build_objective(student, {"t": teacher}, KDConfig(losses=losses), x[:64], y)
            feature = len(losses) > 1
            fn = obj.loss_fn(cached=not feature)
            cached = [teacher(x[:64]).detach()] if not feature else []

            def step(xb, yb, ib, fn=fn, cached=cached, obj=obj):
                return fn(obj.model, xb, yb, ib, *[c[: len(xb)] for c in cached])[0]
        with (obj.taps() if obj is not None else _null()):
            student.train()
            for i in range(6):
                if i == 1:
                    t0 = time.perf_counter()
                loss = step(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64], torch.arange(i * 64, (i + 1) * 64))
                opt.zero_grad()
                loss.backward()
                opt.step()
        ms[row] = 1000 * (time.perf_counter() - t0) / (5 * 64)
        print(f"{row:<16} {ms[row]:.2f} ms per training sample", flush=True)
    big = create_model("resnet20", num_classes=10, input_shape=data.input_shape)
    opt = torch.optim.SGD(big.parameters(), lr=0.01, momentum=0.9)
    for i in range(4):
        if i == 1:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(big(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_ms = 1000 * (time.perf_counter() - t0) / (3 * 64)
    print(f"{'teacher resnet20':<16} {t_ms:.2f} ms per training sample", flush=True)
    per_seed = sum(ms.values()) + max(ms[r] for r in ms if r.endswith("+kd"))  # + the best combination (≈ one more)
    student_s = per_seed * args.train_size * args.epochs / 1000 * len(args.seeds) / args.jobs
    teacher_s = t_ms * args.teacher_train_size * args.teacher_epochs / 1000
    print(f"projected `table`: {student_s / 60:.1f} min of student runs ({len(args.seeds)} seeds, {args.jobs} at once) "
          f"+ about {teacher_s / 60:.1f} min for the resnet20 teacher (overlapping the first student rows)")
    return 0


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def cmd_worker(args) -> int:
    from torchslim.io import atomic_write_json

    payload = json.loads(args.payload)
    if args.kind == "teacher":
        info = train_teacher(payload["teacher"], args)
        print(json.dumps(info), flush=True)
        return 0
    record = run_one(payload["row"], payload["losses"], payload["teachers"], payload["seed"], args,
                     payload.get("combine", "logits"))
    atomic_write_json(payload["out"], record)
    print(f"{record['row']} seed {record['seed']}: {100 * record['accuracy']:.2f}% in {record['seconds']} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("table", "multi", "time", "_worker"):
        s = sub.add_parser(name)
        if name == "_worker":
            s.add_argument("kind", choices=["teacher", "run"])
            s.add_argument("payload")
        s.add_argument("--train-size", type=int, default=6000, help="student training rows (first N of the train split)")
        s.add_argument("--epochs", type=int, default=6)
        s.add_argument("--teacher-train-size", type=int, default=12000)
        s.add_argument("--teacher-epochs", type=int, default=8)
        s.add_argument("--negatives", type=int, default=1024, help="CRD negatives per sample")
        s.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        s.add_argument("--jobs", type=int, default=2, help="processes at once (1 thread each)")
        s.add_argument("--second", nargs="+", default=["lenet5", "resnet20-b"], choices=[t for t in TEACHERS if t != "resnet20"],
                       help="multi: the teachers paired with resnet20")
    args = p.parse_args(argv)
    os.environ.update({k: v for k, v in _env().items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHSLIM_DATA")})
    return {"table": cmd_table, "multi": cmd_multi, "time": cmd_time, "_worker": cmd_worker}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
