"""What a model costs, counted from the module itself: parameters (and nonzeros), and MACs of one forward pass."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of ``model``; shared parameters count once.

    For layers pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) the nonzero count is taken
    from the masked weight the layer actually uses, not from the dense ``weight_orig``.

    Example:
        >>> count_params(nn.Linear(4, 3))
        (15, 15)
    """
    params = nonzero = 0
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            effective = p
            if name.endswith("_orig") and isinstance(getattr(module, name[: -len("_orig")], None), torch.Tensor):
                effective = getattr(module, name[: -len("_orig")])
            nonzero += int(torch.count_nonzero(effective.detach()))
    return params, nonzero


def count_macs(model: nn.Module, inputs: Sequence[int] | torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass on ONE sample: of shape ``inputs`` (no batch dimension, zeros), or
    the example ``inputs`` themselves (a tensor or keyword tensors with a batch axis of 1, e.g. token ids).

    Counted: ``nn.Conv1d/2d/3d`` (output elements × in_channels/groups × kernel elements) and ``nn.Linear``
    (output elements × in_features, so leading dimensions such as a sequence count), ``nn.LSTM``/``nn.GRU`` (per
    time step and direction, gates × hidden × (input + hidden)). Not counted: element-wise
    ops, activations, pooling, normalization (BN) and bias additions; they are a small share for conv/linear
    networks and depend on fusion in the runtime. Zero weights count too: this is the dense cost.

    Example:
        >>> count_macs(nn.Linear(4, 3), (4,))
        12
    """
    total = 0

    def conv_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def rnn_hook(m: nn.RNNBase, inputs: Any, out: Any) -> None:
        nonlocal total
        x = inputs[0]
        steps = x.batch_sizes.sum().item() if isinstance(x, nn.utils.rnn.PackedSequence) else x.numel() // x.shape[-1]
        gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
        directions = 2 if m.bidirectional else 1
        for layer in range(m.num_layers):
            width = m.input_size if layer == 0 else m.hidden_size * directions
            total += int(steps) * directions * gates * m.hidden_size * (width + m.hidden_size)

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, (nn.LSTM, nn.GRU)):
            hooks.append(m.register_forward_hook(rnn_hook))
    was_training = model.training
    first = next(model.parameters(), None)
    if isinstance(inputs, (torch.Tensor, Mapping)):
        x = inputs
    else:
        x = torch.zeros(1, *inputs, device=first.device if first is not None else "cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(**x) if isinstance(x, Mapping) else model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total
