"""Command line: `torchslim run|validate|search|list|compare`. `main(argv) -> int` is callable from tests."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from torchslim import __version__
from torchslim.errors import TorchslimError

LISTABLE = ("models", "datasets", "tasks", "stages", "observers", "criteria", "losses", "channel-importances")


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every other user error
        raise _ArgumentError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="torchslim", description="Distill, prune and quantize a PyTorch model, "
                                "and measure every artifact in the runtime it ships in.")
    p.add_argument("--version", action="version", version=f"torchslim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run a recipe and write the report")
    run.add_argument("recipe", help="path to a recipe YAML file")
    run.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe field, e.g. --set stages.distill.temperature=8 (repeatable)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out: finished stages are reloaded, the interrupted one "
                            "continues from its last finished epoch")
    again.add_argument("--force", action="store_true",
                       help="start over in an --out that holds an earlier run, replacing its files")
    run.add_argument("--quiet", action="store_true", help="print only the final table")
    val = sub.add_parser("validate", help="check a recipe, load its data and build its models (no training); "
                                          "print the recipe with every default filled in")
    val.add_argument("recipe")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lst = sub.add_parser("list", help="list what a recipe can name")
    lst.add_argument("what", help=f"one of: {', '.join(LISTABLE)}")
    srch = sub.add_parser("search", help="search the recipe's `search:` space with Optuna: trials in parallel, a "
                                         "Pareto front, the recommended recipe; run again to continue a stopped "
                                         "search")
    srch.add_argument("recipe", help="a recipe with a `search:` block")
    srch.add_argument("--out", help="search folder (default: runs/<recipe name>)")
    srch.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study (default 1)")
    srch.add_argument("--trials", type=int, help="trials in all, counting finished ones (default: search.trials)")
    srch.add_argument("--storage", help="an Optuna database URL shared by several machines, e.g. "
                                        "postgresql://user:pass@host/db (default: sqlite in --out)")
    srch.add_argument("--study", help="the study's name in the storage (default: the recipe's file name)")
    srch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    srch.add_argument("--force", action="store_true", help="start over in an --out that holds another search")
    srch.add_argument("--report", action="store_true", help="only write the report of the trials so far")
    cmp = sub.add_parser("compare", help="one table over the artifacts of several runs, and compare.html with them "
                                         "on the same accuracy-vs-size and accuracy-vs-latency axes")
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each holds report.json)")
    cmp.add_argument("--out", default="compare.html", help="the HTML page to write (default: ./compare.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _dispatch(args)
    except (_ArgumentError, TorchslimError) as e:
        # One line, whatever the message echoes back from the input (a value may itself contain a newline).
        print("torchslim: error: " + " ".join(str(e).splitlines()) if str(e).strip() else "torchslim: error",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchslim: interrupted" + _resume_hint(args), file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from torchslim.recipe import dump_recipe, load_recipe

    if args.command == "list":
        return _list(args.what)
    if args.command == "compare":
        return _compare(args.runs, args.out)
    if args.command == "search":
        return _search(args)
    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "validate":
        from torchslim.pipeline import check_recipe

        summary = check_recipe(recipe)
        if recipe.search is not None:
            from torchslim.search.space import build_space

            space = build_space(recipe, summary["task"])
            summary["search"] = f"{len(space.params)} parameters, objectives " + \
                ", ".join(m.label for m in space.objectives)
        print(dump_recipe(recipe), end="")
        print(f"# ok: {summary}")
        return 0
    from torchslim.evaluation import print_table
    from torchslim.pipeline import run_recipe

    from torchslim.pipeline.runner import check_out

    out = _out(args)
    check_out(out, resume=args.resume, force=args.force)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    report = run_recipe(recipe, out, log=log, resume=args.resume)
    if report is None:  # a torchrun rank other than 0: rank 0 prints and writes the report
        return 0
    print_table(report)
    print(f"report: {out / 'report.md'}  {out / 'report.html'}  {out / 'report.json'}")
    return 0


def _out(args) -> Path:
    return Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem


def _search(args) -> int:
    from torchslim.search.run import report_only, run_search
    from torchslim.search.report import table

    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    if args.report:
        summary, space = report_only(args.recipe, out, args.overrides, args.storage, args.study)
    else:
        summary, space = run_search(args.recipe, out, args.overrides, workers=args.workers, trials=args.trials,
                                    storage=args.storage, study=args.study, force=args.force,
                                    log=lambda msg: print(msg, flush=True))
    print(table(summary, space))
    best = summary["recommended"]
    print(f"recommended: trial {best}: {out / 'recommended.yaml'}" if best is not None else
          "no trial met every constraint: nothing recommended")
    print(f"search report: {out / 'search.md'}  {out / 'pareto.png'}  {out / 'search.json'}")
    return 0


def _resume_hint(args) -> str:
    """'; to continue: torchslim run ... --resume' when an interrupted `run` left a run folder behind."""
    if args is not None and getattr(args, "command", None) == "search":
        words = ["torchslim", "search", args.recipe] + (["--out", args.out] if args.out else [])
        return f"; finished trials are kept: run {shlex.join(words)} again to continue"
    if args is None or getattr(args, "command", None) != "run" or not (_out(args) / "recipe.yaml").is_file():
        return ""
    words = ["torchslim", "run", args.recipe, "--out", str(_out(args))]
    for item in args.overrides:
        words += ["--set", item]
    return f"; to continue: {shlex.join(words + ['--resume'])}"


def _compare(runs: list[str], out: str) -> int:
    from torchslim.compare import compare_runs

    comparison = compare_runs(runs, out=out)
    print(comparison.table())
    for warning in comparison.warnings:  # also in the table's last lines and the page's banner: stderr keeps them
        print(f"torchslim: warning: {warning}", file=sys.stderr)  # visible when stdout goes to a file
    print(f"comparison: {comparison.html_path}")
    return 0


def _list(what: str) -> int:
    from torchslim.errors import unknown_choice

    if what == "models":
        from torchslim.models import MODELS as reg
    elif what == "datasets":
        from torchslim.data import DATASETS as reg
    elif what == "tasks":
        from torchslim.tasks import TASKS as reg
    elif what == "stages":
        from torchslim.pipeline import STAGES as reg
    elif what == "observers":
        from torchslim.quant import OBSERVERS as reg
    elif what == "criteria":
        from torchslim.prune import CRITERIA as reg
    elif what == "losses":
        from torchslim.distillation import LOSSES as reg
    elif what == "channel-importances":
        from torchslim.prune.structured import CHANNEL_IMPORTANCE as reg
    else:
        raise unknown_choice("list target", what, LISTABLE)
    for name in reg.names():
        print(f"{name:<20} {reg.help(name)}")
    return 0


def entry() -> None:
    sys.exit(main())
