"""Is torchslim's int8 the fastest way to run a small model on this CPU? Every runtime variant, timed in one process.

    python bench/speed.py              # mlp 784-1200-1200-10, lenet5, resnet20 on MNIST (~12 min on 2 cores)
    python bench/speed.py --quick      # smoke run: tiny data, tiny timing budget (< 1 min)

For each model (input 1×28×28, 10 classes), briefly trained on an MNIST subset (cached in bench/out/speed/), the
variants are: PyTorch fp32 eager, ONNX Runtime fp32, torchslim int8 (``ptq`` W8A8 → ``export_qdq``), ONNX Runtime's
own ``quantize_dynamic`` applied to the fp32 ONNX file, ORT ``quantize_static`` (``quantize_static_int8``), and torchao
int8 dynamic quantization when torchao imports and runs (else "unavailable: <reason>"). All variants of a model are
timed interleaved by ``measure_latencies`` at batch 1 and 64 with one thread; accuracy is the test accuracy of the
variant as it runs. Writes bench/results/speed.json and speed.md (``--results`` to change; ``--quick`` writes to
bench/out/speed-quick/ so a smoke run never replaces the committed numbers).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mlp": {"model": "mlp", "args": {"widths": [1200, 1200]}, "label": "mlp 784-1200-1200-10"},
    "lenet5": {"model": "lenet5", "args": {}, "label": "lenet5"},
    "resnet20": {"model": "resnet20", "args": {}, "label": "resnet20"},
}
FULL = {"train": 20_000, "test": 10_000, "epochs": 2, "max_seconds": 3.0, "rounds": 5}
QUICK = {"train": 512, "test": 256, "epochs": 1, "max_seconds": 0.05, "rounds": 2}
WITHIN = 0.05  # "as fast as the fastest": within 5%
MAX_LOSS_POINTS = 0.3


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizer logs every tensor at INFO through the root logger; keep the bench's output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def _torchao(model):
    """`model` copied and quantized with torchao's int8 dynamic activation + int8 weight config, or the reason why
    not. torchao quantizes nn.Linear only: convolutions stay float."""
    try:
        logging.getLogger("torchao").setLevel(logging.ERROR)  # it logs each optional CUDA kernel it cannot load
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, f"unavailable: import torchao failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    try:
        q = copy.deepcopy(model).eval()
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
        return q, f"torchao {torchao.__version__}: Int8DynamicActivationInt8WeightConfig (nn.Linear only)"
    except Exception as e:  # noqa: BLE001
        return None, f"unavailable: torchao {torchao.__version__} quantize_ failed ({type(e).__name__}: {e})"


def _train(name: str, spec: dict, data, settings: dict, out: Path, log):
    import torch

    from torchslim import load_checkpoint, save_checkpoint
    from torchslim.models import create_model
    from torchslim.training import TrainConfig, fit

    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=data.num_classes, input_shape=data.input_shape, **spec["args"])
    path = out / f"{name}-{settings['train']}x{settings['epochs']}.safetensors"
    cfg = TrainConfig(epochs=settings["epochs"], optimizer="adam", lr=1e-3, schedule="cosine", batch_size=64)
    if path.is_file():
        load_checkpoint(model, path)
        log(f"[{name}] loaded {path}")
    else:
        fit(model, data.train, data.val, cfg, seed=0, stage=name, log=log, progress=False)
        save_checkpoint(model, path, {"model": spec["model"], "args": spec["args"]})
    return model.eval(), path, cfg.model_dump()


def _variants(name: str, model, weights: Path, data, out: Path, log) -> tuple[list, dict]:
    """(Artifact or error text) per variant, and the torchao status."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from torchslim import Artifact
    from torchslim.export import export_onnx
    from torchslim.quant import QuantConfig, StaticInt8Config, export_qdq, ort_kernels, ptq, quantize_static_int8

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    x_train = data.train.tensors[0]
    from torchslim.quant import QuantizationRecord
    from torchslim.records import as_info

    def quantized(**fields) -> dict:
        # The record the report's speed notes read: which float model it was made from, the kernels ORT runs, or
        # the layers a PyTorch quantizer left in float.
        return as_info(QuantizationRecord(source="pytorch-fp32", **fields))
    arts: list = [Artifact("pytorch-fp32", "train", "pytorch", weights, model, {})]

    def attempt(label: str, make):
        try:
            arts.append(make())
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            log(f"[{name}] {label} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            arts.append(f"{label}: unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160]}")

    fp32 = folder / "fp32.onnx"
    attempt("ort-fp32", lambda: Artifact("ort-fp32", "export", "onnxruntime",
                                         export_onnx(model, fp32, data.input_shape), model, {}))

    def torchslim_int8():
        # Per-channel weights for convolutions (QLinearConv handles them at full speed), per-tensor for Linear layers:
        # ORT's QGemm at batch 1 runs ~20% slower with per-channel scales (measured on the MLP: 46 vs 37 us).
        cfg = QuantConfig(linear_per_channel=False)
        path = export_qdq(ptq(model, cfg, x_train), folder / "torchslim-int8.onnx", data.input_shape)
        return Artifact("torchslim-int8", "ptq", "onnxruntime", path, model,
                        quantized(kernels=ort_kernels(path),
                                  config={"quant": "W8A8 minmax; per-channel conv weights, per-tensor linear weights"}))

    def ort_dynamic():
        # ORT's own quantize_dynamic on the very fp32 file timed above, not torchslim.quant.quantize_dynamic_int8
        # (which exports and pre-processes a file of its own): this row is ORT's tool as a user would call it.
        path = folder / "ort-dynamic.onnx"
        with _quiet_root_logger():
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        return Artifact("ort-dynamic", "quantize", "onnxruntime", path, model,
                        quantized(mode="dynamic", kernels=ort_kernels(path)))

    def ort_static():
        path = quantize_static_int8(model, StaticInt8Config(), x_train, folder / "ort-static.onnx", data.input_shape)
        return Artifact("ort-static", "quantize", "onnxruntime", path, model,
                        quantized(mode="static", kernels=ort_kernels(path)))

    attempt("torchslim-int8", torchslim_int8)
    attempt("ort-dynamic", ort_dynamic)
    attempt("ort-static", ort_static)
    qmodel, status = _torchao(model)
    if qmodel is None:
        arts.append(f"torchao-int8-dynamic: {status}")
    else:
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in qmodel.modules())
        arts.append(Artifact("torchao-int8-dynamic", "quantize", "pytorch", weights, qmodel,
                             quantized(config={"quant": "torchao int8 dynamic (Linear only)"},
                                       float_layers={"Conv2d": convs} if convs else {})))
    return arts, {"status": status}


