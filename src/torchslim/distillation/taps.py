"""Intermediate features by module name, captured with forward hooks (the models need no edits), and the learned
adapters that map a student feature onto the teacher's shape.

    with FeatureTaps(model, ["layer2", "layer3"]) as taps:
        logits = model(x)
        taps.outputs["layer2"]          # (N, 32, 14, 14): the output of model.layer2 in this forward

Names are those of ``model.named_modules()`` (``layer2``, ``layer2.0.relu2``, ``fc1``); a DDP-wrapped model is looked
into (hooks go on ``model.module``). A module called twice in one forward keeps its last output.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError

_SHOWN = 12  # module names listed in an error message: enough to orient, short enough for one line


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else the model itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def module_names(model: nn.Module) -> list[str]:
    """Every name a tap may use: ``named_modules()`` without the root."""
    return [name for name, _ in unwrap(model).named_modules() if name]


def resolve_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """The submodule called `name`, or a TorchslimError with a did-you-mean and a short list of valid names.

    Example:
        >>> from torchslim.models import create_model
        >>> type(resolve_module(create_model("resnet8"), "layer2")).__name__
        'Sequential'
    """
    modules = dict(unwrap(model).named_modules())
    modules.pop("", None)
    if name in modules:
        return modules[name]
    names = list(modules)
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    # Shallow names first (layer1, layer2.0, ...): they are what a user picks; the deep ones follow the same pattern.
    shown = sorted(names, key=lambda n: (n.count("."), names.index(n)))[:_SHOWN]
    more = f", ... ({len(names) - len(shown)} more)" if len(names) > len(shown) else ""
    raise TorchslimError(f"unknown module '{name}' in the {role}{hint}; valid names include: "
                         f"{', '.join(shown)}{more}")


class FeatureTaps:
    """Forward hooks that keep the output of named modules; a context manager that removes them on exit.

    Outputs keep their autograd graph (a student's features carry gradients to the loss); `outputs` is cleared at
    the start of every forward of the model, so it never mixes two batches.

    Example:
        >>> import torch
        >>> from torchslim.models import create_model
        >>> model = create_model("resnet8", input_shape=(1, 28, 28))
        >>> with FeatureTaps(model, ["layer2", "layer3"]) as taps:
        ...     _ = model(torch.zeros(2, 1, 28, 28))
        ...     tuple(taps.outputs["layer3"].shape)
        (2, 64, 7, 7)
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        self.model = unwrap(model)
        self.names = list(dict.fromkeys(names))  # unique, in order
        self.modules = {n: resolve_module(self.model, n, role) for n in self.names}  # errors before any hook exists
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> FeatureTaps:
        if self.names:
            self._handles.append(self.model.register_forward_pre_hook(lambda m, a: self.outputs.clear()))
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._keep(name)))
        return self

    def _keep(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TorchslimError(f"module '{name}' returns {type(output).__name__}, not a tensor; tap a module "
                                     f"whose output is one tensor")
            self.outputs[name] = output
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()


# ---------------------------------------------------------------------------------------------------------- adapters
def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4-D feature maps brought to the same height and width: the larger one is average-pooled (adaptive
    average pooling) to the size of the smaller. 2-D features pass through unchanged.

    Example:
        >>> a, b = match_spatial(torch.ones(2, 3, 8, 8), torch.ones(2, 5, 4, 4))
        >>> tuple(a.shape), tuple(b.shape)
        ((2, 3, 4, 4), (2, 5, 4, 4))
    """
    if a.dim() != 4 or b.dim() != 4 or a.shape[2:] == b.shape[2:]:
        return a, b
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if a.shape[2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], where: str = "feature") -> nn.Module:
    """A learned map from student channels to teacher channels, built from one batch's shapes (N first):
    a 1×1 convolution for (N, C, H, W) features, a linear layer for (N, C); the identity when the channels agree.
    Spatial sizes are not adapted here: :func:`match_spatial` pools the larger map to the smaller.

    Example:
        >>> make_adapter((8, 16, 14, 14), (8, 64, 7, 7))
        Conv2d(16, 64, kernel_size=(1, 1), stride=(1, 1), bias=False)
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t) or len(s) not in (2, 4):
        raise TorchslimError(f"{where}: student features {list(s[1:])} and teacher features {list(t[1:])} cannot be "
                             f"matched; pick layers whose outputs are both (N, C) or both (N, C, H, W)")
    if s[1] == t[1]:
        return nn.Identity()
    # No bias: a constant offset between the two feature spaces is not something the student should be taught.
    return nn.Conv2d(s[1], t[1], 1, bias=False) if len(s) == 4 else nn.Linear(s[1], t[1], bias=False)
