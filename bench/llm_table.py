"""Language-model compression on tinyshakespeare's GPT: one perplexity table (weight-only quantization, SmoothQuant,
pruning), token-level distillation of a half-depth student, and int8 vs int4 speed in ONNX Runtime.

    python bench/llm_table.py                          # trains (or reuses) the teacher; bench/results/llm-table.*
    python bench/llm_table.py --teacher runs/shakespeare/teacher.safetensors      # a teacher you already trained
    python bench/llm_table.py --smoke                  # tiny sizes, a couple of minutes: bench/out/llm-smoke/

- Teacher: the zoo `gpt` with recipes/tinyshakespeare-gpt.yaml's teacher settings (4 layers × 128, 4 heads, block 64;
  4 epochs, batch 16, AdamW 1e-3, cosine, seed 0), trained by running that recipe with `stages=[]` and cached under
  bench/out/llm/teacher/ (or loaded from --teacher).
- Perplexity: on the validation split (the 5% of the text before the test split), non-overlapping windows of 64
  characters (context 64, stride 64: each scored token sees 0-63 characters), exp(mean next-character cross-entropy).
- Calibration: 128 windows of 64 characters drawn at random (seed 0) from the training split, 16 batches of 8 — what
  a recipe's `calibration: {batches: 16, batch_size: 8}` takes.
- Table: fp32; RTN / GPTQ / AWQ at 4 and 3 bits with groups of 128 and 32 inputs and per output channel (-1);
  SmoothQuant W8A8 (per-token and per-tensor activations); magnitude / Wanda / SparseGPT at 50% unstructured and 2:4.
  Each row: validation perplexity and the seconds the method took (one thread).
- KD: a half-depth student, the teacher's layers [0, 2] (layer dropping, as the recipe's student), trained with the
  recipe's stage settings (2 epochs, batch 16, AdamW 1e-3, cosine; the epoch with the lowest val perplexity kept) on
  the text alone vs distilled with forward-kl, reverse-kl and jsd (β = 0.5), each loss alone at temperature 1: the
  same windows, the same number of tokens seen.
- Speed: ONNX Runtime, batch 1, 1 intra-op thread, sequential, interleaved in one loop (each round times every model,
  starting with a different one): fp32 ONNX, int8 (`ts.quantize` with DynamicInt8Config, per-channel), int4
  MatMulNBits (the GPTQ-4 g32 model of the table) with ONNX Runtime's default float compute, and the same file with
  accuracy_level 4 (int8 compute of the activations inside MatMulNBits). onnxruntime issue 23004 reports MatMulNBits
  int4 slower than dynamic int8 on CPUs; the claims say which is faster here. Prefill: one forward over the model's
  full context (64 tokens: the model's block_size; 128 would not fit). Decode: 64 new tokens after a 64-token
  prompt, greedy; the exported model has no KV cache, so each new token is one forward over the last 64 tokens of the
  growing context.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tinyshakespeare-gpt.yaml"
SEED = 0


def _log_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
    return log


# ---------------------------------------------------------------------------------------------------- the teacher
def teacher_overrides(args) -> list[str]:
    sets = ["stages=[]", "evaluate.batch_sizes=[1]", "evaluate.max_seconds=0.05"]
    if args.limit_train:
        sets.append(f"data.limit_train={args.limit_train}")
    if args.teacher_epochs:
        sets.append(f"teacher.train.epochs={args.teacher_epochs}")
    return sets


def load_teacher(args, data, out: Path, log):
    """The recipe's teacher: from --teacher, from the cache, or trained now by the recipe itself."""
    import torch

    import torchslim as ts
    from torchslim import load_recipe

    recipe = load_recipe(RECIPE, teacher_overrides(args))
    spec = recipe.teacher
    model = ts.create_model(spec.model, vocab_size=data.task.vocab_size, **spec.args)
    if args.teacher:
        log(f"teacher: loaded {args.teacher}")
        return ts.load_checkpoint(model, args.teacher).eval(), {"checkpoint": args.teacher}
    extra = teacher_overrides(args)[3:]
    folder = out / ("teacher" if not extra else "teacher-" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8])
    path = folder / "teacher.safetensors"
    if not (folder / "report.json").is_file():
        log(f"teacher: training by {RECIPE.name} --set {' --set '.join(teacher_overrides(args))} into {folder}")
        t0 = time.perf_counter()
        ts.run_recipe(recipe, folder, log=log)
        log(f"teacher: trained in {(time.perf_counter() - t0) / 60:.1f} min")
    else:
        log(f"teacher: reused {path}")
    torch.manual_seed(SEED)
    return ts.load_checkpoint(model, path).eval(), {"recipe": str(RECIPE.relative_to(ROOT)),
                                                     "overrides": teacher_overrides(args), "path": str(path)}


