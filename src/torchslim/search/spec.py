"""The `search:` block of a recipe: what may vary, what to optimize, what must hold. Data only (no Optuna here: the
recipe schema imports this module).

    search:
      params:
        stages.distill.temperature: [1, 20, log]     # a range: two numbers (ints: integer range), `log` for log scale
        stages.prune.sparsity: [0.5, 0.95]
        stages.int8.per_channel: {choices: [true, false]}
        student.args.width: {choices: [8, 16, 32]}
        stages.prune: optional                      # the stage runs or is left out
      objectives: [accuracy, latency_ms@1]           # any report metric; latency at a batch size of `evaluate:`
      constraints: ["accuracy_drop <= 0.5", "bytes <= 200000"]
      trials: 40
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from torchslim.config import Config
from torchslim.errors import TorchslimError

# Numbers every artifact of every report has, besides its task's metrics; `bytes` is short for `file_bytes`.
REPORT_NUMBERS = ("latency_ms", "file_bytes", "file_bytes_lzma", "params", "nonzero_params", "macs", "accuracy_drop")
ALIASES = {"bytes": "file_bytes", "size": "file_bytes", "latency": "latency_ms"}
LOWER_IS_BETTER = {"latency_ms", "file_bytes", "file_bytes_lzma", "params", "nonzero_params", "macs", "accuracy_drop",
                   "errors", "perplexity", "cross_entropy"}
_METRIC = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)(?:@([0-9]+))?$")
_CONSTRAINT = re.compile(r"^\s*(\S+?)\s*(<=|>=|≤|≥|<|>)\s*(\S+)\s*$")


class StopEarly(Config):
    """Stop a trial after an epoch whose validation score is worse, by more than `margin`, than that of every
    finished trial that met the constraints at the same epoch: it is heading for a result the search has already
    beaten. Needs `after` such trials first."""
    after: int = Field(3, ge=1, description="finished trials that met the constraints before any trial is stopped")
    margin: float = Field(0.01, ge=0, description="how much worse (in the score's units: 0.01 = 1 accuracy point)")


class SearchSpec(Config):
    params: dict[str, Any] = Field(min_length=1, description="field path -> [low, high], [low, high, log], "
                                                             "{choices: [...]}, or `optional` for a stage")
    objectives: list[str] = Field(default_factory=lambda: ["accuracy", "latency_ms"], min_length=1,
                                  description="report metrics to optimize: the task's (accuracy, perplexity...), "
                                              "latency_ms[@batch], file_bytes (bytes), macs, params, accuracy_drop")
    constraints: list[str] = Field(default_factory=list, description='"metric <= value" lines, e.g. '
                                                                     '"accuracy_drop <= 0.5", "latency_ms@1 <= 0.2"')
    artifact: str | None = Field(None, description="the artifact whose numbers count (default: the last one)")
    trials: int = Field(20, ge=1, le=100000)
    sampler: Literal["nsga2", "tpe", "random"] = Field(
        "nsga2", description="nsga2 (multi-objective genetic), tpe (Bayesian, with constraints), random")
    population: int = Field(8, ge=2, le=1000, description="nsga2: trials per generation")
    stop_early: StopEarly | None = Field(default_factory=StopEarly, description="stop hopeless trials after an "
                                                                                "epoch (null: never)")
    timeout_minutes: float | None = Field(None, gt=0, description="stop starting trials after this long")
    select_on: Literal["val", "test"] = Field("val", description="the split trials are judged on: val keeps the test "
                                                                "split unseen until you run the recommended recipe")


@dataclass(frozen=True)
class Param:
    """One searched field. kind: float | int | choice | optional (a stage that runs or not)."""
    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def bounds(self) -> list[Any]:
        """Values that span the space, each checked against the recipe schema before any trial runs."""
        if self.kind == "optional":
            return [True, False]
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "optional":
            return "runs or not"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Metric:
    """A report number of one artifact: `name` (canonical), at `batch_size` for latency."""
    name: str
    batch_size: int | None = None

    @property
    def label(self) -> str:
        return self.name + (f"@{self.batch_size}" if self.batch_size is not None else "")

    @property
    def lower_is_better(self) -> bool:
        return self.name in LOWER_IS_BETTER


@dataclass(frozen=True)
class Constraint:
    metric: Metric
    op: str  # "<=" or ">="
    bound: float

    def violation(self, value: float) -> float:
        """<= 0 when met (what Optuna's constraints_func wants), else how far off."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return float("inf")
        return value - self.bound if self.op == "<=" else self.bound - value

    @property
    def text(self) -> str:
        return f"{self.metric.label} {self.op} {self.bound:g}"


def parse_params(spec: SearchSpec) -> list[Param]:
    """Every `search.params` entry, parsed; a malformed one is one TorchslimError line naming it."""
    return [_param(path, value) for path, value in spec.params.items()]


def _param(path: str, value: Any) -> Param:
    where = f"search.params.{path}"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", path):
        raise TorchslimError(f"{where}: not a field path; write it as section.field, e.g. stages.distill.temperature")
    if value == "optional":
        if not (path.startswith("stages.") and path.count(".") == 1):
            raise TorchslimError(f"{where}: `optional` applies to a whole stage, e.g. stages.prune: optional")
        return Param(path, "optional")
    if isinstance(value, dict):
        if set(value) != {"choices"}:
            raise TorchslimError(f"{where}: a mapping here is {{choices: [...]}}; got keys {', '.join(map(str, value))}")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise TorchslimError(f"{where}: empty choices; give at least one value, e.g. {{choices: [4, 8]}}")
        return Param(path, "choice", choices=tuple(choices))
    hint = "give [low, high], [low, high, log] or {choices: [a, b, ...]}"
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise TorchslimError(f"{where}: cannot read {value!r} as a range; {hint}")
    low, high, *scale = value
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise TorchslimError(f"{where}: a range takes two numbers, got {value!r}; for other values {hint}")
    if scale and scale != ["log"]:
        raise TorchslimError(f"{where}: the third item of a range can only be `log`, got {scale[0]!r}")
    if not low < high:
        raise TorchslimError(f"{where}: empty range [{low}, {high}]; give [low, high] with low < high")
    if scale and low <= 0:
        raise TorchslimError(f"{where}: a log range must be above 0, got [{low}, {high}, log]")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return Param(path, kind, float(low), float(high), log=bool(scale))


def parse_metric(text: str, where: str) -> Metric:
    """`accuracy`, `latency_ms@1`, `bytes` -> Metric (the name checked against a task later, by the search)."""
    m = _METRIC.match(str(text).strip())
    if not m:
        raise TorchslimError(f"{where}: cannot read {text!r} as a metric; write e.g. accuracy, latency_ms@1, "
                             f"file_bytes")
    name, batch = ALIASES.get(m.group(1), m.group(1)), m.group(2)
    if batch is not None and name != "latency_ms":
        raise TorchslimError(f"{where}: only latency_ms takes a batch size (@{batch}), not {name}")
    return Metric(name, int(batch) if batch is not None else None)


def parse_objectives(spec: SearchSpec) -> list[Metric]:
    metrics = [parse_metric(t, f"search.objectives[{i}]") for i, t in enumerate(spec.objectives)]
    labels = [m.label for m in metrics]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise TorchslimError(f"search.objectives[{i}]: {label} is listed twice")
    return metrics


def parse_constraints(spec: SearchSpec) -> list[Constraint]:
    out = []
    for i, text in enumerate(spec.constraints):
        where = f"search.constraints[{i}]"
        m = _CONSTRAINT.match(str(text))
        if not m:
            raise TorchslimError(f"{where}: cannot read {text!r}; write \"metric <= value\", e.g. "
                                 f"\"accuracy_drop <= 0.5\" or \"latency_ms@1 <= 0.2\"")
        metric = parse_metric(m.group(1), where)
        try:
            bound = float(m.group(3))
        except ValueError:
            raise TorchslimError(f"{where}: {m.group(3)!r} is not a number") from None
        op = {"<": "<=", "≤": "<=", ">": ">=", "≥": ">="}.get(m.group(2), m.group(2))
        out.append(Constraint(metric, op, bound))
    return out


def check_spec(spec: SearchSpec) -> None:
    """What the block says on its own (the recipe's paths and the task's metrics are checked by the search)."""
    parse_params(spec)
    parse_objectives(spec)
    parse_constraints(spec)
