"""Every registered distillation loss against a hand computation (explicit loops / numpy on tiny tensors), the
gradient reaching the student through each, and the loss entries' validation."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.distillation import LOSSES, KDConfig, LossInputs, LossSpec, build_objective, combine_logits
from torchslim.distillation.losses import (CRDLoss, CRDOptions, attention_loss, fsp_loss, hint_loss, nce_loss,
                                           rkd_loss, similarity_loss)
from torchslim.errors import TorchslimError


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _block_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of (N, C, H, W) to (N, C, size, size) for H a multiple of size."""
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _smooth_l1(a, b):
    d = [abs(x - y) for x, y in zip(a, b)]
    return sum(0.5 * x * x if x < 1 else x - 0.5 for x in d) / len(d)


def test_registry_lists_every_loss_with_its_repdistiller_weight():
    weights = {n: LOSSES.get(n).default_weight for n in LOSSES.names()}
    assert weights == {"attention": 1000.0, "ce": 1.0, "crd": 0.8, "embedding": 1.0, "fitnet": 100.0, "fsp": 50.0, "kd": 1.0,
                       "rkd": 1.0, "similarity": 3000.0,
                       # transformers (TinyBERT, MiniLM) and language models (token-level KL): unit weights
                       "attention-kl": 1.0, "hidden": 1.0, "minilm-v2": 1.0, "value-relation": 1.0,
                       "forward-kl": 1.0, "reverse-kl": 1.0, "jsd": 1.0}


def test_kd_and_ce_terms_match_hand_computation():
    s, t = _randn(4, 3, seed=1) * 2, _randn(4, 3, seed=2) * 2
    y = torch.tensor([0, 2, 1, 2])
    T, alpha = 3.0, 0.25
    total_kd, total_ce = 0.0, 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ce = -si[yi] + math.log(sum(math.exp(v) for v in si))
        p = [math.exp(v / T) / sum(math.exp(u / T) for u in ti) for v in ti]
        q = [math.exp(v / T) / sum(math.exp(u / T) for u in si) for v in si]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total_kd += alpha * ce + (1 - alpha) * T * T * kl
        total_ce += ce
    inputs = LossInputs(student_logits=s, teacher_logits=t, labels=y, index=torch.arange(4))
    kd = LOSSES.get("kd")(LossSpec(name="kd", temperature=T, alpha=alpha).options())
    assert kd(inputs).item() == pytest.approx(total_kd / 4, rel=1e-10)
    assert LOSSES.get("ce")()(inputs).item() == pytest.approx(total_ce / 4, rel=1e-10)


def test_fitnet_hint_through_the_adapter_and_pooling_matches_numpy():
    s, t = _randn(2, 3, 4, 4, seed=3), _randn(2, 5, 2, 2, seed=4)
    loss = LOSSES.get("fitnet")()
    loss.setup([s], [t], torch.zeros(2))
    loss.double()
    assert isinstance(loss.adapter, nn.Conv2d) and loss.adapter.weight.shape == (5, 3, 1, 1)
    w = loss.adapter.weight.detach().numpy()[:, :, 0, 0]
    pooled = _block_mean(s.numpy(), 2)  # the larger map (student, 4×4) pooled to the teacher's 2×2
    mapped = np.einsum("ts,nshw->nthw", w, pooled)
    expected = ((mapped - t.numpy()) ** 2).mean()
    got = loss(LossInputs(None, None, None, None, [s], [t]))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # Equal channels: no adapter, the plain mean squared difference.
    assert hint_loss(s, s + 1).item() == pytest.approx(1.0)


def test_attention_transfer_matches_loops():
    s, t = _randn(2, 3, 2, 2, seed=5), _randn(2, 4, 2, 2, seed=6)

    def at(f):
        n, c, h, w = f.shape
        rows = []
        for i in range(n):
            a = [sum(f[i, k, y, x].item() ** 2 for k in range(c)) / c for y in range(h) for x in range(w)]
            norm = math.sqrt(sum(v * v for v in a))
            rows.append([v / norm for v in a])
        return rows

    a_s, a_t = at(s), at(t)
    expected = sum((p - q) ** 2 for rs, rt in zip(a_s, a_t) for p, q in zip(rs, rt)) / (2 * 4)
    assert attention_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    term = LOSSES.get("attention")()
    term.setup([s], [t], torch.zeros(2))
    assert term(LossInputs(None, None, None, None, [s], [t])).item() == pytest.approx(expected, rel=1e-10)
    # A larger student map is pooled to the teacher's size first.
    big = _randn(2, 3, 4, 4, seed=7)
    assert attention_loss(big, t).item() == pytest.approx(
        attention_loss(torch.from_numpy(_block_mean(big.numpy(), 2)), t).item(), rel=1e-12)


