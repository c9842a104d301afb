"""Language-model pruning (torchslim.prune.llm): magnitude, Wanda and SparseGPT, unstructured and 2:4, calibrated
block by block on a tiny GPT built here."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tiny_lm import TinyGPT

from torchslim.errors import TorchslimError
from torchslim.prune import LLM_PRUNERS, LLMPruneConfig, prune_llm_, sparsegpt_prune_, wanda_prune_


def _calibration(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(n)]


def _correlated(tokens: int, width: int, rank: int = 8, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are strongly correlated (low rank plus a little noise), as a transformer's are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, rank, generator=g) @ torch.randn(rank, width, generator=g) + \
        0.1 * torch.randn(tokens, width, generator=g)


def _output_error(layer: nn.Linear, original: nn.Linear, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (layer(x) - original(x)).pow(2).sum().item() / original(x).pow(2).sum().item()


def _pruned(method: str, x: torch.Tensor, layer: nn.Linear, **options) -> nn.Linear:
    model = nn.Sequential(copy.deepcopy(layer))
    prune_llm_(model, [x], method=method, **options)
    return model[0]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_holds_in_every_group_and_the_head_stays_dense(method):
    model = TinyGPT()
    result = prune_llm_(model, _calibration(), method=method, pattern="2:4")
    assert result.sequential == (method != "magnitude")  # magnitude needs no calibration run
    assert len(result.layers) == 12  # 6 Linear layers per block, lm_head excluded by default
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) and name != "lm_head":
            zeros = (layer.weight.reshape(-1, 4) == 0).sum(1)
            assert zeros.min().item() >= 2, f"{name}: a group of 4 keeps more than 2 weights"
            assert result.layers[name] == pytest.approx(0.5)
    assert (model.lm_head.weight != 0).all()
    assert result.overall == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_sparsity_is_exact(method):
    """0.3 of 64 inputs is 19.2: Wanda zeros round(19.2) = 19 per row, the others round(0.3 · numel) per layer."""
    layer = nn.Linear(64, 24)
    x = _correlated(256, 64)
    pruned = _pruned(method, x, layer, sparsity=0.3)
    zeros = pruned.weight == 0
    if method == "wanda":
        assert zeros.sum(1).tolist() == [19] * 24
    else:
        assert zeros.sum().item() == round(0.3 * 64 * 24)


def test_wanda_beats_magnitude_on_outlier_features():
    """A few input features with 25× larger activations: Wanda keeps their (small) weights, magnitude drops them."""
    torch.manual_seed(1)
    layer = nn.Linear(64, 32)
    x = torch.randn(512, 64)
    x[:, :4] *= 25
    magnitude = _output_error(_pruned("magnitude", x, layer, sparsity=0.5), layer, x)
    wanda = _output_error(_pruned("wanda", x, layer, sparsity=0.5), layer, x)
    assert wanda < 0.5 * magnitude, (wanda, magnitude)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs(pattern):
    """Correlated inputs let the kept weights make up for the pruned ones: SparseGPT's weight update wins."""
    torch.manual_seed(2)
    layer = nn.Linear(128, 48)
    x = _correlated(1024, 128, rank=16)
    errors = {m: _output_error(_pruned(m, x, layer, pattern=pattern), layer, x)
              for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < 0.7 * min(errors["wanda"], errors["magnitude"]), errors


def test_sparsegpt_lazy_block_updates_equal_the_unblocked_computation():
    """With 2:4 the masks do not depend on the block size, so blocks of 8 columns must give the weights of one block
    of all 64, up to float rounding: the deferred updates of later blocks are the same sum."""
    torch.manual_seed(4)
    layer = nn.Linear(64, 16)
    x = _correlated(512, 64)
    small = _pruned("sparsegpt", x, layer, pattern="2:4", blocksize=8)
    whole = _pruned("sparsegpt", x, layer, pattern="2:4", blocksize=64)
    assert torch.equal(small.weight == 0, whole.weight == 0)
    assert torch.allclose(small.weight, whole.weight, rtol=1e-3, atol=1e-5)


def test_blocks_are_calibrated_on_what_the_pruned_blocks_before_them_produce():
    """Sequential Wanda: block 1's masks are those computed from block 1's inputs in the model whose block 0 is already
    pruned (recomputed here by hand), which differ from the masks of a one-pass calibration."""
    torch.manual_seed(3)
    original = TinyGPT()
    calibration = _calibration()
    sequential = copy.deepcopy(original)
    wanda_prune_(sequential, calibration, sparsity=0.5)
    one_pass = copy.deepcopy(original)
    wanda_prune_(one_pass, calibration, sparsity=0.5, sequential=False)

    sq = torch.zeros(32)

    def record(module, args):
        sq.add_(args[0].reshape(-1, 32).pow(2).sum(0))

    hook = sequential.blocks[1].q.register_forward_pre_hook(record)
    with torch.no_grad():
        for ids in calibration:
            sequential(ids)
    hook.remove()
    w = original.blocks[1].q.weight.detach()
    score = w.abs() * sq.sqrt()
    expected = torch.zeros_like(w, dtype=torch.bool).scatter_(1, score.topk(16, dim=1, largest=False).indices, True)
    assert torch.equal(sequential.blocks[1].q.weight == 0, expected)
    assert not torch.equal(one_pass.blocks[1].q.weight == 0, expected)
    assert torch.equal(sequential.blocks[0].q.weight, one_pass.blocks[0].q.weight)  # block 0 sees the same inputs


def test_a_model_without_a_block_list_is_calibrated_in_one_pass():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    result = sparsegpt_prune_(model, [torch.randn(64, 16)], sparsity=0.5)
    assert not result.sequential and result.layers == {"0": 0.5, "2": 0.5}


def test_errors_name_the_problem():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    batch = [torch.randn(4, 8)]
    with pytest.raises(TorchslimError, match=r"multiple of 4, and layer '2' has 6 inputs"):
        prune_llm_(model, batch, method="wanda", pattern="2:4")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(TorchslimError, match="strictly between 0 and 1"):
            prune_llm_(model, batch, sparsity=bad)
    with pytest.raises(TorchslimError, match="no batches"):
        prune_llm_(model, [], method="sparsegpt")
    with pytest.raises(TorchslimError, match="needs calibration data"):
        wanda_prune_(model, None)
    with pytest.raises(TorchslimError, match=r"calibration_batches=3.*only 1"):
        prune_llm_(model, batch, calibration_batches=3)
    with pytest.raises(TorchslimError, match="valid choices: magnitude, sparsegpt, wanda"):
        prune_llm_(model, batch, method="wandaa")
    with pytest.raises(TorchslimError, match="pattern must be"):
        prune_llm_(model, batch, pattern="4:2")
    assert LLMPruneConfig(pattern="2:4").target_sparsity == 0.5
    assert LLM_PRUNERS.names() == ["magnitude", "sparsegpt", "wanda"]
