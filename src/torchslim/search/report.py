"""What a search leaves behind: the trial table, the Pareto front (plots with the dominated trials shown faintly),
and the recommended recipe — the best trial on the first objective among those that meet every constraint."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torchslim.io import atomic_path, atomic_write_json, atomic_write_text
from torchslim.recipe import dump_recipe, validate_recipe
from torchslim.search.space import Space


def collect(study, space: Space) -> list[dict]:
    """One row per trial: its state, values, numbers, objectives, whether it met the constraints, its folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("interrupted") or t.state.name == "WAITING":
            continue  # cut off by a stop and run again under another number; or queued, not started
        state = t.state.name.lower()
        if state == "pruned":
            state = "stopped early"
        values = attrs.get("values") or dict(t.params)
        objectives = list(t.values) if t.values is not None else None
        violations = attrs.get("constraints")
        span = None
        if t.datetime_start and t.datetime_complete:
            span = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append({"number": t.number, "state": state, "values": values, "numbers": attrs.get("numbers") or {},
                     "objectives": objectives, "constraints": violations,
                     "feasible": bool(objectives) and all(v <= 0 for v in violations or []),
                     "folder": attrs.get("folder"), "seconds": attrs.get("seconds", span),
                     "note": attrs.get("error") or attrs.get("stopped") or (
                         "cut off: its worker stopped" if state == "fail" else None),
                     "start": t.datetime_start.timestamp() if t.datetime_start else None,
                     "end": t.datetime_complete.timestamp() if t.datetime_complete else None})
    return rows


def pareto_front(rows: list[dict], space: Space) -> list[int]:
    """Trial numbers not dominated on the objectives, among the complete trials that meet every constraint (all the
    complete ones when none does)."""
    done = [r for r in rows if r["state"] == "complete" and r["objectives"]]
    pool = [r for r in done if r["feasible"]] or done
    signs = [1.0 if m.lower_is_better else -1.0 for m in space.objectives]  # as costs: lower is better

    def cost(r):
        return [s * v for s, v in zip(signs, r["objectives"])]

    front = []
    for r in pool:
        c = cost(r)
        if not any(all(a <= b for a, b in zip(cost(o), c)) and cost(o) != c for o in pool):
            front.append(r["number"])
    return front


def recommend(rows: list[dict], front: list[int], space: Space) -> dict | None:
    """The front trial that meets every constraint and is best on the first objective (then the second...)."""
    pool = [r for r in rows if r["number"] in front and r["feasible"]]
    if not pool:
        return None
    signs = [1.0 if m.lower_is_better else -1.0 for m in space.objectives]
    return min(pool, key=lambda r: [s * v for s, v in zip(signs, r["objectives"])])


def trials_per_hour(rows: list[dict]) -> float | None:
    """Trials finished (complete, stopped early or failed on their own) per hour of wall time, from the first
    trial's start to the last one's end."""
    ends = [r for r in rows if r["end"] is not None and r["start"] is not None]
    if len(ends) < 2:
        return None
    span = max(r["end"] for r in ends) - min(r["start"] for r in ends)
    return 3600.0 * len(ends) / span if span > 0 else None


