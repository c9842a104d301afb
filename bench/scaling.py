"""Data-parallel training throughput: samples per second for 1, 2, ... processes under torchrun.

    python bench/scaling.py                         # 1 and 2 processes (this 2-core machine), LeNet-5 on MNIST
    python bench/scaling.py --procs 1 2 4 8         # on a machine with more cores

Each configuration is a real `torchrun --standalone --nproc_per_node=N` run of torchslim's training loop (DDP over
gloo on CPU, nccl on GPU), one thread per process unless --threads says otherwise. Throughput is training samples
per second of wall time over the epochs after the first (warm-up). Writes bench/results/scaling.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: train and, on rank 0, write the per-epoch history."""
    import torch

    from torchslim.data import load_dataset
    from torchslim.models import create_model
    from torchslim.training import TrainConfig, dist, fit

    dist.init()
    data = load_dataset(args.dataset, limit_train=args.samples)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd", lr=0.05, keep="last")
    result = fit(model, data.train, None, cfg, log=lambda m: None, progress=False)
    if dist.is_main():
        Path(args.result).write_text(json.dumps({"history": result.history, "threads": torch.get_num_threads(),
                                                 "samples": len(data.train)}))
    dist.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    torchrun = Path(sys.executable).with_name("torchrun")
    rows = []
    for n in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "history.json"
            cmd = [str(torchrun), "--standalone", f"--nproc_per_node={n}", __file__, "--worker", "--result", str(out),
                   "--model", args.model, "--dataset", args.dataset, "--samples", str(args.samples),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            run = json.loads(out.read_text())
        timed = run["history"][1:] or run["history"]
        seconds = sum(e["seconds"] for e in timed)
        rows.append({"processes": n, "threads_per_process": args.threads,
                     "samples_per_second": round(run["samples"] * len(timed) / seconds, 1),
                     "epoch_seconds": [round(e["seconds"], 2) for e in run["history"]], "wall_seconds": round(wall, 1)})
        print(f"{n} process(es) x {args.threads} thread(s): {rows[-1]['samples_per_second']} samples/s", flush=True)
    base = rows[0]["samples_per_second"]
    for r in rows:
        r["speedup_vs_first"] = round(r["samples_per_second"] / base, 2)
    from torchslim.evaluation import machine_info  # imports torch: only once the timed runs are over

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model,
              "dataset": args.dataset, "samples": args.samples, "batch_size": args.batch_size, "epochs": args.epochs,
              "machine": machine_info(), "rows": rows}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Data-parallel scaling: `{result['command']}`", "",
             f"{args.model} on {args.dataset} ({args.samples} training samples), global batch {args.batch_size}, "
             f"SGD; {os.cpu_count()} CPUs. Samples/s over epochs 2..{args.epochs} (epoch 1 is warm-up).", "",
             "| processes | threads each | samples/s | speedup |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['processes']} | {r['threads_per_process']} | {r['samples_per_second']} | {r['speedup_vs_first']}× |"
              for r in rows]
    (results / "scaling.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
