"""Every code block a user reads in README.md and docs/*.md works as shown (docs/api.md: tests/test_docs_api.py).

- ```yaml blocks: a whole recipe (it has `data:` or `version:`) is validated as it stands (data loaded, models built,
  checkpoints load-checked); a fragment (a stage list, or a few sections) is validated inside a small base recipe.
  Checkpoint files a fragment names are made first (a fresh model of that kind), so their loading is checked too;
  so are the Hugging Face directories (`hf:`) a recipe names (a tiny random BERT with a word-level tokenizer).
- shell blocks: every `torchslim ...` command (also `python -m torchslim`, `torchrun ... -m torchslim`) parses;
  `list` and `validate` run; `run` is validated with its `--set`s, and the recipe file it names must exist; a `run`
  of an embedded-data recipe is executed, shrunk by extra `--set`s. `make` targets must exist in the Makefile.
- ```python blocks run in a process of their own with `TORCHSLIM_DATA` set; the harness shrinks the work (training
  capped at 1 epoch, data sets at a few hundred rows) but the code run is the block's text, unchanged. A block whose
  first line is `# given: CODE` runs CODE first: the line tells the reader what the block assumes (a model, data).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from torchslim.cli import _parser, main

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PENDING = {"api.md"}  # tests/test_docs_api.py
DOCS = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in PENDING)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BASE = {"data": {"name": "mnist", "pad_to": 32, "limit_train": 300, "limit_test": 100},
        "teacher": {"model": "lenet5", "train": {"epochs": 1}}, "student": {"model": "lenet5-half"}}
# Recipes whose data is embedded or small enough that a shrunk run takes seconds.
QUICK_RUN = {"recipes/digits.yaml"}


def _blocks(lang: set[str]) -> list:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if m.group(1) in lang:
                line = text.count("\n", 0, m.start()) + 1
                out.append(pytest.param(doc, line, m.group(2), id=f"{doc.relative_to(ROOT)}:{line}"))
    return out


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("TORCHSLIM_DATA", os.environ.get("TORCHSLIM_DATA", str(SHARED_DATA)))


# ------------------------------------------------------------------------------------------------------------- yaml
def _as_recipe(block: dict | list) -> dict:
    if isinstance(block, list):  # a list of stages
        return {**BASE, "stages": block}
    if "data" in block or "version" in block:  # a whole recipe
        return block
    return {**BASE, **block}


def _make_checkpoints(recipe: dict, folder: Path) -> None:
    """Files named by `checkpoint:` in a fragment stand for the reader's own: make them (a fresh model)."""
    from torchslim.data import load_dataset
    from torchslim.io import save_checkpoint
    from torchslim.models import create_model

    specs = [recipe.get("teacher")] + list(recipe.get("teachers") or [])
    for spec in filter(None, specs):
        if spec.get("checkpoint") and not Path(spec["checkpoint"]).is_absolute():
            data = load_dataset(**{k: v for k, v in recipe["data"].items() if k in ("name", "pad_to", "limit_train",
                                                                                   "limit_test")})
            model = create_model(spec["model"], num_classes=data.num_classes, input_shape=data.input_shape,
                                 **spec.get("args", {}))
            save_checkpoint(model, folder / spec["checkpoint"])


_WORDS = ("the a an and of to is it was film movie story good great bad dull fun not very plot acting one this that "
          "with for as but by on at his her its").split()


def _make_hf_dirs(recipe: dict, folder: Path) -> None:
    """Hugging Face directories (`hf:`) stand for the reader's own model: a tiny random BERT with a word-level
    tokenizer.json is made where a relative path names one that is not there."""
    specs = [recipe.get("teacher"), recipe.get("student")] + list(recipe.get("teachers") or [])
    for spec in filter(None, specs):
        hf = spec.get("hf")
        if not hf or Path(hf).is_absolute() or (folder / hf).exists():
            continue
        transformers = pytest.importorskip("transformers")
        tokenizers = pytest.importorskip("tokenizers")
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]
        cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=6,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
        transformers.BertModel(cfg).save_pretrained(folder / hf)
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        (folder / hf / "tokenizer.json").write_text(tok.to_str())


@pytest.mark.parametrize("doc, line, code", _blocks({"yaml"}))
def test_yaml_block_validates(doc, line, code, tmp_path, monkeypatch, capsys):
    recipe = _as_recipe(yaml.safe_load(code))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # `factory: examples.own_model:build` is imported from the repo root
    _make_checkpoints(recipe, tmp_path)
    _make_hf_dirs(recipe, tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["validate", str(path)])
    assert code == 0, f"{doc.name}, the yaml block at line {line} does not validate: {capsys.readouterr().err}"


