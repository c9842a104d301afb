"""Sentence embeddings: token ids N×L (int64, 0 = padding) in, embeddings N×D out, judged against reference
embeddings (usually the teacher's) on the same sentences.

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

from torchslim.errors import TorchslimError
from torchslim.tasks.text_classification import TextClassification


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
    num_classes: int = 0  # no classes: the outputs are embeddings

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        cos = cosine_rows(logits, labels)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                "cosine_p05": float(np.percentile(cos, 5)), "share_at_0.99": float((cos >= 0.99).mean())}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.pop("num_classes", None)
        out["metrics"] = "cosine similarity to the reference embeddings of the same sentences"
        return out
