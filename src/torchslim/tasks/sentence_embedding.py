"""Sentence embeddings: token ids N×L (int64, 0 = padding) in, embeddings N×D out, judged against reference
embeddings (usually the teacher's) on the same sentences.

In a recipe (``data: {task: sentence-embedding}``) the teacher's embeddings become every split's labels once the
teacher exists (:meth:`SentenceEmbedding.with_teacher`): a `train` stage then distils them (mean squared error),
and every artifact is judged by its cosine to them.

The test split pairs each sentence's ids with its reference embedding, so ``evaluate`` measures every artifact (the
teacher itself, a layer-dropped student, its int8 ONNX file) by its agreement with the same reference:

    ref = ts.predict(teacher, test_ids)
    task = SentenceEmbedding(vocab_size=30522, max_length=128)
    ts.evaluate({"teacher": teacher, "L3": student, "L3 int8": "l3.int8.onnx"}, task, TensorDataset(test_ids, ref))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim.errors import TorchslimError
from torchslim.tasks.text_classification import TextClassification


class EmbeddingRows(TensorDataset):
    """``(token ids, reference embedding)`` rows that carry their task, so ``fit`` trains and validates with it."""

    def __init__(self, ids: torch.Tensor, embeddings: torch.Tensor, task: Any = None) -> None:
        super().__init__(ids, embeddings)
        self.task = task


@torch.no_grad()
def _embed(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`model`'s outputs (eval mode) on token ids N×L in length-sorted chunks cut to their longest row (the encoder
    masks padding, so only the time changes)."""
    model.eval()
    lengths = ids.ne(0).sum(1)
    out = None
    for chunk in lengths.argsort().split(batch_size):
        y = model(ids[chunk][:, :max(1, int(lengths[chunk].max()))]).float()
        if out is None:
            out = torch.empty(len(ids), y.shape[1])
        out[chunk] = y
    return out if out is not None else torch.empty(0, 0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (N×D each), float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise TorchslimError(f"embeddings and reference embeddings must both be N×D of one size; got {a.shape} and "
                             f"{b.shape}")
    na = np.linalg.norm(a, axis=1).clip(1e-12)
    nb = np.linalg.norm(b, axis=1).clip(1e-12)
    return (a * b).sum(1) / (na * nb)


@dataclass
class SentenceEmbedding(TextClassification):
    """Token-id sequences into sentence embeddings, judged by cosine similarity to reference embeddings.

    Metrics: ``cosine`` (mean over sentences, the primary metric), ``cosine_min``, ``cosine_p05`` (the 5th
    percentile) and ``share_at_0.99`` (sentences at cosine ≥ 0.99 to their reference).

    Example:
        >>> task = SentenceEmbedding(vocab_size=100, max_length=16)
        >>> e = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> round(task.metrics(e, np.array([[1.0, 0.0], [1.0, 1.0]]))["cosine"], 4)
        0.8536
    """

    name: ClassVar[str] = "sentence-embedding"
    primary_metric: ClassVar[str] = "cosine"
    metric_names: ClassVar[tuple[str, ...]] = ("cosine", "cosine_min", "cosine_p05", "share_at_0.99")
    num_classes: int = 0  # no classes: the outputs are embeddings

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        cos = cosine_rows(logits, labels)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                "cosine_p05": float(np.percentile(cos, 5)), "share_at_0.99": float((cos >= 0.99).mean())}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean squared error to the reference embeddings (sentence-transformers' model distillation)."""
        return torch.nn.functional.mse_loss(logits, targets.to(logits.dtype))

    def with_teacher(self, data: Any, teacher: torch.nn.Module) -> Any:
        """Every split relabelled with the teacher's embeddings of its sentences (computed once): training reproduces
        them, validation and evaluation measure the cosine to them. The class labels are not used."""
        import dataclasses

        def relabel(split):
            if split is None:
                return None
            x = split.tensors[0]
            return EmbeddingRows(x, _embed(teacher, x), task=self)

        return dataclasses.replace(data, train=relabel(data.train), val=relabel(data.val), test=relabel(data.test),
                                   task=self)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.pop("num_classes", None)
        out["metrics"] = "cosine similarity to the reference embeddings of the same sentences"
        return out


def as_sentence_embedding(data: Any) -> Any:
    """A text-classification DataBundle as a sentence-embedding one: the same token ids and tokenizer, judged by
    cosine to reference embeddings (the teacher's, once a run has one: :meth:`SentenceEmbedding.with_teacher`)."""
    import dataclasses

    task = data.task
    if not isinstance(task, TextClassification):
        raise TorchslimError(f"data.task: sentence-embedding needs text data; {data.name} is {task.name}")
    new = SentenceEmbedding(vocab_size=task.vocab_size, max_length=task.max_length,
                            latency_length=task.latency_length, tokenizer=task.tokenizer)
    return dataclasses.replace(data, task=new)