def test_similarity_preserving_matches_numpy():
    s, t = _randn(3, 2, 2, seed=8), _randn(3, 5, seed=9)
    b = 3

    def gram(f):
        f = f.reshape(b, -1).numpy()
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = ((gram(s) - gram(t)) ** 2).sum() / b**2
    assert similarity_loss(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_rkd_distance_and_angle_match_loops():
    s, t = _randn(4, 3, seed=10), _randn(4, 2, seed=11)

    def distances(e):
        e = e.tolist()
        d = [[math.dist(a, b) for b in e] for a in e]
        mean = sum(v for row in d for v in row if v > 0) / sum(1 for row in d for v in row if v > 0)
        return [v / mean for row in d for v in row]

    def angles(e):
        e = e.tolist()
        n = len(e)

        def unit(i, j):
            v = [b - a for a, b in zip(e[i], e[j])]
            norm = math.sqrt(sum(x * x for x in v))
            return [x / norm for x in v] if norm > 0 else [0.0] * len(v)

        return [sum(p * q for p, q in zip(unit(i, j), unit(i, k))) for i in range(n) for j in range(n) for k in range(n)]

    expected = 25 * _smooth_l1(distances(s), distances(t)) + 50 * _smooth_l1(angles(s), angles(t))
    assert rkd_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    only_distance = LOSSES.get("rkd")(LOSSES.get("rkd").Options(angle_weight=0))
    assert only_distance(LossInputs(None, None, None, None, [s], [t])).item() == pytest.approx(
        25 * _smooth_l1(distances(s), distances(t)), rel=1e-6)


def test_fsp_matrix_loss_matches_loops():
    s1, s2 = _randn(2, 2, 4, 4, seed=12), _randn(2, 3, 2, 2, seed=13)
    t1, t2 = _randn(2, 2, 4, 4, seed=14), _randn(2, 3, 2, 2, seed=15)

    def fsp(a, b):
        a = _block_mean(a.numpy(), 2)  # the first map is pooled to the second's 2×2
        b = b.numpy()
        n, c1, h, w = a.shape
        c2 = b.shape[1]
        g = np.zeros((n, c1, c2))
        for i in range(n):
            for p in range(c1):
                for q in range(c2):
                    g[i, p, q] = sum(a[i, p, y, x] * b[i, q, y, x] for y in range(h) for x in range(w)) / (h * w)
        return g

    expected = ((fsp(s1, s2) - fsp(t1, t2)) ** 2).mean()
    assert fsp_loss((s1, s2), (t1, t2)).item() == pytest.approx(expected, rel=1e-10)
    term = LOSSES.get("fsp")()
    term.setup([s1, s2], [t1, t2], torch.zeros(2))
    assert all(isinstance(a, nn.Identity) for a in term.adapters)  # same channels: nothing to learn
    assert term(LossInputs(None, None, None, None, [s1, s2], [t1, t2])).item() == pytest.approx(expected, rel=1e-10)


def test_nce_loss_matches_loops():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.05]], dtype=torch.float64)
    n_data, k = 10, 2
    pn = 1 / n_data
    expected = 0.0
    for row in scores.tolist():
        expected += math.log(row[0] / (row[0] + k * pn + 1e-7))
        expected += sum(math.log(k * pn / (v + k * pn + 1e-7)) for v in row[1:])
    assert nce_loss(scores, n_data).item() == pytest.approx(-expected / 2, rel=1e-12)