def _measure(name: str, spec: dict, settings: dict, threads: int, out: Path, log) -> dict:
    import torch

    from torchslim.data import load_dataset
    from torchslim.evaluation import (LatencyConfig, accuracy, count_macs, count_params, make_runner, measure_latencies,
                                      speed_notes)
    from torchslim.records import jsonable

    data = load_dataset("mnist", val_size=1000, limit_train=settings["train"], limit_test=settings["test"])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)  # training too: two threads crawl when another job holds the other core
    t0 = time.perf_counter()
    model, weights, train_cfg = _train(name, spec, data, settings, out, log)
    arts, torchao = _variants(name, model, weights, data, out, log)
    ok = [a for a in arts if not isinstance(a, str)]
    try:  # evaluate()'s own steps, not evaluate(): this table's columns (loss vs fp32, the fp32 MACs) are its own
        runners = [make_runner(a, threads) for a in ok]
        accuracies = [accuracy(run, data.test)[0] for run in runners]
        latency = LatencyConfig(threads=threads, batch_sizes=(1, 64), max_seconds=settings["max_seconds"],
                                rounds=settings["rounds"])
        latencies = measure_latencies(runners, data.input_shape, latency)
    finally:
        torch.set_num_threads(threads_before)
    macs, params = count_macs(model, data.input_shape), count_params(model)[0]
    base_acc = accuracies[0]
    records = []
    for art, acc, lat in zip(ok, accuracies, latencies):
        records.append({"name": art.name, "stage": art.stage, "runtime": art.runtime, "accuracy": acc,
                        "accuracy_loss_points": 100 * (base_acc - acc), "macs": macs,
                        "file_bytes": art.path.stat().st_size if art.runtime == "onnxruntime" else None,
                        "latency_ms": lat, "info": jsonable(art.info)})
    verdict = {}
    ours = next((r for r in records if r["name"] == "torchslim-int8"), None)
    for b in ("1", "64"):
        fastest = min(records, key=lambda r: r["latency_ms"][b]["p50"])
        if ours is None:
            verdict[b] = {"fastest": fastest["name"], "ok": False, "why": "torchslim-int8 failed"}
            continue
        ratio = ours["latency_ms"][b]["p50"] / fastest["latency_ms"][b]["p50"]
        verdict[b] = {"fastest": fastest["name"], "torchslim_over_fastest": ratio,
                      "accuracy_loss_points": ours["accuracy_loss_points"],
                      "ok": ratio <= 1 + WITHIN and ours["accuracy_loss_points"] <= MAX_LOSS_POINTS}
    return {"label": spec["label"], "params": params, "macs": macs, "train": {**train_cfg, "rows": len(data.train)},
            "test_rows": len(data.test), "seconds": round(time.perf_counter() - t0, 1), "variants": records,
            "unavailable": [a for a in arts if isinstance(a, str)], "torchao": torchao, "verdict": verdict,
            "notes": speed_notes({"artifacts": records})}


