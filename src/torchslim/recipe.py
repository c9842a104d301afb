"""Recipes: YAML data validated by a schema. A recipe never contains code.

    version: 1
    seed: 0
    data: {name: mnist}                                 # root: recipe field, else $TORCHSLIM_DATA
    teacher: {model: lenet5, train: {epochs: 10}}        # or checkpoint: path/to/teacher.safetensors
    student: {model: lenet5-half}
    stages:
      - {type: distill, temperature: 4, alpha: 0.1, train: {epochs: 10}}
      - {type: prune, sparsity: 0.9, scope: global}
      - {type: quantize, mode: static}

Every problem becomes one `TorchslimError` line that names the field (`stages[1].temperature: ...`).
"""
from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from torchslim.config import Config
from torchslim.errors import TorchslimError, did_you_mean
from torchslim.pipeline.stages import STAGE_TYPES, Stage
from torchslim.search.spec import SearchSpec, check_spec
from torchslim.tracking import LogSpec
from torchslim.training.config import TrainConfig

RECIPE_VERSION = 1


class DataSpec(Config):
    name: str = "digits"
    root: str | None = Field(None, description="folder holding <name>/...; default $TORCHSLIM_DATA")
    val_size: int | float | None = Field(None, ge=0, description="validation rows taken from train (count or fraction)")
    pad_to: int | None = Field(None, ge=1, le=1024, description="zero-pad images to this size (e.g. 32 for LeNet-5-classic)")
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)
    # A user's own files (name: csv, image-folder or text-file).
    path: str | None = Field(None, description="csv / tsv / jsonl text file, a .txt (text-file), or a folder of "
                                                  "class folders")
    test_path: str | None = Field(None, description="a separate test file (default: a fixed 20% of `path`)")
    text_column: str | int | None = Field(None, description="column of the text: a header name or a 0-based index")
    label_column: str | int | None = Field(None, description="column of the label: a header name or a 0-based index")
    image_size: int | list[int] | None = Field(None, description="image-folder: resize every image to this size")
    # Text: how the training split's vocabulary is built and how long a sequence is.
    tokenizer: str | None = Field(None, description="word (default) | char | a local tokenizer.json (Hugging Face "
                                                    "tokenizers)")
    max_length: int | None = Field(None, ge=1, le=8192, description="tokens per text (default: the 99th percentile "
                                                                    "of training lengths, at most 256)")
    max_vocab: int | None = Field(None, ge=2, description="keep the most frequent words (default: all)")
    min_freq: int | None = Field(None, ge=1, description="drop words seen fewer times in training (default 1)")
    lowercase: bool | None = Field(None, description="lowercase text before tokenizing (default true)")
    task: Literal["sentence-embedding"] | None = Field(None, description="sentence-embedding: text judged by cosine "
                                                                          "to the teacher's embeddings, labels "
                                                                          "unused (default: the data's own task)")
    # Plain text for language models (tinyshakespeare, text-file).
    block_size: int | None = Field(None, ge=1, le=8192, description="tokens per block (default 128)")
    stride: int | None = Field(None, ge=1, description="characters between training windows (default block_size)")

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of `torchslim.data.load_dataset`: the name and every field that is set."""
        return {k: v for k, v in self.model_dump(exclude={"task"}).items() if v is not None}


class ModelSpec(Config):
    model: str | None = Field(None, description="a zoo model: torchslim list models")
    factory: str | None = Field(None, description="'module:function' that builds your own nn.Module (runs your code; "
                                                  "imported from the working directory or PYTHONPATH)")
    hf: str | None = Field(None, description="a local Hugging Face model directory (config.json + weights, read "
                                             "offline): a sequence classifier for text-classification, an encoder "
                                             "for sentence-embedding; tokenize the data with its tokenizer.json")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model or factory")
    keep_layers: list[int] | None = Field(None, min_length=1, description="keep only these transformer layers, in "
                                                                         "this order (layer dropping: DistilBERT "
                                                                         "keeps every other one)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in self._sources() if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(self._sources())}"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    def _sources(self) -> tuple[str, ...]:
        return ("model", "factory", "hf")

    def describe(self) -> str:
        return self.model or (f"factory {self.factory}" if self.factory else f"hf {self.hf}")


class StudentSpec(ModelSpec):
    from_teacher: bool = Field(False, description="start from a copy of the trained teacher (with keep_layers: a "
                                                  "layer-dropped student, as DistilBERT)")

    def _sources(self) -> tuple[str, ...]:
        return ("model", "factory", "hf", "from_teacher")

    def describe(self) -> str:
        return "the teacher" + (f", layers {self.keep_layers}" if self.keep_layers else "") if self.from_teacher \
            else super().describe()


class TeacherSpec(ModelSpec):
    onnx: str | None = Field(None, description="a teacher you only have as an ONNX file: run in ONNX Runtime, for "
                                               "logit distillation (its soft labels are cached)")
    checkpoint: str | None = Field(None, description="load these weights instead of training (.safetensors or .pt)")
    train: TrainConfig = Field(default_factory=TrainConfig)

    def _sources(self) -> tuple[str, ...]:
        return ("model", "factory", "hf", "onnx")

    def describe(self) -> str:
        return f"onnx {self.onnx}" if self.onnx else super().describe()


class NamedTeacherSpec(TeacherSpec):
    """One of several teachers (`teachers:`); its name is its artifact's name and what distill stages refer to."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="letters, digits, _ . - (a file name)")


