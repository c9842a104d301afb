"""Hugging Face sequence classifiers from a local directory: tiny random configs, never the packaged weights."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import torchslim as ts  # noqa: E402
from torchslim.distillation import embedding_loss  # noqa: E402
from torchslim.errors import TorchslimError  # noqa: E402


def _tiny_bert(tmp_path, num_labels=2):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", model


def test_loads_offline_and_matches_the_saved_model(tmp_path):
    path, original = _tiny_bert(tmp_path)
    m = ts.load_hf_classifier(path).eval()
    ids = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
    with torch.no_grad():
        want = original.eval()(input_ids=ids, attention_mask=ids.ne(0).long()).logits
        got = m(ids)
    torch.testing.assert_close(got, want)


def test_padding_is_masked_not_read(tmp_path):
    """The mask comes from id 0: more padding must not change the logits (a model reading pads would)."""
    path, _ = _tiny_bert(tmp_path)
    m = ts.load_hf_classifier(path).eval()
    with torch.no_grad():
        short = m(torch.tensor([[2, 5, 7, 3]]))
        padded = m(torch.tensor([[2, 5, 7, 3, 0, 0, 0, 0]]))
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_new_head_size_and_training_with_fit(tmp_path):
    """num_classes replaces the head; ts.fit trains it like any model (its loss falls on a learnable toy task)."""
    path, _ = _tiny_bert(tmp_path, num_labels=2)
    m = ts.load_hf_classifier(path, num_classes=3)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = torch.cat([torch.full((96, 1), 2), (y + 10).unsqueeze(1), torch.randint(4, 40, (96, 4), generator=g)], 1)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=g)
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(m(x), y).item()
    ts.fit(m, loader, None, ts.TrainConfig(epochs=25, optimizer="adamw", lr=3e-3, keep="last"), seed=0)
    m.eval()
    with torch.no_grad():
        logits = m(x)
    assert logits.shape == (96, 3)
    assert torch.nn.functional.cross_entropy(logits, y).item() < before / 2


def test_bad_directories_are_one_line_errors(tmp_path):
    with pytest.raises(TorchslimError, match="does not exist"):
        ts.load_hf_classifier(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TorchslimError, match="no config.json"):
        ts.load_hf_classifier(tmp_path / "empty")
    path, _ = _tiny_bert(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(TorchslimError, match="holds no weights"):
        ts.load_hf_classifier(path)
    path, _ = _tiny_bert(tmp_path / "x")
    with pytest.raises(TorchslimError, match="num_classes"):
        ts.load_hf_classifier(path, num_classes=0)


def _tiny_encoder(tmp_path, layers=4):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    model.save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(40)) + "\n")
    (tmp_path / "enc" / "modules.json").write_text("[]\n")
    return tmp_path / "enc", model


def test_sentence_encoder_mean_pools_real_tokens_and_normalises(tmp_path):
    path, bert = _tiny_encoder(tmp_path)
    enc = ts.load_hf_encoder(path).eval()
    ids = torch.tensor([[2, 5, 7, 3, 0, 0]])
    with torch.no_grad():
        tokens = bert.eval()(input_ids=ids, attention_mask=ids.ne(0).long()).last_hidden_state
        want = torch.nn.functional.normalize(tokens[:, :4].mean(1), dim=-1)  # the 4 real tokens only
        got = enc(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(1))


def test_drop_layers_keeps_the_chosen_layers_and_saves_a_loadable_directory(tmp_path):
    path, bert = _tiny_encoder(tmp_path)
    original = {k: v.clone() for k, v in bert.state_dict().items()}
    enc = ts.drop_layers(ts.load_hf_encoder(path), keep=[0, 2])
    assert enc.model.config.num_hidden_layers == 2 and len(enc.model.encoder.layer) == 2
    new = enc.model.state_dict()
    # The new layer 1 is the old layer 2, weight for weight.
    torch.testing.assert_close(new["encoder.layer.1.output.dense.weight"],
                               original["encoder.layer.2.output.dense.weight"])
    out = ts.save_hf_model(enc, tmp_path / "student", tokenizer_from=path)
    assert (out / "model.safetensors").is_file() and (out / "vocab.txt").is_file() and (out / "modules.json").is_file()
    reloaded = transformers.AutoModel.from_pretrained(out, local_files_only=True).eval()
    assert reloaded.config.num_hidden_layers == 2
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ts.HFSentenceEncoder(reloaded)(ids), enc.eval()(ids))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".student")], "temporary directory left behind"


def test_drop_layers_errors_name_the_valid_range(tmp_path):
    path, _ = _tiny_encoder(tmp_path)
    enc = ts.load_hf_encoder(path)
    with pytest.raises(TorchslimError, match=r"out of range: the model has 4 layers \(valid indices 0\.\.3\)"):
        ts.drop_layers(enc, keep=[0, 4])
    with pytest.raises(TorchslimError, match="twice"):
        ts.drop_layers(enc, keep=[1, 1])
    with pytest.raises(TorchslimError, match="non-empty list"):
        ts.drop_layers(enc, keep=[])
    with pytest.raises(TorchslimError, match="cannot find the transformer layers"):
        ts.drop_layers(torch.nn.Linear(2, 2), keep=[0])


def test_embedding_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert embedding_loss(s, t, "mse").item() == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert embedding_loss(s, t, "cosine").item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    with pytest.raises(TorchslimError, match="one size"):
        embedding_loss(s, torch.zeros(2, 3))


def test_layer_dropped_encoder_distilled_on_unlabelled_text_moves_towards_the_teacher(tmp_path):
    """MiniLM-L6 → L3 in miniature: drop layers, distil embeddings (labels unused); the distance to the teacher's
    embeddings falls by more than half. (Random tiny encoders agree closely, so the student's kept layers are
    perturbed first to open a gap worth closing.)"""
    path, _ = _tiny_encoder(tmp_path)
    teacher = ts.load_hf_encoder(path).eval()
    student = ts.drop_layers(ts.load_hf_encoder(path), keep=[0, 3])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.model.encoder.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    ids = torch.randint(4, 40, (128, 8), generator=g)
    ids[:, 0] = 2
    unlabelled = torch.utils.data.TensorDataset(ids, torch.zeros(128, dtype=torch.long))
    loader = torch.utils.data.DataLoader(unlabelled, batch_size=32, shuffle=True, generator=g)

    def distance() -> float:
        student.eval()
        with torch.no_grad():
            return embedding_loss(student(ids), teacher(ids), "cosine").item()

    before = distance()
    kd = ts.KDConfig(losses=[{"name": "embedding", "metric": "cosine", "weight": 1.0}])
    ts.distill(student, teacher, loader, kd, ts.TrainConfig(epochs=15, optimizer="adamw", lr=1e-3, keep="last"),
               log=lambda _: None)
    after = distance()
    assert after < 0.5 * before, (before, after)


def test_evaluate_sentence_embeddings_by_cosine_to_the_teacher_in_pytorch_and_onnx_runtime(tmp_path):
    """The sentence-embedding task: labels are the reference embeddings; the teacher scores cosine 1, the ONNX
    export of a student matches the student, the table names the metric."""
    path, _ = _tiny_encoder(tmp_path)
    teacher = ts.load_hf_encoder(path).eval()
    student = ts.drop_layers(ts.load_hf_encoder(path), keep=[0]).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (24, 10), generator=g)
    ids[:12, 6:] = 0  # padded rows: the mask must travel into the ONNX graph too
    ref = ts.predict(teacher, ids)
    task = ts.get_task("sentence-embedding", vocab_size=40, max_length=10)
    onnx = ts.export_onnx(student, tmp_path / "student.onnx", task=task)
    ev = ts.evaluate({"teacher": teacher, "student": student, "student onnx": onnx}, task,
                     torch.utils.data.TensorDataset(ids, ref), latency=ts.LatencyConfig(max_seconds=0.01))
    by = {r["name"]: r for r in ev}
    assert by["teacher"]["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert by["teacher"]["accuracy"] is None and by["teacher"]["primary_metric"] == "cosine"
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(student(ids), ref).mean().item()
    assert by["student"]["metrics"]["cosine"] == pytest.approx(want, abs=1e-5)
    assert by["student onnx"]["metrics"]["cosine"] == pytest.approx(want, abs=1e-4)
    assert "cosine" in ev.table().splitlines()[0]


def test_tokenizer_or_length_the_model_cannot_read_is_a_one_line_error(tmp_path):
    path, _ = _tiny_bert(tmp_path)  # vocabulary 40, 32 positions
    m = ts.load_hf_classifier(path)
    ts.check_text_inputs(m, vocab_size=40, max_length=32)  # what it can read passes
    with pytest.raises(TorchslimError, match="tokenizer does not match the model: it makes ids up to 13822, the "
                                             "model's embedding table has 40 rows"):
        ts.check_text_inputs(m, vocab_size=13823, max_length=16)
    with pytest.raises(TorchslimError, match=r"max_length 128 is longer than the model's maximum sequence length 32"):
        ts.check_text_inputs(m, vocab_size=40, max_length=128)
