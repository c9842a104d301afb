"""Batch augmentations that run on tensors, on whatever device the batch lives on.

Example:
    >>> import torch
    >>> from torchslim.data import random_shift
    >>> x = torch.rand(4, 1, 28, 28)
    >>> random_shift(x, 2, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 1, 28, 28])
"""
from __future__ import annotations

import torch

from torchslim.errors import TorchslimError


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of an N×C×H×W batch by its own integer (dx, dy) in [-max_px, max_px] (Hinton's ±2 px jitter).

    Pixels shifted in from outside take the image's minimum value, which for normalised data is the background (a
    zero pixel). Positive dx moves the content right, positive dy down. The shifts are drawn from ``generator`` (or
    the global CPU generator) on its own device, so a CPU generator gives the same shifts for a batch on any device.

    Example:
        >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> random_shift(x, 1, torch.Generator().manual_seed(0))[0, 0]  # dx = +1, dy = -1
        tensor([[0., 3., 4.],
                [0., 6., 7.],
                [0., 0., 0.]])
    """
    if isinstance(max_px, bool) or not isinstance(max_px, int) or max_px < 0:
        raise TorchslimError(f"random_shift max_px must be a whole number ≥ 0, got {max_px!r}")
    if x.dim() != 4:
        raise ValueError(f"random_shift expects an N×C×H×W batch, got shape {tuple(x.shape)}")
    if max_px == 0 or x.numel() == 0:
        return x.clone()
    n, c, h, w = x.shape
    draw_on = generator.device if generator is not None else torch.device("cpu")
    shifts = torch.randint(-max_px, max_px + 1, (n, 2), generator=generator, device=draw_on).to(x.device)
    dx, dy = shifts[:, 0], shifts[:, 1]
    # out[i, j] = x[i - dy, j - dx]: source row/col per image, N×H and N×W.
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # N×H×W
    gathered = x[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows.clamp(0, h - 1)[:, None, :, None],
        cols.clamp(0, w - 1)[:, None, None, :],
    ]
    fill = x.reshape(n, -1).amin(dim=1)[:, None, None, None]
    return torch.where(inside[:, None], gathered, fill)