def write_search_report(study, space: Space, out: Path, seconds: float | None = None, workers: int = 1) -> dict:
    """search.json, search.md, pareto.png and recommended.yaml in `out`; return the summary (search.json)."""
    rows = collect(study, space)
    front = pareto_front(rows, space)
    best = recommend(rows, front, space)
    summary: dict[str, Any] = {
        "study": study.study_name, "objectives": [m.label for m in space.objectives],
        "directions": ["minimize" if m.lower_is_better else "maximize" for m in space.objectives],
        "constraints": [c.text for c in space.constraints], "artifact": space.artifact or "(the last one)",
        "params": {p.path: p.describe() for p in space.params}, "trials": rows, "pareto_front": front,
        "recommended": best["number"] if best else None, "workers": workers, "seconds": seconds,
        "trials_per_hour": trials_per_hour(rows)}
    if best is not None:
        raw = space.trial_recipe(best["values"])
        raw["evaluate"]["split"] = space.recipe.evaluate.split  # the recipe as written judges on its own split
        recipe = validate_recipe(raw, source="recommended")
        header = (f"# Recommended by `torchslim search` (study '{study.study_name}'): trial {best['number']}, "
                  + ", ".join(f"{m.label} {v:.4g}" for m, v in zip(space.objectives, best["objectives"]))
                  + f".\n# torchslim run {Path(best['folder']) / 'recipe.yaml'} repeats that trial exactly (it "
                    f"loads the search's teacher); this file trains its own.\n")
        atomic_write_text(out / "recommended.yaml", header + dump_recipe(recipe))
    plot = _plot(rows, front, space, out / "pareto.png")
    summary["plot"] = plot.name if plot else None
    atomic_write_json(out / "search.json", summary)
    atomic_write_text(out / "search.md", markdown(summary, space))
    return summary


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.3g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def table(summary: dict, space: Space) -> str:
    """The trial table as Markdown: front trials marked ★, the recommended one ◆."""
    paths = list(summary["params"])
    metrics = list(dict.fromkeys(summary["objectives"] + [c.metric.label for c in space.constraints]))
    head = ["trial", "state"] + [p.split(".", 1)[1] if p.startswith("stages.") else p for p in paths] + metrics + \
           ["meets constraints", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(summary["trials"], key=lambda r: r["number"]):
        mark = "◆" if r["number"] == summary["recommended"] else "★" if r["number"] in summary["pareto_front"] else ""
        cells = [f"{r['number']}{mark}", r["state"] + (f": {r['note'][:80]}" if r["note"] else "")]
        off = {p.split(".")[1] for p in paths if p.count(".") == 1 and r["values"].get(p) is False}
        cells += ["—" if p.split(".")[0] == "stages" and p.count(".") > 1 and p.split(".")[1] in off
                  else _value_text(r["values"].get(p)) for p in paths]
        cells += [_num(r["numbers"].get(m)) for m in metrics]
        cells += ["yes" if r["feasible"] else "no" if r["objectives"] else "—",
                  f"{r['seconds']:.0f}" if r["seconds"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(summary: dict, space: Space) -> str:
    n = len(summary["trials"])
    states: dict[str, int] = {}
    for r in summary["trials"]:
        states[r["state"].split(":")[0]] = states.get(r["state"].split(":")[0], 0) + 1
    lines = [f"# Search: study '{summary['study']}'", "",
             f"Objectives: {', '.join(f'{o} ({d})' for o, d in zip(summary['objectives'], summary['directions']))}, "
             f"of artifact {summary['artifact']}. Constraints: {'; '.join(summary['constraints']) or 'none'}.",
             "", "Searched: " + "; ".join(f"`{p}` {d}" for p, d in summary["params"].items()) + ".", "",
             f"{n} trials (" + ", ".join(f"{v} {k}" for k, v in states.items()) + ")"
             + (f"; {summary['trials_per_hour']:.1f} trials per hour with {summary['workers']} worker(s)"
                if summary["trials_per_hour"] else "") + ". ★ Pareto front, ◆ recommended. Trial 0 is the recipe as "
             "written when its values lie in the space.", "", table(summary, space), ""]
    best = summary["recommended"]
    if best is not None:
        row = next(r for r in summary["trials"] if r["number"] == best)
        lines += [f"Recommended: trial {best} — `recommended.yaml`; "
                  f"`torchslim run {Path(row['folder']) / 'recipe.yaml'}` repeats it.", ""]
    else:
        lines += ["No trial met every constraint: nothing is recommended.", ""]
    if summary.get("plot"):
        lines += [f"![Pareto front]({summary['plot']})", ""]
    return "\n".join(lines)


def _plot(rows: list[dict], front: list[int], space: Space, path: Path) -> Path | None:
    """Primary metric vs latency and vs file size: front trials solid and labelled, dominated ones faint, trials
    that miss a constraint as crosses."""
    done = [r for r in rows if r["state"] == "complete" and r["numbers"]]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = next((m.label for m in space.objectives if m.name == "latency_ms"), None)
    if lat is None:
        lat = next((k for k in done[0]["numbers"] if k.startswith("latency_ms@")), None)
    primary = done[0]["numbers"]["primary_metric"]
    axes_x = [x for x in (lat, "file_bytes") if x]
    fig, axes = plt.subplots(1, len(axes_x), figsize=(6 * len(axes_x), 4.5), squeeze=False)
    for ax, x in zip(axes[0], axes_x):
        for r in done:
            xv, yv = r["numbers"].get(x), r["numbers"].get(primary)
            if xv is None or yv is None:
                continue
            on_front = r["number"] in front
            if not r["feasible"]:
                ax.scatter(xv, yv, marker="x", color="0.6", alpha=0.5)
            else:
                ax.scatter(xv, yv, color="C0" if on_front else "C0", alpha=1.0 if on_front else 0.2,
                           edgecolor="k" if on_front else "none", s=40 if on_front else 25)
            if on_front or r["number"] == 0:
                ax.annotate(str(r["number"]), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        pts = sorted((r["numbers"][x], r["numbers"][primary]) for r in done if r["number"] in front
                     and r["numbers"].get(x) is not None)
        if len(pts) > 1 and x == lat:
            ax.plot(*zip(*pts), color="C0", lw=1, alpha=0.6)
        ax.set_xlabel(x.replace("latency_ms@", "latency, ms at batch ").replace("file_bytes", "file size, bytes"))
        ax.set_ylabel(primary)
        ax.grid(alpha=0.3)
    fig.suptitle("search: Pareto front solid (numbers are trials), dominated faint, × misses a constraint",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
