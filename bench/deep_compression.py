"""Deep Compression (Han, Mao, Dally 2016), Table 1 on MNIST: prune → k-means weight sharing → Huffman-coded file.

    python bench/deep_compression.py lenet-300-100     # paper: 1.64% → 1.58% error, 40× smaller
    python bench/deep_compression.py lenet5            # paper: 0.80% → 0.74% error, 39× smaller

Per-layer kept fractions and codebook widths follow the paper (LeNet-300-100: 8/9/26% kept, 6-bit weights;
LeNet-5: 66/12/8/19% kept, 8-bit conv and 5-bit fc). Pruning is iterative (three prune/retrain rounds to the
per-layer targets, retraining at lr/10 with the masks held), then the centroids are fine-tuned with shared gradients.
The error is measured on the model loaded back from the compressed file — the file that ships — and the ratio is
fp32 state-dict bytes / file bytes. Writes bench/results/deep-compression-<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUPS = {
    # model: (kept fraction per layer, codebook bits per layer, paper error before → after, paper ratio)
    "lenet-300-100": ({"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}, {"fc*": 6}, (1.64, 1.58), 40),
    "lenet5": ({"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}, {"conv*": 8, "fc*": 5}, (0.80, 0.74), 39),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(SETUPS))
    p.add_argument("--epochs", type=int, default=20, help="dense training epochs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--retrain-epochs", type=int, default=3, help="per prune round")
    p.add_argument("--share-epochs", type=int, default=3)
    p.add_argument("--retrain-lr", type=float, default=1e-4, help="Adam; the dense lr is 1e-3 (Han: retrain at 1/10)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 (Adam weight_decay) in every training phase")
    p.add_argument("--keep-scale", type=float, default=1.0, help="multiply the paper's kept fractions by this")
    p.add_argument("--bits", type=json.loads, default=None,
                   help='codebook widths instead of the paper\'s, JSON: 5 or \'{"conv*": 8, "fc*": 4}\'')
    p.add_argument("--bias-dtype", choices=["float32", "float16"], default="float16",
                   help="precision of the biases in the file (CodebookConfig.bias_dtype)")
    p.add_argument("--kd-temperature", type=float, default=0.0,
                   help="> 0: retrain and fine-tune the centroids on the dense model's soft targets at this T "
                        "(α=0.5 hard/soft) instead of labels alone — torchslim's prune+distill chain, not the paper's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the result files (to keep several settings side by side)")
    args = p.parse_args()
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    import torch

    from torchslim.data import load_dataset
    from torchslim.distillation import kd_loss
    from torchslim.evaluation import machine_info
    from torchslim.export import load_compressed, save_compressed
    from torchslim.models import create_model
    from torchslim.prune import CodebookConfig, Masks, finetune_codebooks, magnitude_masks, share_weights_
    from torchslim.training import TrainConfig, accuracy_of, fit, predict

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    keep, bits, paper_err, paper_ratio = SETUPS[args.model]
    keep = {name: min(1.0, f * args.keep_scale) for name, f in keep.items()}
    bits = bits if args.bits is None else args.bits
    wd = args.weight_decay
    data = load_dataset("mnist")
    model = create_model(args.model, input_shape=data.input_shape)
    log = lambda m: print(m, flush=True)  # noqa: E731
    fit(model, data.train, data.val, TrainConfig(epochs=args.epochs, lr=1e-3, schedule="cosine", weight_decay=wd), stage="dense", log=log)
    dense_err = 100 * (1 - accuracy_of(model, data.test))
    train_set, extra = data.train, {}
    if args.kd_temperature > 0:
        # The dense model's logits, computed once: the pruned model learns them back (Hinton KD with α = 0.5).
        x, y = data.train.tensors[:2]
        train_set = torch.utils.data.TensorDataset(x, y, predict(model, x))

        def kd_step(m, xb, yb, tb):
            logits = m(xb)
            return kd_loss(logits, tb, yb, args.kd_temperature, 0.5), logits

        extra = {"loss_fn": kd_step}

    layers = {name: model.get_submodule(name) for name in keep}
    # Not torchslim.prune.iterative_prune: the paper fixes each layer's kept fraction (iterative_prune takes one
    # target, or per-layer levels from its own sensitivity analysis), and --kd-temperature retrains with a loss_fn.
    for k in range(1, args.rounds + 1):
        # The same fraction of the remaining weights is removed each round, reaching the paper's kept fraction.
        masks = {}
        for name, layer in layers.items():
            target = 1 - keep[name] ** (k / args.rounds)
            masks.update(magnitude_masks({name: layer}, target, "layerwise"))
        held = Masks(layers, masks)
        held.apply()
        fit(model, train_set, data.val, TrainConfig(epochs=args.retrain_epochs, lr=args.retrain_lr, schedule="cosine", weight_decay=wd),
            after_step=held.apply, stage=f"prune round {k}", log=log, **extra)
    pruned_err = 100 * (1 - accuracy_of(model, data.test))
    kept = {name: round(1 - s, 4) for name, s in held.sparsity().items()}

    books = share_weights_(model, CodebookConfig(bits=bits, bias_dtype=args.bias_dtype))
    shared_err = 100 * (1 - accuracy_of(model, data.test))
    books, _ = finetune_codebooks(model, books, train_set, data.val,
                                  TrainConfig(epochs=args.share_epochs, lr=1e-4, schedule="cosine", keep="last"),
                                  bias_dtype=args.bias_dtype, stage="centroids", log=log, **extra)
    out = ROOT / "bench" / "out" / "deep-compression"
    out.mkdir(parents=True, exist_ok=True)
    info = save_compressed(model, out / f"{args.model}{args.tag}.tsdc", books)
    shipped = load_compressed(out / f"{args.model}{args.tag}.tsdc", create_model(args.model, input_shape=data.input_shape))
    final_err = 100 * (1 - accuracy_of(shipped, data.test))

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model, "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(),
        "settings": vars(args), "kept": kept, "bits": bits,
        "error_percent": {"dense": round(dense_err, 2), "pruned": round(pruned_err, 2),
                          "shared_before_finetune": round(shared_err, 2), "final_from_file": round(final_err, 2)},
        "fp32_bytes": info["fp32_bytes"], "file_bytes": info["file_bytes"], "ratio": round(info["ratio"], 1),
        "fixed_width_bytes": info.get("fixed_width_bytes"), "lzma_bytes": info.get("lzma_bytes"),
        "paper": {"error_before": paper_err[0], "error_after": paper_err[1], "ratio": paper_ratio},
        "targets": {"ratio": info["ratio"] >= paper_ratio, "error": final_err <= paper_err[1]},
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"deep-compression-{args.model}{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    e = result["error_percent"]
    md = [f"# Deep Compression, {args.model}: `{result['command']}`", "",
          f"{result['seconds']} s. Kept per layer: {kept}; codebook bits: {bits}.", "",
          "| | this run | paper |", "|---|---:|---:|",
          f"| dense test error % | {e['dense']} | {paper_err[0]} |",
          f"| after pruning (retrained) % | {e['pruned']} | |",
          f"| after weight sharing, before centroid fine-tuning % | {e['shared_before_finetune']} | |",
          f"| final, loaded from the compressed file % | {e['final_from_file']} | {paper_err[1]} |",
          f"| fp32 bytes → file bytes | {info['fp32_bytes']:,} → {info['file_bytes']:,} | |",
          f"| compression | **{result['ratio']}×** | {paper_ratio}× |",
          f"| without Huffman (fixed-width symbols) | {info['fp32_bytes'] / info['fixed_width_bytes']:.1f}× | |"
          if info.get("fixed_width_bytes") else "", ""]
    (results / f"deep-compression-{args.model}{args.tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
