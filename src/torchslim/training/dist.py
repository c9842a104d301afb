"""Data-parallel training under torchrun, in a handful of lines (nanoGPT's way).

`torchrun --nproc_per_node=N -m torchslim run RECIPE` sets RANK / WORLD_SIZE / LOCAL_RANK; `init()` reads them,
joins the process group (gloo on CPU, nccl on GPU) and from then on `fit` shards every batch across ranks, wraps the
model in DistributedDataParallel (one gradient all-reduce per step) and reduces metrics. Without those variables
every function here is a no-op for a single process.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group once, if launched by torchrun."""
    if not launched() or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 logs and writes files; the other ranks only compute."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(*values: float) -> list[float]:
    """Sum plain numbers over ranks (for loss, correct and seen counts)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rank 0's tensor on every rank (the others pass None): compute once, share."""
    if not active():
        return t
    t = t.contiguous() if is_main() else torch.empty(shape, dtype=dtype)
    dist.broadcast(t, src=0)
    return t


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `model` when several ranks train; the module itself otherwise."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    # All ranks start from rank 0's weights (DDP broadcasts them at construction).
    return DistributedDataParallel(model)  # buffers (batch-norm statistics) follow rank 0 on every forward


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def check_in_sync(model: torch.nn.Module, where: str) -> None:
    """Raise if any rank's weights differ from rank 0's (bit for bit). Debug aid: costs one all-gather per call,
    enabled in `fit` by TORCHSLIM_CHECK_SYNC=1."""
    if not active():
        return
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world())]
    dist.all_gather(gathered, flat)
    for r, other in enumerate(gathered[1:], start=1):
        if not torch.equal(gathered[0], other):
            raise RuntimeError(f"rank {r} weights differ from rank 0 after {where} "
                               f"(max |Δ| {(gathered[0] - other).abs().max().item():.3e})")
