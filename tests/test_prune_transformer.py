"""Feed-forward neurons removed for real from transformer blocks (tiny random BERTs)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import torchslim as ts  # noqa: E402
from torchslim.errors import TorchslimError  # noqa: E402
from torchslim.prune.transformer import ffn_importance, ffn_layers, prune_ffn_  # noqa: E402


def _encoder(layers=2, intermediate=32):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=intermediate, max_position_embeddings=32)
    torch.manual_seed(0)
    return ts.HFSentenceEncoder(transformers.BertModel(cfg)).eval()


def _ids(n=8, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (n, length), generator=g)
    ids[: n // 2, length // 2:] = 0  # half the rows padded
    return ids


def test_neurons_that_write_nothing_are_the_ones_removed_and_the_output_is_unchanged():
    enc = _encoder()
    for _, down in ffn_layers(enc):
        down.weight.data[:, 1::2] = 0  # the odd neurons write nothing
    ids = _ids()
    with torch.no_grad():
        before = enc(ids)
    info = prune_ffn_(enc, keep=16, calibration=[ids])
    assert info == {"criterion": "activation", "width": 32, "kept": 16, "blocks": 2}
    for ups, down in ffn_layers(enc):
        assert ups[0].weight.shape == (16, 16) and ups[0].bias.shape == (16,) and down.weight.shape == (16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids), before)  # keeping any odd neuron instead would change it
    assert enc.model.config.intermediate_size == 16


def test_pruned_model_saves_as_a_directory_from_pretrained_loads(tmp_path):
    enc = _encoder()
    ids = _ids()
    prune_ffn_(enc, keep=0.25, calibration=[ids])
    out = ts.save_hf_model(enc, tmp_path / "pruned")
    loaded = transformers.AutoModel.from_pretrained(out, local_files_only=True).eval()
    assert loaded.config.intermediate_size == 8
    with torch.no_grad():
        torch.testing.assert_close(ts.HFSentenceEncoder(loaded)(ids), enc(ids))


def test_padding_tokens_do_not_vote():
    enc = _encoder()
    ids = _ids()[4:]  # unpadded rows
    padded = torch.cat([ids, torch.zeros(len(ids), 6, dtype=ids.dtype)], 1)
    a = ffn_importance(enc, [ids])
    b = ffn_importance(enc, [padded])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_magnitude_needs_no_data_and_activation_does():
    enc = _encoder()
    assert prune_ffn_(enc, keep=8, criterion="magnitude")["kept"] == 8
    with pytest.raises(TorchslimError, match="criterion 'activation' needs calibration batches"):
        prune_ffn_(_encoder(), keep=8)


@pytest.mark.parametrize("keep, message", [
    (0, r"keep 0: must be a whole number of neurons in 1..32"),
    (33, r"keep 33: must be a whole number of neurons in 1..32"),
    (1.5, r"keep 1.5: a fraction must be in \(0, 1\]"),
])
def test_bad_keep_names_the_valid_range(keep, message):
    with pytest.raises(TorchslimError, match=message):
        prune_ffn_(_encoder(), keep=keep, criterion="magnitude")


def test_unknown_criterion_and_models_without_blocks_are_one_line_errors():
    with pytest.raises(TorchslimError, match="unknown feed-forward importance 'taylor'; valid choices: activation, "
                                             "magnitude"):
        prune_ffn_(_encoder(), keep=8, criterion="taylor")
    with pytest.raises(TorchslimError, match="cannot find the transformer layers"):
        prune_ffn_(torch.nn.Sequential(torch.nn.Linear(2, 2)), keep=1, criterion="magnitude")
