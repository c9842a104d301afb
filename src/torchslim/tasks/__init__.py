"""Tasks: what the data's inputs are, how a model is called on them, and which metrics judge it.

Example:
    >>> from torchslim.tasks import TASKS, get_task
    >>> TASKS.names()
    ['causal-lm', 'image-classification', 'sentence-embedding', 'text-classification']
    >>> get_task("image-classification", input_shape=(1, 8, 8)).primary_metric
    'accuracy'
"""
from __future__ import annotations

from typing import Any

from torchslim.registry import Registry
from torchslim.tasks.base import Task, batch_size_of, classification_metrics, forward, logits_of
from torchslim.tasks.causal_lm import CausalLM, token_nll
from torchslim.tasks.image_classification import ImageClassification
from torchslim.tasks.sentence_embedding import SentenceEmbedding, cosine_rows
from torchslim.tasks.text_classification import TextClassification

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("image-classification", help="images of one size → classes (accuracy, macro-F1)")(ImageClassification)
TASKS.register("text-classification", help="token ids from a tokenizer → classes (accuracy, macro-F1)")(
    TextClassification)
TASKS.register("sentence-embedding", help="token ids → embeddings, judged by cosine to reference embeddings")(
    SentenceEmbedding)
TASKS.register("causal-lm", help="token-id blocks → next-token logits (perplexity, lower is better)")(CausalLM)


def get_task(name: str, **kwargs: Any) -> Task:
    """A task by its registered name, with its settings (`input_shape`, `vocab_size`, `num_classes`...)."""
    return TASKS.get(name)(**kwargs)


__all__ = ["TASKS", "Task", "ImageClassification", "TextClassification", "SentenceEmbedding", "CausalLM", "get_task",
           "cosine_rows", "token_nll", "forward", "logits_of",
           "batch_size_of", "classification_metrics"]
