"""Reproduce a published result with a shipped recipe, check the issue's targets, and write JSON + markdown.

    python bench/reproduce.py lenet5     # recipes/mnist-lenet5.yaml: prune 90% + static int8, size and speed targets
    python bench/reproduce.py hinton     # recipes/mnist-hinton.yaml: Hinton et al. 2015, section 3

Results go to bench/results/<name>.json and .md (committed); run folders to bench/out/<name> (not committed).
Needs TORCHSLIM_DATA (or ../shared/data beside the repo).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _by_name(report: dict) -> dict:
    return {a["name"]: a for a in report["artifacts"]}


def check_lenet5(report: dict) -> list[dict]:
    a = _by_name(report)
    t, fp32, int8, onnx = a["teacher"], a["prune"], a["int8"], a["pruned-onnx"]
    drop = 100 * (t["accuracy"] - int8["accuracy"])
    size = t["file_bytes"] / int8["file_bytes_lzma"]
    vs_ort = onnx["latency_ms"]["1"]["p50"] / int8["latency_ms"]["1"]["p50"]
    vs_eager = fp32["latency_ms"]["1"]["p50"] / int8["latency_ms"]["1"]["p50"]
    return [
        {"what": "top-1 drop of int8 vs teacher (points)", "value": round(drop, 3), "target": "<= 0.3", "ok": drop <= 0.3},
        {"what": "teacher fp32 file / lzma'd int8 file", "value": round(size, 2), "target": ">= 10", "ok": size >= 10},
        {"what": "int8 ORT speedup vs ORT fp32, batch 1 (p50 ratio)", "value": round(vs_ort, 2), "target": ">= 1.5",
         "ok": vs_ort >= 1.5},
        {"what": "int8 ORT speedup vs PyTorch fp32 eager, batch 1 (p50 ratio)", "value": round(vs_eager, 2),
         "target": ">= 4", "ok": vs_eager >= 4},
    ]


def check_hinton(report: dict) -> list[dict]:
    a = _by_name(report)
    t, s, d = a["teacher"]["errors"], a["student-labels"]["errors"], a["student-distilled"]["errors"]
    return [
        {"what": "teacher test errors (paper: 67)", "value": t, "target": "-", "ok": True},
        {"what": "student on labels, test errors (paper: 146)", "value": s, "target": "-", "ok": True},
        {"what": "distilled student, test errors (paper: 74)", "value": d, "target": "<= 80", "ok": d <= 80},
        {"what": "distilled errors / label-only errors", "value": round(d / s, 3), "target": "<= 0.70",
         "ok": d <= 0.7 * s},
    ]


EXPERIMENTS = {
    "lenet5": ("recipes/mnist-lenet5.yaml", check_lenet5),
    "hinton": ("recipes/mnist-hinton.yaml", check_hinton),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    from torchslim import TorchslimError, load_recipe, run_recipe
    from torchslim.evaluation import render_markdown

    recipe_path, check = EXPERIMENTS[args.experiment]
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(ROOT / recipe_path, args.overrides)
        report = run_recipe(recipe, ROOT / "bench" / "out" / args.experiment, log=lambda m: print(m, flush=True))
    except TorchslimError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    targets = check(report)
    result = {
        "experiment": args.experiment, "recipe": recipe_path, "overrides": args.overrides,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": round(time.perf_counter() - t0, 1),
        "machine": report.get("machine", {"platform": platform.platform()}), "threads": report["threads"],
        "targets": targets, "report": report,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.experiment}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.experiment}: `{result['command']}`", "",
             f"Recipe `{recipe_path}`{' with ' + ' '.join(args.overrides) if args.overrides else ''}; "
             f"{result['seconds']} s on {result['machine'].get('processor', '?')}, {report['threads']} thread(s).", "",
             "| target | value | wanted | met |", "|---|---|---|---|"]
    lines += [f"| {t['what']} | {t['value']} | {t['target']} | {'yes' if t['ok'] else 'NO'} |" for t in targets]
    lines += ["", render_markdown(report)]
    (out / f"{args.experiment}.md").write_text("\n".join(lines) + "\n")
    for t in targets:
        print(f"{'ok ' if t['ok'] else 'NO '} {t['what']}: {t['value']} (target {t['target']})")
    return 0 if all(t["ok"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
