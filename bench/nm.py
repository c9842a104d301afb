"""Does 2:4 sparsity make a model faster on this CPU? A 2:4-pruned model vs its dense twin, timed in one process.

    python bench/nm.py             # mlp 784-1200-1200-10 and one 2048×2048 Linear (~2 min, 1 thread)
    python bench/nm.py --quick     # smoke run: tiny timing budget (< 30 s), writes to bench/out/nm-quick/

For each model (seeded random init: speed does not depend on the values), the 2:4 twin is the same model pruned by
``prune_(model, PruneConfig(pattern="2:4"))``: half the weights are exact zeros, stored densely, as PyTorch and ONNX
Runtime run them. Variants: PyTorch eager and ONNX Runtime (fp32, exported with ``export_onnx``), dense and 2:4, all
timed interleaved at batch 1 and 64 with one thread: many short rounds, each timing every variant in turn (starting
with a different one each round), calls timed one by one. Each call records its wall time and the CPU time of the
calling thread (``time.thread_time_ns``; with one intra-op thread both runtimes compute in the calling thread): on a
shared machine a call that is preempted gets a long wall time but not a long CPU time, so CPU-time medians and wall
minima show the kernels' own speed when wall medians are disturbed by other jobs.
We expect no speedup: neither runtime has 2:4 kernels on a CPU, so the zeros are multiplied like any other number.
The bench also records the N:M storage bytes of the 2:4 weights (``nm_storage``) and tries
``torch.sparse.to_sparse_semi_structured`` on a CPU tensor, recording exactly what happens.
Writes bench/results/nm.json and nm.md (``--quick``: bench/out/nm-quick/).
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = {"max_seconds": 4.0, "rounds": 20}  # per variant and batch; many short rounds: the 2-core machine is shared
QUICK = {"max_seconds": 0.05, "rounds": 2}
MAX_CALLS_PER_SLICE = 500
SEED = 0


def _models():
    from torch import nn

    from torchslim.models import create_model

    return {
        "mlp": ("mlp 784-1200-1200-10", (1, 28, 28),
                lambda: create_model("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[1200, 1200])),
        "linear2048": ("one Linear 2048×2048", (2048,), lambda: nn.Linear(2048, 2048)),
    }


def _semi_structured() -> dict:
    """What torch.sparse.to_sparse_semi_structured does with a 2:4 CPU tensor here, for fp16 and fp32."""
    import torch

    out: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    cusparselt = getattr(torch.backends, "cusparselt", None)
    out["cusparselt_available"] = bool(cusparselt.is_available()) if cusparselt is not None else None
    try:
        from torch.sparse import to_sparse_semi_structured
    except Exception as e:  # noqa: BLE001 - any failure is the outcome we report
        out["import"] = f"{type(e).__name__}: {e}"
        return out
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0]).tile((128, 32))  # 128×128, 2:4
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(SEED)) * mask
    for dtype in (torch.float16, torch.float32):
        key = str(dtype).removeprefix("torch.")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sparse = to_sparse_semi_structured(w.to(dtype))
                y = torch.nn.functional.linear(torch.randn(64, 128, dtype=dtype), sparse)
                out[key] = {"ok": True, "type": type(sparse).__name__, "output": list(y.shape)}
            except Exception as e:  # noqa: BLE001
                out[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out[key]["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    return out


def _interleaved(runners: list, x, seconds: float, rounds: int) -> list[dict]:
    """Wall and thread-CPU time of individual calls, the runners interleaved; one summary per runner (ms)."""
    # Not torchslim.evaluation.measure_latencies: that records wall time only, and this bench needs the CPU time too.
    import gc

    import numpy as np

    for run in runners:
        for _ in range(5):
            run(x)
    samples: list[list[tuple[int, int]]] = [[] for _ in runners]
    slice_ns = int(seconds / rounds * 1e9)
    gc.disable()  # a collection triggered by one variant's garbage must not land in another's timing
    try:
        for r in range(rounds):
            for k in range(len(runners)):
                i = (r + k) % len(runners)
                runners[i](x)  # untimed: the caches are cold after another variant ran
                start = time.perf_counter_ns()
                for _ in range(MAX_CALLS_PER_SLICE):
                    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                    runners[i](x)
                    c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
                    samples[i].append((w1 - w0, c1 - c0))
                    if w1 - start >= slice_ns:
                        break
    finally:
        gc.enable()
    out = []
    for rows in samples:
        wall, cpu = (np.asarray([row[j] for row in rows], dtype=np.float64) / 1e6 for j in (0, 1))
        out.append({"p50": float(np.median(wall)), "p90": float(np.percentile(wall, 90)), "min": float(wall.min()),
                    "cpu_p50": float(np.median(cpu)), "runs": len(rows)})
    return out


def _measure(key: str, label: str, input_shape: tuple, make, settings: dict, out: Path, log) -> dict:
    import numpy as np
    import torch

    from torchslim import Artifact
    from torchslim.evaluation import make_runner
    from torchslim.export import export_onnx
    from torchslim.prune import PruneConfig, prunable_layers, prune_
    from torchslim.prune.nm import nm_storage

    torch.manual_seed(SEED)
    dense = make().eval()
    sparse = make().eval()
    sparse.load_state_dict(dense.state_dict())
    masks = prune_(sparse, PruneConfig(pattern="2:4"))
    storage = nm_storage(prunable_layers(sparse), 2, 4)
    arts = []
    for name, model in (("dense", dense), ("2:4", sparse)):
        tag = name.replace(":", "-")
        arts.append(Artifact(f"pytorch {name}", "bench", "pytorch", Path("-"), model))
        path = export_onnx(model, out / f"{key}-{tag}.onnx", input_shape)
        arts.append(Artifact(f"onnxruntime {name}", "bench", "onnxruntime", path, model))
    runners = [make_runner(a, 1) for a in arts]
    x = np.random.default_rng(SEED).standard_normal((8, *input_shape), dtype=np.float32)
    reference = {a.name.split()[1]: runners[i](x) for i, a in enumerate(arts) if a.runtime == "pytorch"}
    agreement = {a.name: float(np.abs(runners[i](x) - reference[a.name.split()[1]]).max())
                 for i, a in enumerate(arts) if a.runtime == "onnxruntime"}
    t0 = time.perf_counter()
    latencies: list[dict] = [{} for _ in arts]
    for batch in (1, 64):
        xb = np.random.default_rng(SEED).standard_normal((batch, *input_shape), dtype=np.float32)
        for i, summary in enumerate(_interleaved(runners, xb, settings["max_seconds"], settings["rounds"])):
            latencies[i][str(batch)] = summary
    log(f"[{key}] timed {len(arts)} variants in {time.perf_counter() - t0:.1f} s")
    variants = []
    for art, lat in zip(arts, latencies):
        raw = art.path.read_bytes() if art.runtime == "onnxruntime" else None
        variants.append({"name": art.name, "runtime": art.runtime, "latency_ms": lat,
                         "weight_sparsity": masks.overall() if "2:4" in art.name else 0.0,
                         "file_bytes": len(raw) if raw else None,
                         "file_bytes_lzma": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) if raw else None})
    by = {v["name"]: v for v in variants}
    def ratio(runtime: str, batch: str, stat: str) -> float:
        return by[f"{runtime} 2:4"]["latency_ms"][batch][stat] / by[f"{runtime} dense"]["latency_ms"][batch][stat]

    ratios = {stat: {runtime: {b: ratio(runtime, b, stat) for b in ("1", "64")} for runtime in ("pytorch", "onnxruntime")}
              for stat in ("p50", "min", "cpu_p50")}
    weights = sum(m.weight.numel() for m in prunable_layers(dense).values())  # Linear only: also the MACs/sample
    return {"label": label, "input_shape": list(input_shape), "weights": weights, "macs_per_sample": weights,
            "variants": variants, "sparse_over_dense": ratios, "onnx_vs_pytorch_max_abs_diff": agreement,
            "nm_storage": storage}


def _markdown(result: dict) -> str:
    semi = result["semi_structured"]
    lines = [f"# nm: `{result['command']}`", "",
             f"{result['machine'].get('processor', '?')}, {result['threads']} thread (PyTorch intra-op; ONNX Runtime "
             f"intra-op, 1 inter-op, sequential); torch {result['machine'].get('torch')}, onnxruntime "
             f"{result['machine'].get('onnxruntime')}; seed {result['seed']}. Latency: individually timed calls on a "
             f"fixed random batch, the four variants of a model interleaved in one process "
             f"({result['settings']['max_seconds']} s per variant and batch in {result['settings']['rounds']} rounds): "
             f"wall-time p50, p90 and min, and the p50 of the calling thread's CPU time (not counting time the "
             f"thread was preempted). "
             f"2:4 = `prune_(model, PruneConfig(pattern=\"2:4\"))` on a seeded random init; zeros stored densely. "
             f"{result['seconds']} s in all. Load average (1 min) {result['load_average_1min']['before']:.1f} before, "
             f"{result['load_average_1min']['after']:.1f} after, on {result['machine'].get('cpu_count')} CPUs shared "
             f"with other jobs, so timings carry that noise (interleaving spreads it over all variants alike).", ""]
    for m in result["models"].values():
        st = m["nm_storage"]
        lines += [f"## {m['label']}: {m['weights']:,} weights, {m['macs_per_sample'] / 1e6:.2f} M MACs per sample", "",
                  "| variant | runtime | weight sparsity % | ONNX KB | ONNX lzma KB | p50 ms @1 | p90 ms @1 | "
                  "min ms @1 | CPU p50 ms @1 | p50 ms @64 | p90 ms @64 | min ms @64 | CPU p50 ms @64 | runs @1 / @64 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in m["variants"]:
            lat = v["latency_ms"]
            kb = lambda n: f"{n / 1000:,.1f}" if n else "—"  # noqa: E731
            lines.append(f"| {v['name']} | {v['runtime']} | {100 * v['weight_sparsity']:.1f} | {kb(v['file_bytes'])} "
                         f"| {kb(v['file_bytes_lzma'])} | "
                         + " | ".join(f"{lat[b][k]:.3f}" for b in ("1", "64") for k in ("p50", "p90", "min", "cpu_p50"))
                         + f" | {lat['1']['runs']} / {lat['64']['runs']} |")
        lines += [""] + [
            f"- 2:4 / dense, {what}: PyTorch " + ", ".join(f"{r['pytorch'][b]:.2f}× @{b}" for b in ("1", "64"))
            + "; ONNX Runtime " + ", ".join(f"{r['onnxruntime'][b]:.2f}× @{b}" for b in ("1", "64"))
            for what, r in (("wall p50", m["sparse_over_dense"]["p50"]), ("wall min", m["sparse_over_dense"]["min"]),
                            ("CPU-time p50", m["sparse_over_dense"]["cpu_p50"]))]
        lines += ["  (1.00× = same speed; below 1 = the 2:4 model is faster.)",
                  f"- N:M storage of the 2:4 weights (`nm_storage`): {st['packed_bytes']:,} bytes packed vs "
                  f"{st['dense_bytes']:,} dense ({st['ratio']:.2f}× smaller; values kept in "
                  f"{', '.join(sorted({l['value_dtype'] for l in st['layers'].values()}))}, 2-bit positions).",
                  "- ONNX vs PyTorch max |Δ| on 8 random inputs: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in m["onnx_vs_pytorch_max_abs_diff"].items()) + ".", ""]
    lines += ["## `torch.sparse.to_sparse_semi_structured` on this CPU build", "",
              f"torch {semi['torch']}, CUDA available: {semi['cuda_available']}, cuSPARSELt available: "
              f"{semi['cusparselt_available']}.", ""]
    for key in ("float16", "float32"):
        if key in semi:
            v = semi[key]
            what = f"works ({v['type']})" if v["ok"] else f"fails: `{v['error']}`"
            lines.append(f"- 128×128 2:4 {key} CPU tensor: {what}")
    if "import" in semi:
        lines.append(f"- import failed: `{semi['import']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny timing budget: a smoke run (< 30 s)")
    p.add_argument("--results", default=None, help="folder for nm.json/.md (default bench/results; --quick: "
                                                     "bench/out/nm-quick)")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts its pool
    import torch

    from torchslim.evaluation import machine_info

    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    out = ROOT / "bench" / "out" / ("nm-quick" if args.quick else "nm")
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    log("1 thread (torch.set_num_threads(1), OMP_NUM_THREADS=1)")
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    models = {key: _measure(key, label, shape, make, settings, out, log)
              for key, (label, shape, make) in _models().items()}
    semi = _semi_structured()
    result = {"experiment": "nm", "command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
              "settings": settings, "threads": 1, "seed": SEED, "seconds": round(time.perf_counter() - t0, 1),
              "machine": machine_info(), "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "models": models, "semi_structured": semi}
    results = Path(args.results) if args.results else (out if args.quick else ROOT / "bench" / "results")
    results.mkdir(parents=True, exist_ok=True)
    stem = "nm-quick" if args.quick else "nm"
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (results / f"{stem}.md").write_text(_markdown(result))
    for key, m in models.items():
        log(f"{key}: 2:4 / dense {m['sparse_over_dense']}")
    log(f"to_sparse_semi_structured: {({k: v for k, v in semi.items() if isinstance(v, dict)})}")
    log(f"wrote {results / f'{stem}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
