"""Command line: `torchslim run|validate|list|compare`. `main(argv) -> int` is callable from tests."""
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
    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "validate":
        from torchslim.pipeline import check_recipe

        summary = check_recipe(recipe)
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


def _resume_hint(args) -> str:
    """'; to continue: torchslim run ... --resume' when an interrupted `run` left a run folder behind."""
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