def _markdown(result: dict) -> str:
    lines = [f"# speed: `{result['command']}`", "",
             f"{result['machine'].get('processor', '?')}, {result['threads']} thread (PyTorch intra-op; ONNX Runtime "
             f"intra-op, 1 inter-op, sequential); torch {result['machine'].get('torch')}, onnxruntime "
             f"{result['machine'].get('onnxruntime')}, {result['torchao']}. Latency: p50/p90 of individually timed "
             f"calls on a fixed random batch, all variants of a model interleaved in one process "
             f"({result['settings']['max_seconds']} s per variant and batch, {result['settings']['rounds']} rounds). "
             f"Accuracy: MNIST test ({result['settings']['test']} rows), each variant run as it ships; loss in "
             f"points against PyTorch fp32. Models trained {result['settings']['epochs']} epoch(s) on "
             f"{result['settings']['train']} MNIST rows (Adam 1e-3, cosine). {result['seconds']} s in all.", ""]
    for name, m in result["models"].items():
        lines += [f"## {m['label']}: {m['params']:,} params, {m['macs'] / 1e6:.2f} M MACs per sample", "",
                  "| variant | runtime | accuracy % | loss (points) | file KB | p50 ms @1 | p90 ms @1 | p50 ms @64 | "
                  "p90 ms @64 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["variants"]:
            lat = r["latency_ms"]
            kb = f"{r['file_bytes'] / 1000:,.1f}" if r["file_bytes"] else "—"
            lines.append(f"| {r['name']} | {r['runtime']} | {100 * r['accuracy']:.2f} | "
                         f"{r['accuracy_loss_points']:+.2f} | {kb} | {lat['1']['p50']:.3f} | {lat['1']['p90']:.3f} | "
                         f"{lat['64']['p50']:.3f} | {lat['64']['p90']:.3f} |")
        lines += [f"| {u.split(':', 1)[0]} | — | — | — | — | — | — | — | {u.split(':', 1)[1].strip()} |"
                  for u in m["unavailable"]]
        lines.append("")
        for b, v in m["verdict"].items():
            if "torchslim_over_fastest" in v:
                lines.append(f"- batch {b}: fastest is **{v['fastest']}**; torchslim-int8 takes "
                             f"{v['torchslim_over_fastest']:.2f}× its time and loses "
                             f"{v['accuracy_loss_points']:.2f} points → {'**yes**' if v['ok'] else '**no**'}: "
                             f"torchslim int8 is {'' if v['ok'] else 'not '}fastest or within 5% of the fastest "
                             f"at ≤ {MAX_LOSS_POINTS} point accuracy loss.")
            else:
                lines.append(f"- batch {b}: {v['why']}")
        lines += [f"- {note}" for note in m["notes"]] + [""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny data and timing budget: a smoke run (< 1 min)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None, help="folder for speed.json/.md (default bench/results; --quick: "
                                                     "bench/out/speed-quick)")
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    from torchslim.evaluation import machine_info

    settings = QUICK if args.quick else FULL
    out = ROOT / "bench" / "out" / ("speed-quick" if args.quick else "speed")
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    models = {name: _measure(name, MODELS[name], settings, args.threads, out, log) for name in args.models}
    torchao = next(iter(models.values()))["torchao"]["status"] if models else "not run"
    result = {"experiment": "speed", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "quick": args.quick, "settings": settings, "threads": args.threads, "seed": 0,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info(), "torchao": torchao,
              "models": models}
    # A smoke run must not overwrite the committed results: it writes beside its run folder instead.
    results = Path(args.results) if args.results else (out if args.quick else ROOT / "bench" / "results")
    results.mkdir(parents=True, exist_ok=True)
    stem = "speed-quick" if args.quick else "speed"
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (results / f"{stem}.md").write_text(_markdown(result))
    for name, m in models.items():
        for b, v in m["verdict"].items():
            print(f"{name} @{b}: fastest {v['fastest']}, torchslim ok={v['ok']}")
    print(f"wrote {results / f'{stem}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
