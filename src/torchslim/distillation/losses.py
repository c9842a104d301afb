"""Distillation losses: the functions (tested against hand computations) and the registered loss modules a recipe
names in a distill stage's `losses:` list.

Every registered loss is a small ``nn.Module`` with
- ``Options``: a config class for its own settings (a recipe's extra keys on the loss entry, validated here),
- ``default_weight``: its weight in RepDistiller (Tian et al. 2020), used when the recipe gives none,
- ``layers``: how many module names it needs from each of student and teacher (0: logits only),
- ``setup(student, teacher, train_labels)``: builds its learned parts (adapters, heads) from one batch's features,
- ``forward(inputs) -> scalar``: the unweighted loss on one batch (:class:`LossInputs`).

    loss_fn(batch) = Σ_k weight_k · loss_k(batch)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from torchslim.config import Config
from torchslim.distillation.taps import make_adapter, match_spatial
from torchslim.errors import TorchslimError
from torchslim.registry import Registry

LOSSES: Registry[type[DistillLoss]] = Registry("loss")


# ------------------------------------------------------------------------------------------------------- functions
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """α·CE(student, labels) + (1−α)·T²·KL(p_teacher,T ‖ p_student,T), batch mean.

    The T² factor keeps the soft term's gradient magnitude independent of T (Hinton et al. 2015, §2). Logits of more
    than two axes (a causal LM's N×T×V, labels N×T) count every token as one row: the mean is over tokens.
    """
    if student_logits.dim() > 2:
        student_logits, teacher_logits, labels = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2), \
            labels.flatten()
    hard = F.cross_entropy(student_logits, labels)
    # kl_div(input=log q, target=log p, log_target=True) = Σ p (log p − log q) = KL(p ‖ q), with p the teacher.
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, metric: str = "mse") -> torch.Tensor:
    """Embedding distillation (sentence-transformers' model distillation; Reimers & Gurevych 2020): the student's
    output embedding regressed onto the teacher's, N×D each. ``mse``: mean squared error over all elements (their
    MSELoss); ``cosine``: batch mean of 1 − cos(student, teacher), blind to the embeddings' lengths."""
    if student.shape != teacher.shape:
        raise TorchslimError(f"embedding distillation needs student and teacher embeddings of one size; got "
                             f"{tuple(student.shape[1:])} and {tuple(teacher.shape[1:])} (a layer-dropped student "
                             f"keeps the teacher's width)")
    if metric == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    return F.mse_loss(student, teacher)


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets hint: mean over all elements of (student − teacher)², both already of the same shape."""
    return F.mse_loss(student, teacher)


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (N, C, H, W) feature map: the channel mean of |F|^p, flattened and L2-normalized per
    sample, (N, H·W). (The channel mean differs from the paper's sum by 1/C, which the normalization removes.)"""
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): mean over samples and positions of
    (a_s − a_t)², a = :func:`attention_map` (RepDistiller's form, for which the weight 1000 is tuned)."""
    student, teacher = match_spatial(student, teacher)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity preserving (Tung & Mori 2019): G = F·Fᵀ over the batch (F flattened per sample, (b, b)), each row
    L2-normalized; loss = ‖G_s − G_t‖_F² / b²."""
    b = student.shape[0]
    gs = F.normalize(student.flatten(1) @ student.flatten(1).t(), dim=1)
    gt = F.normalize(teacher.flatten(1) @ teacher.flatten(1).t(), dim=1)
    return (gs - gt).pow(2).sum() / (b * b)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(b, b) Euclidean distances between the rows of `e`, with an exact zero diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Relational KD (Park et al. 2019) on flattened features:
    distance term: smooth-L1 between the pairwise distances of student and teacher, each divided by its mean over
    the off-diagonal pairs; angle term: smooth-L1 between the cosines of the angles ∠(e_j − e_i, e_k − e_i) for all
    triplets. loss = distance_weight · distance + angle_weight · angle."""
    s, t = student.flatten(1), teacher.flatten(1)
    with torch.no_grad():
        td = pairwise_distances(t)
        td = td / td[td > 0].mean()
    sd = pairwise_distances(s)
    sd = sd / sd[sd > 0].mean()
    distance = F.smooth_l1_loss(sd, td)

    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # diff[i, j] = unit(e_j − e_i), (b, b, d)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of the angle at i between j and k, (b³,)

    with torch.no_grad():
        ta = angles(t)
    angle = F.smooth_l1_loss(angles(s), ta)
    return distance_weight * distance + angle_weight * angle


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Flow of solution procedure (Yim et al. 2017) between two (N, C, H, W) maps of one network:
    G[n, i, j] = Σ_{h,w} F1[n, i, h, w] · F2[n, j, h, w] / (H·W), (N, C1, C2). The larger map is average-pooled to the
    smaller's spatial size first (ResNet stages halve it)."""
    first, second = match_spatial(first, second)
    h, w = first.shape[2:]
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's FSP matrices."""
    return (fsp_matrix(*student) - fsp_matrix(*teacher)).pow(2).mean()


def nce_loss(scores: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE objective on (b, K+1) normalized scores, column 0 the positive pair, K negatives drawn from a
    uniform noise distribution P_n = 1/n_data (Tian et al. 2020, eq. 9; RepDistiller's ContrastLoss):
    −[Σ_b log(P⁺ / (P⁺ + K·P_n)) + Σ_{b,k} log(K·P_n / (P⁻ + K·P_n))] / b."""
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / n_data
    pos = scores[:, 0]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


# ---------------------------------------------------------------------------------------------------------- modules
@dataclass
class LossInputs:
    """What one loss sees of a batch: logits, labels, the rows' indices in the training set, and its own features
    (in the order of its `student` / `teacher` names). `teacher_logits` is the combined logits of the stage's
    teachers, or one teacher's when the loss names it (`from_teacher`)."""
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    labels: torch.Tensor
    index: torch.Tensor
    student: list[torch.Tensor] = field(default_factory=list)
    teacher: list[torch.Tensor] = field(default_factory=list)


class NoOptions(Config):
    """This loss has no options."""


class DistillLoss(nn.Module):
    """One term of a distillation objective (see the module docstring for the protocol)."""

    Options: ClassVar[type[Config]] = NoOptions
    default_weight: ClassVar[float] = 1.0
    layers: ClassVar[int] = 1
    needs_teacher_logits: ClassVar[bool] = False

    def __init__(self, options: Config | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()

    def setup(self, student: list[torch.Tensor], teacher: list[torch.Tensor], train_labels: torch.Tensor) -> None:
        """Build learned parts from one batch's features (shapes only); nothing to build by default."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the parameters and buffers that a resumed run must get back (CRD's memory bank)."""
        return {}

    def forward(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - every loss overrides it
        raise NotImplementedError


class KDOptions(Config):
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the hard-label term")


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """Hinton KD: α·CE(labels) + (1−α)·T²·KL(teacher_T ‖ student_T); default α 0.1, T 4 (Hinton et al. 2015)."""

    Options = KDOptions
    layers = 0
    needs_teacher_logits = True

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        o = self.options
        return kd_loss(inputs.student_logits, inputs.teacher_logits, inputs.labels, o.temperature, o.alpha)


class EmbeddingOptions(Config):
    metric: Literal["mse", "cosine"] = Field("mse", description="mse (sentence-transformers' choice) or cosine")


@LOSSES.register("embedding")
class EmbeddingLoss(DistillLoss):
    """Embedding distillation: MSE (or 1 − cosine) between the student's and the teacher's output embeddings, labels
    unused, so any unlabelled text will do (sentence-transformers' model distillation)."""

    Options = EmbeddingOptions
    layers = 0
    needs_teacher_logits = True

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return embedding_loss(inputs.student_logits, inputs.teacher_logits, self.options.metric)


class CEOptions(Config):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@LOSSES.register("ce")
class CELoss(DistillLoss):
    """Cross-entropy with the labels (the hard term beside feature losses when `kd` is not used)."""

    Options = CEOptions
    layers = 0

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        logits, labels = inputs.student_logits, inputs.labels
        if logits.dim() > 2:  # a causal LM's N×T×V logits and N×T labels: every token one row
            logits, labels = logits.flatten(0, -2), labels.flatten()
        return F.cross_entropy(logits, labels, label_smoothing=self.options.label_smoothing)


@LOSSES.register("fitnet")
class FitNetLoss(DistillLoss):
    """FitNets hint (Romero et al. 2015): MSE(adapter(student feature), teacher feature); weight 100."""

    default_weight = 100.0

    def setup(self, student, teacher, train_labels) -> None:
        s, t = match_spatial(student[0], teacher[0])
        self.adapter = make_adapter(s.shape, t.shape, "fitnet")

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s, t = match_spatial(inputs.student[0], inputs.teacher[0])
        return hint_loss(self.adapter(s), t)


class AttentionOptions(Config):
    p: float = Field(2.0, gt=0, le=8, description="exponent of |F| in the attention map")


@LOSSES.register("attention")
class AttentionLoss(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017): ‖norm(mean_c F²)_s − norm(mean_c F²)_t‖²; weight 1000."""

    Options = AttentionOptions
    default_weight = 1000.0

    def setup(self, student, teacher, train_labels) -> None:
        _need_4d("attention", student[0], teacher[0])

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return attention_loss(inputs.student[0], inputs.teacher[0], self.options.p)


@LOSSES.register("similarity")
class SimilarityLoss(DistillLoss):
    """Similarity preserving (Tung & Mori 2019): batch Gram matrices, row-normalized, ‖ΔG‖²_F / b²; weight 3000."""

    default_weight = 3000.0

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return similarity_loss(inputs.student[0], inputs.teacher[0])


class RKDOptions(Config):
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


@LOSSES.register("rkd")
class RKDLoss(DistillLoss):
    """Relational KD (Park et al. 2019): 25·distance + 50·angle terms, smooth-L1; weight 1."""

    Options = RKDOptions

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        o = self.options
        return rkd_loss(inputs.student[0], inputs.teacher[0], o.distance_weight, o.angle_weight)


@LOSSES.register("fsp")
class FSPLoss(DistillLoss):
    """FSP (Yim et al. 2017): MSE of the Gram ("flow") matrices between two layers, student vs teacher; weight 50."""

    default_weight = 50.0
    layers = 2

    def setup(self, student, teacher, train_labels) -> None:
        for s, t in zip(student, teacher):
            _need_4d("fsp", s, t)
        # The student's channels are mapped onto the teacher's (1×1 conv) where they differ, so that the two
        # C1×C2 matrices have the same shape.
        self.adapters = nn.ModuleList(make_adapter(s.shape, t.shape, "fsp") for s, t in zip(student, teacher))

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s = tuple(a(f) for a, f in zip(self.adapters, inputs.student))
        return fsp_loss(s, tuple(inputs.teacher))


class CRDOptions(Config):
    feat_dim: int = Field(128, ge=2, le=4096, description="dimension of the embedding heads")
    negatives: int = Field(4096, ge=1, description="negatives per sample drawn from the memory bank (RepDistiller: 16384)")
    nce_temperature: float = Field(0.07, gt=0, le=10)
    momentum: float = Field(0.5, ge=0, lt=1, description="memory update: m·old + (1−m)·new, then renormalized")


@LOSSES.register("crd")
class CRDLoss(DistillLoss):
    """Contrastive representation distillation (Tian et al. 2020): NCE over a memory bank; weight 0.8."""

    Options = CRDOptions
    default_weight = 0.8

    def setup(self, student, teacher, train_labels) -> None:
        o = self.options
        n = len(train_labels)
        self.n_data = n
        # Embedding heads (Linear + L2 normalization) on the flattened features; both are trained.
        self.embed_s = nn.Linear(student[0].flatten(1).shape[1], o.feat_dim)
        self.embed_t = nn.Linear(teacher[0].flatten(1).shape[1], o.feat_dim)
        # Two memory banks, one embedding per training row, initialized uniformly in ±1/√(d/3) as in RepDistiller.
        # Plain tensors, not buffers: they are training state (saved through `training_state`, so resume restores
        # them), never part of the model, and DDP must not broadcast 2·N·d floats every step.
        stdv = 1.0 / math.sqrt(o.feat_dim / 3)
        self.memory_s = torch.rand(n, o.feat_dim).mul_(2 * stdv).sub_(stdv)
        self.memory_t = torch.rand(n, o.feat_dim).mul_(2 * stdv).sub_(stdv)
        # Normalization constants Z of the two score sets, fixed from the first batch (−1: not yet set).
        self.z = torch.full((2,), -1.0)
        # Negatives come from other classes (RepDistiller's "exact" mode): rows sorted by label, and per class the
        # offset and size of its block, so a uniform draw over the other classes is one index shift.
        labels = train_labels.long()
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        self.class_start = torch.cumsum(counts, 0) - counts
        self.class_count = counts
        if (counts == n).any():
            raise TorchslimError("crd: every training row has the same label; negatives must come from other classes")

    def training_state(self) -> dict[str, torch.Tensor]:
        return {"memory_s": self.memory_s, "memory_t": self.memory_t, "z": self.z}

    def sample_negatives(self, labels: torch.Tensor) -> torch.Tensor:
        """(b, K) training-row indices, uniformly from the rows whose label differs from each sample's."""
        k = self.options.negatives
        start, count = self.class_start[labels], self.class_count[labels]
        r = (torch.rand(len(labels), k) * (self.n_data - count).unsqueeze(1)).long()
        r = torch.minimum(r, (self.n_data - count - 1).unsqueeze(1))  # guard the float edge r == n − count
        pos = r + (r >= start.unsqueeze(1)) * count.unsqueeze(1)
        return self.order[pos]

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        o = self.options
        v_s = F.normalize(self.embed_s(inputs.student[0].flatten(1)), dim=1)  # (b, d)
        v_t = F.normalize(self.embed_t(inputs.teacher[0].flatten(1)), dim=1)
        idx = torch.cat([inputs.index.unsqueeze(1), self.sample_negatives(inputs.labels)], 1)  # (b, K+1), col 0 positive
        # The student's embedding is contrasted with the teacher-space memory and vice versa.
        scores_s = torch.exp(torch.bmm(self.memory_t[idx], v_s.unsqueeze(2)).squeeze(2) / o.nce_temperature)
        scores_t = torch.exp(torch.bmm(self.memory_s[idx], v_t.unsqueeze(2)).squeeze(2) / o.nce_temperature)
        if self.z[0] < 0:
            self.z.copy_(_mean_over_ranks(torch.stack([scores_s.mean(), scores_t.mean()]).detach()) * self.n_data)
        loss = nce_loss(scores_s / self.z[0], self.n_data) + nce_loss(scores_t / self.z[1], self.n_data)
        with torch.no_grad():
            self._update(*_gather_rows(inputs.index, v_s.detach(), v_t.detach()))
        return loss

    def _update(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        m = self.options.momentum
        self.memory_s[index] = F.normalize(self.memory_s[index] * m + v_s * (1 - m), dim=1)
        self.memory_t[index] = F.normalize(self.memory_t[index] * m + v_t * (1 - m), dim=1)


def _need_4d(loss: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise TorchslimError(f"{loss}: needs (N, C, H, W) feature maps, got student {list(student.shape)} and "
                             f"teacher {list(teacher.shape)}; tap convolutional layers")


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    from torchslim.training import dist

    if not dist.active():
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t / dist.world()


def _gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows (under torchrun each rank sees part of the batch; every memory bank gets all of them)."""
    from torchslim.training import dist

    if not dist.active():
        return tensors
    n = torch.tensor([len(tensors[0])])
    sizes = [torch.zeros_like(n) for _ in range(dist.world())]
    torch.distributed.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    out = []
    for t in tensors:
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded)
        out.append(torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]))
    return tuple(out)
