"""bench/ and examples/ use torchslim's public API only, and every name torchslim exports resolves.

The public API is what ``torchslim`` exports (``torchslim.__all__``) and what each family package exports from its
``__init__`` (FAMILIES). A script may import from a public module that does not re-export a name (e.g.
``torchslim.io.atomic_path``), but never a private name (``_machine``), never through a private module
(``torchslim.quant._x``), and never from a deeper module when a public package above it exports the same object
(``torchslim.prune.structured.prune_channels_`` is ``torchslim.prune.prune_channels_``; ``torchslim.io.load_checkpoint``
is ``torchslim.load_checkpoint``). Attribute access on an imported torchslim module (``ts.evaluation._machine``) is
held to the same rules.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import torchslim

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("examples/*.py")])
FAMILIES = ("prune", "quant", "distillation", "export", "evaluation", "training", "data", "models", "tasks",
            "search")
PUBLIC_PACKAGES = ("torchslim", *(f"torchslim.{f}" for f in FAMILIES))


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):  # a parent that is a plain module, not a package
        return False


def _check(module: str, name: str) -> str | None:
    """Why ``from {module} import {name}`` is not public API, or None when it is."""
    private = [p for p in [*module.split("."), name] if _private(p)]
    if private:
        return f"private name {'.'.join(private)!r} in {module}.{name}"
    if module in PUBLIC_PACKAGES:
        return None
    for package in sorted(PUBLIC_PACKAGES, key=len, reverse=True):  # the nearest package first: torchslim.prune
        if not module.startswith(package + "."):
            continue
        exported = importlib.import_module(package)
        if name not in getattr(exported, "__all__", ()):
            continue
        try:
            same = getattr(exported, name) is getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            same = True  # cannot compare (an optional dependency): the exported name is what to use
        if same:
            return f"{module}.{name} is exported by {package}: import it from there"
    return None


def _reference(dotted: str) -> tuple[str, str] | None:
    """Split ``torchslim.a.b.name[.attr...]`` into (the deepest module, the name read from it)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if _is_module(".".join(parts[:i])):
            if i == len(parts):  # a module itself: read as a name of its parent package
                return (".".join(parts[:-1]), parts[-1]) if i > 1 else None
            return ".".join(parts[:i]), parts[i]
    return None


def _attribute_chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def violations(source: str, filename: str = "<script>") -> list[str]:
    """Every use of a non-public torchslim name in `source`, as ``file:line: why``."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> the torchslim module or object it stands for

    def report(node: ast.AST, why: str | None) -> None:
        if why:
            found.append(f"{filename}:{node.lineno}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "torchslim":
                    continue
                if any(_private(p) for p in alias.name.split(".")):
                    report(node, f"import of a private module: {alias.name}")
                aliases[alias.asname or "torchslim"] = alias.name if alias.asname else "torchslim"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "torchslim":
            for alias in node.names:
                report(node, _check(node.module, alias.name))
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
        if chain is None or chain[0] not in aliases:
            continue
        dotted = ".".join([aliases[chain[0]], *chain[1]])
        private = [p for p in chain[1] if _private(p)]
        if private:
            report(node, f"private name {'.'.join(private)!r} in {dotted}")
            continue
        ref = _reference(dotted)
        if ref is not None:
            report(node, _check(*ref))
    return sorted(set(found))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_uses_public_api_only(script: Path) -> None:
    assert violations(script.read_text(encoding="utf-8"), str(script.relative_to(ROOT))) == []


def test_scripts_found() -> None:
    assert any(p.parent.name == "bench" for p in SCRIPTS) and any(p.parent.name == "examples" for p in SCRIPTS)


@pytest.mark.parametrize("source, bad", [
    ("from torchslim.evaluation import _machine", True),
    ("from torchslim.evaluation import machine_info", False),
    ("from torchslim.quant.ort import _quiet_ort_logging", True),
    ("import torchslim._hidden", True),
    ("from torchslim.prune.structured import prune_channels_", True),  # torchslim.prune exports it
    ("from torchslim.prune import prune_channels_", False),
    ("from torchslim.io import load_checkpoint", True),  # torchslim exports it
    ("from torchslim.io import atomic_path", False),  # a public module; no package above re-exports it
    ("from torchslim.training import TrainConfig", False),  # a family package, though torchslim exports it too
    ("from torchslim.training import dist", False),
    ("import torchslim as ts\nts.evaluation._machine()", True),
    ("import torchslim as ts\nts.prune.structured.prune_channels_", True),
    ("import torchslim as ts\nts.prune_(m, ts.PruneConfig(sparsity=0.5))", False),
    ("import torchslim.prune.structured as s\ns.prune_channels_", True),
    ("from torchslim import evaluation\nevaluation._machine()", True),
    ("from . import _local", False),  # relative imports are the script's own business
])
def test_checker(source: str, bad: bool) -> None:
    assert bool(violations(source)) is bad, violations(source)


@pytest.mark.parametrize("name", torchslim.__all__)
def test_top_level_names_resolve(name: str) -> None:
    assert getattr(torchslim, name) is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_family_names_resolve(family: str) -> None:
    package = importlib.import_module(f"torchslim.{family}")
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == [], f"torchslim.{family}.__all__ names what it does not define: {missing}"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        torchslim.no_such_name  # noqa: B018