# ------------------------------------------------------------------------------------------------------ measuring
def perplexity(run, windows, batch: int = 64) -> float:
    """exp(mean next-token cross-entropy) of `run` (ids N×T → logits N×T×V, torch) over windows (x, y)."""
    import torch
    import torch.nn.functional as F

    x, y = windows
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = torch.as_tensor(run(x[i:i + batch])).float()
            total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch].flatten(), reduction="sum").item()
            count += y[i:i + batch].numel()
    return math.exp(total / count)


def torch_run(model):
    model.eval()
    return lambda ids: model(ids)


def ort_run(path, threads: int = 1):
    import torch

    from torchslim.export import ort_session

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda ids: torch.from_numpy(sess.run(None, {name: ids.numpy()})[0])


def calibration(data, windows: int, batch_size: int) -> list:
    import torch

    x = data.train.tensors[0]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))[:windows]
    return list(x[pick].split(batch_size))


def groups_for(model) -> tuple[list[int], list[str]]:
    """Group sizes 128, 32 and -1 as the model's widths allow (the largest power of two ≤ g dividing every width)."""
    from torchslim.prune.llm import DEFAULT_EXCLUDE, target_linears

    widths = sorted({m.in_features for m in target_linears(model, DEFAULT_EXCLUDE).values()})
    out, notes = [], []
    for g in (128, 32):
        size = g
        while any(w % size for w in widths):
            size //= 2
        if size != g:
            notes.append(f"group {g} does not divide the input widths {widths}: used {size}, the largest that does")
        whole = [w for w in widths if w == size]
        if whole:
            notes.append(f"group {size} is the whole row of the layers with {whole[0]} inputs (one group per output "
                         f"channel there), {', '.join(f'{w // size} groups' for w in widths if w != size)} per row of "
                         f"the wider ones ({', '.join(str(w) for w in widths if w != size)} inputs)")
        out.append(size)
    return out + [-1], notes


# -------------------------------------------------------------------------------------------------------- table
def ppl_table(teacher, data, val, calib, log) -> tuple[list[dict], dict, list[str]]:
    """Every row of the perplexity table; also returns the GPTQ-4 g32 model and its result (the int4 of the speed
    part) and notes on the group sizes."""
    from torchslim.prune import prune_llm_
    from torchslim.quant import quantize_weights_

    rows = [{"section": "fp32", "method": "fp32", "setting": "", "perplexity": perplexity(torch_run(teacher), val),
             "seconds": 0.0}]
    log(f"fp32: {rows[0]['perplexity']:.4f}")
    groups, notes = groups_for(teacher)
    keep: dict = {}
    for bits in (4, 3):
        for group in groups:
            for method in ("rtn", "gptq", "awq"):
                model = copy.deepcopy(teacher)
                res = quantize_weights_(model, calib, method=method, bits=bits, group_size=group)
                rows.append({"section": "weight-only", "method": method, "bits": bits, "group_size": group,
                             "setting": f"{bits}-bit, {'per channel' if group == -1 else f'g{group}'}",
                             "perplexity": perplexity(torch_run(model), val), "seconds": res.seconds,
                             "packed_bytes": res.nbytes})
                log(f"{method} {rows[-1]['setting']}: {rows[-1]['perplexity']:.4f} ({res.seconds:.1f} s)")
                if (method, bits, group) == ("gptq", 4, 32):
                    keep = {"model": model, "result": res}
    for act in ("per_token", "per_tensor"):
        model = copy.deepcopy(teacher)
        res = quantize_weights_(model, calib, method="smoothquant", activation=act)
        rows.append({"section": "W8A8", "method": "smoothquant", "setting": f"W8A8, {act.replace('_', '-')} "
                     "activations, α 0.5", "perplexity": perplexity(torch_run(model), val), "seconds": res.seconds})
        log(f"smoothquant {act}: {rows[-1]['perplexity']:.4f} ({res.seconds:.1f} s)")
    for pattern, sparsity in (("unstructured", 0.5), ("2:4", None)):
        for method in ("magnitude", "wanda", "sparsegpt"):
            model = copy.deepcopy(teacher)
            res = prune_llm_(model, calib, method=method, pattern=pattern, sparsity=sparsity)
            rows.append({"section": "pruning", "method": method, "pattern": pattern,
                         "setting": "50% unstructured" if pattern == "unstructured" else "2:4",
                         "sparsity": res.overall, "perplexity": perplexity(torch_run(model), val),
                         "seconds": res.seconds})
            log(f"{method} {rows[-1]['setting']}: {rows[-1]['perplexity']:.4f} ({res.seconds:.1f} s)")
    return rows, keep, notes


