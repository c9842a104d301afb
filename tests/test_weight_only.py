"""Weight-only quantization (torchslim.quant.weight_only): RTN, GPTQ, AWQ and SmoothQuant on single layers with
chosen input statistics, on a tiny GPT built here, and on a tiny Hugging Face Llama when transformers is installed."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant import (
    WEIGHT_ONLY_METHODS,
    WeightOnlyConfig,
    awq_quantize_,
    gptq_quantize_,
    quantize_groupwise,
    quantize_weights_,
    rtn_quantize_,
    smooth_activations_,
    smoothquant_,
)
from torchslim.quant.weight_only import ScaledInputLinear
from tiny_lm import TinyGPT as _TinyGPT


def TinyGPT(*args, **kwargs):  # noqa: N802 - the shared tiny LM, with outlier channels here
    return _TinyGPT(*args, outliers=True, **kwargs)


def _calibration(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(n)]


def _correlated(tokens: int, width: int, rank: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, rank, generator=g) @ torch.randn(rank, width, generator=g) + \
        0.1 * torch.randn(tokens, width, generator=g)


def _relative_error(model: nn.Module, reference: nn.Module, x) -> float:
    with torch.no_grad():
        want = reference(x)
        return (model(x) - want).pow(2).sum().item() / want.pow(2).sum().item()


@pytest.mark.parametrize("bits", [4, 3])
def test_rtn_groups_hold_at_most_two_to_the_bits_values(bits):
    model = nn.Sequential(nn.Linear(64, 24))
    result = rtn_quantize_(model, bits=bits, group_size=16)
    q = result.layers["0"]
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2 ** bits - 1
    assert q.scales.shape == (24, 4) and q.zeros.shape == (24, 4)
    assert torch.equal(model[0].weight.detach(), q.dequantize())  # the model runs the codes exactly
    groups = model[0].weight.detach().reshape(24, 4, 16)  # along the inputs: 4 groups of 16 per row
    distinct = [len(torch.unique(groups[r, g])) for r in range(24) for g in range(4)]
    assert max(distinct) <= 2 ** bits
    assert (groups == 0).any(-1).float().mean() < 1  # 0 is on every grid, but not every group has a zero


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_reconstruction_error_is_below_rtn(bits):
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = _correlated(1024, 128, rank=16)
    errors = {}
    for method in ("rtn", "gptq"):
        model = nn.Sequential(copy.deepcopy(layer))
        quantize_weights_(model, [x], method=method, bits=bits, group_size=32)
        errors[method] = _relative_error(model, nn.Sequential(layer), x)
    assert errors["gptq"] < 0.5 * errors["rtn"], errors


def test_act_order_keeps_groups_in_the_original_column_order():
    """Columns are visited by decreasing input energy, yet group g is still inputs 16g..16g+15: each group's codes,
    with its own scale and zero point, give exactly the layer's weights."""
    torch.manual_seed(1)
    layer = nn.Linear(64, 16)
    x = _correlated(512, 64)
    x = x * torch.rand(64) * 4  # input energies in a shuffled order: act_order really permutes
    model = nn.Sequential(copy.deepcopy(layer))
    result = gptq_quantize_(model, [x], bits=4, group_size=16, act_order=True)
    q = result.layers["0"]
    w = model[0].weight.detach()
    for g in range(4):
        cols = slice(16 * g, 16 * (g + 1))
        rebuilt = (q.codes[:, cols].float() - q.zeros[:, g:g + 1].float()) * q.scales[:, g:g + 1]
        assert torch.equal(rebuilt, w[:, cols])
        assert all(len(torch.unique(row)) <= 16 for row in w[:, cols])
    rtn = nn.Sequential(copy.deepcopy(layer))
    rtn_quantize_(rtn, bits=4, group_size=16)
    assert _relative_error(model, nn.Sequential(layer), x) < _relative_error(rtn, nn.Sequential(layer), x)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lazy_block_updates_equal_the_unblocked_computation(act_order):
    """Blocks of 8 columns (a group of 32 spans four of them, its grid taken from values with updates still pending)
    give the codes of one block of all 64 columns, up to float rounding."""
    torch.manual_seed(6)
    w = torch.randn(16, 64)
    x = _correlated(512, 64) * torch.rand(64)
    h = 2 * x.T @ x / len(x)
    from torchslim.quant.weight_only import gptq_quantize_weight

    small = gptq_quantize_weight(w, h, 4, 32, act_order=act_order, blocksize=8)
    whole = gptq_quantize_weight(w, h, 4, 32, act_order=act_order, blocksize=64)
    assert (small.codes == whole.codes).float().mean() > 0.99
    assert torch.allclose(small.scales, whole.scales, rtol=1e-4)
    assert torch.allclose(small.dequantize(), whole.dequantize(), atol=0.05 * w.abs().max().item())


