import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from torchslim.distillation import KDConfig, distill, kd_loss
from torchslim.training import TrainConfig


def _hand_kd(s, t, y, T, alpha):
    """Hinton's loss written out with Python floats, one sample at a time."""
    total = 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ce = -si[yi] + math.log(sum(math.exp(v) for v in si))
        zs = sum(math.exp(v / T) for v in si)
        zt = sum(math.exp(v / T) for v in ti)
        p = [math.exp(v / T) / zt for v in ti]
        q = [math.exp(v / T) / zs for v in si]
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        total += alpha * ce + (1 - alpha) * T * T * kl
    return total / len(y)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.1), (20.0, 0.0), (2.0, 1.0)])
def test_kd_loss_matches_hand_computation(T, alpha):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    y = torch.tensor([0, 3, 1, 2, 3])
    assert kd_loss(s.double(), t.double(), y, T, alpha).item() == pytest.approx(_hand_kd(s, t, y, T, alpha), rel=1e-9)


def test_kd_soft_term_is_zero_when_student_equals_teacher_and_grows_otherwise():
    t = torch.randn(8, 10)
    y = torch.zeros(8, dtype=torch.long)
    assert kd_loss(t, t, y, 4.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(t + torch.randn(8, 10), t, y, 4.0, 0.0).item() > 0.01


def _toy(n=256, d=6, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    y = (x @ w).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("cache", ["always", "never"])
def test_distilled_student_learns_the_teacher_function(cache):
    """alpha=0: the labels are random, so only the teacher's soft targets can teach the student its function."""
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(0))
    random_labels = torch.randint(0, 3, (256,), generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, random_labels)
    torch.manual_seed(0)
    teacher = nn.Linear(6, 3)
    student = nn.Linear(6, 3)
    distill(student, teacher, SimpleNamespace(train=data, val=None), KDConfig(temperature=2, alpha=0.0, cache_teacher=cache),
            TrainConfig(epochs=30, lr=1e-2), log=lambda m: None)
    agree = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree > 0.97


def test_cached_and_on_the_fly_teacher_give_the_same_student():
    """Caching is an optimization only: without augmentation both paths must train the same weights."""
    data = _toy()
    teacher = nn.Sequential(nn.Linear(6, 3))
    students = []
    for cache in ("always", "never"):
        torch.manual_seed(3)
        s = nn.Sequential(nn.Linear(6, 3))
        distill(s, teacher, SimpleNamespace(train=data, val=None), KDConfig(temperature=4, alpha=0.3, cache_teacher=cache),
                TrainConfig(epochs=2), log=lambda m: None)
        students.append(s[0].weight.detach().clone())
    assert torch.allclose(students[0], students[1], atol=1e-6)