def kd_table(teacher, data, val, args, log) -> list[dict]:
    import torch

    import torchslim as ts
    from torchslim.models import keep_layers

    train = ts.TrainConfig(epochs=args.kd_epochs, batch_size=16, optimizer="adamw", lr=1e-3, schedule="cosine")
    variants = [("text only", None), ("forward-kl", {"name": "forward-kl"}), ("reverse-kl", {"name": "reverse-kl"}),
                ("jsd β=0.5", {"name": "jsd", "beta": 0.5})]
    rows = []
    for name, loss in variants:
        torch.manual_seed(SEED)
        student = keep_layers(copy.deepcopy(teacher).requires_grad_(True), [0, 2])
        t0 = time.perf_counter()
        quiet = lambda msg: None  # noqa: E731
        if loss is None:
            fitted = ts.train(student, data, train, seed=SEED, stage=name, log=quiet)
        else:
            fitted = ts.distill(student, teacher, data, ts.KDConfig(losses=[loss]), train, seed=SEED, stage=name,
                                log=quiet)
        rows.append({"student": name, "loss": loss, "perplexity": perplexity(torch_run(student), val),
                     "seconds": time.perf_counter() - t0, "best_epoch": fitted.best_epoch,
                     "params": sum(p.numel() for p in student.parameters()),
                     "tokens_seen": args.kd_epochs * data.train.tensors[0].numel()})
        log(f"KD {name}: {rows[-1]['perplexity']:.4f} ({rows[-1]['seconds']:.0f} s)")
    return rows


