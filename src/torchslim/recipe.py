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
from torchslim.distillation.config import KDConfig
from torchslim.distillation.datafree import DataFreeConfig
from torchslim.errors import TorchslimError, did_you_mean
from torchslim.export.config import ExportConfig
from torchslim.prune.codebook import CodebookConfig
from torchslim.prune.config import PruneConfig
from torchslim.prune.structured import ChannelPruneConfig
from torchslim.quant.config import StaticInt8Config
from torchslim.quant.spec import QuantConfig
from torchslim.training.config import TrainConfig

RECIPE_VERSION = 1


class DataSpec(Config):
    name: str = "digits"
    root: str | None = Field(None, description="folder holding <name>/...; default $TORCHSLIM_DATA")
    val_size: int | float | None = Field(None, ge=0, description="validation rows taken from train (count or fraction)")
    pad_to: int | None = Field(None, ge=1, le=1024, description="zero-pad images to this size (e.g. 32 for LeNet-5-classic)")
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)


class ModelSpec(Config):
    model: str
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")


class TeacherSpec(ModelSpec):
    checkpoint: str | None = Field(None, description="load these weights instead of training (.safetensors or .pt)")
    train: TrainConfig = Field(default_factory=TrainConfig)


class NamedTeacherSpec(TeacherSpec):
    """One of several teachers (`teachers:`); its name is its artifact's name and what distill stages refer to."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="letters, digits, _ . - (a file name)")


class _Stage(Config):
    name: str | None = Field(None, description="unique name; also the artifact's name (default: the type)")


class TrainStage(_Stage):
    """Train the student on labels alone (the baseline a distilled student must beat)."""
    type: Literal["train"]
    train: TrainConfig = Field(default_factory=TrainConfig)


class DistillStage(_Stage, KDConfig):
    """Train the student from the teacher's soft targets (Hinton KD), or from a list of `losses` (feature, relation
    and contrastive terms; `torchslim list losses`), from one teacher or several."""
    type: Literal["distill"]
    train: TrainConfig = Field(default_factory=TrainConfig)
    init: Literal["fresh", "current"] = Field("fresh", description="fresh: a new student; current: continue from "
                                                                    "the current model (FitNets' second stage)")
    teachers: list[str] | None = Field(None, description="names of the teachers to distill from (default: all; "
                                                         "`teacher:` is named 'teacher')")


class PruneStage(_Stage, PruneConfig):
    """Prune the current model (a registered criterion; unstructured or N:M); fine-tune after each round with the
    masks held. ``schedule: gradual`` prunes during the fine-tuning; ``schedule: lottery`` retrains the current
    architecture from a fresh initialization (seeded by the stage), rewinding between rounds."""
    type: Literal["prune"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0))

    @model_validator(mode="after")
    def _schedule_trains(self) -> PruneStage:
        if self.schedule in ("gradual", "lottery") and self.train.epochs < 1:
            raise ValueError(f"schedule '{self.schedule}' prunes while it trains: set train.epochs to 1 or more")
        if self.schedule == "lottery" and self.rewind_epoch > self.train.epochs:
            raise ValueError(f"rewind_epoch {self.rewind_epoch} is after the last epoch of a round (train.epochs "
                             f"{self.train.epochs}); choose 0 (initialization) to {self.train.epochs}")
        return self


class FinetuneStage(_Stage):
    """Train the current model further on labels (sparsity, if any, is kept)."""
    type: Literal["finetune"]
    train: TrainConfig = Field(default_factory=TrainConfig)


class QuantizeStage(_Stage, StaticInt8Config):
    """Int8 post-training quantization of the current model, run by ONNX Runtime."""
    type: Literal["quantize"]
    mode: Literal["static", "dynamic"] = "static"


class PTQStage(_Stage, QuantConfig):
    """torchslim's own post-training quantization (2-8 bit weights and activations, choice of observer), exported
    as QDQ ONNX with torchslim's scales so ONNX Runtime runs integer kernels."""
    type: Literal["ptq"]
    opset: int = Field(17, ge=13, le=21)


class QATStage(_Stage, QuantConfig):
    """Quantization-aware training from the current model (optionally distilled from it), exported as QDQ ONNX."""
    type: Literal["qat"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-4))
    distill: bool = Field(False, description="distill from the fp32 current model while training")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)
    opset: int = Field(17, ge=13, le=21)