AnyStage = Annotated[Union[tuple(STAGE_TYPES.values())], Field(discriminator="type")]  # noqa: UP007


class EvaluateSpec(Config):
    threads: int = Field(1, ge=1, le=256, description="threads for PyTorch and ONNX Runtime while measuring")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
    max_seconds: float = Field(0.4, gt=0, le=60, description="timing budget per artifact and batch size")
    split: Literal["test", "val"] = Field("test", description="the split every artifact is judged on: test, or val "
                                                              "(what `torchslim search` selects on, so that the "
                                                              "test split stays unseen)")


class Recipe(Config):
    version: int = RECIPE_VERSION
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: TeacherSpec | None = None
    teachers: list[NamedTeacherSpec] = Field(default_factory=list, description="further teachers, each named")
    student: StudentSpec | None = None
    stages: list[AnyStage] = Field(default_factory=list)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    log: LogSpec = Field(default_factory=LogSpec, description="experiment trackers to send the run to "
                                                           "(log: {mlflow: {...}}); none by default")
    search: SearchSpec | None = Field(None, description="what `torchslim search` varies, optimizes and requires; "
                                                        "`torchslim run` runs the recipe as written")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.version != RECIPE_VERSION:
            raise ValueError(f"version: this torchslim reads recipe version {RECIPE_VERSION}, not {self.version}")
        seen: set[str] = set()
        teacher_names = self.teacher_names()
        if not teacher_names and not self.stages:
            raise ValueError("nothing to run: the recipe has no `teacher:` and no `stages:`; give a teacher to "
                             "train or load, and the stages that compress it (see recipes/digits.yaml)")
        for i, t in enumerate(self.teachers):
            if teacher_names.count(t.name) > 1:
                raise ValueError(f"teachers[{i}].name: two teachers are named '{t.name}'"
                                 + (" (`teacher:` is named 'teacher')" if t.name == "teacher" else ""))
        if self.data.task == "sentence-embedding":
            if self.teacher is None or self.teacher.onnx:
                raise ValueError("data.task: sentence-embedding judges every model by its cosine to the teacher's "
                                 "embeddings: give a `teacher:` with a model (e.g. hf: models/all-MiniLM-L6-v2)")
            if "train" in self.teacher.model_fields_set:
                raise ValueError("teacher.train: with data.task sentence-embedding the teacher's embeddings are the "
                                 "targets, used as they are; drop `train:`")
        if self.student is not None and self.student.from_teacher and (self.teacher is None or self.teacher.onnx):
            raise ValueError("student.from_teacher: needs a `teacher:` with a model to copy"
                             + (" (an ONNX teacher is a black box)" if self.teacher is not None else ""))
        # An ONNX teacher is a black box: distillation can use it, but no stage can start from it.
        have_model = any(not t.onnx for t in ([self.teacher] if self.teacher else []) + list(self.teachers))
        made_model = False
        for i, st in enumerate(self.stages):
            where = f"stages[{i}]"
            name = st.label
            if name in seen or name in teacher_names or name == "teacher":
                raise ValueError(f"{where} ({st.type}): two artifacts would be named '{name}'; give this stage a "
                                 f"unique `name:`")
            seen.add(name)
            if st.makes_student and self.student is None:
                raise ValueError(f"{where} ({st.type}): needs a `student:` section (the model to {st.type})")
            st.check_recipe(self, where, made_model)
            made_model = True
            if not st.makes_student and not have_model:
                raise ValueError(f"{where} ({st.type}): needs a model, but no teacher and no earlier train/distill "
                                 f"stage made one")
            have_model = True
        return self

    def teacher_names(self) -> list[str]:
        """Every teacher's name: 'teacher' for `teacher:`, then the `teachers:` list."""
        return (["teacher"] if self.teacher is not None else []) + [t.name for t in self.teachers]

    def teacher_spec(self, name: str) -> TeacherSpec:
        """The teacher section named `name` ('teacher' is `teacher:`)."""
        return self.teacher if name == "teacher" else next(t for t in self.teachers if t.name == name)


