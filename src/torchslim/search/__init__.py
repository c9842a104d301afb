"""`torchslim search`: the best recipe under a budget. A recipe's `search:` block names the fields that may vary,
the report metrics to optimize and the constraints that must hold; Optuna proposes trials, each an ordinary recipe
run in its own folder, and workers (local processes, or other machines sharing the storage) run them in parallel.

    >>> from torchslim.search import run_search                                          # doctest: +SKIP
    >>> summary = run_search("recipes/fashion-mnist-search.yaml", "runs/search", workers=2)   # doctest: +SKIP

The schema (`torchslim.search.spec`) is imported by the recipe; the rest loads on first use, so that reading a
recipe never imports Optuna.
"""
from __future__ import annotations

from typing import Any

__all__ = ["run_search", "build_space", "write_search_report", "SearchSpec"]


def __getattr__(name: str) -> Any:
    if name == "run_search":
        from torchslim.search.run import run_search

        return run_search
    if name == "build_space":
        from torchslim.search.space import build_space

        return build_space
    if name == "write_search_report":
        from torchslim.search.report import write_search_report

        return write_search_report
    if name == "SearchSpec":
        from torchslim.search.spec import SearchSpec

        return SearchSpec
    raise AttributeError(f"module 'torchslim.search' has no attribute {name!r}")
