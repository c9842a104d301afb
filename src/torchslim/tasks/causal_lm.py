"""Causal language modelling: token-id blocks N×T (int64) in, next-token logits N×T×V out.

The targets of a block are its tokens shifted by one (position t predicts token t+1), so a training row is
``(ids[o : o+T], ids[o+1 : o+T+1])``. The training loss is the mean token cross-entropy; the primary metric is
perplexity, exp(mean cross-entropy over every scored token), where lower is better.

Example:
    >>> import numpy as np
    >>> task = CausalLM(vocab_size=3, block_size=4)
    >>> logits = np.zeros((1, 2, 3), np.float32)          # uniform over 3 tokens
    >>> round(task.metrics(logits, np.array([[0, 2]]))["perplexity"], 4)
    3.0
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from torchslim.errors import TorchslimError
from torchslim.tasks.base import Task, forward

SAMPLE_TOKENS = 200  # length of the report's generated sample
SAMPLE_TEMPERATURE = 0.8  # nanoGPT's sample.py default
SAMPLE_SEED = 0


def token_nll(logits: np.ndarray, targets: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Negative log-likelihood (nats) of each target token under its logits: ``logits`` (..., V), ``targets`` (...),
    returned flattened to one value per token, in float64 (chunked, so a large vocabulary fits in memory).

    Example:
        >>> token_nll(np.zeros((1, 2, 4)), np.array([[0, 3]])).round(4).tolist()
        [1.3863, 1.3863]
    """
    flat = np.asarray(logits).reshape(-1, np.asarray(logits).shape[-1])
    target = np.asarray(targets).reshape(-1)
    out = np.empty(len(target), dtype=np.float64)
    for start in range(0, len(target), chunk):
        z = flat[start:start + chunk].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        out[start:start + chunk] = log_norm - z[np.arange(len(z)), target[start:start + chunk]]
    return out


@dataclass
class CausalLM(Task):
    """Next-token prediction over blocks of ``block_size`` token ids (vocabulary ``vocab_size``).

    Metrics (on the split the task is evaluated on, every target token counted once): ``perplexity`` (primary, lower
    is better) = exp(``cross_entropy``), the mean next-token cross-entropy in nats; ``accuracy``: next-token top-1;
    ``errors``: tokens predicted wrongly; ``tokens``: tokens scored. ``eval_stride`` is the step between evaluation
    windows the data made (``block_size``: non-overlapping, so each token sees 0 to T−1 tokens of context).
    ``latency_length`` is the length of the example inputs export and latency use (default ``block_size``).
    ``tokenizer`` turns text into ids and back (a :class:`~torchslim.data.CharVocabulary`); with it and a ``prompt``
    the report shows a short sample each artifact generates.

    Example:
        >>> CausalLM(vocab_size=65, block_size=128).example_inputs(2).shape
        torch.Size([2, 128])
    """

    name: ClassVar[str] = "causal-lm"
    primary_metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ("perplexity", "cross_entropy", "accuracy", "errors", "tokens")
    input_names: ClassVar[list[str]] = ["input_ids"]

    num_classes: int = 0  # the vocabulary: every token is a class of the next-token prediction
    vocab_size: int = 65
    block_size: int = 128
    eval_stride: int | None = None
    latency_length: int | None = None
    tokenizer: Any = None  # torchslim.data.CharVocabulary (encode(text) -> ids, decode(ids) -> text, save(path))
    prompt: str | None = None

    def __post_init__(self) -> None:
        self.num_classes = self.num_classes or self.vocab_size

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        length = self.latency_length or self.block_size
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, max(1, self.vocab_size), (batch_size, length), generator=g)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean token cross-entropy: N×T×V logits against the N×T next tokens, every token one row."""
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), label_smoothing=label_smoothing)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        nll = token_nll(logits, labels)
        if not len(nll):
            return {"perplexity": float("nan"), "cross_entropy": float("nan"), "accuracy": float("nan"),
                    "errors": 0, "tokens": 0}
        errors = int((np.asarray(logits).argmax(-1).reshape(-1) != np.asarray(labels).reshape(-1)).sum())
        ce = float(nll.mean())
        return {"perplexity": float(np.exp(ce)), "cross_entropy": ce, "accuracy": 1.0 - errors / len(nll),
                "errors": errors, "tokens": int(len(nll))}

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "vocab_size": self.vocab_size, "block_size": self.block_size,
               "eval_context": self.block_size, "eval_stride": self.eval_stride or self.block_size,
               "sequence_length": self.latency_length or self.block_size, "higher_is_better": False,
               "metrics": "perplexity = exp(mean next-token cross-entropy over every scored token; lower is better), "
                          "in windows of eval_context tokens taken every eval_stride tokens; accuracy = next-token "
                          "top-1"}
        out.pop("num_classes", None)
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.describe()
        return out

    def check_model(self, model: torch.nn.Module) -> None:
        """A model must take blocks of ``block_size`` tokens: its own block size (``model.block_size``, or a Hugging
        Face config's ``n_positions`` / ``max_position_embeddings``) must not be shorter."""
        config = getattr(model, "config", None)
        limit = getattr(model, "block_size", None) or getattr(config, "n_positions", None) \
            or getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.block_size > limit:
            raise TorchslimError(f"data.block_size {self.block_size} is longer than the model's block_size {limit}; "
                                 f"valid: data.block_size ≤ {limit}, or a model with args.block_size ≥ "
                                 f"{self.block_size}")
        # One short forward pass: a classifier (N×C out) would otherwise fail later with a shape error mid-training.
        x = self.example_inputs(1)[:, :min(8, self.block_size)]
        was_training = model.training
        try:
            with torch.no_grad():
                out = forward(model.eval(), x)
        finally:
            model.train(was_training)
        if tuple(out.shape) != (1, x.shape[1], self.vocab_size):
            raise TorchslimError(f"{type(model).__name__} gives outputs of shape {tuple(out.shape)} for token ids "
                                 f"{tuple(x.shape)}; a causal-lm model gives next-token logits N×T×vocab_size "
                                 f"({self.vocab_size}), as the zoo's gpt, gpt-nano, gpt-mini, gpt-shakespeare")

    def sample_text(self, run: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any] | None:
        """What the model writes after ``prompt``: ``SAMPLE_TOKENS`` tokens sampled at temperature 0.8 with seed 0,
        from ``run`` (ids N×T int64 → logits N×T×V, numpy: any runtime). None without a tokenizer or a prompt."""
        if self.tokenizer is None or not self.prompt:
            return None
        from torchslim.models.gpt import generate

        prompt_ids = self.tokenizer.encode(self.prompt)[-self.block_size:]
        ids = generate(lambda x: torch.from_numpy(np.asarray(run(x.numpy()))), prompt_ids,
                       max_new_tokens=SAMPLE_TOKENS, temperature=SAMPLE_TEMPERATURE, seed=SAMPLE_SEED,
                       block_size=self.block_size)
        return {"prompt": self.prompt, "text": self.tokenizer.decode(ids[len(prompt_ids):].tolist()),
                "max_new_tokens": SAMPLE_TOKENS, "temperature": SAMPLE_TEMPERATURE, "top_k": None,
                "seed": SAMPLE_SEED}