@pytest.mark.parametrize("with_norm", [True, False])
def test_awq_beats_rtn_on_salient_channels(with_norm):
    """A few input channels carry 20× larger activations. AWQ scales them up before quantizing and folds 1/s into the
    LayerNorm (or, without one, keeps it as an explicit multiply)."""
    torch.manual_seed(2)
    if with_norm:
        model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32))
        with torch.no_grad():
            model[0].weight[:4] = 20.0
        x = torch.randn(512, 64)
    else:
        model = nn.Sequential(nn.Linear(64, 32))
        x = torch.randn(512, 64)
        x[:, :4] *= 20
    rtn, awq = copy.deepcopy(model), copy.deepcopy(model)
    rtn_quantize_(rtn, bits=3, group_size=32)
    result = awq_quantize_(awq, [x], bits=3, group_size=32)
    if with_norm:
        assert result.folded == {"1": "0"} and isinstance(awq[1], nn.Linear)
        assert not torch.equal(awq[0].weight, model[0].weight)  # 1/s went into the norm
    else:
        assert result.folded == {} and isinstance(awq[0], ScaledInputLinear)
    s = result.scales["1" if with_norm else "0"]
    assert s[:4].min() > s[4:].max()  # the salient channels are scaled up
    e_rtn, e_awq = _relative_error(rtn, model, x), _relative_error(awq, model, x)
    assert e_awq < 0.7 * e_rtn, (e_awq, e_rtn)


def test_smoothing_preserves_the_float_model():
    torch.manual_seed(3)
    model = TinyGPT().eval()
    calibration = _calibration()
    smoothed = copy.deepcopy(model)
    scales = smooth_activations_(smoothed, calibration, alpha=0.5)
    # q, k, v share ln1 and fc1 reads ln2 in each block; o and fc2 have nothing to fold into and are left alone.
    assert sorted(scales) == sorted(f"blocks.{b}.{n}" for b in range(2) for n in ("q", "k", "v", "fc1"))
    assert not torch.allclose(smoothed.blocks[0].ln1.weight, model.blocks[0].ln1.weight)
    with torch.no_grad():
        for ids in calibration:
            want = model(ids)
            assert torch.allclose(smoothed(ids), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_smoothquant_w8a8_beats_unsmoothed_w8a8_on_outlier_channels():
    """Per-tensor int8 activations with a few 30× channels lose the small ones; smoothing moves the range into the
    weights. The unsmoothed baseline is the same W8A8 fake quant without the migration."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight[:3] = 30.0
    x = torch.randn(256, 64)
    smooth = copy.deepcopy(model)
    result = smoothquant_(smooth, [x], alpha=0.5, activation="per_tensor")
    q = result.layers["1"]
    assert result.bits == 8 and q.scales.shape == (32, 1) and (q.zeros == 128).all()  # symmetric per channel
    assert isinstance(smooth[1], ScaledInputLinear) and smooth[1].act_bits == 8
    naive = copy.deepcopy(model)
    rtn_quantize_(naive, bits=8, group_size=-1, symmetric=True)
    layer = ScaledInputLinear.from_linear(naive[1], act_bits=8, act_granularity="per_tensor")
    with torch.no_grad():
        layer.act_scale = model[0](x).abs().max() / 127
    naive[1] = layer
    e_smooth, e_naive = _relative_error(smooth, model, x), _relative_error(naive, model, x)
    assert e_smooth < 0.5 * e_naive, (e_smooth, e_naive)


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "smoothquant"])
def test_every_method_runs_block_by_block_on_a_tiny_gpt(method):
    model = TinyGPT().eval()
    reference = copy.deepcopy(model)
    calibration = _calibration()
    options = {} if method == "smoothquant" else {"group_size": 16}  # smoothquant: int8 per channel
    result = quantize_weights_(model, calibration, method=method, **options)
    assert result.sequential == (method != "rtn")
    assert len(result.layers) == 12 and "lm_head" not in result.layers
    for name, q in result.layers.items():
        assert torch.equal(model.get_submodule(name).weight.detach(), q.dequantize())
    assert _relative_error(model, reference, calibration[0]) < 0.05


def test_awq_folds_into_llama_rmsnorm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config).eval()
    reference = copy.deepcopy(model)
    calibration = [torch.randint(0, 64, (2, 16)) for _ in range(3)]
    result = awq_quantize_(model, calibration, group_size=16)
    assert result.sequential and len(result.layers) == 14
    assert result.folded["model.layers.1.self_attn.k_proj"] == "model.layers.1.input_layernorm"
    assert result.folded["model.layers.0.mlp.up_proj"] == "model.layers.0.post_attention_layernorm"
    assert isinstance(model.model.layers[0].mlp.down_proj, ScaledInputLinear)  # nothing to fold into
    with torch.no_grad():
        got, want = model(calibration[0]).logits, reference(calibration[0]).logits
    assert (got - want).pow(2).mean() / want.pow(2).mean() < 0.05


def test_errors_name_the_problem():
    model = nn.Sequential(nn.Linear(48, 8))
    with pytest.raises(TorchslimError, match=r"group_size 32 does not divide the input width 48 of layer '0'; "
                                             r"valid group sizes: -1 \(per channel\), 8, 12, 16, 24, 48"):
        rtn_quantize_(model, group_size=32)
    for bits in (1, 5, 16):
        with pytest.raises(TorchslimError, match=f"bits must be one of 2, 3, 4, 8, got {bits}"):
            rtn_quantize_(model, bits=bits)
    with pytest.raises(TorchslimError, match="valid choices: awq, gptq, rtn, smoothquant"):
        quantize_weights_(model, None, method="gptqq")
    with pytest.raises(TorchslimError, match="needs calibration data"):
        gptq_quantize_(model, None, group_size=16)
    with pytest.raises(TorchslimError, match="no batches"):
        awq_quantize_(model, iter([]), group_size=16)
    with pytest.raises(TorchslimError, match="does not divide"):
        quantize_groupwise(torch.randn(4, 10), 4, 4)
    assert WEIGHT_ONLY_METHODS.names() == ["awq", "gptq", "rtn", "smoothquant"]
    assert WeightOnlyConfig(method="smoothquant").group_size == -1
