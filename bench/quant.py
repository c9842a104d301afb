"""Quantization experiments: low-bit PTQ/QAT on LeNet-5, observers on ResNet-20, and mixed precision.

    python bench/quant.py lenet5       # MNIST LeNet-5: fp32, PTQ W8A8, W4A4 QAT (+KD, +LSQ), W3/W2 PTQ+QAT  (~25 min)
    python bench/quant.py observers    # Fashion-MNIST ResNet-20: {minmax, moving_average, percentile, mse, kl}
                                       #   × {W8A8, W4A8} PTQ                                       (~20 min, ~3 once trained)
    python bench/quant.py mixed        # same ResNet-20: sensitivity, uniform vs mixed widths, frontier (~12 min once trained)
    python bench/quant.py all          # the three in order
    python bench/quant.py all --quick  # smoke run on tiny data (< 1 min); writes to bench/out/quant-quick/

Every accuracy is measured by running the exported QDQ ONNX file in ONNX Runtime on the full test split (one
thread), except the sensitivity analysis and the accuracy-aware search, which use the PyTorch fake-quant model on
validation rows (the chosen configuration is then exported and measured like the rest). Trained fp32 models are cached
in bench/out/quant/*.safetensors and shared by the experiments; delete them to retrain. Results: bench/results/
quant-<experiment>.{json,md} (+ PNG plots for `mixed`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("lenet5", "observers", "mixed")
OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl")

# Full and --quick settings. LeNet-5: 4 epochs Adam + cosine (the recipe). ResNet-20: 4 epochs SGD + cosine
# over all 55k training rows, about 17 min on one core of the 2-core machine (4.5 ms per sample and step).
FULL = {
    "lenet5": {"limit_train": None, "limit_test": None, "epochs": 4, "qat_epochs": 2},
    "resnet20": {"limit_train": None, "limit_test": None, "epochs": 4},
    "sensitivity_rows": 1000, "search_rows": 2000, "qat_rows": 20_000,
}
QUICK = {
    "lenet5": {"limit_train": 1024, "limit_test": 512, "epochs": 1, "qat_epochs": 1},
    "resnet20": {"limit_train": 512, "limit_test": 256, "epochs": 1},
    "sensitivity_rows": 128, "search_rows": 128, "qat_rows": 256,
}


class Bench:
    """Shared state: settings, folders, the log, and helpers that measure a quantized model in ONNX Runtime."""

    def __init__(self, quick: bool, threads: int, results: Path | None) -> None:
        self.quick, self.threads = quick, threads
        self.settings = QUICK if quick else FULL
        self.out = ROOT / "bench" / "out" / ("quant-quick" if quick else "quant")
        self.results = results or (self.out / "results" if quick else ROOT / "bench" / "results")
        self.out.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        self._data: dict = {}

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def data(self, name: str, model: str):
        from torchslim.data import load_dataset

        if name not in self._data:
            s = self.settings[model]
            self._data[name] = load_dataset(name, limit_train=s["limit_train"], limit_test=s["limit_test"])
        return self._data[name]

    def trained(self, key: str, model_name: str, data, train) -> tuple:
        """The fp32 model `key`, loaded from bench/out/quant/<key>.safetensors or trained and saved there."""
        import torch

        from torchslim import load_checkpoint, save_checkpoint
        from torchslim.models import create_model
        from torchslim.training import fit

        torch.manual_seed(0)
        model = create_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape)
        path = self.out / f"{key}.safetensors"
        if path.is_file():
            load_checkpoint(model, path)
            self.log(f"[{key}] loaded {path}")
            return model.eval(), {"checkpoint": str(path), "train": train.model_dump(), "cached": True}
        t0 = time.perf_counter()
        result = fit(model, data.train, data.val, train, seed=0, stage=key, log=self.log, progress=False)
        save_checkpoint(model, path, {"model": model_name, "train": json.dumps(train.model_dump())})
        return model.eval(), {"checkpoint": str(path), "train": train.model_dump(), "history": result.history,
                              "seconds": round(time.perf_counter() - t0, 1), "cached": False}

    def onnx_accuracy(self, path: Path, data) -> float:
        from torchslim import Artifact
        from torchslim.evaluation import accuracy, make_runner

        return accuracy(make_runner(Artifact(path.stem, "bench", "onnxruntime", path), self.threads), data.test)[0]

    def fp32(self, model, data, name: str) -> dict:
        from torchslim.export import export_onnx

        path = export_onnx(model, self.out / f"{name}-fp32.onnx", data.input_shape)
        return {"name": "fp32", "accuracy": self.onnx_accuracy(path, data), **_sizes(path)}

    def measure(self, qmodel, data, name: str, **extra) -> dict:
        """Export the fake-quant model as QDQ, run it in ONNX Runtime on the test split."""
        from torchslim.quant import export_qdq, ort_kernels

        path = export_qdq(qmodel, self.out / f"{name}.onnx", data.input_shape)
        row = {"name": name, **extra, "accuracy": self.onnx_accuracy(path, data), **_sizes(path),
               "int8_kernels": _int8_kernels(ort_kernels(path))}
        self.log(f"  {name}: {100 * row['accuracy']:.2f}% (ONNX Runtime), {row['file_bytes'] / 1000:.1f} KB, "
                 f"lzma {row['file_bytes_lzma'] / 1000:.1f} KB")
        return row

    def write(self, experiment: str, result: dict, markdown: list[str]) -> None:
        from torchslim.evaluation import machine_info

        result = {"experiment": experiment, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "quick": self.quick, "threads": self.threads, "seed": 0, "machine": machine_info(), **result}
        stem = f"quant-{experiment}"
        (self.results / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        head = [f"# quant {experiment}: `{result['command']}`", "",
                f"{result['machine'].get('processor') or platform.machine()}, {self.threads} thread(s) for ONNX "
                f"Runtime and training; torch {result['machine'].get('torch')}, onnxruntime "
                f"{result['machine'].get('onnxruntime')}; seed 0; {result.get('seconds', '?')} s."
                + (" **Quick smoke run: tiny data, numbers mean nothing.**" if self.quick else ""), ""]
        (self.results / f"{stem}.md").write_text("\n".join(head + markdown) + "\n")
        self.log(f"wrote {self.results / stem}.json and .md")


def _sizes(path: Path) -> dict:
    import lzma

    raw = path.read_bytes()
    return {"file_bytes": len(raw), "file_bytes_lzma": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}


def _int8_kernels(kernels: dict) -> int:
    from torchslim.quant.export import INT8_KERNELS

    return sum(n for op, n in kernels.items() if op in INT8_KERNELS)


def _wa(w: int, a: int, **kw):
    from torchslim.quant import QuantConfig, QuantSpec

    return QuantConfig(weight=QuantSpec(bits=w, symmetric=True, per_channel=True),
                       activation=QuantSpec(bits=a, symmetric=False), **kw)


def _table(rows: list[dict], fp32: float) -> list[str]:
    lines = ["| configuration | method | test accuracy % (ONNX Runtime) | Δ vs fp32 (points) | file KB | lzma KB |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r.get('method', '—')} | {100 * r['accuracy']:.2f} | "
                     f"{100 * (r['accuracy'] - fp32):+.2f} | {r['file_bytes'] / 1000:,.1f} | "
                     f"{r['file_bytes_lzma'] / 1000:,.1f} |")
    return lines


def lenet5(b: Bench) -> None:
    """(a) LeNet-5 on MNIST: fp32, PTQ W8A8, then W4A4 / W3A3 / W2A2 / W3A8 / W2A8 by PTQ and by QAT (KD from fp32)."""
    from torchslim.distillation import KDConfig
    from torchslim.quant import ptq, qat
    from torchslim.training import TrainConfig

    t0 = time.perf_counter()
    s = b.settings["lenet5"]
    data = b.data("mnist", "lenet5")
    model, train_info = b.trained("lenet5-mnist" + ("-quick" if b.quick else ""), "lenet5", data,
                                  TrainConfig(epochs=s["epochs"], optimizer="adam", lr=1e-3, schedule="cosine"))
    fp32 = b.fp32(model, data, "lenet5")
    b.log(f"[lenet5] fp32 in ONNX Runtime: {100 * fp32['accuracy']:.2f}%")
    x = data.train.tensors[0]
    kd = KDConfig(temperature=4.0, alpha=0.5)
    qat_train = TrainConfig(epochs=s["qat_epochs"], optimizer="adam", lr=2e-4, schedule="cosine")
    rows = [b.measure(ptq(model, _wa(8, 8), x), data, "W8A8", method="PTQ minmax")]
    for w, a in ((4, 4), (3, 3), (2, 2), (3, 8), (2, 8)):
        name = f"W{w}A{a}"
        rows.append(b.measure(ptq(model, _wa(w, a), x), data, f"{name}-ptq", method="PTQ minmax"))
        qm, fitted = qat(model, _wa(w, a), data, qat_train, teacher=model, kd=kd, log=b.log)
        rows.append(b.measure(qm, data, f"{name}-qat", method=f"QAT {s['qat_epochs']} ep + KD"))
        if (w, a) == (4, 4):
            qm, _ = qat(model, _wa(w, a, learnable=True), data, qat_train, teacher=model, kd=kd, log=b.log)
            rows.append(b.measure(qm, data, f"{name}-qat-lsq", method=f"QAT {s['qat_epochs']} ep + KD + LSQ"))
    by = {r["name"]: r for r in rows}
    drop8 = 100 * (fp32["accuracy"] - by["W8A8"]["accuracy"])
    best4 = max(by["W4A4-qat"]["accuracy"], by["W4A4-qat-lsq"]["accuracy"])
    drop4 = 100 * (fp32["accuracy"] - best4)
    targets = [
        {"what": "PTQ W8A8 top-1 drop vs fp32 (points)", "value": round(drop8, 3), "target": "<= 0.1",
         "ok": drop8 <= 0.1},
        {"what": "W4A4 QAT (best of KD, KD+LSQ) drop vs fp32 (points)", "value": round(drop4, 3), "target": "<= 0.5",
         "ok": drop4 <= 0.5},
    ]
    md = [f"LeNet-5 on MNIST ({len(data.train)} train / {len(data.test)} test rows): fp32 trained {s['epochs']} "
          f"epochs (Adam 1e-3, cosine); QAT {s['qat_epochs']} epochs (Adam 2e-4, cosine) with KD from the fp32 model "
          f"(T=4, α=0.5). Weights symmetric per-channel, activations asymmetric per-tensor, minmax observers; widths "
          f"below 8 are stored in int8 containers (raw file size does not shrink, lzma does).", "",
          "| target | value | wanted | met |", "|---|---|---|---|"]
    md += [f"| {t['what']} | {t['value']} | {t['target']} | {'yes' if t['ok'] else 'NO'} |" for t in targets]
    md += ["", f"fp32 (ONNX Runtime): **{100 * fp32['accuracy']:.2f}%**, {fp32['file_bytes'] / 1000:,.1f} KB", ""]
    md += _table(rows, fp32["accuracy"])
    b.write("lenet5", {"seconds": round(time.perf_counter() - t0, 1), "fp32": fp32, "model": train_info,
                       "rows": rows, "targets": targets}, md)


def _resnet20(b: Bench):
    from torchslim.training import TrainConfig

    s = b.settings["resnet20"]
    data = b.data("fashion-mnist", "resnet20")
    train = TrainConfig(epochs=s["epochs"], optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=5e-4, schedule="cosine", batch_size=128)
    model, info = b.trained("resnet20-fashion" + ("-quick" if b.quick else ""), "resnet20", data, train)
    return model, data, info


def observers(b: Bench) -> None:
    """(b) every activation observer × {W8A8, W4A8} PTQ on ResNet-20 / Fashion-MNIST."""
    from torchslim.quant import ptq

    t0 = time.perf_counter()
    model, data, info = _resnet20(b)
    fp32 = b.fp32(model, data, "resnet20")
    b.log(f"[observers] fp32 in ONNX Runtime: {100 * fp32['accuracy']:.2f}%")
    x = data.train.tensors[0]
    rows = []
    for obs in OBSERVERS:
        for w in (8, 4):
            cfg = _wa(w, 8, observer=obs)
            tc = time.perf_counter()
            qm = ptq(model, cfg, x)
            row = b.measure(qm, data, f"W{w}A8-{obs}", method=f"PTQ, {obs}", observer=obs, weight_bits=w)
            row["calibration_seconds"] = round(time.perf_counter() - tc, 2)
            rows.append(row)
    md = [f"ResNet-20 on Fashion-MNIST ({len(data.train)} train / {len(data.test)} test rows), fp32 trained "
          f"{info['train']['epochs']} epochs (SGD 0.1, Nesterov momentum 0.9, wd 5e-4, cosine, batch 128). PTQ: "
          f"activation observer as named (weights: minmax, symmetric per-channel), 32 calibration batches × 64 "
          f"training rows; accuracy of the exported QDQ model in ONNX Runtime.", "",
          f"fp32 (ONNX Runtime): **{100 * fp32['accuracy']:.2f}%**", "",
          "| observer | W8A8 accuracy % | Δ (points) | W4A8 accuracy % | Δ (points) | calibration s (W8A8) |",
          "|---|---:|---:|---:|---:|---:|"]
    by = {(r["observer"], r["weight_bits"]): r for r in rows}
    for obs in OBSERVERS:
        r8, r4 = by[(obs, 8)], by[(obs, 4)]
        md.append(f"| {obs} | {100 * r8['accuracy']:.2f} | {100 * (r8['accuracy'] - fp32['accuracy']):+.2f} | "
                  f"{100 * r4['accuracy']:.2f} | {100 * (r4['accuracy'] - fp32['accuracy']):+.2f} | "
                  f"{r8['calibration_seconds']} |")
    b.write("observers", {"seconds": round(time.perf_counter() - t0, 1), "fp32": fp32, "model": info,
                          "rows": rows}, md)


def _frontier_plot(points: list[dict], fp32: dict, int8_bytes: float, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for kind, marker in (("uniform", "s"), ("mixed (allocate_bits)", "o"), ("accuracy-aware", "^"),
                         ("mixed + QAT", "D")):
        pts = [p for p in points if p["kind"] == kind]
        if pts:
            ax.scatter([p["weight_bytes"] / 1000 for p in pts], [100 * p["accuracy"] for p in pts], marker=marker,
                       s=50, label=kind)
            for p in pts:
                ax.annotate(p["name"], (p["weight_bytes"] / 1000, 100 * p["accuracy"]), xytext=(5, 4),
                            textcoords="offset points", fontsize=7)
    ax.axhline(100 * fp32["accuracy"], color="gray", ls="--", lw=1, label="fp32")
    ax.axhline(100 * fp32["accuracy"] - 0.5, color="gray", ls=":", lw=1, label="fp32 − 0.5 point")
    ax.axvline(int8_bytes / 1000, color="tab:red", ls=":", lw=1, label="uniform int8 size")
    ax.set_xlabel("packed weight KB (Σ weights × bits / 8)")
    ax.set_ylabel("test accuracy % (ONNX Runtime)")
    ax.set_title("ResNet-20 / Fashion-MNIST: accuracy vs weight size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, format="png")


def mixed(b: Bench) -> None:
    """(c) per-layer sensitivity, uniform vs mixed widths at several budgets, accuracy-aware fallback, frontier."""
    from torchslim.distillation import KDConfig
    from torchslim.quant import (
        accuracy_aware,
        allocate_bits,
        config_for,
        layer_sensitivity,
        plot_sensitivity,
        ptq,
        qat,
        weight_bytes,
    )
    from torchslim.training import TrainConfig

    t0 = time.perf_counter()
    model, data, info = _resnet20(b)
    fp32 = b.fp32(model, data, "resnet20")
    x = data.train.tensors[0]
    s = b.settings
    b.log("[mixed] per-layer sensitivity (weights only, activations float)")
    # Not quant.mixed_precision (one budget per call, each with its own sensitivity pass): one pass serves them all.
    rows = layer_sensitivity(model, _wa(8, 8), data, bits=(2, 4, 8), max_samples=s["sensitivity_rows"])
    plot_sensitivity(rows, b.results / "quant-mixed-sensitivity.png", metric="drop",
                     title="ResNet-20 / Fashion-MNIST: accuracy drop with one layer's weights quantized")
    plot_sensitivity(rows, b.results / "quant-mixed-sensitivity-kl.png", metric="kl",
                     title="ResNet-20 / Fashion-MNIST: output KL with one layer's weights quantized")
    int8_bytes = weight_bytes(model, 8)
    points = []

    def point(kind: str, name: str, bits, qmodel, **extra) -> dict:
        row = b.measure(qmodel, data, f"mixed-{name}", **extra)
        row.update(kind=kind, name=name, weight_bytes=weight_bytes(model, bits),
                   bits=bits if isinstance(bits, dict) else {"all": bits})
        points.append(row)
        return row

    for w in (8, 4):
        point("uniform", f"W{w}A8", w, ptq(model, _wa(w, 8), x))
    for fraction in (0.5, 0.6, 0.75, 0.9):
        bits = allocate_bits(model, rows, fraction * int8_bytes, choices=(2, 4, 8, 32))
        point("mixed (allocate_bits)", f"{fraction:.0%} of int8", bits, ptq(model, config_for(_wa(8, 8), bits), x),
              budget_bytes=fraction * int8_bytes)
    b.log("[mixed] accuracy-aware fallback from uniform W4A8")
    best, trials = accuracy_aware(model, _wa(4, 8, calibration_batches=16), data, tolerance_points=0.5,
                                  sensitivity_rows=rows, max_samples=s["search_rows"], max_trials=30, log=b.log)
    aa_bits = {n: (32 if n in best.exclude else (best.per_layer_bits or {}).get(n, best.weight.bits))
               for n in trials[0]["bits"]}
    point("accuracy-aware", "accuracy-aware", aa_bits, ptq(model, best, x))

    def good(p: dict) -> bool:
        return p["weight_bytes"] < int8_bytes and 100 * (fp32["accuracy"] - p["accuracy"]) <= 0.5

    if not any(good(p) for p in points):
        b.log("[mixed] no PTQ configuration below int8 size within 0.5 point: short QAT of the 60% allocation")
        bits = allocate_bits(model, rows, 0.6 * int8_bytes, choices=(2, 4, 8, 32))
        qat_data = _subset(data, s["qat_rows"])
        qm, _ = qat(model, config_for(_wa(8, 8), bits), qat_data,
                    TrainConfig(epochs=1, optimizer="sgd", lr=0.005, momentum=0.9, schedule="cosine", batch_size=128),
                    teacher=model, kd=KDConfig(temperature=4.0, alpha=0.5), log=b.log)
        point("mixed + QAT", "60% of int8 + QAT", bits, qm, qat_rows=len(qat_data.train))
    _frontier_plot(points, fp32, int8_bytes, b.results / "quant-mixed-frontier.png")
    winners = [p for p in points if good(p) and p["kind"] != "uniform"]  # uniform widths do not count as mixed
    target = {"what": "a mixed configuration smaller than uniform int8 (packed weights) within 0.5 point of fp32",
              "value": min(winners, key=lambda p: p["weight_bytes"])["name"] if winners else None,
              "ok": bool(winners)}
    md = [f"ResNet-20 on Fashion-MNIST, the model of `quant-observers` (fp32 in ONNX Runtime: "
          f"**{100 * fp32['accuracy']:.2f}%**, {int8_bytes * 4 / 1000:,.1f} KB of fp32 weights). Activations 8-bit "
          f"(minmax) everywhere; weights symmetric per-channel at the width shown. Sizes: packed weight bytes "
          f"(Σ weights × bits / 8; what a packed format would store) and the QDQ file (widths below 8 bits sit in "
          f"int8 containers, so its raw size stops at int8; lzma sees the difference).", "",
          f"Target: {target['what']}: **{'met' if target['ok'] else 'NOT met'}** ({target['value']}).", "",
          "![sensitivity](quant-mixed-sensitivity.png)", "", "![frontier](quant-mixed-frontier.png)", "",
          "| configuration | kind | packed weight KB | vs int8 | test accuracy % | Δ vs fp32 (points) | QDQ file KB | "
          "lzma KB | widths (2/4/8/float layers) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in points:
        counts = [sum(1 for v in p["bits"].values() if v == w) for w in (2, 4, 8, 32)]
        md.append(f"| {p['name']} | {p['kind']} | {p['weight_bytes'] / 1000:,.1f} | "
                  f"{p['weight_bytes'] / int8_bytes:.2f}× | {100 * p['accuracy']:.2f} | "
                  f"{100 * (p['accuracy'] - fp32['accuracy']):+.2f} | {p['file_bytes'] / 1000:,.1f} | "
                  f"{p['file_bytes_lzma'] / 1000:,.1f} | {'/'.join(map(str, counts)) if 'all' not in p['bits'] else '—'} |")
    md += ["", f"Accuracy-aware search (fake-quant model on {s['search_rows']} validation rows, tolerance 0.5 point, "
               f"start: uniform W4A8, fallback to 8 bits then float, most sensitive first by output KL):", "",
           "| trial | change | val accuracy % | drop (points) | packed weight KB | within |",
           "|---:|---|---:|---:|---:|---|"]
    md += [f"| {t['trial']} | {t['changed'] or 'uniform W4'} | {100 * t['accuracy']:.2f} | {t['drop']:+.2f} | "
           f"{t['weight_bytes'] / 1000:,.1f} | {'yes' if t['within_tolerance'] else 'no'} |" for t in trials]
    md += ["", "Per-layer sensitivity (accuracy drop in points on validation rows, one layer's weights quantized, "
               "all else float):", "", "| layer | weights | 2-bit | 4-bit | 8-bit | KL @4-bit |",
           "|---|---:|---:|---:|---:|---:|"]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        at = {r["bits"]: r for r in rows if r["layer"] == layer}
        md.append(f"| {layer} | {at[2]['params']:,} | {at[2]['drop']:+.2f} | {at[4]['drop']:+.2f} | "
                  f"{at[8]['drop']:+.2f} | {at[4]['kl']:.2e} |")
    b.write("mixed", {"seconds": round(time.perf_counter() - t0, 1), "fp32": fp32, "model": info,
                      "int8_weight_bytes": int8_bytes, "sensitivity": rows, "points": points, "trials": trials,
                      "target": target}, md)


def _subset(data, rows: int):
    """`data` with its training split cut to the first `rows` rows (a short QAT)."""
    import dataclasses

    from torch.utils.data import TensorDataset

    return dataclasses.replace(data, train=TensorDataset(*(t[:rows] for t in data.train.tensors)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--quick", action="store_true", help="tiny data, one epoch: a smoke run (< 1 min)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    p.add_argument("--results", default=None, help="default bench/results (--quick: bench/out/quant-quick/results)")
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    import torch

    # Two threads on a 2-core machine that is busy with anything else slow small-model training down ~10×.
    torch.set_num_threads(args.threads)
    b = Bench(args.quick, args.threads, Path(args.results) if args.results else None)
    for name in EXPERIMENTS if args.experiment == "all" else (args.experiment,):
        {"lenet5": lenet5, "observers": observers, "mixed": mixed}[name](b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
