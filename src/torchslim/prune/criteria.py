"""Pruning criteria: one protocol, registered by name. A criterion scores every weight of the pruned layers; higher
means more important. Masks are then drawn from the scores (globally, per layer, or N:M) in `prune.magnitude`.

    scores = CRITERIA.get("taylor")(layers, model=model, data=data, batches=8)   # {layer name: tensor like weight}

Adding a criterion is one function and one registration.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.registry import Registry

Scores = dict[str, torch.Tensor]
CRITERIA: Registry[Callable[..., Scores]] = Registry("pruning criterion")


@CRITERIA.register("magnitude", help="|w| (l1) or w² (l2): the classic, needs no data")
def magnitude(layers: Mapping[str, nn.Module], *, norm: str = "l1", **_) -> Scores:
    return {name: (m.weight.detach().abs() if norm == "l1" else m.weight.detach().pow(2)) for name, m in layers.items()}


@CRITERIA.register("random", help="uniform random scores (seeded): the baseline every criterion must beat")
def random(layers: Mapping[str, nn.Module], *, seed: int = 0, **_) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.weight.shape, generator=g) for name, m in layers.items()}


def _grad_times_weight(layers: Mapping[str, nn.Module], model: nn.Module | None, data, batches: int,
                       batch_size: int, seed: int, what: str) -> Scores:
    """|w ⊙ ∂L/∂w| summed over `batches` training batches (cross-entropy on the labels)."""
    if model is None or data is None:
        raise TorchslimError(f"pruning criterion '{what}' needs the model and training data (gradients); "
                             f"data-free choices: magnitude, random")
    x, y = data.train.tensors[:2]
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: batches * batch_size]
    was_training = model.training
    model.eval()  # no dropout noise in the scores; batch-norm uses its running statistics
    scores = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    for idx in rows.split(batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        for name, m in layers.items():
            scores[name] += (m.weight.detach() * m.weight.grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


@CRITERIA.register("taylor", help="first-order Taylor |w·∂L/∂w| over a few batches (Molchanov et al. 2017)")
def taylor(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batches: int = 8,
           batch_size: int = 128, seed: int = 0, **_) -> Scores:
    return _grad_times_weight(layers, model, data, batches, batch_size, seed, "taylor")


@CRITERIA.register("snip", help="connection sensitivity |w·∂L/∂w| on one batch, meant for untrained weights "
                                "(Lee et al. 2019)")
def snip(layers: Mapping[str, nn.Module], *, model: nn.Module | None = None, data=None, batch_size: int = 128,
         seed: int = 0, **_) -> Scores:
    # SNIP normalizes by the sum over all connections; a positive scale changes no ranking, so it is left out.
    return _grad_times_weight(layers, model, data, 1, batch_size, seed, "snip")
