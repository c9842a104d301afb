"""A transfer set for distillation made from the training texts: Tang et al. (2019)'s masking and n-gram sampling.

A student learns from the teacher's soft labels on any input, not only on labelled ones, so a distillation set can
be much larger than the training split. Tang et al. ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", 2019, §3.3) make one from each training sentence by (1) replacing each word with the unknown token
with probability ``mask_prob`` and (2) with probability ``ngram_prob`` keeping only a random n-gram of it, n drawn
uniformly from 1..``max_ngram``. Their third rule (POS-guided word replacement) needs a tagger and is not here.
The augmented rows have no labels: label them with the teacher's logits (:func:`torchslim.distillation.teacher_logits`).

Example:
    >>> import torch
    >>> ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 0, 0, 0, 0]])
    >>> out = augment_token_ids(ids, copies=3, seed=0)
    >>> out.shape                                       # copy k of row i is row k·N + i
    torch.Size([6, 6])
    >>> bool(((out == 0) | (ids.repeat(3, 1) != 0)).all())   # padding stays padding
    True
"""
from __future__ import annotations

import torch

from torchslim.errors import TorchslimError

__all__ = ["augment_token_ids"]


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise TorchslimError(f"augment_token_ids: {name} must be a number in [0, 1], got {value!r}")


def _check_whole(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise TorchslimError(f"augment_token_ids: {name} must be a whole number ≥ {least}, got {value!r}")


def augment_token_ids(
    ids: torch.Tensor,
    copies: int,
    *,
    mask_prob: float = 0.1,
    ngram_prob: float = 0.25,
    max_ngram: int = 5,
    unk_id: int = 1,
    pad_id: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """`copies` augmented versions of every row of `ids` (int N×L token ids, padding `pad_id` at the end of a row):
    a LongTensor of ``copies·N`` rows × L, copy k of row i at row ``k·N + i`` (so the source row of each output row
    is ``torch.arange(N).repeat(copies)``).

    In each copy every real token becomes `unk_id` with probability `mask_prob`; then, with probability
    `ngram_prob`, the row keeps only n consecutive tokens (n uniform in 1..`max_ngram`, at most the row's length,
    from a uniform start), moved to the front and padded. Padding stays padding, and the same `seed` gives the same
    rows. Rows may repeat (a one-word text with nothing masked); the original rows are not included.

    Example:
        >>> ids = torch.tensor([[5, 6, 7, 0]])
        >>> augment_token_ids(ids, 2, mask_prob=1.0, ngram_prob=0.0).tolist()
        [[1, 1, 1, 0], [1, 1, 1, 0]]
        >>> augment_token_ids(ids, 1, mask_prob=0.0, ngram_prob=1.0, max_ngram=1, seed=3).ne(0).sum().item()
        1
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.is_complex() \
            or ids.dtype == torch.bool:
        what = (f"a tensor of dtype {str(ids.dtype).removeprefix('torch.')} and shape {tuple(ids.shape)}"
                if isinstance(ids, torch.Tensor) else type(ids).__name__)
        raise TorchslimError(f"augment_token_ids: ids must be an integer N×L tensor of token ids, got {what}")
    _check_whole("copies", copies, 1)
    _check_whole("max_ngram", max_ngram, 1)
    _check_probability("mask_prob", mask_prob)
    _check_probability("ngram_prob", ngram_prob)
    for name, value in (("unk_id", unk_id), ("pad_id", pad_id)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TorchslimError(f"augment_token_ids: {name} must be a whole number, got {value!r}")
    if unk_id == pad_id:
        raise TorchslimError(f"augment_token_ids: unk_id and pad_id must differ, both are {unk_id}: a masked word "
                             f"would become padding")
    real = ids.ne(pad_id)  # N×L
    # A real token after padding: the row is padded at the front or in the middle, where n-grams (and the models,
    # which read a row up to its length) would go wrong.
    gaps = (real[:, 1:] & ~real[:, :-1]).any(1)
    if gaps.any():
        row = int(gaps.nonzero()[0, 0])
        raise TorchslimError(f"augment_token_ids: row {row} has a token after padding ({pad_id}); rows must hold "
                             f"their tokens first and padding only at the end")

    n, length = ids.shape
    g = torch.Generator().manual_seed(seed)
    ids = ids.long().repeat(copies, 1)  # copies·N × L
    real = real.repeat(copies, 1)
    lengths = real.sum(1)  # copies·N
    masked = torch.rand(ids.shape, generator=g) < mask_prob
    ids = ids.masked_fill(masked & real, unk_id)

    # n-gram sampling, for all rows at once: row r keeps tokens start..start+n-1 of itself, at positions 0..n-1.
    sample = torch.rand(len(ids), generator=g) < ngram_prob
    grams = torch.randint(1, max_ngram + 1, (len(ids),), generator=g).minimum(lengths)
    start = (torch.rand(len(ids), generator=g) * (lengths - grams + 1)).long().minimum(lengths - grams)
    position = torch.arange(length).expand(len(ids), -1)  # copies·N × L
    source = (start.unsqueeze(1) + position).clamp(max=length - 1)
    gram = ids.gather(1, source).masked_fill(position >= grams.unsqueeze(1), pad_id)
    return torch.where(sample.unsqueeze(1), gram, ids)
