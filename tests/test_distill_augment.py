"""augment_token_ids: Tang et al. (2019)'s masking and n-gram sampling on token ids."""
import pytest
import torch

from torchslim.distillation import augment_token_ids
from torchslim.errors import TorchslimError


def _ids(n=200, length=12, vocab=50, seed=0):
    """n rows of 1..length real tokens (ids 2..vocab-1, never unk or pad), padded with 0 at the end."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    return tokens.masked_fill(torch.arange(length) >= lengths.unsqueeze(1), 0)


def _is_contiguous_part(part: list[int], row: list[int]) -> bool:
    return any(row[s:s + len(part)] == part for s in range(len(row) - len(part) + 1))


def test_shape_order_and_determinism():
    ids = _ids()
    out = augment_token_ids(ids, 3, seed=7)
    assert out.shape == (600, 12) and out.dtype == torch.int64
    assert torch.equal(out, augment_token_ids(ids, 3, seed=7))
    assert not torch.equal(out, augment_token_ids(ids, 3, seed=8))
    assert not torch.equal(out[:200], out[200:400])  # the copies differ from each other
    # Row k·N + i comes from row i: with nothing to do, every copy is the input.
    same = augment_token_ids(ids, 3, mask_prob=0.0, ngram_prob=0.0)
    assert torch.equal(same, ids.repeat(3, 1))


def test_padding_stays_padding_and_rows_stay_left_aligned():
    ids = _ids()
    out = augment_token_ids(ids, 4, mask_prob=0.3, ngram_prob=0.5, seed=1)
    src = ids.repeat(4, 1)
    assert bool((out[src == 0] == 0).all())  # nothing is written into padding
    real = out.ne(0)
    assert not bool((real[:, 1:] & ~real[:, :-1]).any())  # tokens first, padding only at the end
    assert bool(real[:, 0].all())  # every row keeps at least one token (the sources have one)


def test_masking_rate_and_only_real_tokens_masked():
    ids = _ids(n=2000, seed=2)
    out = augment_token_ids(ids, 2, mask_prob=0.1, ngram_prob=0.0, seed=3)
    src = ids.repeat(2, 1)
    real = src.ne(0)
    changed = out != src
    assert bool((out[changed] == 1).all())  # a changed token became unk
    rate = changed[real].float().mean().item()
    assert rate == pytest.approx(0.1, abs=0.01)
    all_masked = augment_token_ids(ids, 1, mask_prob=1.0, ngram_prob=0.0)
    assert torch.equal(all_masked, ids.masked_fill(ids.ne(0), 1))


def test_ngrams_are_contiguous_parts_of_their_row_with_lengths_1_to_max():
    ids = _ids(n=500, seed=4)
    out = augment_token_ids(ids, 1, mask_prob=0.0, ngram_prob=1.0, max_ngram=5, seed=5)
    lengths = []
    for row, gram in zip(ids.tolist(), out.tolist()):
        row = [t for t in row if t]
        gram = [t for t in gram if t]
        assert 1 <= len(gram) <= min(5, len(row))
        assert _is_contiguous_part(gram, row)
        if len(row) >= 5:
            lengths.append(len(gram))
    assert set(lengths) == {1, 2, 3, 4, 5}  # n is drawn from 1..max_ngram
    # Start positions are spread over the row, not always its beginning.
    starts_at_0 = sum(g[0] == r[0] for g, r in zip(out.tolist(), ids.tolist()))
    assert starts_at_0 < 0.6 * len(ids)


def test_ngram_rate():
    ids = _ids(n=4000, length=12, seed=6)
    ids = ids[ids.ne(0).sum(1) >= 8]
    out = augment_token_ids(ids, 1, mask_prob=0.0, ngram_prob=0.25, max_ngram=5, seed=9)
    shortened = (out.ne(0).sum(1) < ids.ne(0).sum(1)).float().mean().item()
    assert shortened == pytest.approx(0.25, abs=0.03)  # rows of ≥ 8 tokens are always shortened by a ≤5-gram


def test_empty_rows_and_custom_ids():
    ids = torch.tensor([[0, 0, 0], [4, 5, 6]])
    out = augment_token_ids(ids, 5, mask_prob=0.5, ngram_prob=0.5, unk_id=9, pad_id=0, seed=0)
    assert bool((out[0::2] == 0).all())  # the all-padding row stays all padding
    assert set(out[1::2].unique().tolist()) <= {0, 4, 5, 6, 9}
    padded_with_3 = torch.tensor([[7, 8, 3, 3]])
    masked = augment_token_ids(padded_with_3, 1, mask_prob=1.0, ngram_prob=0.0, unk_id=1, pad_id=3)
    assert masked.tolist() == [[1, 1, 3, 3]]


@pytest.mark.parametrize("kwargs,message", [
    ({"copies": 0}, "copies must be a whole number ≥ 1, got 0"),
    ({"copies": 2.0}, "copies must be a whole number ≥ 1, got 2.0"),
    ({"copies": 1, "mask_prob": 1.5}, "mask_prob must be a number in [0, 1], got 1.5"),
    ({"copies": 1, "ngram_prob": -0.1}, "ngram_prob must be a number in [0, 1], got -0.1"),
    ({"copies": 1, "max_ngram": 0}, "max_ngram must be a whole number ≥ 1, got 0"),
    ({"copies": 1, "unk_id": 0}, "unk_id and pad_id must differ"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(TorchslimError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        augment_token_ids(_ids(n=4), **kwargs)


def test_bad_ids_are_named():
    with pytest.raises(TorchslimError,
                       match=r"integer N×L tensor of token ids, got a tensor of dtype float32 and shape \(2, 3\)"):
        augment_token_ids(torch.zeros(2, 3), 1)
    with pytest.raises(TorchslimError, match=r"got a tensor of dtype int64 and shape \(3,\)"):
        augment_token_ids(torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(TorchslimError, match=r"row 1 has a token after padding \(0\)"):
        augment_token_ids(torch.tensor([[3, 4, 0], [0, 5, 6]]), 1)