def stage_name(stage: Stage) -> str:
    return stage.label


# ---------------------------------------------------------------------------------------------------------- loading
def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`a.b=v`) and validate a recipe file.

    Example:
        >>> r = load_recipe("recipes/digits.yaml", ["stages.distill.temperature=8"])   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"recipe not found: {path}" if not path.exists() else
                             f"recipe {path} is a folder, not a file; give a recipe .yaml file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TorchslimError(f"{path}: not a text file (byte {e.start} is not UTF-8); a recipe is YAML text, "
                             f"e.g. recipes/digits.yaml") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TorchslimError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise TorchslimError(f"{path}: the recipe is empty; a recipe names at least a `teacher:` or `stages:` "
                             f"(see recipes/digits.yaml)")
    if not isinstance(raw, dict):
        raise TorchslimError(f"{path}: a recipe is a mapping of fields (version, seed, data, teacher, student, stages), "
                             f"not a {type(raw).__name__}")
    where = {item: apply_override(raw, item) for item in overrides}
    try:
        return validate_recipe(raw, source=str(path))
    except TorchslimError as e:
        # Blame the `--set` argument when the bad field is the one it set (or lies inside it).
        message = str(e).removeprefix(f"{path}: ")
        for item, loc in reversed(where.items()):
            if message == loc or message.startswith((f"{loc}:", f"{loc}.", f"{loc}[", f"{loc} (")):
                raise TorchslimError(f"--set {item}: {message}") from None
        raise


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe dict; any problem is one TorchslimError line starting with `source` and the field."""
    try:
        _check_keys(raw, Recipe, "")
        recipe = Recipe.model_validate(raw)
        _check_names_and_files(recipe)
        if recipe.search is not None:
            check_spec(recipe.search)
    except ValidationError as e:
        raise TorchslimError(f"{source}: {_first_error(e)}") from None
    except TorchslimError as e:
        raise TorchslimError(f"{source}: {e}") from None
    return recipe


def _check_names_and_files(recipe: Recipe) -> None:
    """Names a registry must know, factories that must import, and files that must exist, checked before any work
    starts."""
    from torchslim.data import DATASETS
    from torchslim.models import MODELS
    from torchslim.models.factory import import_factory

    if recipe.data.name not in DATASETS:
        try:
            DATASETS.get(recipe.data.name)
        except TorchslimError as e:
            raise TorchslimError(f"data.name: {e}") from None
    roles = [(role, spec) for role in ("teacher", "student") if (spec := getattr(recipe, role)) is not None]
    roles += [(f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]
    for role, spec in roles:
        try:
            if spec.model is not None:
                MODELS.get(spec.model)
            if spec.factory is not None:
                import_factory(spec.factory)
        except TorchslimError as e:
            raise TorchslimError(f"{role}.{'model' if spec.model is not None else 'factory'}: {e}") from None
        if spec.hf is not None:
            from torchslim.models.hf import check_hf_directory

            try:
                check_hf_directory(spec.hf)
            except TorchslimError as e:
                raise TorchslimError(f"{role}.hf: {e}") from None
        for key in ("checkpoint", "onnx"):
            value = getattr(spec, key, None)
            if value and not Path(value).is_file():
                raise TorchslimError(f"{role}.{key}: file not found: {value}")
    if recipe.data.root and not Path(recipe.data.root).is_dir():
        raise TorchslimError(f"data.root: folder not found: {recipe.data.root}")
    for key in ("path", "test_path"):
        value = getattr(recipe.data, key)
        if value and not Path(value).exists():
            raise TorchslimError(f"data.{key}: not found: {value}")


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in STAGE_TYPES and i >= 2 and loc[i - 2] == "stages" and isinstance(loc[i - 1], int):
            continue  # pydantic inserts the union tag ("stages.0.distill.x"); the index already says which stage
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    msg = err["msg"].removeprefix("Value error, ")
    loc = _fmt_loc(err["loc"])
    if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
        got = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
        return (f"{loc}.type: unknown stage type '{got}'{did_you_mean(got or '', STAGE_TYPES)}; "
                f"valid choices: {', '.join(STAGE_TYPES)}")
    if err["type"] == "model_attributes_type" or err["type"] == "model_type":
        return f"{loc}: expected a mapping of fields, got {type(err.get('input')).__name__} {err.get('input')!r}"
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) and "input" in err else ""
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {msg}{shown}" if loc != "recipe" else f"{msg}{shown}"


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `Optional[X]`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _check_keys(raw: Any, model: type[BaseModel], where: str) -> None:
    """Unknown keys, with a did-you-mean, before pydantic's type checks (its message would not suggest one)."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        loc = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise TorchslimError(f"{loc}: unknown field{did_you_mean(str(key), fields)}; "
                                 f"valid fields{' of ' + where if where else ''}: {', '.join(fields)}")
        annotation = fields[key].annotation
        if key == "stages" and model is Recipe and isinstance(value, list):
            for i, st in enumerate(value):
                if isinstance(st, dict):
                    kind = st.get("type")
                    if kind is None:
                        raise TorchslimError(f"stages[{i}].type: required field is missing; "
                                             f"valid choices: {', '.join(STAGE_TYPES)}")
                    if not isinstance(kind, str) or kind not in STAGE_TYPES:
                        raise TorchslimError(f"stages[{i}].type: unknown stage type {kind!r}"
                                             f"{did_you_mean(str(kind), STAGE_TYPES)}; valid choices: {', '.join(STAGE_TYPES)}")
                    _check_keys(st, STAGE_TYPES[kind], f"stages[{i}]")
        elif key == "teachers" and model is Recipe and isinstance(value, list):
            for i, teacher in enumerate(value):
                _check_keys(teacher, NamedTeacherSpec, f"teachers[{i}]")
        elif (sub := _model_class(annotation)) is not None:
            _check_keys(value, sub, loc)