# -------------------------------------------------------------------------------------------------------- speed
def speed(teacher, gptq: dict, data, val, out: Path, args, log) -> dict:
    import numpy as np

    import torchslim as ts
    from torchslim.export import ort_session
    from torchslim.quant import export_matmul_nbits

    folder = out / "onnx"
    paths = {"fp32": ts.export_onnx(teacher, folder / "fp32.onnx", task=data.task)}
    paths["int8"] = ts.quantize(teacher, ts.DynamicInt8Config(per_channel=True), data.task, folder / "int8.onnx").path
    ts.export_onnx(gptq["model"], folder / "gptq4-g32.fp32.onnx", task=data.task)
    paths["int4"] = Path(export_matmul_nbits(folder / "gptq4-g32.fp32.onnx", gptq["result"],
                                             folder / "int4.onnx")["path"])
    # accuracy_level 4: ONNX Runtime quantizes the activations to int8 inside MatMulNBits (int8 dot products) instead
    # of dequantizing the 4-bit blocks to float for a float GEMM (its default).
    paths["int4-acc4"] = Path(export_matmul_nbits(folder / "gptq4-g32.fp32.onnx", gptq["result"],
                                                  folder / "int4-acc4.onnx", accuracy_level=4)["path"])
    block = teacher.block_size
    prompt = val[0][:1, :min(args.prefill, block)]
    sessions = {k: ort_session(p, 1) for k, p in paths.items()}
    feeds = {k: s.get_inputs()[0].name for k, s in sessions.items()}

    def call(k, ids):
        return sessions[k].run(None, {feeds[k]: ids})[0]

    def decode(k):
        ids = val[0][:1, :min(args.prompt, block)].numpy()
        t0 = time.perf_counter()
        for _ in range(args.new_tokens):
            nxt = call(k, ids[:, -block:])[:, -1].argmax(-1)[:, None]
            ids = np.concatenate([ids, nxt.astype(np.int64)], axis=1)
        return time.perf_counter() - t0, ids

    names = list(paths)
    for k in names:  # warm-up
        for _ in range(3):
            call(k, prompt.numpy())
    prefill = {k: [] for k in names}
    dec = {k: [] for k in names}
    texts = {}
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(args.prefill_calls):
                t0 = time.perf_counter()
                call(k, prompt.numpy())
                prefill[k].append(time.perf_counter() - t0)
            seconds, ids = decode(k)
            dec[k].append(seconds)
            texts[k] = data.task.tokenizer.decode(ids[0, -args.new_tokens:].tolist())
    result = {"prefill_tokens": int(prompt.shape[1]), "prefill_requested": args.prefill, "block_size": block,
              "prompt_tokens": min(args.prompt, block),
              "new_tokens": args.new_tokens, "rounds": args.rounds, "prefill_calls_per_round": args.prefill_calls,
              "models": {}}
    for k in names:
        p50 = statistics.median(prefill[k])
        d50 = statistics.median(dec[k])
        result["models"][k] = {
            "file_bytes": os.path.getsize(paths[k]), "prefill_ms_p50": 1000 * p50,
            "prefill_tokens_per_s": prompt.shape[1] / p50, "decode_tokens_per_s": args.new_tokens / d50,
            "decode_ms_per_token": 1000 * d50 / args.new_tokens,
            "val_perplexity": perplexity(ort_run(paths[k]), val), "greedy_text": texts[k]}
        m = result["models"][k]
        log(f"speed {k}: prefill {m['prefill_ms_p50']:.3f} ms ({m['prefill_tokens_per_s']:.0f} tok/s), decode "
            f"{m['decode_tokens_per_s']:.0f} tok/s, val ppl {m['val_perplexity']:.4f}, {m['file_bytes']:,} bytes")
    return result


