"""The run state a stage reads and extends: the data, the teachers, the current model and every artifact so far."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError
from torchslim.io import save_checkpoint
from torchslim.training import dist

Log = Callable[[str], None]


@dataclass
class RunState:
    recipe: Any  # torchslim.recipe.Recipe (not imported: the recipe imports the stages, which import this)
    out: Path
    data: Any  # torchslim.data.DataBundle
    log: Log
    teacher: nn.Module | None = None
    teachers: dict[str, nn.Module] = field(default_factory=dict)  # every teacher by name (`teacher:` is "teacher")
    model: nn.Module | None = None  # the current model: what the next stage starts from
    student: str | None = None  # name of the first student artifact, the "uncompressed student" baseline
    artifacts: list[Artifact] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    codebooks: dict | None = None  # from a `share` stage, for a compressed export of the same model

    @property
    def task(self):
        return self.data.task

    def create(self, spec: Any) -> nn.Module:
        """A fresh model from a recipe's model section (a zoo name, a user's `factory`, or an ONNX teacher)."""
        if getattr(spec, "onnx", None):
            from torchslim.distillation.onnx_teacher import OnnxTeacher

            return OnnxTeacher(spec.onnx, self.data.num_classes, example_inputs=self.example_inputs(2))
        if getattr(spec, "from_teacher", False):
            return self._from_teacher(spec)
        from torchslim.models.factory import build_model

        model = build_model(spec, self.data.num_classes, self.task)
        self.task.check_model(model)  # e.g. a language model's context shorter than the data's blocks
        return model

    def _from_teacher(self, spec: Any) -> nn.Module:
        """A copy of the teacher (trained, or a fresh one of its kind while the recipe is being checked), with
        `keep_layers` only when given."""
        import copy

        teacher = self.teacher if self.teacher is not None else self.create(self.recipe.teacher)
        model = copy.deepcopy(teacher).requires_grad_(True)  # distillation freezes the teacher; its copy learns
        if spec.keep_layers is not None:
            from torchslim.models.hf import drop_layers

            drop_layers(model, list(spec.keep_layers))
        return model

    def example_inputs(self, batch_size: int = 1) -> Any:
        return self.task.example_inputs(batch_size)

    def save(self, model: nn.Module, name: str, meta: dict) -> Path:
        """`<name>.safetensors`; a Hugging Face model is also written as a model directory `<name>.hf/` (config,
        safetensors, tokenizer) that ``from_pretrained`` and sentence-transformers load as they are."""
        path = self.out / f"{name}.safetensors"
        if dist.is_main():
            save_checkpoint(model, path, meta)
            from torchslim.models.hf import (HFSentenceEncoder, HFSequenceClassifier, hf_directory_problem,
                                             save_hf_model)

            if isinstance(model, (HFSentenceEncoder, HFSequenceClassifier)):
                problem = hf_directory_problem(model)
                if problem:  # the safetensors file above still holds it; resume and export rebuild it from there
                    self.log(f"[{name}] no {name}.hf/ directory: {problem}")
                else:
                    save_hf_model(model, self.out / f"{name}.hf", tokenizer_from=self.hf_source())
        return path

    def hf_source(self) -> str | None:
        """The Hugging Face directory the run's models come from (its tokenizer and sentence-transformers files)."""
        specs = [self.recipe.teacher_spec(n) for n in self.recipe.teacher_names()] + [self.recipe.student]
        return next((s.hf for s in specs if s is not None and getattr(s, "hf", None)), None)

    def checkpoint(self, name: str) -> Path:
        """Where a training stage keeps its per-epoch state (removed once the stage is finished)."""
        return checkpoint_path(self.out, name)

    def round_checkpoint(self, name: str) -> Callable[[int], Path]:
        """Per-round checkpoints of a stage that trains in rounds (pruning)."""
        return lambda k: self.checkpoint(f"{name} round {k}")

    def test_inputs(self):
        """The test split's inputs (for verification of exported and quantized files)."""
        if self.data.test is None:
            raise TorchslimError("the data has no test split to verify against")
        return self.data.test.tensors[0]


def checkpoint_path(out: Path, name: str) -> Path:
    return out / "checkpoints" / f"{name.replace(' ', '-')}.pt"
