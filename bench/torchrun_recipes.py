"""Every shipped recipe under `torchrun --nproc_per_node=2`, to the end (evaluation and report), on a small budget.

What is checked is that the data-parallel run finishes — every rank meets the others after rank-0-only stages such as
export and quantization — not the accuracy: each recipe is shrunk (every `epochs` to 1, DAFL iterations to 4, the
training split to 2,000 rows) so that all of them run in minutes. The shrunk recipe of each run is kept beside its
report in bench/out/torchrun/<recipe>/.

    .venv/bin/python bench/torchrun_recipes.py            # ~10 min on 2 cores; writes bench/results/torchrun-recipes.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))


def shrink(node):
    """Every `epochs` to 1 and every `iterations` to 4, anywhere in the recipe."""
    if isinstance(node, dict):
        return {k: (1 if k == "epochs" else 4 if k == "iterations" else shrink(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [shrink(v) for v in node]
    return node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "torchrun"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for path in RECIPES:
        recipe = shrink(yaml.safe_load(path.read_text()))
        recipe.setdefault("data", {})["limit_train"] = 2000
        recipe["evaluate"] = {**recipe.get("evaluate", {}), "max_seconds": 0.05}
        out = Path(args.out) / path.stem
        out.mkdir(parents=True, exist_ok=True)
        small = out / "recipe-small.yaml"
        small.write_text(yaml.safe_dump(recipe, sort_keys=False))
        t0 = time.perf_counter()
        run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "torchslim", "run", str(small),
                              "--out", str(out / "run"), "--quiet", "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
        report = out / "run" / "report.json"
        names = [a["name"] for a in json.loads(report.read_text())["artifacts"]] if report.is_file() else []
        rows.append({"recipe": str(path.relative_to(ROOT)), "exit_code": run.returncode, "artifacts": names,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "error": run.stderr.strip().splitlines()[-1] if run.returncode else None})
        print(json.dumps(rows[-1]), flush=True)
    results = Path(args.results)
    (results / "torchrun-recipes.json").write_text(json.dumps({"command": " ".join(sys.argv), "runs": rows}, indent=2)
                                                  + "\n")
    lines = ["# Every shipped recipe under torchrun --nproc_per_node=2", "",
             f"`{Path(sys.executable).name} bench/torchrun_recipes.py`: each recipe shrunk (epochs 1, DAFL iterations "
             "4, 2,000 training rows), run to the end with 2 processes (gloo, 1 thread each).", "",
             "| recipe | exit code | artifacts evaluated | seconds |", "|---|---|---|---|"]
    lines += [f"| `{r['recipe']}` | {r['exit_code']} | {', '.join(r['artifacts']) or r['error']} | {r['seconds']} |"
              for r in rows]
    (results / "torchrun-recipes.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