# -------------------------------------------------------------------------------------------------------- claims
def claims(rows: list[dict], kd: list[dict], sp: dict | None) -> list[dict]:
    out = []
    wo = {(r["method"], r["bits"], r["group_size"]): r["perplexity"] for r in rows if r["section"] == "weight-only"}
    for bits in (4, 3):
        for group in sorted({g for (_, _, g) in wo}, reverse=True):
            rtn = wo[("rtn", bits, group)]
            for m in ("gptq", "awq"):
                out.append({"claim": f"{m} below rtn at {bits} bits, group {group}",
                            "holds": wo[(m, bits, group)] < rtn,
                            "numbers": f"{m} {wo[(m, bits, group)]:.4f} vs rtn {rtn:.4f}"})
    fp32 = rows[0]["perplexity"]
    pr = {(r["method"], r["pattern"]): r["perplexity"] for r in rows if r["section"] == "pruning"}
    for pattern in ("unstructured", "2:4"):
        mag = pr[("magnitude", pattern)]
        for m in ("wanda", "sparsegpt"):
            ours = pr[(m, pattern)]
            far = (mag - fp32) > 2 * (ours - fp32)  # "far below": at most half magnitude's loss over fp32
            out.append({"claim": f"{m} far below magnitude at {'50%' if pattern == 'unstructured' else pattern}",
                        "holds": ours < mag and far,
                        "numbers": f"{m} {ours:.4f} vs magnitude {mag:.4f} (fp32 {fp32:.4f}; increase over fp32 "
                                   f"{ours - fp32:+.4f} vs {mag - fp32:+.4f})"})
    if kd:
        text = next(r["perplexity"] for r in kd if r["loss"] is None)
        for r in kd:
            if r["loss"] is not None:
                out.append({"claim": f"{r['student']} student below the text-only student",
                            "holds": r["perplexity"] < text,
                            "numbers": f"{r['perplexity']:.4f} vs {text:.4f}"})
    if sp:
        m = sp["models"]
        for k in ("int4", "int4-acc4"):
            faster_prefill = k if m[k]["prefill_ms_p50"] < m["int8"]["prefill_ms_p50"] else "int8"
            faster_decode = k if m[k]["decode_tokens_per_s"] > m["int8"]["decode_tokens_per_s"] else "int8"
            out.append({"claim": f"{k} (MatMulNBits) faster than int8 (dynamic) in prefill",
                        "holds": faster_prefill == k,
                        "numbers": f"{k} {m[k]['prefill_ms_p50']:.3f} ms vs int8 {m['int8']['prefill_ms_p50']:.3f} ms "
                                   f"(fp32 {m['fp32']['prefill_ms_p50']:.3f}); {faster_prefill} is faster here"})
            out.append({"claim": f"{k} (MatMulNBits) faster than int8 (dynamic) in decode",
                        "holds": faster_decode == k,
                        "numbers": f"{k} {m[k]['decode_tokens_per_s']:.0f} tok/s vs int8 "
                                   f"{m['int8']['decode_tokens_per_s']:.0f} tok/s (fp32 "
                                   f"{m['fp32']['decode_tokens_per_s']:.0f}); {faster_decode} is faster here"})
    return out


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"# LLM compression table: `{res['command']}`", "",
             f"{res['minutes']:.1f} min on {res['machine']['processor']} ({res['machine']['cpu_count']} CPUs), "
             f"{res['threads']} thread; torch {res['machine']['torch']}, onnxruntime {res['machine']['onnxruntime']}"
             + (" — **smoke run (tiny sizes): not a result**" if res["smoke"] else "") + ".", "",
             f"Teacher: {res['teacher']}. Perplexity on the validation split, {s['val_windows']} non-overlapping "
             f"windows of {s['context']} characters (context {s['context']}, stride {s['context']}). Calibration: "
             f"{s['calibration_windows']} windows of {s['context']} characters drawn at random (seed {SEED}) from the "
             f"training split, in batches of {s['calibration_batch_size']}.", ""]
    lines += [f"- {n}" for n in res["group_notes"]] + ["", "| section | method | setting | val perplexity | seconds |",
                                                       "|---|---|---|---:|---:|"]
    for r in res["table"]:
        lines.append(f"| {r['section']} | {r['method']} | {r['setting']} | {r['perplexity']:.4f} | "
                     f"{r['seconds']:.1f} |")
    if res["kd"]:
        lines += ["", f"## Token-level KD: half-depth student (the teacher's layers [0, 2]), epochs: {s['kd_epochs']}, "
                      "batch 16, AdamW 1e-3, cosine; each loss alone, temperature 1; best epoch by val perplexity", "",
                  "| student | val perplexity | best epoch | tokens seen | seconds |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['student']} | {r['perplexity']:.4f} | {r['best_epoch']} | {r['tokens_seen']:,} | "
                  f"{r['seconds']:.0f} |" for r in res["kd"]]
    if res["speed"]:
        sp = res["speed"]
        lines += ["", f"## ONNX Runtime speed: batch 1, 1 thread, interleaved ({sp['rounds']} rounds)", "",
                  f"Prefill: one forward over {sp['prefill_tokens']} tokens"
                  + (f" ({sp['prefill_requested']} asked for: the model's block_size is {sp['block_size']})"
                     if sp["prefill_requested"] > sp["prefill_tokens"] else "") + ". Decode: "
                  f"{sp['new_tokens']} new tokens after a {sp['prompt_tokens']}-token prompt, greedy; no KV cache in "
                  f"the exported model, so each new token is one forward over the last {sp['prefill_tokens']} "
                  "tokens.", "",
                  "| model | file bytes | prefill ms (p50) | prefill tok/s | decode tok/s | val perplexity (ORT) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, m in sp["models"].items():
            lines.append(f"| {k} | {m['file_bytes']:,} | {m['prefill_ms_p50']:.3f} | {m['prefill_tokens_per_s']:.0f} | "
                         f"{m['decode_tokens_per_s']:.0f} | {m['val_perplexity']:.4f} |")
    lines += ["", "## Claims", ""] + [f"- {'holds' if c['holds'] else 'does NOT hold'}: {c['claim']} — {c['numbers']}"
                                      for c in res["claims"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="a trained teacher checkpoint (.safetensors) of the recipe's shape")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a couple of minutes); writes to bench/out/")
    p.add_argument("--limit-train", type=int, help="first N training windows (teacher, KD, calibration pool)")
    p.add_argument("--teacher-epochs", type=int, help="override the recipe's 4 teacher epochs")
    p.add_argument("--val-windows", type=int, help="first N validation windows (default: all)")
    p.add_argument("--calibration-windows", type=int, default=128)
    p.add_argument("--calibration-batch-size", type=int, default=8)
    p.add_argument("--kd-epochs", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["kd", "speed"])
    p.add_argument("--prefill", type=int, default=128, help="prefill tokens (capped at the model's block_size)")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--prefill-calls", type=int, default=20, help="timed prefill calls per model and round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--results", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.limit_train = args.limit_train or 256
        args.teacher_epochs = args.teacher_epochs or 1
        args.val_windows = args.val_windows or 16
        args.calibration_windows, args.kd_epochs, args.rounds, args.prefill_calls = 16, 1, 2, 3
        args.new_tokens = min(args.new_tokens, 8)
    out = Path(args.out or ROOT / "bench" / "out" / ("llm-smoke" if args.smoke else "llm"))
    results = Path(args.results or (out if args.smoke else ROOT / "bench" / "results"))
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    import torchslim as ts

    torch.set_num_threads(args.threads)
    log = _log_to(out / "log.txt")
    command = shlex.join([Path(sys.executable).name, "bench/llm_table.py", *(sys.argv[1:] if argv is None else argv)])
    log(f"=== {command}")
    t_start = time.perf_counter()
    data = ts.load_dataset("tinyshakespeare", block_size=64, limit_train=args.limit_train)
    teacher, teacher_info = load_teacher(args, data, out, log)
    val = tuple(t[:args.val_windows] for t in data.val.tensors[:2])
    calib = calibration(data, args.calibration_windows, args.calibration_batch_size)
    rows, gptq, notes = ppl_table(teacher, data, val, calib, log)
    kd = [] if "kd" in args.skip else kd_table(teacher, data, val, args, log)
    sp = None if "speed" in args.skip else speed(teacher, gptq, data, val, out, args, log)
    res = {"experiment": "llm-table", "command": command, "smoke": args.smoke, "machine": ts.machine_info(),
           "threads": args.threads, "seed": SEED, "minutes": (time.perf_counter() - t_start) / 60,
           "teacher": (f"{teacher_info.get('checkpoint') or teacher_info['path']} "
                       f"({sum(p.numel() for p in teacher.parameters()):,} params, gpt 4 × 128, block 64)"),
           "teacher_info": teacher_info,
           "settings": {"context": 64, "stride": 64, "val_windows": len(val[0]),
                        "calibration_windows": args.calibration_windows,
                        "calibration_batch_size": args.calibration_batch_size, "kd_epochs": args.kd_epochs,
                        "train_windows": len(data.train)},
           "group_notes": notes, "table": rows, "kd": kd, "speed": sp}
    res["claims"] = claims(rows, kd, sp)
    for c in res["claims"]:
        log(f"{'holds' if c['holds'] else 'does NOT hold'}: {c['claim']} — {c['numbers']}")
    results.mkdir(parents=True, exist_ok=True)
    stem = "llm-table-smoke" if args.smoke else "llm-table"
    (results / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (results / f"{stem}.md").write_text(markdown(res))
    log(f"wrote {results / stem}.md and .json ({res['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