@pytest.mark.slow
def test_readme_annotated_recipe_runs_shrunk(tmp_path, capsys):
    """The recipe the README explains field by field runs to the end (a few hundred rows, one epoch a stage)."""
    block = next(p.values[2] for p in _blocks({"yaml"}) if p.values[0].name == "README.md")
    path = tmp_path / "recipe.yaml"
    path.write_text(block)
    shrink = ["data.limit_train=500", "data.limit_test=200", "teacher.train.epochs=1", "stages.distill.train.epochs=1",
              "stages.prune.train.epochs=1", "stages.prune.rounds=1", "stages.int8.calibration_batches=2",
              "evaluate.max_seconds=0.01", "evaluate.batch_sizes=[1]"]
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv + [a for s in shrink for a in ("--set", s)]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------ shell
def _commands(code: str) -> list[list[str]]:
    """Each command line of a shell block as argv words, comments dropped and `\\` continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _torchslim_argv(words: list[str]) -> list[str] | None:
    if words[0] == "torchslim":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1] == "torchslim":  # python -m / torchrun ... -m torchslim
        return words[words.index("-m") + 2:]
    return None


def _shrink(recipe: Path) -> list[str]:
    raw = yaml.safe_load(recipe.read_text())
    sets = ["data.limit_train=300", "data.limit_test=100", "evaluate.max_seconds=0.01", "evaluate.batch_sizes=[1]"]
    if raw.get("teacher"):
        sets.append("teacher.train.epochs=1")
    for i, st in enumerate(raw.get("stages") or []):
        if st.get("type") in ("train", "distill", "prune", "finetune", "qat", "prune_channels"):
            sets.append(f"stages.{i}.train.epochs=1")
    return [a for s in sets for a in ("--set", s)]


# Run folders the docs' commands write (runs/t4, runs/tracked, ...) and later blocks read: one shared folder, so that
# docs/compare.md's `torchslim compare runs/t4 runs/t8` finds what its earlier block ran.
_RUNS: dict[str, Path] = {}


@pytest.fixture
def runs_root(tmp_path_factory) -> Path:
    if "root" not in _RUNS:
        _RUNS["root"] = tmp_path_factory.mktemp("doc-runs")
    return _RUNS["root"]


def _quick_run(argv: list[str], out: Path) -> int:
    """`torchslim run` of an embedded-data recipe as the docs write it, shrunk, into `out`."""
    args = _parser().parse_args(argv)
    sets = [a for s in args.overrides for a in ("--set", s)]
    return main(["run", args.recipe, *sets, "--out", str(out), "--force", "--quiet", *_shrink(ROOT / args.recipe)])


def _ensure_runs(code: str, root: Path) -> None:
    """The runs a python block reads, made as the shell blocks before it make them (when those did not run here)."""
    wanted = {"runs/t4": [], "runs/t8": ["--set", "stages.distill.temperature=8"],
              "runs/tracked": ["--set", "log={mlflow: {experiment: digits}}"]}
    for name, sets in wanted.items():
        if name in code and not (root / name / "report.json").is_file():
            assert _quick_run(["run", "recipes/digits.yaml", *sets], root / name) == 0


@pytest.mark.parametrize("doc, line, code", _blocks({"bash", "sh", "shell", ""}))
def test_shell_block_commands_work(doc, line, code, tmp_path, monkeypatch, capsys, runs_root):
    monkeypatch.chdir(ROOT)  # the commands are written for the repo root
    where = f"{doc.name}, the shell block at line {line}"
    for words in _commands(code):
        if words[0] == "make":
            targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
            assert set(words[1:]) <= set(targets), f"{where}: no such make target in {words}"
            continue
        if words[:1] == ["bash"]:
            assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} does not exist"
            continue
        argv = _torchslim_argv(words)
        if argv is None:  # another tool (a browser taking a screenshot, ...): not torchslim's to check
            continue
        args = _parser().parse_args(argv)  # every option exists
        if args.command == "list":
            assert main(argv) == 0, f"{where}: {' '.join(words)}: {capsys.readouterr().err}"
        elif args.command in ("validate", "run"):
            assert Path(args.recipe).is_file(), f"{where}: {args.recipe} does not exist"
            check = ["validate", args.recipe] + [a for s in args.overrides for a in ("--set", s)]
            assert main(check) == 0, f"{where}: {' '.join(words)}: {capsys.readouterr().err}"
            if args.command == "run" and args.recipe in QUICK_RUN:
                out = runs_root / args.out if args.out else tmp_path / "out"
                assert _quick_run(argv, out) == 0, f"{where}: {' '.join(words)} (shrunk): {capsys.readouterr().err}"
        elif args.command == "search":  # validated; run shrunk (2 trials, 1 worker) unless it names another database
            assert Path(args.recipe).is_file(), f"{where}: {args.recipe} does not exist"
            sets = [a for s in args.overrides for a in ("--set", s)]
            assert main(["validate", args.recipe, *sets]) == 0, f"{where}: {' '.join(words)}: {capsys.readouterr().err}"
            if args.storage is None and not args.report:
                out = tmp_path / "search"
                got = main(["search", args.recipe, *sets, "--out", str(out), "--trials", "2", "--force",
                            *_shrink(ROOT / args.recipe)])
                assert got == 0, f"{where}: {' '.join(words)} (shrunk): {capsys.readouterr().err}"
                assert (out / "search.md").is_file()
        elif args.command == "compare":  # on the runs the block's earlier commands made; a missing one is the error
            runs = [str(runs_root / r) for r in args.runs]
            want = 0 if all((runs_root / r).is_dir() for r in args.runs) else 2
            got = main(["compare", *runs, "--out", str(runs_root / args.out)])
            assert got == want, f"{where}: {' '.join(words)} exited {got}: {capsys.readouterr().err}"
        capsys.readouterr()


# ----------------------------------------------------------------------------------------------------------- python
HARNESS = '''
import sys
import torchslim, torchslim.data, torchslim.data.datasets as _datasets
from torchslim.training.config import TrainConfig as _TrainConfig

_load = _datasets.load_dataset
def _small(name, *args, **kw):                     # a few hundred rows: the test checks the code, not the accuracy
    kw.setdefault("limit_train", 600)
    kw.setdefault("limit_test", 200)
    return _load(name, *args, **kw)
for _module in (_datasets, torchslim.data, torchslim):
    setattr(_module, "load_dataset", _small)
_init = _TrainConfig.__init__
def _one_epoch(self, **kw):
    kw["epochs"] = min(kw.get("epochs", 1), 1)
    _init(self, **kw)
_TrainConfig.__init__ = _one_epoch
from torchslim.distillation.datafree import DataFreeConfig as _DataFreeConfig
_df_init = _DataFreeConfig.__init__
def _few_iterations(self, **kw):                   # a data-free epoch is `iterations` steps: a few will do
    kw["iterations"] = min(kw.get("iterations", 2), 2)
    _df_init(self, **kw)
_DataFreeConfig.__init__ = _few_iterations
from pathlib import Path as _Path
_code = _Path(sys.argv[1]).read_text(encoding="utf-8")
_given = _code.splitlines()[0].removeprefix("# given:").strip() if _code.startswith("# given:") else ""
exec(compile(_given + "\\n" + _code, sys.argv[1], "exec"), {"__name__": "__main__"})
'''


def _prepare(code: str, folder: Path, runs_root: Path) -> None:
    """What a block reads that an earlier command in the README or its doc would have written."""
    if "recipes/" in code:  # the repo's recipes, as from the repo root
        (folder / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    if "runs/" in code and "runs/sst2" not in code:
        _ensure_runs(code, runs_root)
        (runs_root / "runs").mkdir(exist_ok=True)  # a block that writes a new run needs the folder to exist
        (folder / "runs").symlink_to(runs_root / "runs", target_is_directory=True)
    if "runs/sst2/tokenizer.json" in code:
        from torchslim.data import load_dataset

        data = load_dataset("sst2", limit_train=500, limit_test=100)
        (folder / "runs" / "sst2").mkdir(parents=True)
        data.task.tokenizer.save(folder / "runs" / "sst2" / "tokenizer.json")


# docs/report.md's block sketches the evaluation calls inside a run (artifacts, recipe_dict come from it).
NOT_RUN = {"report.md"}


@pytest.mark.slow
@pytest.mark.parametrize("doc, line, code", [p for p in _blocks({"python"}) if p.values[0].name not in NOT_RUN])
def test_python_block_runs(doc, line, code, tmp_path, runs_root):
    _prepare(code, tmp_path, runs_root)
    (tmp_path / "block.py").write_text(code, encoding="utf-8")
    (tmp_path / "harness.py").write_text(HARNESS, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-W", "error", "-W", "ignore::DeprecationWarning", "harness.py", "block.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{doc.name}, the python block at line {line} failed:\n{proc.stderr[-3000:]}"
