"""Pruning criteria × schedules on LeNet-300-100 / MNIST, and the lottery-ticket curve (Frankle & Carbin 2019).

    python bench/prune_methods.py table      # criteria × {oneshot, iterative, gradual, lottery} at 90% and 95%
    python bench/prune_methods.py lottery    # accuracy vs weights remaining: rewound tickets vs random re-init

`table`: the dense net is trained once (Adam 1e-3, cosine, --dense-epochs). Every pruned variant starts from it and
gets the same fine-tuning budget (--ft-epochs, Adam --ft-lr, cosine, last weights kept): oneshot prunes then
fine-tunes; iterative runs 3 prune/fine-tune rounds of ft-epochs/3; gradual ramps (AGP) over the first 2/3 of the
steps. Sparsity is global over all three layers. apoz and entropy prune whole units and cannot score the
classifier (it feeds no ReLU): fc3 stays dense and fc1+fc2 are pruned a little more, so that the overall sparsity is
the same as for the other rows. Extra rows: SNIP at initialization (its intended use: prune the fresh init, then
train with the dense net's budget). Lottery column: magnitude, 5 rounds of global pruning (output layer at the same
rate, so that 5 rounds land exactly on the target), survivors rewound to the init, --lottery-epochs per round.

`lottery`: 15 rounds of 20% per layer (output layer 10%) down to 3.6% of the weights; each round trains
--epochs (Adam 1.2e-3, batch 60 as in the paper; the best validation epoch is kept, like their early stopping).
Curves: survivors rewound to θ_0, rewound to epoch 1 (Frankle et al. 2019), and the random re-initialization control
(each round's mask from the θ_0 run, trained from a fresh init).

One thread (torch.set_num_threads(1), OMP_NUM_THREADS=1). Writes bench/results/prune-methods.{json,md} and
bench/results/lottery.{json,md,png}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CRITERIA = ["magnitude", "random", "taylor", "snip", "han", "apoz", "entropy"]
UNIT_CRITERIA = ("apoz", "entropy")
SCHEDULES = ["oneshot", "iterative", "gradual"]


def _setup():
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))
    import torch

    torch.set_num_threads(1)
    from torchslim.data import load_dataset

    return load_dataset("mnist")


def _meta(args, t0: float) -> dict:
    import torch

    import torchslim
    from torchslim.evaluation import machine_info

    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time(), 1), "machine": machine_info(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchslim": torchslim.__version__},
            "threads": torch.get_num_threads(), "seed": args.seed, "settings": vars(args)}


def _acc(model, data) -> float:
    from torchslim.training import accuracy_of

    return round(100 * accuracy_of(model, data.test), 2)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _layers(model):
    from torchslim.prune import prunable_layers

    return prunable_layers(model)


# -------------------------------------------------------------------------------------------------------------- table
def _one(dense, data, criterion: str, schedule: str, sparsity: float, args) -> dict:
    from torchslim.prune import PruneConfig, gradual_prune, iterative_prune, prunable_layers
    from torchslim.training import TrainConfig

    model = copy.deepcopy(dense)
    exclude = ["fc3"] if criterion in UNIT_CRITERIA else []
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    pruned = sum(m.weight.numel() for m in prunable_layers(model, exclude).values())
    level = sparsity * total / pruned  # the same number of zeros over all weights as the other rows
    ft = TrainConfig(epochs=args.ft_epochs, lr=args.ft_lr, schedule="cosine", keep="last")
    quiet = lambda m: None  # noqa: E731
    t0 = time.perf_counter()
    if schedule == "gradual":
        cfg = PruneConfig(schedule="gradual", sparsity=level, criterion=criterion, exclude=exclude,
                          update_every=args.update_every, ramp=2 / 3)
        # gradual_prune itself, not prune_with_schedule, which would fine-tune with seed + 1.
        gradual_prune(model, cfg, data, ft, seed=args.seed, log=quiet)
    else:
        cfg = PruneConfig(schedule=schedule, sparsity=level, criterion=criterion, exclude=exclude,
                          **({"rounds": 3} if schedule == "iterative" else {}))
        per_round = ft.model_copy(update={"epochs": max(1, args.ft_epochs // len(cfg.round_targets()))})
        iterative_prune(model, cfg, data, per_round, seed=args.seed, log=quiet)
    layers = prunable_layers(model)
    zeros = {n: round(float((m.weight == 0).float().mean()), 4) for n, m in layers.items()}
    overall = sum(int((m.weight == 0).sum()) for m in layers.values()) / total
    return {"criterion": criterion, "schedule": schedule, "target": sparsity, "overall_sparsity": round(overall, 4),
            "layer_sparsity": zeros, "test_accuracy": _acc(model, data), "seconds": round(time.perf_counter() - t0, 1)}


def _snip_at_init(data, sparsity: float, args) -> dict:
    import torch

    from torchslim.models import create_model
    from torchslim.prune import PruneConfig, prune_
    from torchslim.training import TrainConfig, fit

    torch.manual_seed(args.seed)
    model = create_model("lenet-300-100")
    t0 = time.perf_counter()
    masks = prune_(model, PruneConfig(sparsity=sparsity, criterion="snip"), data=data)
    fit(model, data.train, data.val, TrainConfig(epochs=args.dense_epochs, lr=1e-3, schedule="cosine", keep="last"),
        seed=args.seed, after_step=masks.apply, log=lambda m: None)
    return {"criterion": "snip", "schedule": "at-init", "target": sparsity, "overall_sparsity": round(masks.overall(), 4),
            "layer_sparsity": {n: round(v, 4) for n, v in masks.sparsity().items()},
            "test_accuracy": _acc(model, data), "seconds": round(time.perf_counter() - t0, 1)}


def _lottery_cell(data, sparsity: float, args) -> dict:
    import torch

    from torchslim.models import create_model
    from torchslim.prune import PruneConfig, lottery_ticket
    from torchslim.training import TrainConfig

    rounds = 5
    rate = 1 - (1 - sparsity) ** (1 / rounds)
    torch.manual_seed(args.seed)
    model = create_model("lenet-300-100")
    cfg = PruneConfig(schedule="lottery", rounds=rounds, lottery_rate=rate, lottery_output_rate=rate, scope="global")
    t0 = time.perf_counter()
    result = lottery_ticket(model, cfg, data, TrainConfig(epochs=args.lottery_epochs, lr=1.2e-3, batch_size=60,
                                                           keep="last"), seed=args.seed, log=lambda m: None)
    return {"criterion": "magnitude", "schedule": "lottery", "target": sparsity,
            "overall_sparsity": round(result.masks.overall(), 4),
            "layer_sparsity": {n: round(v, 4) for n, v in result.masks.sparsity().items()},
            "rounds": rounds, "rate_per_round": round(rate, 4), "test_accuracy": _acc(model, data),
            "seconds": round(time.perf_counter() - t0, 1)}


def table(args) -> int:
    import torch

    from torchslim.models import create_model
    from torchslim.training import TrainConfig, fit

    t0 = time.perf_counter()
    data = _setup()
    torch.manual_seed(args.seed)
    dense = create_model("lenet-300-100")
    fit(dense, data.train, data.val, TrainConfig(epochs=args.dense_epochs, lr=1e-3, schedule="cosine", keep="last"),
        seed=args.seed, stage="dense", log=_log)
    dense_acc = _acc(dense, data)
    _log(f"dense test accuracy {dense_acc}%")
    rows = []
    for sparsity in args.sparsities:
        for criterion in CRITERIA:
            for schedule in SCHEDULES:
                rows.append(_one(dense, data, criterion, schedule, sparsity, args))
                r = rows[-1]
                _log(f"{100 * sparsity:.0f}% {criterion:>9} {schedule:>9}: {r['test_accuracy']:.2f}% "
                     f"(overall sparsity {100 * r['overall_sparsity']:.2f}%, {r['seconds']} s)")
        rows.append(_snip_at_init(data, sparsity, args))
        _log(f"{100 * sparsity:.0f}% snip at init: {rows[-1]['test_accuracy']:.2f}%")
        rows.append(_lottery_cell(data, sparsity, args))
        _log(f"{100 * sparsity:.0f}% lottery: {rows[-1]['test_accuracy']:.2f}%")
    result = {**_meta(args, t0), "model": "lenet-300-100", "data": "mnist", "dense_test_accuracy": dense_acc,
              "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prune-methods.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "prune-methods.md").write_text(_table_md(result, args))
    print(_table_md(result, args))
    return 0


def _table_md(result: dict, args) -> str:
    def cell(sparsity, criterion, schedule):
        hit = [r for r in result["rows"] if (r["target"], r["criterion"], r["schedule"]) ==
               (sparsity, criterion, schedule)]
        return f"{hit[0]['test_accuracy']:.2f}" if hit else "—"

    md = [f"# Pruning criteria × schedules, LeNet-300-100 on MNIST: `{result['command']}`", "",
          f"{result['seconds']} s wall, {result['cpu_seconds']} s CPU, {result['threads']} thread, seed {result['seed']}, torch "
          f"{result['versions']['torch']}, {result['machine']['platform']}.", "",
          f"Dense net: {args.dense_epochs} epochs of Adam 1e-3 (cosine): **{result['dense_test_accuracy']:.2f}%** test "
          f"accuracy. Every pruned variant starts from it with the same fine-tuning budget: {args.ft_epochs} epochs of "
          f"Adam {args.ft_lr:g} (cosine), last weights kept. oneshot: prune, then fine-tune; iterative: 3 rounds "
          f"(prune to 1 − (1 − s)^(k/3), fine-tune {max(1, args.ft_epochs // 3)} epoch(s)); gradual: AGP from 0 to s "
          f"over the first 2/3 of the steps, masks updated every {args.update_every} steps, then held. Sparsity is "
          f"global over all 266,200 weights; test accuracy in %, 10,000 MNIST test images.", "",
          "Two rows differ in kind: **apoz** and **entropy** prune whole hidden units (all 784 or 300 weights of a "
          "unit go together) and cannot score the classifier fc3 (it feeds no ReLU), so fc3 stays dense and fc1+fc2 "
          "are pruned slightly more to reach the same overall sparsity. **snip at init** prunes the untrained "
          "initialization (SNIP's intended use) and trains the sparse net with the dense net's budget "
          f"({args.dense_epochs} epochs). **lottery** (magnitude only): train from the init, prune, rewind the "
          f"survivors to the init, 5 rounds of global pruning to exactly s, {args.lottery_epochs} epochs per round "
          "(Adam 1.2e-3, batch 60) — it retrains from scratch, a much larger budget than the fine-tuning columns.", ""]
    for sparsity in args.sparsities:
        md += [f"## {100 * sparsity:.0f}% sparsity ({100 * (1 - sparsity):.0f}% of the weights kept)", "",
               "| criterion | oneshot + fine-tune | iterative (3 rounds) | gradual (AGP) | lottery (rewind to init) |",
               "|---|---:|---:|---:|---:|"]
        for criterion in CRITERIA:
            note = " (whole units; fc3 dense)" if criterion in UNIT_CRITERIA else ""
            md.append(f"| {criterion}{note} | " + " | ".join(cell(sparsity, criterion, s) for s in
                                                             [*SCHEDULES, "lottery"]) + " |")
        md.append(f"| snip at init, trained {args.dense_epochs} epochs | {cell(sparsity, 'snip', 'at-init')} | | | |")
        md.append("")
    md += ["Per-layer sparsities, seconds and the exact overall sparsity of every cell are in "
           "`prune-methods.json`.", ""]
    return "\n".join(md)


# ------------------------------------------------------------------------------------------------------------ lottery
def lottery(args) -> int:
    import torch

    from torchslim.models import create_model
    from torchslim.prune import Masks, PruneConfig, lottery_ticket
    from torchslim.training import TrainConfig, fit

    t0 = time.perf_counter()
    data = _setup()
    train = TrainConfig(epochs=args.epochs, lr=1.2e-3, batch_size=60)  # keep="best": early stopping by validation
    curves: dict[str, list[dict]] = {}
    masks_by_round: dict[int, dict] = {}

    def run(name: str, rewind_epoch: int) -> None:
        torch.manual_seed(args.seed)
        model = create_model("lenet-300-100")
        cfg = PruneConfig(schedule="lottery", rounds=args.rounds, lottery_rate=0.2, lottery_output_rate=0.1,
                          rewind_epoch=rewind_epoch)
        points = curves.setdefault(name, [])

        def after_round(k, m, masks):
            kept = sum(int((l.weight != 0).sum()) for l in _layers(m).values())
            total = sum(l.weight.numel() for l in _layers(m).values())
            points.append({"round": k, "remaining": round(kept / total, 4), "test_accuracy": _acc(m, data)})
            if name == "rewind to init" and masks is not None:
                masks_by_round[k] = {n: t.clone() for n, t in masks.masks.items()}
            _log(f"[{name}] round {k}: {100 * kept / total:.2f}% of the weights, test {points[-1]['test_accuracy']}%")

        result = lottery_ticket(model, cfg, data, train, seed=args.seed, log=lambda m: None, after_round=after_round)
        for point, record in zip(points, result.rounds):
            point["best_epoch"] = record["best_epoch"]

    run("rewind to init", 0)
    if args.rewind_epoch:
        run(f"rewind to epoch {args.rewind_epoch}", args.rewind_epoch)
    # The control: each round's mask (from the θ_0 run), trained from a fresh random init. Kept here rather than
    # PruneConfig(reinit=True): lottery_ticket re-initializes only its last round, and this curve needs every round.
    points = curves.setdefault("random re-init", [])
    for k, masks in sorted(masks_by_round.items()):
        torch.manual_seed(args.seed + 1000)
        model = create_model("lenet-300-100")
        held = Masks(_layers(model), {n: t.clone() for n, t in masks.items()})
        held.apply()
        fitted = fit(model, data.train, data.val, train, seed=args.seed + k, after_step=held.apply,
                     log=lambda m: None)
        remaining = 1 - held.overall()
        points.append({"round": k, "remaining": round(remaining, 4), "test_accuracy": _acc(model, data),
                       "best_epoch": fitted.best_epoch})
        _log(f"[random re-init] round {k}: {100 * remaining:.2f}% of the weights, test {points[-1]['test_accuracy']}%")

    result = {**_meta(args, t0), "model": "lenet-300-100", "data": "mnist", "curves": curves,
              "paper": "Frankle & Carbin 2019: winning tickets match the dense net down to ~3.6% of the weights "
                       "(train faster down to ~21%); random re-initialization degrades steadily"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lottery.json").write_text(json.dumps(result, indent=2) + "\n")
    _lottery_plot(curves, RESULTS / "lottery.png")
    md = _lottery_md(result, args)
    (RESULTS / "lottery.md").write_text(md)
    print(md)
    return 0


def _lottery_plot(curves: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for (name, points), style in zip(curves.items(), ("o-", "s-", "^--")):
        ax.plot([100 * p["remaining"] for p in points], [p["test_accuracy"] for p in points], style, label=name,
                markersize=4)
    dense = curves["rewind to init"][0]["test_accuracy"]
    ax.axhline(dense, color="grey", linewidth=0.8, linestyle=":", label=f"dense ({dense:.2f}%)")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = [100, 51.3, 26.3, 13.5, 7.0, 3.6]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("% of weights remaining (log scale)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Lottery tickets, LeNet-300-100 on MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _lottery_md(result: dict, args) -> str:
    curves = result["curves"]
    names = list(curves)
    by_round = {name: {p["round"]: p for p in pts} for name, pts in curves.items()}
    md = [f"# Lottery tickets (Frankle & Carbin 2019), LeNet-300-100 on MNIST: `{result['command']}`", "",
          f"{result['seconds']} s wall, {result['cpu_seconds']} s CPU, {result['threads']} thread, seed {result['seed']}, torch "
          f"{result['versions']['torch']}, {result['machine']['platform']}.", "",
          f"Each round trains {args.epochs} epochs (Adam 1.2e-3, batch 60, the best validation epoch kept — the "
          f"paper's early stopping at epoch granularity; the paper trains 50K iterations ≈ 55 epochs), then prunes 20% "
          f"of each layer's remaining weights (10% of the output layer's) by magnitude and rewinds the survivors. "
          f"Random re-init: the same masks as the θ_0 run, trained from a fresh initialization. Test accuracy in %.",
          "", f"Paper: {result['paper']}.", "", "![accuracy vs weights remaining](lottery.png)", "",
          "| round | % weights remaining | " + " | ".join(names) + " |", "|---:|---:|" + "---:|" * len(names)]
    for k in range(args.rounds + 1):
        remaining = by_round["rewind to init"][k]["remaining"]
        cells = [f"{by_round[n][k]['test_accuracy']:.2f} (ep {by_round[n][k]['best_epoch']})" if k in by_round[n]
                 else "—" for n in names]
        md.append(f"| {k} | {100 * remaining:.1f} | " + " | ".join(cells) + " |")
    md += ["", "(ep N): the epoch whose weights were kept (best validation accuracy).", ""]
    return "\n".join(md)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="criteria × schedules at 90%% and 95%% sparsity")
    t.add_argument("--dense-epochs", type=int, default=10)
    t.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning budget of every oneshot/iterative/gradual cell")
    t.add_argument("--ft-lr", type=float, default=5e-4)
    t.add_argument("--update-every", type=int, default=100, help="gradual: optimizer steps between mask updates")
    t.add_argument("--lottery-epochs", type=int, default=5, help="lottery column: epochs per round (5 rounds)")
    t.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    t.add_argument("--seed", type=int, default=0)
    lt = sub.add_parser("lottery", help="the Frankle & Carbin curve")
    lt.add_argument("--epochs", type=int, default=8, help="training epochs per round")
    lt.add_argument("--rounds", type=int, default=15, help="15 rounds of 20%% per layer leave 3.6%% of the weights")
    lt.add_argument("--rewind-epoch", type=int, default=1, help="also run late rewinding to this epoch (0: skip)")
    lt.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    return table(args) if args.command == "table" else lottery(args)


if __name__ == "__main__":
    sys.exit(main())
