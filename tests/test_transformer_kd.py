"""Transformer distillation losses: TinyBERT hidden states (`hidden`), MiniLM attention distributions
(`attention-kl`) and value relations (`value-relation`), MiniLM v2 Q/K/V relations (`minilm-v2`), on tiny random
BERTs of different depth, width and head count."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

import torchslim as ts  # noqa: E402
from torchslim.cli import main  # noqa: E402
from torchslim.distillation import (KDConfig, TransformerTaps, attention_log_probs, build_objective,  # noqa: E402
                                    distill, hidden_state_loss, qkv_relations, relation_kl_loss, uniform_layer_map)
from torchslim.distillation import objective as objective_module  # noqa: E402
from torchslim.errors import TorchslimError  # noqa: E402
from torchslim.models.hf import HFSequenceClassifier, HFSentenceEncoder  # noqa: E402
from torchslim.training import TrainConfig  # noqa: E402

LOSS_NAMES = ["hidden", "attention-kl", "value-relation", "minilm-v2"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bert(hidden=32, layers=4, heads=4, seed=0, attn="sdpa", labels=2):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=32,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=labels,
                                  attn_implementation=attn, initializer_range=0.2)  # peaked attention
    torch.manual_seed(seed)
    return HFSequenceClassifier(transformers.BertForSequenceClassification(cfg))


def _ids(n=8, length=10, seed=0):
    """Token ids 2..39 with a random number of trailing pads (id 0); every row keeps at least 3 real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 40, (n, length), generator=g)
    real = torch.randint(3, length + 1, (n,), generator=g)
    ids[torch.arange(length).unsqueeze(0) >= real.unsqueeze(1)] = 0
    return ids


def _objective(student, teacher, losses, x):
    y = torch.zeros(len(x), dtype=torch.long)
    return build_objective(student, {"teacher": teacher}, KDConfig(losses=losses), x, y)


def _terms(obj, x):
    """The loss terms of one batch, with the objective's hooks in place (what `fit` calls each step)."""
    y = torch.zeros(len(x), dtype=torch.long)
    with obj.taps():
        total, _, terms = obj.loss_fn(cached=False)(obj.model, x, y, None)
    return total, terms


# ------------------------------------------------------------------------------------------------------- functions
def test_hidden_state_loss_against_a_hand_computation_and_padding_ignored():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    want = sum(((s[n, i] - t[n, i]) ** 2).mean() for n in range(2) for i in range(4) if mask[n, i]) / 5
    torch.testing.assert_close(hidden_state_loss(s, t, mask), want)
    garbage = s.clone()
    garbage[mask == 0] = 1e3  # what sits at padded positions must not count
    torch.testing.assert_close(hidden_state_loss(garbage, t, mask), want)
    proj = torch.nn.Linear(2, 3, bias=False)
    torch.testing.assert_close(hidden_state_loss(s[..., :2], t, mask, proj),
                               hidden_state_loss(proj(s[..., :2]), t, mask))
    with pytest.raises(TorchslimError, match="projection"):
        hidden_state_loss(s[..., :2], t, mask)


def test_relation_kl_against_a_hand_computation_with_padding():
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    xs, xt = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    ls, lt = qkv_relations(xs, 2, mask), qkv_relations(xt, 2, mask)
    total, rows = 0.0, 0
    for n in range(2):
        real = int(mask[n].sum())
        for h in range(2):
            a = xs[n, :real, 4 * h:4 * h + 4]  # relation head h of the student: width 8 / 2
            b = xt[n, :real, 6 * h:6 * h + 6]
            p_s = torch.softmax(a @ a.T / 2.0, dim=-1)  # √4
            p_t = torch.softmax(b @ b.T / 6 ** 0.5, dim=-1)
            total += (p_t * (p_t.log() - p_s.log())).sum()
            rows += real
    torch.testing.assert_close(relation_kl_loss(ls, lt, mask), total / rows)
    assert float(ls.exp()[0, :, :, 3:].abs().max()) == 0.0  # padded keys get no probability
    assert float(relation_kl_loss(ls, ls, mask)) == 0.0


