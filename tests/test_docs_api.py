"""docs/api.md stays true: it lists every public name, lists nothing that is gone, and its runnable examples run.

Sections are the level-2 headings that name a package (``## `torchslim.prune` — ...``); an entry is a bullet that
starts with a bold code span (``- **`prune_(model, cfg, ...)`**``), or for the top level a table row
(``| `ts.prune_(...)` |``). A python code block whose first line starts with ``# runnable`` is executed as a script
in a fresh temporary folder, with ``TORCHSLIM_DATA`` set, in a process of its own (so the registrations an
"adding a method" example makes do not leak into other tests).
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torchslim

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
PACKAGES = ("torchslim", "torchslim.tasks", "torchslim.data", "torchslim.models", "torchslim.training",
            "torchslim.distillation", "torchslim.prune", "torchslim.quant", "torchslim.export",
            "torchslim.evaluation", "torchslim.pipeline", "torchslim.search")
RUNNABLE = "# runnable"
BLOCK_TIMEOUT_S = 300  # a block takes a few seconds; this only stops a hang

_HEADING = re.compile(r"^## `(torchslim(?:\.\w+)*)`", re.MULTILINE)
_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENTRY = re.compile(r"^- \*\*`([A-Za-z_]\w*)", re.MULTILINE)
_TOP_ROW = re.compile(r"^\| `ts\.(\w+)", re.MULTILINE)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, str]:
    """{package: the text from its `## `package`` heading to the next level-2 heading}."""
    heads = list(_HEADING.finditer(text))
    out = {}
    for head in heads:
        rest = text[head.end():]
        nxt = re.search(r"^## ", rest, re.MULTILINE)
        out[head.group(1)] = rest[: nxt.start()] if nxt else rest
    return out


def _entries(section: str, top_level: bool) -> list[str]:
    """The names a section has entries for: bullets ``- **`name(...)`**``, and at the top level table rows
    ``| `ts.name(...)` |``."""
    return _ENTRY.findall(section) + (_TOP_ROW.findall(section) if top_level else [])


def _runnable_blocks() -> list[tuple[int, str]]:
    text = _text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)
            if m.group(1).startswith(RUNNABLE)]


def test_every_package_has_a_section():
    missing = [p for p in PACKAGES if p not in _sections(_text())]
    assert not missing, f"docs/api.md has no '## `package`' section for: {', '.join(missing)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_documented_in_its_section(package):
    module = importlib.import_module(package)
    section = _sections(_text()).get(package, "")
    entries = set(_entries(section, top_level=package == "torchslim"))
    missing = [n for n in module.__all__ if n not in entries]
    how = "a table row | `ts.name(signature)` | `example` |" if package == "torchslim" else \
        "a bullet - **`name(signature)`** — one sentence.\\ then `example` on the next line"
    assert not missing, (f"docs/api.md, section `{package}`: no entry for {', '.join(missing)}; every name in "
                         f"{package}.__all__ gets {how}")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_documented_entry_still_exists(package):
    module = importlib.import_module(package)
    section = _sections(_text()).get(package, "")
    names = _entries(section, top_level=package == "torchslim")
    assert names, f"docs/api.md, section `{package}`: no entries found"
    # load_recipe and Recipe are documented with the pipeline, but live at the top level (torchslim.recipe).
    gone = [n for n in names if not hasattr(module, n) and not hasattr(torchslim, n)]
    assert not gone, f"docs/api.md, section `{package}` documents names that {package} no longer has: {gone}"


def test_the_recipe_entry_points_are_documented():
    section = _sections(_text())["torchslim.pipeline"]
    for name in ("load_recipe", "run_recipe", "Recipe", "STAGES", "Stage"):
        assert name in _entries(section, top_level=False), f"docs/api.md: the pipeline section lacks {name}"


def test_the_runnable_examples_are_there():
    blocks = [code for _, code in _runnable_blocks()]
    assert len(blocks) >= 5, f"expected at least 5 '{RUNNABLE}' blocks in docs/api.md, found {len(blocks)}"
    quick_start = blocks[0]
    for call in ("ts.load_dataset(\"digits\")", "ts.train(", "ts.distill(", "ts.prune_(", "ts.quantize(",
                 "print(ts.evaluate("):
        assert call in quick_start, f"the quick start of docs/api.md no longer shows {call}"


@pytest.mark.slow
@pytest.mark.parametrize("line, code", [pytest.param(line, code, id=f"line{line}")
                                        for line, code in _runnable_blocks()])
def test_runnable_block_runs(line, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "TORCHSLIM_DATA": os.environ.get("TORCHSLIM_DATA", str(SHARED_DATA)),
           "OMP_NUM_THREADS": "1",  # 2 shared cores: one thread per example is fastest and steadiest
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    # Warnings are errors, as in the suite, except deprecation notices (PyTorch's ONNX exporter gives some).
    proc = subprocess.run([sys.executable, "-W", "error", "-W", "ignore::DeprecationWarning", str(script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, (f"docs/api.md, the runnable block at line {line} failed "
                                  f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