def test_crd_scores_memory_update_and_negatives_match_a_hand_computation():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    n, d, k, tau, m = 8, 4, 3, 0.5, 0.5
    fs, ft = _randn(2, 5, seed=16).float(), _randn(2, 6, seed=17).float()
    crd = CRDLoss(CRDOptions(feat_dim=d, negatives=k, nce_temperature=tau, momentum=m))
    crd.setup([fs], [ft], labels)
    mem_s, mem_t = crd.memory_s.clone().numpy(), crd.memory_t.clone().numpy()
    index, y = torch.tensor([1, 5]), labels[[1, 5]]
    rng = torch.get_rng_state()
    loss = crd(LossInputs(None, None, y, index, [fs], [ft]))
    torch.set_rng_state(rng)
    negatives = crd.sample_negatives(y).numpy()  # the same draw the forward made
    assert all(labels[j] != labels[i] for i, row in zip(index.tolist(), negatives.tolist()) for j in row)

    def embed(linear, f):
        v = f.numpy() @ linear.weight.detach().numpy().T + linear.bias.detach().numpy()
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    v_s, v_t = embed(crd.embed_s, fs), embed(crd.embed_t, ft)
    idx = np.concatenate([index.numpy()[:, None], negatives], 1)
    s_scores = np.exp(np.einsum("bkd,bd->bk", mem_t[idx], v_s) / tau)
    t_scores = np.exp(np.einsum("bkd,bd->bk", mem_s[idx], v_t) / tau)
    z_s, z_t = s_scores.mean() * n, t_scores.mean() * n  # Z is fixed from the first batch
    expected = nce_loss(torch.tensor(s_scores / z_s), n) + nce_loss(torch.tensor(t_scores / z_t), n)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert crd.z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    new = mem_s[index.numpy()] * m + v_s * (1 - m)
    assert crd.memory_s[index].numpy() == pytest.approx(new / np.linalg.norm(new, axis=1, keepdims=True), rel=1e-5)
    untouched = [i for i in range(n) if i not in (1, 5)]
    assert np.array_equal(crd.memory_t[untouched].numpy(), mem_t[untouched])
    z_before = crd.z.clone()
    crd(LossInputs(None, None, y, index, [fs], [ft]))
    assert torch.equal(crd.z, z_before)


def test_combine_logits_by_logits_and_by_probabilities():
    a, b = _randn(3, 4, seed=18), _randn(3, 4, seed=19)
    assert torch.allclose(combine_logits([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    T = 2.0
    mixed = combine_logits([a, b], [3, 1], "probs", T)
    expected = 0.75 * torch.softmax(a / T, 1) + 0.25 * torch.softmax(b / T, 1)
    assert torch.allclose(torch.softmax(mixed / T, 1), expected, atol=1e-12)


class _Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


@pytest.mark.parametrize("spec", [
    {"name": "kd"}, {"name": "ce"},
    {"name": "fitnet", "student": "relu1", "teacher": "relu2"},
    {"name": "attention", "student": "relu1", "teacher": "relu2"},
    {"name": "similarity", "student": "relu2", "teacher": "relu2"},
    {"name": "rkd", "student": "flatten", "teacher": "flatten"},
    {"name": "fsp", "student": ["relu1", "relu2"], "teacher": ["relu1", "relu2"]},
    {"name": "crd", "student": "flatten", "teacher": "flatten", "negatives": 5},
], ids=lambda s: s["name"])
def test_gradient_reaches_the_student(spec):
    torch.manual_seed(0)
    student, teacher = _Tiny(2), _Tiny(4).eval()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    obj = build_objective(student, {"teacher": teacher}, KDConfig(losses=[spec]), x, y)
    student.train()
    with obj.taps():
        loss, logits, terms = obj.loss_fn(cached=False)(obj.model, x, y, torch.arange(6))
    loss.backward()
    assert list(terms) == [spec["name"]] and torch.isfinite(loss)
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("entry,expected", [
    ({"name": "fitnt"}, "unknown loss 'fitnt' (did you mean 'fitnet'?); valid choices: attention, attention-kl, ce, crd"),
    ({"name": "kd", "temprature": 3}, "unknown option 'temprature' of loss 'kd' (did you mean 'temperature'?)"),
    ({"name": "crd", "student": "a", "teacher": "b", "negatives": 0}, "loss 'crd' option negatives: Input should be greater"),
    ({"name": "fitnet", "student": "a"}, "loss 'fitnet' needs one module name in `teacher:`, got 0"),
    ({"name": "fsp", "student": "a", "teacher": "b"}, "loss 'fsp' needs 2 module names in `student:`"),
    ({"name": "kd", "student": "layer1"}, "loss 'kd' compares logits, not features: drop `student:`"),
])
def test_bad_loss_entries_name_the_problem(entry, expected):
    with pytest.raises(ValueError) as e:
        LossSpec(**entry)
    assert expected in str(e.value)


def test_loss_spec_fills_weight_and_options_and_round_trips():
    spec = LossSpec(name="crd", student="flatten", teacher="flatten", negatives=16)
    assert spec.weight == 0.8 and spec.student == ["flatten"]
    dumped = spec.model_dump()
    assert dumped["feat_dim"] == 128 and dumped["negatives"] == 16  # every default filled in
    assert LossSpec(**dumped) == spec
    with pytest.raises(TorchslimError, match="unknown module 'relu9' in the student"):
        build_objective(_Tiny(2), {"teacher": _Tiny(2)}, KDConfig(losses=[{"name": "fitnet", "student": "relu9",
                                                                             "teacher": "relu1"}]),
                        torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
