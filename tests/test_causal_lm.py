"""The causal-lm task end to end on a tiny GPT (2 layers, 32 wide) and a few thousand characters: the perplexity
metric against a hand computation, training through the task's token loss, best-epoch selection by the LOWEST
perplexity, the token-level KD losses against hand computations, ONNX export checked in ONNX Runtime, a recipe run
through the CLI, and one-line errors for impossible block sizes."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import torchslim as ts
from torchslim.cli import main
from torchslim.data import CharVocabulary, TextBlocks, load_dataset, load_tokenizer
from torchslim.distillation import forward_kl, jsd, kd_loss, reverse_kl, teacher_generated
from torchslim.distillation.losses import LOSSES, LossInputs
from torchslim.errors import TorchslimError
from torchslim.models import GPT, create_model, generate, keep_layers
from torchslim.tasks import CausalLM, get_task
from torchslim.training import TrainConfig, fit, predict

SHAKESPEARE = Path(os.environ.get("TORCHSLIM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "tinyshakespeare" / "input.txt"
BLOCK = 32


def _text(n: int = 6000) -> str:
    """The first n characters of tinyshakespeare, or (without the data folder) seeded sentences of a few words."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:n]
    rng = np.random.default_rng(0)
    words = ["the", "king", "shall", "speak", "and", "we", "hear", "him", "now", "lord", "my", "good"]
    lines = [" ".join(rng.choice(words, size=6)).capitalize() + "." for _ in range(n // 30)]
    return "\n".join(lines)[:n]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(_text(), encoding="utf-8")
    return path


@pytest.fixture
def data(corpus):
    return load_dataset("text-file", path=str(corpus), block_size=BLOCK, stride=16)


def _gpt(data, n_layer: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return create_model("gpt", vocab_size=data.task.vocab_size, n_layer=n_layer, n_head=2, n_embd=32, block_size=BLOCK)


def _ppl_by_hand(model, split) -> float:
    x, y = split.tensors
    with torch.no_grad():
        return math.exp(F.cross_entropy(model.eval()(x).flatten(0, 1), y.flatten()).item())


# --- data ----------------------------------------------------------------------------------------------------------


def test_text_is_split_90_5_5_in_order_into_shifted_blocks(data, corpus):
    text = corpus.read_text(encoding="utf-8")
    vocab = data.task.tokenizer
    assert isinstance(vocab, CharVocabulary) and vocab.chars == sorted(set(text))
    x, y = data.train.tensors
    assert x.shape[1] == BLOCK and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert vocab.decode(x[1].tolist()) == text[16:16 + BLOCK]  # stride 16
    n = len(text)
    assert len(data.test) == (round(0.05 * n) - 1) // BLOCK  # non-overlapping windows over the last 5%
    assert vocab.decode(data.test.tensors[0][0].tolist()) == text[n - round(0.05 * n):][:BLOCK]
    assert vocab.decode(data.val.tensors[0][0].tolist()) == text[n - 2 * round(0.05 * n):][:BLOCK]
    assert data.test.stride == BLOCK and data.train.stride == 16
    assert data.task.describe()["eval_stride"] == BLOCK and data.task.primary_metric == "perplexity"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare not in the data folder")
def test_tinyshakespeare_has_nanogpts_65_characters():
    data = load_dataset("tinyshakespeare", SHAKESPEARE.parents[1], block_size=128, limit_train=10)
    assert data.task.vocab_size == 65 and len(data.train) == 10 and len(data.test) == 435


# --- the metric and the loss, routed through the task --------------------------------------------------------------


def test_perplexity_is_exp_of_mean_token_cross_entropy(data):
    task = get_task("causal-lm", vocab_size=5, block_size=4)
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(1))
    m = task.metrics(logits.numpy(), labels.numpy())
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    assert m["perplexity"] == pytest.approx(math.exp(ce), rel=1e-6) and m["cross_entropy"] == pytest.approx(ce)
    assert m["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert task.loss(logits, labels).item() == pytest.approx(ce, rel=1e-6)
    # evaluate() measures a model's test perplexity the same way, with next-token accuracy as the record's accuracy.
    model = _gpt(data)
    record = ts.evaluate({"gpt": model}, data, latency=ts.LatencyConfig(max_seconds=0.01, batch_sizes=(1,)))[0]
    assert record["metrics"]["perplexity"] == pytest.approx(_ppl_by_hand(model, data.test), rel=1e-4)
    assert record["primary_metric"] == "perplexity" and 0 < record["accuracy"] < 1
    assert record["sample"]["text"] and record["sample"]["prompt"]


def test_training_lowers_validation_perplexity_with_the_tasks_token_loss(data):
    model = _gpt(data)
    before = _ppl_by_hand(model, data.val)
    result = ts.train(model, data, TrainConfig(epochs=2, lr=3e-3, batch_size=16), log=lambda m: None)
    history = [h["val_perplexity"] for h in result.history]
    assert result.monitor == "val_perplexity" and history[-1] < history[0] < before
    assert _ppl_by_hand(model, data.val) == pytest.approx(min(history), rel=1e-4)
    assert 0 < result.history[-1]["train_accuracy"] < 1  # counted over tokens, not rows


def test_best_epoch_is_the_lowest_validation_perplexity(data):
    """Epoch 1 descends, later epochs ascend the loss: perplexity rises, so the best epoch must be the first."""
    model = _gpt(data)
    steps = {"n": 0}
    per_epoch = math.ceil(len(data.train) / 16)

    def loss_fn(net, x, y):
        logits = net(x)
        loss = data.task.loss(logits, y)
        steps["n"] += 1
        return (loss if steps["n"] <= per_epoch else -loss), logits

    result = fit(model, data.train, data.val, TrainConfig(epochs=3, lr=3e-3, batch_size=16), loss_fn=loss_fn,
                 log=lambda m: None)
    ppl = [h["val_perplexity"] for h in result.history]
    assert ppl[0] < ppl[1] < ppl[2]  # the highest is the last: a higher-is-better selection would keep it
    assert result.best_epoch == 1 and result.best_val == pytest.approx(ppl[0])
    assert _ppl_by_hand(model, data.val) == pytest.approx(ppl[0], rel=1e-4)  # the best weights were restored


# --- token-level distillation losses -------------------------------------------------------------------------------


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


S_LOGITS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]  # 2 tokens, vocabulary 3
T_LOGITS = [[0.0, 1.0, 0.0], [1.0, 1.0, -2.0]]


def test_token_divergences_match_hand_computations_and_vanish_for_identical_logits():
    s, t = torch.tensor([S_LOGITS]), torch.tensor([T_LOGITS])  # 1×2×3
    ps, pt = [_softmax(z) for z in S_LOGITS], [_softmax(z) for z in T_LOGITS]
    fwd = sum(_kl(b, a) for a, b in zip(ps, pt)) / 2
    rev = sum(_kl(a, b) for a, b in zip(ps, pt)) / 2
    beta = 0.3
    mix = [[beta * b + (1 - beta) * a for a, b in zip(p_s, p_t)] for p_s, p_t in zip(ps, pt)]
    gjsd = sum(beta * _kl(b, m) + (1 - beta) * _kl(a, m) for a, b, m in zip(ps, pt, mix)) / 2
    assert forward_kl(s, t).item() == pytest.approx(fwd, rel=1e-5)
    assert reverse_kl(s, t).item() == pytest.approx(rev, rel=1e-5)
    assert jsd(s, t, beta=beta).item() == pytest.approx(gjsd, rel=1e-5)
    assert abs(forward_kl(s, t).item() - reverse_kl(s, t).item()) > 1e-3  # not symmetric
    # Temperature: the divergence of the softened distributions, times T².
    soft = sum(_kl(_softmax([v / 2 for v in b]), _softmax([v / 2 for v in a])) for a, b in zip(S_LOGITS, T_LOGITS))
    assert forward_kl(s, t, temperature=2.0).item() == pytest.approx(4 * soft / 2, rel=1e-5)
    for fn in (forward_kl, reverse_kl, jsd):
        assert fn(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # A token labelled -100 is left out of the mean.
    assert forward_kl(s, t, labels=torch.tensor([[0, -100]])).item() == pytest.approx(_kl(pt[0], ps[0]), rel=1e-5)


def test_registered_token_losses_and_kd_work_per_token():
    s = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    t = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(2))
    inputs = LossInputs(student_logits=s, teacher_logits=t, labels=y, index=torch.arange(2))
    assert LOSSES.get("forward-kl")()(inputs).item() == pytest.approx(forward_kl(s, t).item())
    assert LOSSES.get("reverse-kl")()(inputs).item() == pytest.approx(reverse_kl(s, t).item())
    assert LOSSES.get("jsd")()(inputs).item() == pytest.approx(jsd(s, t).item())
    # Hinton KD on N×T×V logits: each token is one row, as on the flattened (N·T)×V.
    flat = kd_loss(s.flatten(0, 1), t.flatten(0, 1), y.flatten(), 2.0, 0.3)
    assert kd_loss(s, t, y, 2.0, 0.3).item() == pytest.approx(flat.item())
    assert LOSSES.get("kd")(LOSSES.get("kd").Options(temperature=2.0, alpha=0.3))(inputs).item() == \
        pytest.approx(flat.item())


def test_distill_in_python_with_kd_and_with_a_token_loss(data):
    teacher = _gpt(data, seed=1)
    ts.train(teacher, data, TrainConfig(epochs=1, lr=3e-3, batch_size=16), log=lambda m: None)
    token_loss = ts.KDConfig(losses=["reverse-kl", {"name": "ce", "weight": 0.1}])
    for kd in (ts.KDConfig(temperature=2.0, alpha=0.5), token_loss):
        student = _gpt(data, n_layer=1)
        result = ts.distill(student, teacher, data, kd, TrainConfig(epochs=1, lr=3e-3, batch_size=16),
                            log=lambda m: None)
        assert result.monitor == "val_perplexity" and math.isfinite(result.history[-1]["val_perplexity"])


def test_a_transfer_set_the_teacher_writes(data):
    teacher = _gpt(data, seed=1)
    prompts = data.train.tensors[0][:6, :4]
    rows = teacher_generated(teacher, prompts, BLOCK, task=data.task, batch_size=4)
    x, y = rows.tensors
    assert x.shape == (6, BLOCK) and torch.equal(x[:, :4], prompts) and torch.equal(x[:, 1:], y[:, :-1])
    assert rows.task is data.task
    assert torch.equal(teacher_generated(teacher, prompts, BLOCK, batch_size=4).tensors[0], x)  # seeded
    result = ts.distill(_gpt(data, n_layer=1), teacher, rows, ts.KDConfig(losses=["forward-kl"]),
                        TrainConfig(epochs=1, batch_size=4), val=data.val, log=lambda m: None)
    assert result.monitor == "val_perplexity" and len(result.history) == 1


# --- the model -----------------------------------------------------------------------------------------------------


def test_gpt_exports_to_onnx_and_matches_pytorch_in_onnx_runtime(data, tmp_path):
    model = _gpt(data).eval()
    path = ts.export_onnx(model, tmp_path / "gpt.onnx", task=data.task, opset=17)
    from torchslim.export import ort_logits, ort_session

    session = ort_session(path)
    for shape in ((1, BLOCK), (3, 7)):  # batch and sequence axes are both dynamic
        ids = torch.randint(0, data.task.vocab_size, shape, generator=torch.Generator().manual_seed(0))
        np.testing.assert_allclose(ort_logits(session, ids), predict(model, ids).numpy(), atol=1e-4)


def test_generate_is_seeded_greedy_at_temperature_0_and_crops_to_the_block(data):
    model = _gpt(data)
    prompt = data.task.tokenizer.encode("First")
    a, b = (generate(model, prompt, max_new_tokens=20, temperature=0.8, seed=3) for _ in range(2))
    assert torch.equal(a, b) and len(a) == len(prompt) + 20 and torch.equal(a[:len(prompt)], prompt)
    greedy = generate(model, prompt, max_new_tokens=5, temperature=0)
    assert torch.equal(greedy, generate(model, prompt, max_new_tokens=5, top_k=1, seed=9))
    with torch.no_grad():
        assert int(greedy[len(prompt)]) == int(model(prompt[None])[0, -1].argmax())
    long = torch.zeros(BLOCK + 10, dtype=torch.long)  # longer than the model's block: the last BLOCK tokens are fed
    assert len(generate(model, long, max_new_tokens=2)) == BLOCK + 12


def test_keep_layers_makes_a_half_depth_student_from_the_teachers_blocks(data):
    teacher = _gpt(data, n_layer=4)
    student = keep_layers(_gpt(data, n_layer=4), [0, 2])
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2
    assert torch.equal(student.transformer.h[1].attn.c_attn.weight, teacher.transformer.h[2].attn.c_attn.weight)
    assert student(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, data.task.vocab_size)
    with pytest.raises(TorchslimError, match=r"out of range: the model has 4 layers \(valid indices 0..3\)"):
        keep_layers(teacher, [0, 4])


# --- the recipe, through the CLI -----------------------------------------------------------------------------------


def _recipe(tmp_path, corpus, **data):
    recipe = {
        "data": {"name": "text-file", "path": str(corpus), "block_size": BLOCK, "stride": 16, **data},
        "teacher": {"model": "gpt", "args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": BLOCK},
                    "train": {"epochs": 2, "lr": 0.003, "batch_size": 16}},
        "student": {"model": "gpt", "args": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": BLOCK}},
        "stages": [{"type": "distill", "losses": [{"name": "forward-kl"}, {"name": "ce", "weight": 0.1}],
                    "train": {"epochs": 1, "lr": 0.003, "batch_size": 16}},
                   {"type": "export"}],
        "evaluate": {"max_seconds": 0.01, "batch_sizes": [1, 2]},
    }
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_runs_end_to_end_with_perplexity_and_a_generated_sample(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, corpus)), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert list(arts) == ["teacher", "distill", "export"]
    assert report["data"]["task"]["task"] == "causal-lm" and report["data"]["task"]["eval_context"] == BLOCK
    teacher, onnx = arts["teacher"]["metrics"]["perplexity"], arts["export"]["metrics"]["perplexity"]
    assert 1 < teacher < report["data"]["task"]["vocab_size"]
    assert onnx == pytest.approx(arts["distill"]["metrics"]["perplexity"], rel=1e-4)
    assert arts["distill"]["vs_teacher"]["metric_delta"] == pytest.approx(arts["distill"]["metrics"]["perplexity"]
                                                                          - teacher)
    assert arts["export"]["sample"]["text"] == arts["distill"]["sample"]["text"]  # ONNX Runtime writes the same text
    md = (out / "report.md").read_text()
    assert "| perplexity |" in md.replace(" perplexity vs teacher |", "") and "## Generated text" in md
    assert arts["teacher"]["sample"]["text"][:20] in md
    assert isinstance(load_tokenizer(out / "tokenizer.json"), CharVocabulary)  # the vocabulary ships with the model


def test_a_block_longer_than_the_model_or_the_text_is_one_line_exit_2(tmp_path, corpus, capsys):
    assert main(["validate", str(_recipe(tmp_path, corpus, block_size=64))]) == 2
    err = capsys.readouterr().err
    assert "data.block_size 64 is longer than the model's block_size 32; valid: data.block_size ≤ 32" in err
    assert len(err.strip().splitlines()) == 1
    short = tmp_path / "short.txt"
    short.write_text(_text(500), encoding="utf-8")
    assert main(["run", str(_recipe(tmp_path, short)), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "shorter than one block of block_size + 1 = 33 characters" in err
    assert "valid for this text: block_size ≤" in err
    assert len(err.strip().splitlines()) == 1
    recipe = yaml.safe_load(_recipe(tmp_path, corpus).read_text())
    recipe["teacher"] = {"model": "textcnn"}  # a classifier: N×C out, not next-token logits
    (tmp_path / "classifier.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(tmp_path / "classifier.yaml")]) == 2
    assert "a causal-lm model gives next-token logits N×T×vocab_size" in capsys.readouterr().err
    with pytest.raises(TorchslimError, match="not in the vocabulary"):
        CharVocabulary.from_text("abc").encode("abd")
    with pytest.raises(TorchslimError, match="longer than the model's block_size"):
        _gpt(load_dataset("text-file", path=str(corpus), block_size=BLOCK))(torch.zeros(1, BLOCK + 1, dtype=torch.long))


def test_text_blocks_carry_their_task():
    task = CausalLM(vocab_size=10, block_size=4)
    rows = TextBlocks(torch.arange(10), block_size=4, stride=3, task=task)
    assert rows.task is task and len(rows) == 2
