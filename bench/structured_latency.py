"""Structured pruning to a latency budget vs to a MACs budget: ResNet-20 and ResNet-56 on Fashion-MNIST.

    .venv/bin/python bench/structured_latency.py all          # every stage below, in order (1 thread; hours)
    .venv/bin/python bench/structured_latency.py tables       # latency tables: a cold build in a fresh cache, a
                                                              # warm rebuild, ResNet-56 after ResNet-20
    .venv/bin/python bench/structured_latency.py dense        # train (or load from the cache) the dense models
    .venv/bin/python bench/structured_latency.py prune        # every variant of every model (cached when done)
    .venv/bin/python bench/structured_latency.py measure      # all saved models timed interleaved, accuracy
    .venv/bin/python bench/structured_latency.py report       # bench/results/structured-latency-budget.{json,md}
    .venv/bin/python bench/structured_latency.py all --quick  # smoke run: tiny data, ~8 min, into
                                                              # bench/out/structured-latency-quick/ (no result)

Options: ``--models resnet20,resnet56``; ``--variants`` (comma-separated; ``macs:<reduction>`` prunes to a MACs
target with ``round_to: 8``, the best MAC baseline of ``bench/structured.py``;
``latency:<runtime>:<batch>:<reduction>[:<cost>]`` prunes to a measured latency target, e.g.
``latency:onnxruntime:1:2.0``, with ``latency_cost`` loss (default) or importance); ``--dense-checkpoint`` (a
trained resnet20, e.g. ``bench/out/quant/resnet20-fashion.safetensors``); ``--force`` (redo cached steps);
``--threads``.

Each stage reads what the earlier ones saved under ``bench/out/structured-latency[-quick]/`` (dense and pruned
models with their records, keyed by their settings: a changed setting retrains), so the stages can run in separate
processes, on a quiet machine, in any number of sittings. The latency tables used for pruning live in
``<out>/latency-cache`` (not ``~/.cache``), so that their build time is this run's.

Every variant starts from the same dense model and gets the same budget: ``rounds`` prune/fine-tune rounds of
``finetune_epochs`` each (SGD 0.01, cosine), importance l1, global. The comparison the issue asks for: the speedup
each method reaches while losing at most 0.5 accuracy points against the dense model, measured in ONNX Runtime at
batch 1 and 64 and in PyTorch eager, all models of a model family timed interleaved in one process
(``torchslim.evaluation.measure_latencies``); plus, for the latency variants, the predicted vs the measured time
while pruning, and the table's build time and reuse.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet20", "resnet56")
VARIANTS = ("macs:1.5", "macs:2.0", "macs:2.5", "latency:onnxruntime:1:1.5", "latency:onnxruntime:1:2.0",
            "latency:onnxruntime:1:2.0:importance", "latency:onnxruntime:64:1.5", "latency:onnxruntime:64:2.0",
            "latency:pytorch:1:1.5")
QUICK_VARIANTS = ("macs:2.0", "latency:onnxruntime:1:1.3", "latency:onnxruntime:1:1.3:importance",
                  "latency:onnxruntime:64:1.3", "latency:pytorch:1:1.2")
TABLE_TARGETS = (("onnxruntime", 1), ("onnxruntime", 64), ("pytorch", 1))
MAX_LOSS_POINTS = 0.5

FULL = {"limit_train": None, "limit_test": None, "dense_epochs": {"resnet20": 4, "resnet56": 4}, "finetune_epochs": 1,
        "rounds": 2, "latency_seconds": 2.0, "measure_seconds": 3.0, "measure_rounds": 10, "tolerance": 0.02,
        "cost_batches": 8, "kd": None}
QUICK = {"limit_train": 512, "limit_test": 256, "dense_epochs": {"resnet20": 1, "resnet56": 1}, "finetune_epochs": 1,
         "rounds": 1, "latency_seconds": 0.5, "measure_seconds": 0.3, "measure_rounds": 3, "tolerance": 0.1,
         "cost_batches": 2, "kd": None}


def log(msg: str) -> None:
    print(msg, flush=True)


def _train_config(epochs: int, lr: float):
    from torchslim.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=lr, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, schedule="cosine")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, obj: dict) -> None:
    from torchslim.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _data(s: dict):
    from torchslim.data import load_dataset

    return load_dataset("fashion-mnist", limit_train=s["limit_train"], limit_test=s["limit_test"])


def _fresh(name: str, data):
    from torchslim.models import create_model

    return create_model(name, num_classes=data.num_classes, input_shape=data.input_shape)


def _load(name: str, data, path: Path):
    """A saved model, dense or pruned: the pruned widths are rebuilt from the file first."""
    from torchslim import load_checkpoint
    from torchslim.io import load_state_dict
    from torchslim.prune import resize_to_state_dict_

    model = _fresh(name, data)
    resize_to_state_dict_(model, load_state_dict(path))
    return load_checkpoint(model, path).eval()


def _variant(spec: str) -> tuple[str, dict]:
    """`macs:2.0` or `latency:onnxruntime:1:2.0` -> (a file-safe name, the ChannelPruneConfig fields)."""
    parts = spec.split(":")
    if parts[0] == "macs" and len(parts) == 2:
        return f"macs-{parts[1]}-r8", {"macs_reduction": float(parts[1]), "round_to": 8}
    if parts[0] == "latency" and len(parts) in (4, 5):
        runtime, batch, reduction = parts[1], int(parts[2]), float(parts[3])
        cost = parts[4] if len(parts) == 5 else "loss"
        short = {"onnxruntime": "ort", "pytorch": "pt"}[runtime]
        return (f"latency-{short}-b{batch}-{reduction}" + ("" if cost == "loss" else f"-{cost}"),
                {"target": "latency", "latency_reduction": reduction, "latency_runtime": runtime, "batch_size": batch,
                 "latency_cost": cost})
    raise SystemExit(f"bad variant {spec!r}: macs:<reduction> or latency:<runtime>:<batch>:<reduction>[:<cost>]")


# ----------------------------------------------------------------------------------------------------------- stages
def stage_tables(args, s: dict, out: Path) -> dict:
    """Cold build of every model's latency curves in a fresh cache (ResNet-20 first, then ResNet-56, which reuses
    the cells of the same shapes), then a warm rebuild that must time nothing."""
    import torch

    from torchslim.prune import LatencyTable, layer_latency_curves, plot_latency_curves

    data = _data(s)
    x = torch.zeros(1, *data.input_shape)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="latency-cache-") as cache:
        for runtime, batch in TABLE_TARGETS:
            for phase in ("cold", "warm"):
                for name in args.models:
                    table = LatencyTable(runtime, args.threads, batch, cache_dir=cache,
                                         cell_seconds=s["latency_seconds"] / 20)
                    t0 = time.perf_counter()
                    curves = layer_latency_curves(_fresh(name, data).eval(), x, table)
                    key = f"{name} {runtime} b{batch} {phase}"
                    results[key] = {"model": name, "runtime": runtime, "batch_size": batch, "phase": phase,
                                    "cells_timed": table.measured, "cells_from_cache": table.loaded,
                                    "seconds": round(time.perf_counter() - t0, 2),
                                    "timing_seconds": round(table.seconds, 2), "groups": len(curves)}
                    log(f"[tables] {key}: {table.measured} cells timed, {table.loaded} from the cache, "
                        f"{results[key]['seconds']} s")
                    if phase == "cold":
                        plot_latency_curves(curves, out / name / f"latency-{runtime}-b{batch}.png",
                                            title=f"{name}: ms of each layer group vs its width, {runtime}, "
                                                  f"batch {batch}, {args.threads} thread")
                        _write(out / name / f"curves-{runtime}-b{batch}.json",
                               {g: {str(w): ms for w, ms in c.items()} for g, c in curves.items()})
    _write(out / "tables.json", {"threads": args.threads, "results": results, "key": table.key})
    return results


def stage_dense(args, s: dict, out: Path) -> None:
    import torch

    from torchslim import load_checkpoint, save_checkpoint
    from torchslim.training import accuracy_of, fit

    data = _data(s)
    for name in args.models:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        train = _train_config(s["dense_epochs"][name], 0.1)
        key = {"train": train.model_dump(), "limit_train": s["limit_train"], "model": name}
        meta = _read(folder / "dense.json")
        if args.dense_checkpoint and (name == "resnet20" or len(args.models) == 1):  # the one model given
            model = load_checkpoint(_fresh(name, data), args.dense_checkpoint).eval()
            save_checkpoint(model, folder / "dense.safetensors")
            _write(folder / "dense.json", {"key": {"checkpoint": str(args.dense_checkpoint)}, "seconds": 0,
                                           "test_accuracy": accuracy_of(model, data.test)})
            log(f"[dense] {name}: loaded {args.dense_checkpoint}")
            continue
        if meta and meta.get("key") == key and (folder / "dense.safetensors").is_file() and not args.force:
            log(f"[dense] {name}: cached ({meta['seconds']} s to train)")
            continue
        torch.manual_seed(0)
        model = _fresh(name, data)
        t0 = time.perf_counter()
        result = fit(model, data.train, data.val, train, seed=0, stage=f"{name} dense", log=log, progress=False)
        save_checkpoint(model, folder / "dense.safetensors")
        _write(folder / "dense.json", {"key": key, "history": result.history,
                                       "seconds": round(time.perf_counter() - t0, 1),
                                       "test_accuracy": accuracy_of(model, data.test)})


def stage_prune(args, s: dict, out: Path) -> None:
    import torch

    from torchslim import TorchslimError, save_checkpoint
    from torchslim.distillation import kd_loss_fn
    from torchslim.prune import ChannelPruneConfig, prune_channels_to_target

    data = _data(s)
    example = torch.zeros(1, *data.input_shape)
    for name in args.models:
        folder = out / name
        if not (folder / "dense.safetensors").is_file():
            raise SystemExit(f"{folder / 'dense.safetensors'} is missing: run the dense stage first")
        dense = _load(name, data, folder / "dense.safetensors")
        for spec in args.variants:
            label, fields = _variant(spec)
            extra = {"threads": args.threads, "latency_seconds": s["latency_seconds"],
                     "latency_tolerance": s["tolerance"], "latency_cache": str(out / "latency-cache"),
                     "importance_batches": s["cost_batches"]} if fields.get("target") == "latency" else {}
            cfg = ChannelPruneConfig(importance="l1", rounds=s["rounds"], **fields, **extra)
            train = _train_config(s["finetune_epochs"], 0.01)
            key = {"config": cfg.model_dump(), "train": train.model_dump(),
                   "dense": _read(folder / "dense.json")["key"], **({"kd": s["kd"]} if s["kd"] else {})}
            meta = _read(folder / f"{label}.json")
            if meta and meta.get("key") == key and not args.force and ("failed" in meta or
                                                                       (folder / f"{label}.safetensors").is_file()):
                log(f"[prune] {name} {label}: cached")
                continue
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            try:
                # With --kd every fine-tuning epoch distills from the dense model (Hinton KD on the fly).
                loss_fn = kd_loss_fn(copy.deepcopy(dense), *s["kd"]) if s["kd"] else None
                info = prune_channels_to_target(model, cfg, data, train, example_inputs=example,
                                                stage=f"{name} {label}", log=log, loss_fn=loss_fn)
            except TorchslimError as e:  # a missed budget is a result too
                _write(folder / f"{label}.json", {"key": key, "failed": str(e),
                                                  "seconds": round(time.perf_counter() - t0, 1)})
                log(f"[prune] {name} {label}: FAILED: {e}")
                continue
            save_checkpoint(model, folder / f"{label}.safetensors")
            _write(folder / f"{label}.json", {"key": key, "info": info, "seconds": round(time.perf_counter() - t0, 1)})


def stage_measure(args, s: dict, out: Path) -> None:
    """Accuracy (PyTorch, and ONNX Runtime on the test split) and latency of the dense model and every saved
    variant, per model family all timed interleaved in one process."""
    from torchslim import Artifact
    from torchslim.evaluation import LatencyConfig, accuracy, count_macs, count_params, make_runner, measure_latencies
    from torchslim.export import export_onnx

    data = _data(s)
    for name in args.models:
        folder = out / name
        models = {"dense": _load(name, data, folder / "dense.safetensors")}
        for spec in args.variants:
            label, _ = _variant(spec)
            if (folder / f"{label}.safetensors").is_file() and "failed" not in (_read(folder / f"{label}.json") or {}):
                models[label] = _load(name, data, folder / f"{label}.safetensors")
        rows, runners = {}, []
        for label, model in models.items():
            path = export_onnx(model, folder / f"{label}.onnx", data.input_shape)
            pt = make_runner(Artifact(label, "bench", "pytorch", folder / f"{label}.safetensors", model), args.threads)
            ort = make_runner(Artifact(label, "bench", "onnxruntime", path, model), args.threads)
            rows[label] = {"macs": count_macs(model, data.input_shape), "params": count_params(model)[0],
                           "accuracy_pytorch": accuracy(pt, data.test)[0],
                           "accuracy_onnxruntime": accuracy(ort, data.test)[0]}
            runners += [pt, ort]
        config = LatencyConfig(threads=args.threads, batch_sizes=(1, 64), max_seconds=s["measure_seconds"],
                               rounds=s["measure_rounds"])
        log(f"[measure] {name}: {len(runners)} runners interleaved, {config.max_seconds} s each per batch size")
        timings = measure_latencies(runners, data.input_shape, config)
        for i, label in enumerate(models):
            rows[label]["latency_ms"] = {"pytorch": timings[2 * i], "onnxruntime": timings[2 * i + 1]}
        _write(folder / "measure.json", {"rows": rows, "latency_config": {
            "threads": args.threads, "batch_sizes": [1, 64], "max_seconds": config.max_seconds,
            "rounds": config.rounds}})


def _dense_origin(folder: Path) -> str:
    key = (_read(folder / "dense.json") or {}).get("key", {})
    if "checkpoint" in key:
        return f"loaded from {key['checkpoint']}"
    return f"trained {key.get('train', {}).get('epochs', '?')} epochs (SGD 0.1, cosine)"


def stage_report(args, s: dict, out: Path, results: Path) -> dict:
    from torchslim.evaluation import machine_info

    report = {"experiment": "structured-latency-budget", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "quick": args.quick, "threads": args.threads, "seed": 0, "machine": machine_info(), "settings": s,
              "max_loss_points": MAX_LOSS_POINTS, "tables": _read(out / "tables.json"), "models": {}}
    lines = [f"# Structured pruning to a latency budget vs a MACs budget: `{report['command']}`", "",
             f"{report['machine']['processor']}, {args.threads} thread; torch {report['machine']['torch']}, "
             f"onnxruntime {report['machine']['onnxruntime']}; Fashion-MNIST, "
             f"{'the first ' + format(s['limit_train'], ',') if s['limit_train'] else 'all 55,000'} training rows for "
             f"the dense models and every fine-tuning, the full 10,000-row test split"
             + (" (**quick smoke run: tiny data, numbers mean nothing**)" if args.quick else "") + ". Each variant: "
             f"{s['rounds']} prune/fine-tune round(s) of {s['finetune_epochs']} epoch(s) (SGD 0.01, cosine"
             + (f", distilling from the dense model: KD T {s['kd'][0]:g}, α {s['kd'][1]:g}" if s["kd"] else "")
             + f"), l1, global; MAC variants with `round_to: 8`; latency variants on a grid of 8, timed in their runtime at "
             f"their batch size (latency_tolerance {s['tolerance']}), a cut's cost the validation loss it adds on "
             f"{s['cost_batches']} batches of 128 (`-importance`: the l1 importance it removes).", ""]
    for name in args.models:
        folder = out / name
        measured = _read(folder / "measure.json")
        if measured is None:
            lines += [f"## {name}: not measured (run the measure stage)", ""]
            continue
        rows = measured["rows"]
        dense = rows["dense"]
        variants = {}
        for spec in args.variants:
            label, _ = _variant(spec)
            variants[label] = _read(folder / f"{label}.json") or {}
        lines += [f"## {name}", "",
                  f"Dense: {100 * dense['accuracy_pytorch']:.2f}% test accuracy, {_dense_origin(folder)}, "
                  f"{dense['macs']:,} MACs. Speedup = "
                  f"p50 of the dense model / p50 of the variant, all {len(rows)} models timed interleaved "
                  f"({measured['latency_config']['rounds']} rounds, {measured['latency_config']['max_seconds']} s "
                  f"per model and batch size).", "",
                  "| variant | acc % | Δ points | MACs × fewer | params | ORT b1 × | ORT b64 × | PyTorch b1 × | "
                  "PyTorch b64 × | while pruning: target / predicted / measured ms (×) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        best: dict = {}
        for label, row in rows.items():
            speed = {f"{rt} b{b}": dense["latency_ms"][rt][b]["p50"] / row["latency_ms"][rt][b]["p50"]
                     for rt in ("onnxruntime", "pytorch") for b in ("1", "64")}
            row["speedup_p50"] = speed
            row["points_vs_dense"] = 100 * (row["accuracy_pytorch"] - dense["accuracy_pytorch"])
            lat = (variants.get(label, {}).get("info") or {}).get("latency") or {}
            pruning = (f"{lat['target_ms']:.4g} / {lat['predicted_ms']:.4g} / {lat['measured_ms']:.4g} "
                       f"({lat['measured_reduction']:.2f}×)" if lat.get("measured_ms") else "—")
            lines.append(f"| {label} | {100 * row['accuracy_pytorch']:.2f} | {row['points_vs_dense']:+.2f} | "
                         f"{dense['macs'] / row['macs']:.2f} | {row['params']:,} | {speed['onnxruntime b1']:.2f} | "
                         f"{speed['onnxruntime b64']:.2f} | {speed['pytorch b1']:.2f} | {speed['pytorch b64']:.2f} | "
                         f"{pruning} |")
            kind = "macs" if label.startswith("macs") else "latency" if label.startswith("latency") else None
            if kind and row["points_vs_dense"] >= -MAX_LOSS_POINTS:
                for where, x in speed.items():
                    if x > best.get((kind, where), (0, None))[0]:
                        best[(kind, where)] = (x, label)
        failed = {label: v["failed"] for label, v in variants.items() if "failed" in v}
        lines += [""] + [f"- **{label}: failed**: {msg}" for label, msg in failed.items()]
        lines += ["", f"Fastest variant losing at most {MAX_LOSS_POINTS} points, per runtime and batch:", "",
                  "| where | MAC-driven | latency-driven |", "|---|---|---|"]
        for where in ("onnxruntime b1", "onnxruntime b64", "pytorch b1", "pytorch b64"):
            cells = [f"{best[(k, where)][0]:.2f}× ({best[(k, where)][1]})" if (k, where) in best else "—"
                     for k in ("macs", "latency")]
            lines.append(f"| {where} | {cells[0]} | {cells[1]} |")
        build = [(label, (v.get("info") or {}).get("latency", {}).get("table")) for label, v in variants.items()]
        lines += ["", "Latency tables while pruning (cells timed to build / from the cache / timed during the "
                      "search / seconds of timing in all): " + ", ".join(
                          f"{label} {t['measured_cells']} / {t['cached_cells']} / {t.get('search_cells', 0)} / "
                          f"{t.get('total_seconds', t['seconds']):.1f}" for label, t in build if t) + "."]
        lines += [""]
        report["models"][name] = {"dense": _read(folder / "dense.json"), "measure": measured,
                                  "variants": variants,
                                  "best": {f"{k} {w}": {"speedup": v[0], "variant": v[1]} for (k, w), v in
                                           best.items()}}
    tables = report["tables"]
    if tables:
        lines += ["## Latency tables: build and reuse", "",
                  "A fresh cache; per runtime and batch: each model's curves built cold (ResNet-56 after ResNet-20, "
                  "whose cells of the same shapes it reuses), then rebuilt warm.", "",
                  "| model | runtime | batch | phase | cells timed | from the cache | seconds |",
                  "|---|---|---:|---|---:|---:|---:|"]
        for r in tables["results"].values():
            lines.append(f"| {r['model']} | {r['runtime']} | {r['batch_size']} | {r['phase']} | {r['cells_timed']} | "
                         f"{r['cells_from_cache']} | {r['seconds']} |")
        lines += [""]
    results.mkdir(parents=True, exist_ok=True)
    _write(results / f"{args.name}-budget.json", report)
    (results / f"{args.name}-budget.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("all", "tables", "dense", "prune", "measure", "report"))
    p.add_argument("--quick", action="store_true", help="tiny data, one epoch: a smoke run")
    p.add_argument("--models", default=None, help=f"comma-separated, default {','.join(MODELS)}")
    p.add_argument("--variants", default=None, help="comma-separated macs:<r> or latency:<runtime>:<batch>:<r>")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="redo cached dense models and variants")
    p.add_argument("--dense-checkpoint", type=Path, help="a trained model to start from instead of training one: the "
                                                          "resnet20, or the one model --models names")
    p.add_argument("--limit-train", type=int, help="first N training rows for the dense model and every fine-tune "
                                                   "(default: all 55,000; the budget is then the same for every "
                                                   "variant, on less data)")
    p.add_argument("--dense-epochs", type=int, help="epochs of the dense model (default 4)")
    p.add_argument("--measure-seconds", type=float, help="measure stage: seconds per model and batch size in each "
                                                         "round (default 3.0)")
    p.add_argument("--measure-rounds", type=int, help="measure stage: interleaved rounds (default 10)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs after each pruning round (default 1)")
    p.add_argument("--rounds", type=int, help="prune/fine-tune rounds per variant (default 2)")
    p.add_argument("--kd", help="T,alpha: every fine-tuning distills from the dense model (Hinton KD with "
                                "temperature T and hard-label weight alpha), e.g. 4,0.5; default plain cross-entropy")
    p.add_argument("--name", default="structured-latency", help="the run's folder under bench/out/ and its results "
                                                               "file bench/results/<name>-budget.{md,json}")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    args.models = args.models.split(",") if args.models else list(MODELS)
    args.variants = args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
    for spec in args.variants:
        _variant(spec)  # a typo fails now, not after an hour of training
    s = dict(QUICK if args.quick else FULL)
    if args.limit_train:
        s["limit_train"] = args.limit_train
    if args.dense_epochs:
        s["dense_epochs"] = {name: args.dense_epochs for name in MODELS}
    if args.measure_seconds:
        s["measure_seconds"] = args.measure_seconds
    if args.measure_rounds:
        s["measure_rounds"] = args.measure_rounds
    if args.finetune_epochs:
        s["finetune_epochs"] = args.finetune_epochs
    if args.rounds:
        s["rounds"] = args.rounds
    if args.kd:
        try:
            temperature, alpha = (float(v) for v in args.kd.split(","))
        except ValueError:
            raise SystemExit(f"bad --kd {args.kd!r}: T,alpha, e.g. 4,0.5") from None
        s["kd"] = [temperature, alpha]
    out = ROOT / "bench" / "out" / (f"{args.name}-quick" if args.quick else args.name)
    results = out / "results" if args.quick else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = ("tables", "dense", "prune", "measure", "report") if args.stage == "all" else (args.stage,)
    for stage in stages:
        log(f"=== {stage} ({time.perf_counter() - t0:.0f} s)")
        if stage == "tables":
            stage_tables(args, s, out)
        elif stage == "dense":
            stage_dense(args, s, out)
        elif stage == "prune":
            stage_prune(args, s, out)
        elif stage == "measure":
            stage_measure(args, s, out)
        else:
            stage_report(args, s, out, results)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