# -------------------------------------------------------------------------------------------------------- overrides
def apply_override(raw: dict, item: str) -> str:
    """Apply one `--set a.b.c=value` to the raw recipe dict; the value is parsed as YAML (numbers, lists, ...).
    Return the field it set as errors name it (`stages[1].temperature`).

    In `stages`, an element is addressed by its name or type (`stages.distill.temperature=8`) or its index.
    """
    if "=" not in item:
        raise TorchslimError(f"--set {item}: expected KEY=VALUE, e.g. stages.distill.temperature=8")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return set_field(raw, key, value, what=f"--set {item}")


def set_field(raw: dict, key: str, value: Any, what: str | None = None) -> str:
    """Set the field at the dotted path `key` (``stages.distill.temperature``) of a raw recipe dict to `value`,
    creating sections on the way; return the field as errors name it (``stages[1].temperature``). `what` starts
    every error line (default: the key). In `stages`, an element is addressed by its name or type, or its index.
    """
    what = what or key
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TorchslimError(f"{what}: empty key")
    node: Any = raw
    where = ""
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = _list_index(node, part, ".".join(parts[: i + 1]), what)
            node, where = node[idx], f"{where}[{idx % len(node)}]"
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node, where = node[part], f"{where}.{part}" if where else part
        else:
            raise TorchslimError(f"{what}: '{'.'.join(parts[:i])}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, key, what)
        node[idx] = value
        return f"{where}[{idx % len(node)}]"
    if isinstance(node, dict):
        node[last] = value
        return f"{where}.{last}" if where else last
    raise TorchslimError(f"{what}: '{'.'.join(parts[:-1])}' is a value, not a section")


def _list_index(items: list, part: str, where: str, what: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(items) <= idx < len(items):
            return idx
        raise TorchslimError(f"{what}: {where}: index {idx} out of range (there are {len(items)})")
    idx = stage_index(items, part)
    if idx is not None:
        return idx
    valid = [n for n in _stage_names(items) if n]
    raise TorchslimError(f"{what}: no stage named '{part}'{did_you_mean(part, valid)}; "
                         f"stages: {', '.join(valid) or '(none)'}")


def _stage_names(items: list) -> list[str | None]:
    return [st.get("name") or st.get("type") if isinstance(st, dict) else None for st in items]


def stage_index(stages: list, name: str) -> int | None:
    """The index of the raw stage named `name` (its `name:`, else its `type`), or None."""
    names = _stage_names(stages)
    return names.index(name) if name in names else None


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in) as YAML, as kept in the run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
