"""Every stage type a recipe can name, registered in STAGES (`torchslim list stages`).

A new stage is one class in one of these files (or a new file imported here) with ``@STAGES.register``.
"""
from torchslim.pipeline.stages import distill, export, prune, quant, train  # noqa: F401  (they register)
from torchslim.pipeline.stages import llm  # noqa: F401  (prune_llm, weight_only, export_int4)
from torchslim.pipeline.stages.base import STAGES, Stage

STAGE_TYPES: dict[str, type[Stage]] = {name: STAGES.get(name) for name in STAGES.names()}

__all__ = ["STAGES", "STAGE_TYPES", "Stage"]
