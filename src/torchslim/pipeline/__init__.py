"""The pipeline: a recipe's stages run in order (`runner`), each stage a small class (`stages/`).

Names are loaded on first use: the recipe schema imports `torchslim.pipeline.stages`, and the runner imports the
recipe, so this package must not import the runner when it is itself imported.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"run_recipe": "torchslim.pipeline.runner", "check_recipe": "torchslim.pipeline.runner",
            "load_data": "torchslim.pipeline.runner", "RunState": "torchslim.pipeline.state",
            "STAGES": "torchslim.pipeline.stages", "STAGE_TYPES": "torchslim.pipeline.stages",
            "Stage": "torchslim.pipeline.stages"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchslim.pipeline' has no attribute '{name}'")