class MixedStage(_Stage, QuantConfig):
    """Mixed-precision weights from a per-layer sensitivity analysis: either the least sensitive allocation that fits
    `budget` (a fraction of the uniform int8 weight bytes), or — with `tolerance_points` — accuracy-aware fallback
    from uniform `weight.bits`, most sensitive layers first, until within the tolerance. Exported as QDQ ONNX."""
    type: Literal["mixed"]
    budget: float | None = Field(None, gt=0, le=4, description="weight bytes as a fraction of uniform int8")
    tolerance_points: float | None = Field(None, ge=0, le=100, description="accuracy-aware: allowed drop in points")
    choices: list[Literal[2, 3, 4, 8, 32]] = Field(default_factory=lambda: [2, 4, 8, 32])
    opset: int = Field(17, ge=13, le=21)

    @model_validator(mode="after")
    def _one_goal(self) -> MixedStage:
        if (self.budget is None) == (self.tolerance_points is None):
            raise ValueError("mixed: give exactly one of `budget` (size) or `tolerance_points` (accuracy)")
        return self


class ShareStage(_Stage, CodebookConfig):
    """Deep Compression weight sharing: k-means codebooks per layer (zeros stay zero), centroids fine-tuned with
    shared gradients for `train.epochs`."""
    type: Literal["share"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0, lr=1e-4))


class PruneChannelsStage(_Stage, ChannelPruneConfig):
    """Structured pruning: remove whole channels (following residual and batch-norm couplings) until the model has
    `macs_reduction`× fewer MACs, in `rounds` rounds with `train` fine-tuning after each. The model really shrinks."""
    type: Literal["prune_channels"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=0))


class ExportStage(_Stage, ExportConfig):
    """Export the current model: `onnx` (fp32, verified against PyTorch) or `compressed` (Deep Compression file:
    sparse relative indices + codebook indices, Huffman-coded; evaluated on the model loaded back from the file)."""
    type: Literal["export"]
    format: Literal["onnx", "compressed"] = "onnx"


class DataFreeStage(_Stage, DataFreeConfig):
    """Distill the teacher into a fresh student without training images: a DAFL generator, DeepInversion (BN
    teachers), a VAE fitted to `vae.few_data` real images, or Gaussian noise (the baseline). The validation split is
    only evaluated; no training image reaches the student. Defaults: DAFL's MNIST budget (200 × 120 steps of 512)."""
    type: Literal["datafree"]
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=200, batch_size=512, lr=2e-3))


STAGE_TYPES: dict[str, type[_Stage]] = {
    "train": TrainStage, "distill": DistillStage, "prune": PruneStage,
    "finetune": FinetuneStage, "quantize": QuantizeStage, "ptq": PTQStage, "qat": QATStage,
    "mixed": MixedStage, "share": ShareStage, "export": ExportStage, "datafree": DataFreeStage,
    "prune_channels": PruneChannelsStage,
}
Stage = Annotated[Union[tuple(STAGE_TYPES.values())], Field(discriminator="type")]  # noqa: UP007


class EvaluateSpec(Config):
    threads: int = Field(1, ge=1, le=256, description="threads for PyTorch and ONNX Runtime while measuring")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
    max_seconds: float = Field(0.4, gt=0, le=60, description="timing budget per artifact and batch size")


class Recipe(Config):
    version: int = RECIPE_VERSION
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: TeacherSpec | None = None
    teachers: list[NamedTeacherSpec] = Field(default_factory=list, description="further teachers, each named")
    student: ModelSpec | None = None
    stages: list[Stage] = Field(default_factory=list)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.version != RECIPE_VERSION:
            raise ValueError(f"version: this torchslim reads recipe version {RECIPE_VERSION}, not {self.version}")
        seen: set[str] = set()
        teacher_names = self.teacher_names()
        for i, t in enumerate(self.teachers):
            if teacher_names.count(t.name) > 1:
                raise ValueError(f"teachers[{i}].name: two teachers are named '{t.name}'"
                                 + (" (`teacher:` is named 'teacher')" if t.name == "teacher" else ""))
        have_model = bool(teacher_names)
        made_model = False
        for i, st in enumerate(self.stages):
            where = f"stages[{i}] ({st.type})"
            name = stage_name(st)
            if name in seen or name in teacher_names or name == "teacher":
                raise ValueError(f"{where}: two artifacts would be named '{name}'; give this stage a unique `name:`")
            seen.add(name)
            if st.type in ("train", "distill", "datafree") and self.student is None:
                raise ValueError(f"{where}: needs a `student:` section (the model to {st.type})")
            if st.type == "distill" and not teacher_names:
                raise ValueError(f"{where}: needs a `teacher:` section to distill from")
            if st.type == "datafree" and self.teacher is None:
                raise ValueError(f"{where}: needs a `teacher:` section to distill from (data-free uses `teacher:`)")
            if st.type == "distill":
                self._check_distill(f"stages[{i}]", st, teacher_names, made_model)
            made_model = True
            if st.type not in ("train", "distill", "datafree") and not have_model:
                raise ValueError(f"{where}: needs a model, but no teacher and no earlier train/distill stage made one")
            have_model = True
        return self

    def teacher_names(self) -> list[str]:
        """Every teacher's name: 'teacher' for `teacher:`, then the `teachers:` list."""
        return (["teacher"] if self.teacher is not None else []) + [t.name for t in self.teachers]

    @staticmethod
    def _check_distill(where: str, st: DistillStage, teacher_names: list[str], made_model: bool) -> None:
        for name in st.teachers or []:
            if name not in teacher_names:
                raise ValueError(f"{where}.teachers: unknown teacher '{name}'{did_you_mean(name, teacher_names)}; "
                                 f"valid choices: {', '.join(teacher_names)}")
        used = st.teachers or teacher_names
        if st.teacher_weights is not None and len(st.teacher_weights) != len(used):
            raise ValueError(f"{where}.teacher_weights: {len(st.teacher_weights)} weights for {len(used)} teachers "
                             f"({', '.join(used)})")
        for k, spec in enumerate(st.losses):
            if spec.from_teacher is not None and spec.from_teacher not in used:
                raise ValueError(f"{where}.losses[{k}].from_teacher: unknown teacher '{spec.from_teacher}'"
                                 f"{did_you_mean(spec.from_teacher, used)}; this stage's teachers: {', '.join(used)}")
        if st.init == "current" and not made_model:
            raise ValueError(f"{where}.init: 'current' continues from the model of an earlier stage, but this is the "
                             f"first stage; use init: fresh")


