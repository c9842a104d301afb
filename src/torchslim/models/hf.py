"""Hugging Face transformers as torchslim models, from a local directory only (never downloaded).

A sequence classifier becomes a plain ``nn.Module`` that takes the padded token ids a torchslim text data set yields
(``input_ids``, N×L, padded with id 0) and returns logits, so ``fit``, ``distill``, ``evaluate`` and friends take it
as they take a zoo model. The attention mask is derived from the padding unless the batch brings its own.

    data = ts.load_dataset("sst2", tokenizer="my-bert/tokenizer.json")
    model = ts.load_hf_classifier("my-bert", num_classes=data.num_classes)
    ts.train(model, data, ts.TrainConfig(epochs=1, optimizer="adamw", lr=5e-5, batch_size=32))

Needs the optional extra: ``pip install "torchslim[transformers]"``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise TorchslimError('Hugging Face models need the "transformers" package: '
                             'pip install "torchslim[transformers]"') from e
    transformers.logging.set_verbosity_error()  # its load report and progress bar would print on every load
    transformers.utils.logging.disable_progress_bar()
    return transformers


class HFSequenceClassifier(nn.Module):
    """A Hugging Face ``AutoModelForSequenceClassification`` that takes padded token ids and returns logits.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                  intermediate_size=32, num_labels=3)
        >>> m = HFSequenceClassifier(BertForSequenceClassification(cfg))
        >>> m(torch.tensor([[2, 7, 3, 0, 0]])).shape
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, pad_id: int = 0) -> None:
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.pad_id).long()
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def load_hf_classifier(path: str | os.PathLike, num_classes: int | None = None) -> HFSequenceClassifier:
    """Load a Hugging Face model directory (config + weights) as a sequence classifier, offline.

    ``num_classes`` sets the classifier head's size: a checkpoint without a head for that many classes (an encoder
    such as all-MiniLM-L6-v2) gets a fresh head, to be trained. Raises TorchslimError for a missing directory, one
    without weights, or a config transformers cannot read.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise TorchslimError(f"Hugging Face model directory {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise TorchslimError(f"{folder} holds no config.json: not a Hugging Face model directory")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise TorchslimError(f"{folder} holds no weights (looked for {', '.join(_WEIGHT_FILES)})")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise TorchslimError(f"num_classes must be a positive whole number, got {num_classes!r}")
    transformers = _import_transformers()
    kwargs = {} if num_classes is None else {"num_labels": num_classes}
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, ignore_mismatched_sizes=num_classes is not None, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchslimError(f"cannot load {folder} as a Hugging Face sequence classifier: {first}") from e
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return HFSequenceClassifier(model, pad_id=pad_id)
