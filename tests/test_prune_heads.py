"""Attention heads removed for real: exact slicing in BERT, the zoo GPT (fused qkv) and a grouped-query Llama, the
configs that follow (or the one line saying they cannot), a measured latency target with the latency-table cache,
and the recipe stage."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from torchslim import TorchslimError
from torchslim.cli import main
from torchslim.models import create_model
from torchslim.prune import attention_layers, head_importance, prune_heads_, prune_heads_to_latency_

transformers = pytest.importorskip("transformers")


def tiny_bert(heads=4):
    torch.manual_seed(0)
    return create_model("bert", num_classes=2, vocab_size=300, layers=2, hidden=128, heads=heads, intermediate=256,
                        max_length=64).eval()


def tiny_gpt():
    torch.manual_seed(0)
    return create_model("gpt", vocab_size=65, n_layer=2, n_head=4, n_embd=32, block_size=16).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config).eval()


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids) if isinstance(model, transformers.PreTrainedModel) else model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def _silence(model, group_index: int) -> None:
    """Zero what the heads of one key/value group write (their columns of the output layer), in every block."""
    with torch.no_grad():
        for a in attention_layers(model):
            g = a.heads // a.kv_heads
            cols = slice(group_index * g * a.head_dim, (group_index + 1) * g * a.head_dim)
            a.out.weight[:, cols] = 0


@pytest.mark.parametrize("make, vocab, criterion", [(tiny_bert, 300, "activation"), (tiny_gpt, 65, "activation"),
                                                     (tiny_llama, 64, "activation"), (tiny_llama, 64, "magnitude")])
def test_a_silent_head_is_the_one_removed_and_the_outputs_do_not_move(make, vocab, criterion):
    """Both criteria score a head that writes nothing at 0, so it goes; every other head's rows of q/k/v and columns
    of the output layer must be the right ones for the outputs to stay the same (a wrong slice changes them)."""
    model = make()
    ids = torch.randint(1, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    _silence(model, 1)
    before = _logits(model, ids)
    a = attention_layers(model)[0]
    group = a.heads // a.kv_heads
    assert all(float(s[group:2 * group].max()) == 0 for s in head_importance(model, [ids], criterion))
    info = prune_heads_(model, keep=a.heads - group, calibration=[ids], criterion=criterion)
    assert info["kept"] == a.heads - group and info["kv_heads_kept"] == a.kv_heads - 1
    for layer in attention_layers(model):
        assert layer.out.in_features == (a.heads - group) * a.head_dim and layer.heads == a.heads - group
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)
    # Removing heads that do write changes the outputs: the check above can fail.
    other = make()
    before = _logits(other, ids)
    prune_heads_(other, keep=a.heads - group, calibration=[ids], criterion=criterion)
    assert (_logits(other, ids) - before).abs().max() > 1e-4


def test_a_llama_config_follows_and_the_directory_loads(tmp_path):
    from torchslim.models.hf import save_hf_model

    model = tiny_llama()
    ids = torch.randint(1, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    info = prune_heads_(model, keep=4, calibration=[ids])
    assert info["config_follows"] and (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 1)
    save_hf_model(model, tmp_path / "llama")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    torch.testing.assert_close(_logits(again, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)


def test_a_bert_with_pruned_heads_is_not_written_as_a_directory_it_would_not_load_from(tmp_path):
    from torchslim.models.hf import save_hf_model

    model = tiny_bert()
    prune_heads_(model, keep=2, criterion="magnitude")
    with pytest.raises(TorchslimError, match="attention heads were pruned .* ship it as ONNX"):
        save_hf_model(model, tmp_path / "bert")
    assert not (tmp_path / "bert").exists()


def test_a_gpt_with_pruned_heads_reloads_from_its_weights_and_exports_exactly(tmp_path):
    from torchslim import load_checkpoint, save_checkpoint
    from torchslim.export import export_onnx
    from torchslim.io import load_state_dict
    from torchslim.prune import resize_to_state_dict_

    model = tiny_gpt()
    ids = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    prune_heads_(model, keep=2, calibration=[ids])
    save_checkpoint(model, tmp_path / "gpt.safetensors")
    fresh = tiny_gpt()
    resize_to_state_dict_(fresh, load_state_dict(tmp_path / "gpt.safetensors"))
    load_checkpoint(fresh, tmp_path / "gpt.safetensors")
    torch.testing.assert_close(_logits(fresh.eval(), ids), _logits(model, ids))
    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "gpt.onnx", ids)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
    assert abs(got - _logits(model, ids).numpy()).max() < 1e-4


@pytest.mark.parametrize("keep, message", [
    (3, "heads kept per block must be one of 4, 8 (whole groups of 4 query heads sharing a key/value head)"),
    (0, "must be one of 4, 8"), (1.5, "a fraction must be in (0, 1]")])
def test_bad_keep_is_one_line_with_the_valid_choices(keep, message):
    with pytest.raises(TorchslimError, match=None) as e:
        prune_heads_(tiny_llama(), keep=keep, criterion="magnitude")
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TorchslimError, match="valid choices: activation, magnitude"):
        prune_heads_(tiny_bert(), keep=2, criterion="taylor")
    with pytest.raises(TorchslimError, match="needs calibration batches"):
        prune_heads_(tiny_bert(), keep=2)


def test_heads_pruned_to_a_measured_latency_target_with_the_table_cached(tmp_path):
    """A BERT of 8 heads at sequence 64 in ONNX Runtime: the attention cells come from the latency table (timed once,
    then read from the cache by a second model), the prediction falls with the heads, and the pruned model meets
    the target as measured."""
    ids = torch.randint(5, 300, (1, 64), generator=torch.Generator().manual_seed(0))
    calibration = [torch.randint(5, 300, (8, 64), generator=torch.Generator().manual_seed(1))]
    model = tiny_bert(heads=8)
    info = prune_heads_to_latency_(model, example_inputs=ids, calibration=calibration, latency_reduction=1.1,
                                   cache_dir=tmp_path / "cache", seconds=0.3, tolerance=0.3)
    assert 1 <= info["kept"] < 8 and all(a.heads == info["kept"] for a in attention_layers(model))
    predicted = [info["predicted_ms_by_heads"][n] for n in sorted(info["predicted_ms_by_heads"])]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]
    assert info["predicted_ms"] <= info["target_ms"] and info["measured_ms"] <= info["target_ms"] * 1.3
    assert info["table"]["measured_cells"] == 8
    again = prune_heads_to_latency_(tiny_bert(heads=8), example_inputs=ids, calibration=calibration,
                                    latency_reduction=1.1, cache_dir=tmp_path / "cache", seconds=0.3, tolerance=0.3)
    assert again["table"] == {**again["table"], "measured_cells": 0, "cached_cells": 8}
    with torch.no_grad():
        assert model(ids).shape == (1, 2)
    with pytest.raises(TorchslimError, match="out of reach of the attention heads: with 1 of 8 heads per block"):
        prune_heads_to_latency_(tiny_bert(heads=8), example_inputs=ids, latency_reduction=20, runtime="pytorch",
                                criterion="magnitude", cache_dir=tmp_path / "cache", seconds=0.1)


def _recipe(tmp_path, stage: dict) -> str:
    raw = {"version": 1, "seed": 0,
           "data": {"name": "tinyshakespeare", "block_size": 32, "limit_train": 256, "limit_test": 32},
           "teacher": {"model": "gpt", "args": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32},
                       "train": {"epochs": 1, "batch_size": 32}},
           "stages": [stage], "evaluate": {"threads": 1, "batch_sizes": [1], "max_seconds": 0.02}}
    path = tmp_path / "heads.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_prune_heads_stage_in_a_recipe_with_distillation_and_resume(tmp_path, capsys):
    stage = {"type": "prune_heads", "keep": 2, "distill": {"temperature": 2, "alpha": 0.5},
             "train": {"epochs": 1, "batch_size": 32}}
    out = tmp_path / "run"
    assert main(["run", _recipe(tmp_path, stage), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][-1]
    assert art["stage"] == "prune_heads" and art["info"]["head_pruning"]["kept"] == 2
    assert art["info"]["head_pruning"]["heads"] == 4 and art["params"] < report["artifacts"][0]["params"]
    assert art["info"]["training"]["history"][0]["terms"]["kd"] > 0
    # A resumed run rebuilds the pruned shapes from the file (the head count comes from the layers' widths).
    progress = json.loads((out / "progress.json").read_text())
    assert main(["run", _recipe(tmp_path, stage), "--out", str(out), "--resume", "--quiet"]) == 0
    again = json.loads((out / "report.json").read_text())["artifacts"][-1]
    assert again["metrics"] == art["metrics"] and progress == json.loads((out / "progress.json").read_text())


@pytest.mark.parametrize("stage, message", [
    ({"type": "prune_heads", "keep": 2, "latency_ms": 1.0},
     "give exactly one of keep (attention heads per block), latency_reduction or latency_ms (got keep, latency_ms)"),
    ({"type": "prune_heads", "keep": 2, "distill": {"losses": ["kd"]}}, "distill takes temperature and alpha only"),
    ({"type": "prune_heads", "keep": 2, "criterion": "taylor"}, "criterion"),
])
def test_bad_prune_heads_stages_are_one_line(tmp_path, capsys, stage, message):
    assert main(["validate", _recipe(tmp_path, stage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchslim: error:") and "\n" not in err and message in err, err
