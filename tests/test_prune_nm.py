"""N:M storage: exact round trips, the byte count by hand, the bit layout, and clear errors."""
import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.prune import PruneConfig, prunable_layers, prune_
from torchslim.prune.nm import index_bits, nm_bytes, nm_storage, pack_nm, unpack_nm


def _nm_weight(shape, n, m, seed=0, dtype=torch.float32):
    """A random weight pruned to N:M by magnitude along the flattened input dimension."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    groups = w.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(n, dim=1).indices, True)
    return (groups * keep).reshape(shape)


@pytest.mark.parametrize(("shape", "n", "m"), [((6, 8), 2, 4), ((4, 2, 2, 2), 2, 4), ((3, 16), 1, 4),
                                               ((5, 16), 3, 8), ((2, 64), 5, 64)])
def test_pack_unpack_round_trip_is_exact(shape, n, m):
    w = _nm_weight(shape, n, m)
    packed = pack_nm(w, n, m)
    back = unpack_nm(packed)
    assert torch.equal(back, w) and back.dtype == w.dtype and back.shape == w.shape
    assert packed.values.shape == (w.numel() // m, n)


def test_groups_with_fewer_than_n_nonzeros_and_other_dtypes_round_trip():
    w = _nm_weight((4, 8), 2, 4)
    w[0] = 0  # whole groups of zeros
    w[1, :4] = torch.tensor([0.0, 0.0, 0.0, 7.0])  # one nonzero in a group
    assert torch.equal(unpack_nm(pack_nm(w, 2, 4)), w)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        v = _nm_weight((4, 8), 2, 4, dtype=dtype)
        assert torch.equal(unpack_nm(pack_nm(v, 2, 4)), v)


def test_values_go_to_fp16_only_when_that_is_exact():
    exact = torch.tensor([[0.5, 0.0, -3.0, 0.0]])
    assert pack_nm(exact, 2, 4).values.dtype == torch.float16
    assert pack_nm(exact, 2, 4, half_when_exact=False).values.dtype == torch.float32
    inexact = torch.tensor([[0.1, 0.0, 0.0, 1e-9]])  # 0.1 is not a float16 number; 1e-9 underflows
    packed = pack_nm(inexact, 2, 4)
    assert packed.values.dtype == torch.float32 and torch.equal(unpack_nm(packed), inexact)


def test_bytes_and_bit_layout_by_hand():
    # 4×8 fp32 at 2:4: 8 groups × 2 kept = 16 values × 4 bytes = 64, plus 16 indices × 2 bits = 4 bytes → 68 of 128.
    w = _nm_weight((4, 8), 2, 4)
    packed = pack_nm(w, 2, 4, half_when_exact=False)
    assert (packed.nbytes, packed.dense_bytes, nm_bytes(32, 2, 4, value_bytes=4)) == (68, 128, 68)
    # 3:8 on 4×8: 4 groups × 3 = 12 values (48 bytes) + 12 × 3 bits = 36 bits → 5 bytes.
    assert index_bits(8) == 3 and nm_bytes(32, 3, 8) == 53 and pack_nm(_nm_weight((4, 8), 3, 8), 3, 8,
                                                                       half_when_exact=False).nbytes == 53
    # Positions (1, 3) then (0, 2), 2 bits each, little-endian: 1 | 3<<2 | 0<<4 | 2<<6 = 141.
    two = pack_nm(torch.tensor([[0.0, 2.0, 0.0, 3.0, 4.0, 0.0, 5.0, 0.0]]), 2, 4)
    assert two.indices.dtype == torch.uint8 and two.indices.tolist() == [1 | 3 << 2 | 0 << 4 | 2 << 6]
    assert two.values.tolist() == [[2.0, 3.0], [4.0, 5.0]]


def test_a_weight_that_breaks_the_pattern_is_a_clear_error():
    w = _nm_weight((2, 8), 2, 4)
    w[1, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(TorchslimError, match=r"does not satisfy 2:4: 1 group\(s\).*row 1, inputs 4..7 \(3 nonzeros\)"):
        pack_nm(w, 2, 4)
    with pytest.raises(TorchslimError, match="6 inputs per output, not a multiple of 4"):
        pack_nm(torch.zeros(2, 6), 2, 4)
    with pytest.raises(TorchslimError, match="0 < N < M"):
        pack_nm(torch.zeros(2, 4), 4, 2)


def test_nm_storage_of_a_pruned_model_counts_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Conv1d(8, 4, 1), nn.Linear(1, 2))
    cfg = PruneConfig(pattern="2:4", exclude=["3"])
    prune_(model, cfg)
    info = nm_storage(prunable_layers(model, cfg.exclude), 2, 4)
    assert info["layers"] == {"0": {"dense_bytes": 512, "packed_bytes": 64 * 4 + 16, "value_dtype": "float32"},
                              "2": {"dense_bytes": 128, "packed_bytes": 16 * 4 + 4, "value_dtype": "float32"}}
    assert (info["dense_bytes"], info["packed_bytes"]) == (640, 340)
    with pytest.raises(TorchslimError, match="does not satisfy 2:4"):
        nm_storage(prunable_layers(nn.Sequential(nn.Linear(8, 2))), 2, 4)  # dense: not N:M at all