def stage_name(stage: _Stage) -> str:
    return stage.name or stage.type


# ---------------------------------------------------------------------------------------------------------- loading
def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`a.b=v`) and validate a recipe file.

    Example:
        >>> r = load_recipe("recipes/digits.yaml", ["stages.distill.temperature=8"])   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TorchslimError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TorchslimError(f"{path}: a recipe is a mapping of fields (version, seed, data, teacher, student, stages), "
                             f"not a {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe dict; any problem is one TorchslimError line starting with `source` and the field."""
    try:
        _check_keys(raw, Recipe, "")
        recipe = Recipe.model_validate(raw)
        _check_names_and_files(recipe)
    except ValidationError as e:
        raise TorchslimError(f"{source}: {_first_error(e)}") from None
    except TorchslimError as e:
        raise TorchslimError(f"{source}: {e}") from None
    return recipe


def _check_names_and_files(recipe: Recipe) -> None:
    """Names a registry must know, and files that must exist, checked before any work starts."""
    from torchslim.data import DATASETS
    from torchslim.models import MODELS

    checks = [("data.name", DATASETS, recipe.data.name)]
    checks += [(f"{role}.model", MODELS, spec.model) for role in ("teacher", "student")
               if (spec := getattr(recipe, role)) is not None]
    checks += [(f"teachers[{i}].model", MODELS, t.model) for i, t in enumerate(recipe.teachers)]
    for where, registry, name in checks:
        if name not in registry:
            try:
                registry.get(name)
            except TorchslimError as e:
                raise TorchslimError(f"{where}: {e}") from None
    if recipe.teacher and recipe.teacher.checkpoint and not Path(recipe.teacher.checkpoint).is_file():
        raise TorchslimError(f"teacher.checkpoint: file not found: {recipe.teacher.checkpoint}")
    for i, t in enumerate(recipe.teachers):
        if t.checkpoint and not Path(t.checkpoint).is_file():
            raise TorchslimError(f"teachers[{i}].checkpoint: file not found: {t.checkpoint}")
    if recipe.data.root and not Path(recipe.data.root).is_dir():
        raise TorchslimError(f"data.root: folder not found: {recipe.data.root}")


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in STAGE_TYPES and out.endswith("]"):
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
def apply_override(raw: dict, item: str) -> None:
    """Apply one `--set a.b.c=value` to the raw recipe dict; the value is parsed as YAML (numbers, lists, ...).

    In `stages`, an element is addressed by its name or type (`stages.distill.temperature=8`) or its index.
    """
    if "=" not in item:
        raise TorchslimError(f"--set {item}: expected KEY=VALUE, e.g. stages.distill.temperature=8")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TorchslimError(f"--set {item}: empty key")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]), item)
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise TorchslimError(f"--set {item}: '{'.'.join(parts[:i])}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, key, item)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TorchslimError(f"--set {item}: '{'.'.join(parts[:-1])}' is a value, not a section")


def _list_index(items: list, part: str, where: str, item: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(items) <= idx < len(items):
            return idx
        raise TorchslimError(f"--set {item}: {where}: index {idx} out of range (there are {len(items)})")
    names = [st.get("name") or st.get("type") if isinstance(st, dict) else None for st in items]
    if part in names:
        return names.index(part)
    valid = [n for n in names if n]
    raise TorchslimError(f"--set {item}: no stage named '{part}'{did_you_mean(part, valid)}; "
                         f"stages: {', '.join(valid) or '(none)'}")


def _list_item(items: list, part: str, where: str, item: str) -> Any:
    return items[_list_index(items, part, where, item)]


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in) as YAML, as kept in the run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
