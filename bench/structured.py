"""Structured pruning (real channel removal) of ResNet-20 on Fashion-MNIST: 2× fewer MACs, and the time it saves.

    .venv/bin/python bench/structured.py            # 1 thread; trains the dense model first (4 epochs, 8-25 min)
    .venv/bin/python bench/structured.py --dense-checkpoint bench/out/quant/resnet20-fashion.safetensors
                                                    # the same dense model from `bench/quant.py observers`: ~33 min
    .venv/bin/python bench/structured.py --remeasure    # time the saved models again (+ thread-CPU time): ~6 min
    .venv/bin/python bench/structured.py --baseline --dense-checkpoint ...   # dense + the same extra epochs: ~10 min
    .venv/bin/python bench/structured.py --quick    # smoke run on tiny data (< 2 min), into bench/out/structured-quick/

The times are for a 2-core CPU shared with several other jobs (load ≈ 8), which is how the results were made.

A dense ResNet-20 is trained (SGD, Nesterov momentum, cosine), then pruned to half its MACs by each channel
importance (l1, taylor, bn_scale) with the same budget: `rounds` prune/fine-tune rounds of `finetune_epochs` each. Each
model is exported to ONNX and every model is timed at batch 1 and 64, one thread, in PyTorch eager and ONNX Runtime
(fp32), all interleaved in this one process (torchslim.evaluation.measure_latencies), so the speedup ratios are fair
even when other processes share the CPU. Accuracy: the full test split, in PyTorch and in ONNX Runtime.

The bn_scale variant fine-tunes its first rounds with the network-slimming penalty (`TrainConfig.bn_l1`, not its last
round); the dense model itself is shared by all variants and was not trained with it (Liu et al. train the dense
model with the penalty from scratch, which this budget cannot afford twice). The dense model is cached in
bench/out/structured/dense.safetensors (reused when the settings match; delete it to retrain). Variants that would
start after `--budget-minutes` are skipped and say so. Results: bench/results/structured{,-latency,-baseline}.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# importance[:round_to]. Widths rounded to a multiple of 8 are what ONNX Runtime's blocked convolution kernels need
# to run faster (unrounded widths are padded back up inside them); the last variant shows the unrounded case.
VARIANTS = ("l1:8", "taylor:8", "bn_scale:8", "l1")

FULL = {"limit_train": None, "limit_test": None, "dense_epochs": 4, "finetune_epochs": 1, "rounds": 2,
        "latency_seconds": 3.0}
QUICK = {"limit_train": 512, "limit_test": 256, "dense_epochs": 1, "finetune_epochs": 1, "rounds": 2,
         "latency_seconds": 0.2}
MACS_REDUCTION = 2.0
BN_L1 = 1e-2  # strong, because it has only the fine-tuning rounds to act (lr ≤ 0.01, ~900 steps per round)


def log(msg: str) -> None:
    print(msg, flush=True)


def _dense_train(epochs: int):
    from torchslim.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, schedule="cosine")


def _finetune_train(epochs: int, bn_l1: float = 0.0):
    from torchslim.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, schedule="cosine", bn_l1=bn_l1)


def dense_model(data, s: dict, out: Path, checkpoint: Path | None = None) -> tuple:
    """The dense ResNet-20: from `checkpoint` if given, else from the cache when it was trained with the same
    settings, else trained (and cached)."""
    import torch

    from torchslim import load_checkpoint, save_checkpoint
    from torchslim.models import create_model
    from torchslim.training import fit

    train = _dense_train(s["dense_epochs"])
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=data.num_classes, input_shape=data.input_shape)
    path, meta_path = out / "dense.safetensors", out / "dense.json"
    key = {"train": train.model_dump(), "limit_train": s["limit_train"]}
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        log(f"[dense] loaded {checkpoint}")
        return model.eval(), {"checkpoint": str(checkpoint), "cached": True}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        meta = json.loads(meta_path.read_text())
        load_checkpoint(model, path)
        log(f"[dense] loaded {path} (trained earlier in {meta['seconds']} s)")
        return model.eval(), {**meta, "cached": True}
    t0 = time.perf_counter()
    result = fit(model, data.train, data.val, train, seed=0, stage="dense", log=log, progress=False)
    meta = {"key": key, "history": result.history, "seconds": round(time.perf_counter() - t0, 1)}
    save_checkpoint(model, path, meta)
    return model.eval(), {**meta, "cached": False}


def prune_variant(dense, data, name: str, importance: str, round_to: int | None, s: dict, out: Path) -> tuple:
    """Prune a copy of `dense` to MACS_REDUCTION× fewer MACs in `rounds` rounds, fine-tuning after each."""
    import torch

    from torchslim import save_checkpoint
    from torchslim.evaluation import count_macs
    from torchslim.prune import ChannelPruneConfig, prune_channels_
    from torchslim.training import accuracy_of, fit

    cfg = ChannelPruneConfig(macs_reduction=MACS_REDUCTION, importance=importance, scope="global", rounds=s["rounds"],
                             round_to=round_to)
    model = copy.deepcopy(dense)
    example = torch.zeros(1, *data.input_shape)
    t0 = time.perf_counter()
    rounds = []
    # Not prune.prune_channels_to_target: bn_scale's penalty changes per round, and each round's accuracy right after
    # pruning (before fine-tuning) is recorded.
    for k, target in enumerate(cfg.round_targets(count_macs(model, data.input_shape)), start=1):
        info = prune_channels_(model, cfg, example, data=data, target_macs=target)
        pruned_val = accuracy_of(model, data.val)
        bn_l1 = BN_L1 if importance == "bn_scale" and k < cfg.rounds else 0.0
        fitted = fit(model, data.train, data.val, _finetune_train(s["finetune_epochs"], bn_l1), seed=k,
                     stage=f"{name} round {k}", log=log, progress=False)
        rounds.append({"round": k, "target_macs": target, "macs": info["macs_after"], "steps": info["steps"],
                       "val_accuracy_after_pruning": pruned_val, "bn_l1": bn_l1, "history": fitted.history,
                       "channels": info["channels"]})
        log(f"[{name}] round {k}: {info['macs_after']:,} MACs (target {target:,}); val "
            f"{100 * pruned_val:.2f}% right after pruning, {100 * accuracy_of(model, data.val):.2f}% after fine-tuning")
    save_checkpoint(model, out / f"{name}.safetensors", {"importance": importance, "round_to": round_to})
    # Output channels per layer: the dense model's → the last round's.
    widths = {layer: [rounds[0]["channels"][layer][0], c[1]] for layer, c in rounds[-1]["channels"].items()}
    return model.eval(), {"config": cfg.model_dump(), "rounds": rounds, "channels": widths,
                          "seconds": round(time.perf_counter() - t0, 1)}


def measure(models: dict, data, s: dict, out: Path, threads: int, rounds: int = 5) -> dict:
    """Accuracy (PyTorch and ONNX Runtime), MACs, params, and interleaved latency of every model."""
    from torchslim import Artifact
    from torchslim.evaluation import LatencyConfig, accuracy, count_macs, count_params, make_runner, measure_latencies
    from torchslim.export import export_onnx, verify_onnx

    rows, runners = {}, []
    for name, model in models.items():
        path = export_onnx(model, out / f"{name}.onnx", data.input_shape)
        pt = make_runner(Artifact(name, "bench", "pytorch", out / f"{name}.safetensors", model), threads)
        ort = make_runner(Artifact(name, "bench", "onnxruntime", path, model), threads)
        rows[name] = {"macs": count_macs(model, data.input_shape), "params": count_params(model)[0],
                      "accuracy_pytorch": accuracy(pt, data.test)[0],
                      "accuracy_onnxruntime": accuracy(ort, data.test)[0],
                      "onnx_vs_pytorch": verify_onnx(model, path, data.test.tensors[0], threads=threads)}
        runners += [pt, ort]
    latency = LatencyConfig(threads=threads, batch_sizes=(1, 64), max_seconds=s["latency_seconds"], rounds=rounds)
    log(f"timing {len(runners)} runners interleaved ({latency.max_seconds} s each per batch size)")
    timings = measure_latencies(runners, data.input_shape, latency)
    for i, name in enumerate(models):
        rows[name]["latency_ms"] = {"pytorch": timings[2 * i], "onnxruntime": timings[2 * i + 1]}
    dense = rows["dense"]
    for row in rows.values():
        row["macs_ratio"] = dense["macs"] / row["macs"]
        row["params_ratio"] = dense["params"] / row["params"]
        row["points_vs_dense"] = 100 * (row["accuracy_pytorch"] - dense["accuracy_pytorch"])
        row["speedup_p50"] = {rt: {b: dense["latency_ms"][rt][b]["p50"] / row["latency_ms"][rt][b]["p50"]
                                   for b in ("1", "64")} for rt in ("pytorch", "onnxruntime")}
    return {"rows": rows, "latency_config": {"threads": threads, "batch_sizes": [1, 64],
                                             "max_seconds": latency.max_seconds, "rounds": latency.rounds}}


def latency_table(result: dict) -> list[str]:
    rows = result["rows"]
    lines = [f"Latency, ms per call, {result['threads']} thread, p50 / p90, and p50 speedup over dense "
             f"(all {2 * len(rows)} runners timed interleaved in one process, "
             f"{result['latency_config']['rounds']} rounds):", "",
             "| model | PyTorch b1 | × | PyTorch b64 | × | ORT b1 | × | ORT b64 | × |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        cells = []
        for rt in ("pytorch", "onnxruntime"):
            for b in ("1", "64"):
                t = r["latency_ms"][rt][b]
                cells += [f"{t['p50']:.3f} / {t['p90']:.3f}", f"{r['speedup_p50'][rt][b]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict, s: dict) -> list[str]:
    rows = result["rows"]
    lines = [
        f"ResNet-20 (`resnet20`, option-B shortcuts) on Fashion-MNIST ({result['data']['train']} train / "
        f"{result['data']['val']} val / {result['data']['test']} test rows). Dense: {s['dense_epochs']} epochs SGD 0.1 "
        f"(Nesterov 0.9, wd 5e-4, cosine, batch 128). Pruned: global channel pruning with Torch-Pruning's dependency "
        f"graph to {MACS_REDUCTION:g}× fewer MACs in {s['rounds']} rounds (√2× each), each followed by "
        f"{s['finetune_epochs']} epochs of fine-tuning (SGD 0.01, cosine) = {s['rounds'] * s['finetune_epochs']} "
        f"fine-tune epochs per variant. `-r8`: channel counts rounded to multiples of 8 (`round_to: 8`). "
        f"bn_scale: fine-tuning rounds before the last add λ·Σ|γ| with λ={BN_L1:g}; the dense model was not "
        f"trained with it. Accuracy on the full test split; MACs counted by torchslim (conv + linear, one sample).", "",
        "| model | test acc % PyTorch | ORT | Δ vs dense (points) | MACs | × fewer | params | × fewer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['accuracy_pytorch']:.2f} | {100 * r['accuracy_onnxruntime']:.2f} | "
                     f"{r['points_vs_dense']:+.2f} | {r['macs']:,} | {r['macs_ratio']:.2f} | {r['params']:,} | "
                     f"{r['params_ratio']:.2f} |")
    lines += [""] + latency_table(result)
    lines += ["", "Other processes shared the 2-core CPU while this ran: absolute times are noisy; the interleaved "
                  "ratios are what to read. ONNX vs PyTorch, max |Δlogit| over the test split: "
              + ", ".join(f"{n} {r['onnx_vs_pytorch']['max_abs_diff']:.1e}" for n, r in rows.items()) + "."]
    for name, v in result["variants"].items():
        if "skipped" in v:
            lines += ["", f"**{name}: skipped** ({v['skipped']})."]
            continue
        widths = v["channels"]
        lines += ["", f"{name}: output channels per layer after the last round: "
                  + ", ".join(f"{layer} {a}→{b}" for layer, (a, b) in widths.items() if a != b)
                  + ". Val accuracy right after each pruning step (before fine-tuning): "
                  + ", ".join(f"{100 * r['val_accuracy_after_pruning']:.2f}%" for r in v["rounds"]) + "."]
    return lines


def cpu_times(models: dict, data, out: Path, threads: int, calls: dict[str, int], rounds: int = 10) -> dict:
    """p50 CPU time (ms) of the calling thread per call, per model, runtime and batch size, interleaved like
    measure_latencies. Wall-clock latency on a shared CPU includes time spent waiting for the core; with one thread
    the whole call runs on the calling thread, so its CPU time is the compute alone."""
    import numpy as np

    from torchslim import Artifact
    from torchslim.evaluation import make_runner

    runners = {(name, rt): make_runner(Artifact(name, "bench", rt, out / f"{name}.onnx", model), threads)
               for name, model in models.items() for rt in ("pytorch", "onnxruntime")}
    samples: dict = {key: {b: [] for b in calls} for key in runners}
    for b, n in calls.items():
        x = np.random.default_rng(0).standard_normal((int(b), *data.input_shape), dtype=np.float32)
        for r in range(rounds):
            keys = list(runners)
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                runners[key](x)  # untimed: caches are cold after another model ran
                for _ in range(max(1, n // rounds)):
                    t0 = time.thread_time_ns()
                    runners[key](x)
                    samples[key][b].append(time.thread_time_ns() - t0)
    return {name: {rt: {b: float(np.median(samples[(name, rt)][b])) / 1e6 for b in calls}
                   for rt in ("pytorch", "onnxruntime")} for name in models}


def remeasure(args, s: dict, out: Path, results: Path) -> int:
    """Time the models of the last full run again (more rounds), from their files, and one more: the dense model
    pruned by l1 with unrounded widths and not fine-tuned (its accuracy means nothing; its speed is the point)."""
    import torch

    from torchslim import load_checkpoint
    from torchslim.data import load_dataset
    from torchslim.evaluation import machine_info
    from torchslim.io import load_state_dict
    from torchslim.models import create_model
    from torchslim.prune import ChannelPruneConfig, prune_channels_, resize_to_state_dict_

    t0 = time.perf_counter()
    data = load_dataset("fashion-mnist", limit_train=s["limit_train"], limit_test=s["limit_test"])
    previous = json.loads((results / "structured.json").read_text())
    models = {}
    for name in ["dense", *(n for n, v in previous["variants"].items() if "skipped" not in v)]:
        path = out / f"{name}.safetensors"
        if name == "dense":
            path = args.dense_checkpoint or Path(previous["dense"].get("checkpoint") or out / "dense.safetensors")
        model = create_model("resnet20", num_classes=data.num_classes, input_shape=data.input_shape)
        resize_to_state_dict_(model, load_state_dict(path))  # pruned files hold narrower layers than the factory's
        models[name] = load_checkpoint(model, path).eval()
    unrounded = copy.deepcopy(models["dense"])
    prune_channels_(unrounded, ChannelPruneConfig(macs_reduction=MACS_REDUCTION, importance="l1", rounds=1),
                    torch.zeros(1, *data.input_shape))
    models["l1-unrounded-not-finetuned"] = unrounded
    s = {**s, "latency_seconds": 2 * s["latency_seconds"]}
    measured = measure(models, data, s, out, args.threads, rounds=10)
    cpu = cpu_times(models, data, out, args.threads, calls={"1": 200, "64": 4} if args.quick else {"1": 400, "64": 20})
    result = {"experiment": "structured-latency", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "threads": args.threads, "seed": 0, "machine": machine_info(), **measured, "cpu_ms": cpu,
              "seconds": round(time.perf_counter() - t0, 1)}
    (results / "structured-latency.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"# Structured pruning, latency re-measured: `{result['command']}`", "",
             f"The models of `structured.md`, loaded from their files (pruned shapes rebuilt by "
             f"`resize_to_state_dict_`), timed again with {measured['latency_config']['rounds']} interleaved rounds "
             f"and {s['latency_seconds']} s per runner and batch size; plus `l1-unrounded-not-finetuned`: the dense "
             f"model pruned by l1 to {MACS_REDUCTION:g}× fewer MACs without `round_to` and without fine-tuning (timed "
             f"for its widths; its accuracy is not a result). {result['seconds']} s.", ""]
    lines += latency_table(result)
    lines += ["", "CPU time of the calling thread per call (`time.thread_time`, ms, p50 over all calls, 10 interleaved "
                  "rounds): one thread computes each call on the calling thread in both runtimes, so this is the "
                  "compute time without the time spent waiting while other processes held the core.", "",
              "| model | PyTorch b1 | × | PyTorch b64 | × | ORT b1 | × | ORT b64 | × |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in cpu.items():
        cells = [f"{c[rt][b]:.3f} | {cpu['dense'][rt][b] / c[rt][b]:.2f}" for rt in ("pytorch", "onnxruntime")
                 for b in ("1", "64")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (results / "structured-latency.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return 0


def baseline(args, s: dict, out: Path, results: Path) -> int:
    """The dense model fine-tuned with exactly the pruned variants' schedule (rounds × finetune_epochs, same optimizer)
    but not pruned: the pruned models trained that much longer than the dense one, and this says what the extra
    epochs alone are worth."""
    from torchslim.data import load_dataset
    from torchslim.evaluation import machine_info
    from torchslim.training import accuracy_of, fit

    t0 = time.perf_counter()
    data = load_dataset("fashion-mnist", limit_train=s["limit_train"], limit_test=s["limit_test"])
    dense, info = dense_model(data, s, out, args.dense_checkpoint)
    model = copy.deepcopy(dense)
    history = []
    for k in range(1, s["rounds"] + 1):  # the same seeds and schedule as the pruning rounds
        history += fit(model, data.train, data.val, _finetune_train(s["finetune_epochs"]), seed=k,
                       stage=f"dense round {k}", log=log, progress=False).history
    result = {"experiment": "structured-baseline", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "threads": args.threads, "seed": 0, "machine": machine_info(), "dense": info,
              "dense_test_accuracy": accuracy_of(dense, data.test),
              "dense_finetuned_test_accuracy": accuracy_of(model, data.test), "history": history,
              "seconds": round(time.perf_counter() - t0, 1)}
    (results / "structured-baseline.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"# Structured pruning, dense baseline with the same extra epochs: `{result['command']}`", "",
             f"The dense model of `structured.md` fine-tuned {s['rounds']} × {s['finetune_epochs']} epoch(s) (SGD "
             f"0.01, cosine, seeds 1..{s['rounds']}: the pruned variants' schedule) without pruning. "
             f"{result['seconds']} s, {args.threads} thread.", "",
             "| model | test accuracy % (PyTorch) |", "|---|---:|",
             f"| dense | {100 * result['dense_test_accuracy']:.2f} |",
             f"| dense + the same fine-tuning | {100 * result['dense_finetuned_test_accuracy']:.2f} |"]
    (results / "structured-baseline.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data, one epoch: a smoke run")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated importance[:round_to], e.g. l1:8,taylor")
    p.add_argument("--budget-minutes", type=float, default=28.0,
                   help="a variant that would start after this many minutes is skipped")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", action="store_true",
                   help="only fine-tune the dense model with the variants' schedule, unpruned "
                        "(bench/results/structured-baseline.*)")
    p.add_argument("--remeasure", action="store_true",
                   help="only time the saved models of the last run again (bench/results/structured-latency.*)")
    p.add_argument("--dense-checkpoint", type=Path,
                   help="start from this dense resnet20 (e.g. bench/out/quant/resnet20-fashion.safetensors, trained "
                        "by `bench/quant.py observers` with the same settings) instead of training one")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from torchslim.data import load_dataset
    from torchslim.evaluation import machine_info

    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    out = ROOT / "bench" / "out" / ("structured-quick" if args.quick else "structured")
    results = out / "results" if args.quick else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    if args.remeasure:
        return remeasure(args, s, out, results)
    if args.baseline:
        return baseline(args, s, out, results)
    t_start = time.perf_counter()
    log(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"ONNX Runtime {args.threads}; settings {s}")
    data = load_dataset("fashion-mnist", limit_train=s["limit_train"], limit_test=s["limit_test"])
    dense, dense_info = dense_model(data, s, out, args.dense_checkpoint)
    models, variants = {"dense": dense}, {}
    for spec in args.variants.split(","):
        importance, _, round_to = spec.partition(":")
        name = f"{importance}-r{round_to}" if round_to else importance
        minutes = (time.perf_counter() - t_start) / 60
        if minutes > args.budget_minutes:
            variants[name] = {"skipped": f"{minutes:.1f} min had passed, budget {args.budget_minutes:g} min"}
            log(f"[{name}] skipped: {variants[name]['skipped']}")
            continue
        models[name], variants[name] = prune_variant(dense, data, name, importance, int(round_to) if round_to else None,
                                                     s, out)
    measured = measure(models, data, s, out, args.threads)
    from importlib.metadata import version

    result = {"experiment": "structured", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "quick": args.quick, "threads": args.threads, "seed": 0,
              "machine": {**machine_info(), "torch_pruning": version("torch-pruning")}, "settings": s,
              "macs_reduction": MACS_REDUCTION, "bn_l1": BN_L1,
              "data": {"name": "fashion-mnist", "train": len(data.train), "val": len(data.val) if data.val else 0,
                       "test": len(data.test)},
              "dense": dense_info, "variants": variants, **measured,
              "seconds": round(time.perf_counter() - t_start, 1)}
    m = result["machine"]
    head = [f"# Structured pruning: `{result['command']}`", "",
            f"{m.get('processor')}, {args.threads} thread (training, PyTorch and ONNX Runtime); torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}, torch-pruning {m['torch_pruning']}; seed 0; {result['seconds']} s"
            + (f" (dense model loaded from {dense_info.get('checkpoint', 'the cache')}, not trained in this run)"
               if dense_info["cached"] else "") + "."
            + (" **Quick smoke run: tiny data, numbers mean nothing.**" if args.quick else ""), ""]
    (results / "structured.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (results / "structured.md").write_text("\n".join(head + markdown(result, s)) + "\n")
    log("\n".join(markdown(result, s)))
    log(f"wrote {results / 'structured.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
