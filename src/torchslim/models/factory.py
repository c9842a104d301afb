"""Build the model a recipe names: a zoo model by name, or a user's own `factory: "module:function"`.

A factory runs the user's own code: that is the one place a recipe names code, on purpose. The module is imported
from the working directory or PYTHONPATH; nothing is downloaded.

Example:
    >>> from torchslim.tasks import ImageClassification
    >>> m = build_model({"model": "mlp", "args": {"widths": [16]}}, 10, ImageClassification(input_shape=(1, 8, 8)))
    >>> type(m).__name__
    'MLP'
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from torchslim.errors import TorchslimError, did_you_mean
from torchslim.models.registry import MODELS


def import_factory(target: str) -> Callable[..., nn.Module]:
    """The callable named by ``"package.module:function"``, imported from the working directory or PYTHONPATH.

    Example:
        >>> import_factory("torchslim.models.mlp:MLP").__name__
        'MLP'
    """
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr:
        raise TorchslimError(f"factory '{target}': expected 'module:function', e.g. 'my_models:build'")
    if os.getcwd() not in sys.path and "" not in sys.path:  # `python -m` and console scripts differ here
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise TorchslimError(f"factory '{target}': cannot import module '{module_name}' ({e}); it is looked for in "
                             f"the working directory ({os.getcwd()}) and PYTHONPATH") from None
    except Exception as e:  # the user's module failed while importing: say where, keep it one line
        raise TorchslimError(f"factory '{target}': importing '{module_name}' failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise TorchslimError(f"factory '{target}': module '{module_name}' has no '{attr}'{did_you_mean(attr, names)}; "
                             f"callables there: {', '.join(sorted(names)) or '(none)'}")
    if not callable(fn):
        raise TorchslimError(f"factory '{target}': '{attr}' is a {type(fn).__name__}, not a function or class")
    return fn


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _field(spec: Any, key: str) -> Any:
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key, None)


def build_model(spec: Any, num_classes: int, task: Any) -> nn.Module:
    """A fresh model for ``task`` from a recipe model section: a ``model:`` zoo name, a ``factory:`` or an ``hf:``
    Hugging Face directory, plus ``args``; then ``keep_layers`` (layer dropping) when given.

    A zoo model gets what the task knows about the inputs (``input_shape`` for images, ``vocab_size`` for text);
    a factory gets ``num_classes`` and those too, for each one its signature accepts, then its own ``args``. A
    Hugging Face directory becomes a sequence classifier (text-classification) or a sentence encoder
    (sentence-embedding), after checking that the data was tokenized by its own tokenizer.
    """
    model = _build(spec, num_classes, task)
    keep = _field(spec, "keep_layers")
    if keep is not None:
        from torchslim.models.hf import drop_layers

        drop_layers(model, list(keep))
    return model


def _build(spec: Any, num_classes: int, task: Any) -> nn.Module:
    name, factory, hf = _field(spec, "model"), _field(spec, "factory"), _field(spec, "hf")
    args = dict(_field(spec, "args") or {})
    if hf:
        return _hf_model(hf, num_classes, task, args)
    given = {"num_classes": num_classes, **task.model_kwargs()}
    if factory:
        fn = import_factory(factory)
        kwargs = {k: v for k, v in given.items() if _accepts(fn, k) and k not in args}
        try:
            model = fn(**kwargs, **args)
        except TorchslimError:
            raise
        except Exception as e:
            raise TorchslimError(f"factory '{factory}' failed with args {args}: {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise TorchslimError(f"factory '{factory}' returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    from torchslim.models import create_model

    builder = MODELS.get(name)
    for key in task.model_kwargs():
        if not _accepts(builder, key):
            fits = [n for n in MODELS.names() if all(_accepts(MODELS.get(n), k) for k in task.model_kwargs())
                    and task.name in getattr(MODELS.get(n), "tasks", (task.name,))]  # a builder may name its tasks
            raise TorchslimError(f"model '{name}' does not fit the data: the task is {task.name} (the model needs "
                                 f"{key}); models for it: {', '.join(fits) or '(none)'}")
    return create_model(name, num_classes=num_classes, **task.model_kwargs(), **args)


def _hf_model(path: str, num_classes: int, task: Any, args: dict) -> nn.Module:
    from torchslim.models import hf

    hf.check_hf_directory(path)
    if args:
        raise TorchslimError(f"hf: {path}: args do not apply to a Hugging Face directory (its config.json says what "
                             f"the model is); got {', '.join(args)}")
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        hf.check_tokenizer_matches(path, tokenizer)
    if task.name == "text-classification":
        model: nn.Module = hf.load_hf_classifier(path, num_classes=num_classes)
    elif task.name == "sentence-embedding":
        model = hf.load_hf_encoder(path)
    else:
        raise TorchslimError(f"hf: {path}: a Hugging Face model takes text; the task is {task.name} (Hugging Face "
                             f"models serve: text-classification, sentence-embedding)")
    hf.check_text_inputs(model, task.vocab_size, task.max_length)
    return model