def test_uniform_layer_map_is_tinyberts():
    assert uniform_layer_map(4, 12) == {0: 2, 1: 5, 2: 8, 3: 11}
    assert uniform_layer_map(2, 4) == {0: 1, 1: 3}
    assert uniform_layer_map(3, 3) == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_recomputed_attention_under_sdpa_equals_eager_output_attentions(family):
    """Q and K from the projection hooks of an sdpa model give exactly the probabilities an eager copy reports."""
    if family == "bert":
        sdpa = _bert(hidden=32, layers=2, heads=4).model.bert
        make = transformers.BertModel
    else:
        cfg = transformers.DistilBertConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                            dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        sdpa, make = transformers.DistilBertModel(cfg), transformers.DistilBertModel
    assert sdpa.config._attn_implementation == "sdpa"
    eager_cfg = copy.deepcopy(sdpa.config)
    eager_cfg._attn_implementation = "eager"
    eager = make(eager_cfg)
    eager.load_state_dict(sdpa.state_dict())
    ids = _ids(3, 7)
    with torch.no_grad():
        want = eager.eval()(input_ids=ids, attention_mask=ids.ne(0).long(), output_attentions=True).attentions
        with TransformerTaps(sdpa.eval(), qkv=[0, 1]) as taps:
            sdpa(input_ids=ids, attention_mask=ids.ne(0).long())
            got = [attention_log_probs(taps.query[i], taps.key[i], taps.layer_heads[i], taps.mask).exp()
                   for i in (0, 1)]
            assert taps.layer_heads == {0: 4, 1: 4} and taps.mask.tolist() == ids.ne(0).tolist()
            sdpa(ids)  # no mask given: the taps derive it from pad id 0, as the torchslim wrappers do
            assert taps.mask.tolist() == ids.ne(0).tolist()
    for i in (0, 1):
        torch.testing.assert_close(got[i], want[i], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ registered
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_zero_for_an_identical_teacher_positive_otherwise_and_blind_to_padding(name):
    x = _ids(6, 8)
    student = _bert(seed=0)
    same = _terms(_objective(student, copy.deepcopy(student), [name], x), x)[1][name]
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    obj = _objective(student, _bert(seed=1), [name], x)
    loss = _terms(obj, x)[1][name]
    assert float(loss) > 1e-3
    # Three more pad columns: real positions compute the same, and padding must add nothing to the loss.
    padded = torch.cat([x, torch.zeros(len(x), 3, dtype=x.dtype)], 1)
    torch.testing.assert_close(_terms(obj, padded)[1][name], loss, atol=1e-5, rtol=1e-5)


def test_projection_gets_gradients_and_distill_trains_it_with_the_student(monkeypatch):
    x = _ids(32, 8, seed=2)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 2, (32,)))
    student, teacher = _bert(hidden=16, layers=2, heads=2, seed=0), _bert(hidden=32, layers=4, heads=4, seed=1)
    obj = _objective(student, teacher, ["hidden"], x[:8])
    term = obj.model.terms[0]
    assert term.pairs == [(0, 1), (1, 3)]  # TinyBERT's uniform map for 2 of 4 layers
    assert isinstance(term.projection, torch.nn.Linear) and term.projection.weight.shape == (32, 16)
    assert {id(p) for p in term.parameters()} <= {id(p) for p in obj.model.parameters()}  # the optimizer sees them
    total, _ = _terms(obj, x[:8])
    total.backward()
    assert float(term.projection.weight.grad.abs().sum()) > 0
    assert float(term.embedding_projection.weight.grad.abs().sum()) > 0

    built, original = [], objective_module.build_objective

    def spy(*args, **kwargs):  # distill's objective, and its projection as set up, before training
        built.append(original(*args, **kwargs))
        built.append(built[0].model.terms[0].projection.weight.detach().clone())
        return built[0]

    monkeypatch.setattr(objective_module, "build_objective", spy)
    keys = set(student.state_dict())
    result = distill(student, teacher, data, KDConfig(losses=["hidden"]), TrainConfig(epochs=6, lr=3e-3,
                     optimizer="adamw", batch_size=8, keep="last"), log=lambda _: None)
    obj, before = built
    assert not torch.equal(obj.model.terms[0].projection.weight.detach(), before)  # W_h was trained
    assert set(student.state_dict()) == keys  # the projection stays out of the student
    hidden = [h["terms"]["hidden"] for h in result.history]
    assert hidden[-1] < 0.7 * hidden[0], hidden  # a 2-layer width-16 student learns the 4-layer width-32 states


def test_minilm_v2_across_head_counts_and_attention_losses_train():
    x = _ids(8, 8, seed=3)
    student, teacher = _bert(hidden=16, layers=2, heads=2, seed=0), _bert(hidden=32, layers=4, heads=4, seed=1)
    losses = [{"name": "minilm-v2", "teacher_layer": 2, "relation_heads": 4},
              {"name": "minilm-v2", "relations": ["value"]}]  # default relation heads: the student's (2)
    obj = _objective(student, teacher, losses, x)
    a, b = obj.model.terms
    assert (a.layers_compared, a.relation_heads, b.layers_compared, b.relation_heads) == ((1, 2), 4, (1, 3), 2)
    total, terms = _terms(obj, x)
    assert set(terms) == {"minilm-v2", "minilm-v2_2"} and all(float(v) > 0 for v in terms.values())
    total.backward()
    q = student.model.bert.encoder.layer[1].attention.self.query.weight.grad
    assert q is not None and float(q.abs().sum()) > 0  # Q-Q relations reach the student's query projection
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained

    # MiniLM v1 needs the head counts to agree (4 and 4 here); the student's attention moves towards the teacher's.
    student = _bert(hidden=16, layers=2, heads=4, seed=0)
    data = torch.utils.data.TensorDataset(_ids(32, 8, seed=4), torch.randint(0, 2, (32,)))
    kd = KDConfig(losses=[{"name": "attention-kl", "layer_map": {0: 1, -1: -1}}, "value-relation"])
    result = distill(HFSentenceEncoder(student.model.bert), HFSentenceEncoder(teacher.model.bert), data, kd,
                     TrainConfig(epochs=4, lr=3e-3, optimizer="adamw", batch_size=8, keep="last"), log=lambda _: None)
    first, last = result.history[0]["terms"], result.history[-1]["terms"]
    assert last["attention-kl"] < 0.85 * first["attention-kl"]
    assert last["value-relation"] < 0.85 * first["value-relation"]


