"""A stage: one step a recipe names. Its pydantic schema is its config, its traits are attributes, and its `run`
calls one public function of a family and returns one artifact.

A new stage is one class here (or in a file beside this one) registered with ``@STAGES.register("type")``; the
recipe schema, `torchslim list stages`, torchrun and resume learn about it from the class. What the stage reports
goes on its artifact as typed records (:mod:`torchslim.records`), which its family builds.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from torchslim.artifact import Artifact, Runtime
from torchslim.config import Config
from torchslim.io import load_checkpoint, load_state_dict
from torchslim.pipeline.state import RunState
from torchslim.records import Record, as_info
from torchslim.registry import Registry

STAGES: Registry[type[Stage]] = Registry("stage")


class Stage(Config):
    """Base of every stage. Traits (class attributes, or properties where they depend on a field):

    - ``makes_student``: builds a fresh model from the recipe's `student:` section (else starts from the current
      model, the teacher or what the previous stage left);
    - ``every_rank``: trains, so every torchrun rank runs it (the others run on rank 0 alone);
    - ``runtime``: where its artifact runs (`pytorch` or `onnxruntime`).
    """

    name: str | None = Field(None, description="unique name; also the artifact's name (default: the type)")

    every_rank: ClassVar[bool] = False
    fresh_student: ClassVar[bool] = False  # the default of `makes_student`
    stage_runtime: ClassVar[Runtime] = "pytorch"

    @property
    def label(self) -> str:
        """The stage's name in the run: its artifact, its checkpoint, its log lines."""
        return self.name or self.type  # type: ignore[attr-defined]  (each subclass declares its Literal type)

    @property
    def makes_student(self) -> bool:
        return self.fresh_student

    @property
    def runtime(self) -> Runtime:
        return self.stage_runtime

    def run(self, state: RunState, seed: int) -> Artifact:
        raise NotImplementedError

    def check_recipe(self, recipe: Any, where: str, made_model: bool) -> None:
        """Recipe-level checks beyond the schema (which teachers exist, ...): raise ValueError with the problem."""

    def check(self, state: RunState) -> None:
        """Checks on untrained models and a few rows, before any work starts (`torchslim validate` runs them)."""

    # --- what every stage shares -------------------------------------------------------------------------------
    def start_model(self, state: RunState) -> nn.Module:
        """The model this stage trains: a fresh student, or a copy of the current model (never changed in place)."""
        return state.create(state.recipe.student) if self.makes_student else copy.deepcopy(state.model)

    def source(self, state: RunState) -> str | None:
        """The artifact this stage's artifact is made from (``Artifact.source``): None for a fresh student, else the
        artifact of the current model."""
        return None if self.makes_student else current_artifact(state)

    def pytorch_artifact(self, state: RunState, model: nn.Module, *records: Record | None, **facts: Any) -> Artifact:
        """Save `model` as this stage's artifact, reporting `records` (None skipped) and free-form `facts`."""
        meta = {"stage": self.type, "model": state.recipe.student.model if self.makes_student else None}
        path = state.save(model, self.label, meta)
        return Artifact(self.label, self.type, "pytorch", path, model.eval(), as_info(*records, **facts),
                        self.source(state))

    def reload(self, state: RunState, path: Path, info: dict) -> Artifact:
        """A finished stage's artifact, rebuilt from its file instead of being recomputed (`--resume`); `info` is
        the one it reported, its records read back from progress.json."""
        if self.runtime == "onnxruntime":
            return Artifact(self.label, self.type, "onnxruntime", path, state.model, info, self.source(state))
        model = self.start_model(state)
        if not self.makes_student:  # structured pruning changed widths: give the layers the saved shapes first
            from torchslim.prune import resize_to_state_dict_

            resize_to_state_dict_(model, load_state_dict(path))
        return Artifact(self.label, self.type, "pytorch", path, load_checkpoint(model, path).eval(), info,
                        self.source(state))


def current_artifact(state: RunState) -> str | None:
    """The name of the artifact holding the current model (the last PyTorch artifact whose module it is), or None."""
    return next((a.name for a in reversed(state.artifacts) if a.runtime == "pytorch" and a.model is state.model), None)