@pytest.mark.parametrize("loss, message", [
    ({"name": "hidden", "layer_map": {5: 0}}, "losses[0] (hidden): layer_map: student layer 5 is out of range: the "
                                              "student has 2 layers (valid: 0..1, or -2..-1 counting from the end)"),
    ({"name": "attention-kl", "layer_map": {0: -5}}, "layer_map: teacher layer -5 is out of range: the teacher has 4 "
                                                     "layers (valid: 0..3, or -4..-1"),
    ({"name": "minilm-v2", "teacher_layer": 4}, "losses[0] (minilm-v2): teacher_layer 4 is out of range: the teacher "
                                                "has 4 layers (valid: 0..3"),
    ({"name": "minilm-v2", "relation_heads": 3}, "relation_heads 3 must divide the query/key/value width of the "
                                                 "student (16) and of the teacher (32); valid choices: 1, 2, 4, 8, 16"),
    ({"name": "value-relation"}, "the student has 2 (layer 1), the teacher 4 (layer 3); use minilm-v2"),
])
def test_bad_options_are_one_line_errors_naming_the_valid_choices(loss, message):
    x = _ids(4, 6)
    student, teacher = _bert(hidden=16, layers=2, heads=2), _bert(hidden=32, layers=4, heads=4)
    with pytest.raises(TorchslimError) as e:
        _objective(student, teacher, [loss], x)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not student.model._forward_pre_hooks and not student.model.bert.encoder.layer[1]._forward_hooks


def test_option_typos_and_models_without_transformer_blocks_are_errors():
    with pytest.raises(ValueError, match="unknown option 'relation_head' of loss 'minilm-v2'.*did you mean "
                                         "'relation_heads'"):
        KDConfig(losses=[{"name": "minilm-v2", "relation_head": 4}])
    with pytest.raises(ValueError, match="relations"):
        KDConfig(losses=[{"name": "minilm-v2", "relations": ["query", "query"]}])
    mlp = ts.create_model("mlp", widths=[8], input_shape=(1, 4, 4), num_classes=2)
    with pytest.raises(TorchslimError, match=r"losses\[0\] \(hidden\): cannot find the transformer layers of MLP"):
        build_objective(mlp, {"teacher": copy.deepcopy(mlp)}, KDConfig(losses=["hidden"]), torch.zeros(2, 1, 4, 4),
                        torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------- recipe
FACTORY = '''
import transformers
from torchslim.models.hf import HFSequenceClassifier


def bert(vocab_size, num_classes, hidden=32, layers=4, heads=4):
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=32,
                                  num_labels=num_classes)
    return HFSequenceClassifier(transformers.BertForSequenceClassification(cfg))
'''


def test_a_recipe_distills_a_hugging_face_student_with_every_transformer_loss(tmp_path, monkeypatch):
    """HF models in a recipe come from a factory (`factory: module:function`); the losses are named in `losses:`."""
    (tmp_path / "tiny_bert.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    words = ["good", "bad", "film", "plot", "very", "dull", "fine", "the", "a", "acting"]
    g = torch.Generator().manual_seed(0)
    rows = ["text,label"] + [" ".join(words[int(i)] for i in torch.randint(0, 10, (int(n),), generator=g)) + f",{k % 2}"
                             for k, n in enumerate(torch.randint(3, 9, (96,), generator=g))]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    recipe = {
        "seed": 0,
        "data": {"name": "csv", "path": "reviews.csv", "text_column": "text", "label_column": "label",
                 "max_length": 10},
        "teacher": {"factory": "tiny_bert:bert", "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw"}},
        "student": {"factory": "tiny_bert:bert", "args": {"hidden": 16, "layers": 2}},
        "stages": [{"type": "distill", "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3},
                    "losses": ["kd", {"name": "hidden", "layer_map": {0: 1, 1: 3}, "embeddings": False},
                               "attention-kl", {"name": "value-relation", "weight": 0.5},
                               {"name": "minilm-v2", "teacher_layer": -2, "relation_heads": 8}]}],
        "evaluate": {"max_seconds": 0.01, "batch_sizes": [1]},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", "r.yaml", "--out", "out", "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    history = next(a for a in report["artifacts"] if a["name"] == "distill")["info"]["training"]["history"]
    assert set(history[0]["terms"]) == {"kd", "hidden", "attention-kl", "value-relation", "minilm-v2"}
    assert all(v > 0 for h in history for v in h["terms"].values())
    assert history[-1]["terms"]["hidden"] < history[0]["terms"]["hidden"]
