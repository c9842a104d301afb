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
from torchslim.models.registry import MODELS

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
    _check_directory(folder)
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


class HFSentenceEncoder(nn.Module):
    """A Hugging Face encoder (``AutoModel``) as sentence-transformers runs it: token embeddings mean-pooled over the
    non-pad positions, then L2-normalised. Takes padded token ids, returns N×hidden embeddings.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                  intermediate_size=32)
        >>> e = HFSentenceEncoder(BertModel(cfg))(torch.tensor([[2, 7, 3, 0]]))
        >>> e.shape, round(float(e.norm()), 4)
        (torch.Size([1, 16]), 1.0)
    """

    def __init__(self, model: nn.Module, pad_id: int = 0, normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.pad_id).long()
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def check_hf_directory(path: str | os.PathLike) -> Path:
    """Refuse, in one line, a path that is not a loadable Hugging Face model directory: missing, no config.json, or
    no weights file (the valid names listed). Reads no weights and imports no transformers: recipes check early."""
    folder = Path(path)
    _check_directory(folder)
    return folder


def _check_directory(folder: Path) -> None:
    if not folder.is_dir():
        raise TorchslimError(f"Hugging Face model directory {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise TorchslimError(f"{folder} holds no config.json: not a Hugging Face model directory")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise TorchslimError(f"{folder} holds no weights (looked for {', '.join(_WEIGHT_FILES)})")


def load_hf_encoder(path: str | os.PathLike, normalize: bool = True) -> HFSentenceEncoder:
    """Load a Hugging Face encoder directory (e.g. all-MiniLM-L6-v2) as a sentence-embedding model, offline."""
    folder = Path(path)
    _check_directory(folder)
    transformers = _import_transformers()
    try:
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchslimError(f"cannot load {folder} as a Hugging Face encoder: {first}") from e
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return HFSentenceEncoder(model, pad_id=pad_id, normalize=normalize)


# Where transformer blocks live, by architecture family: BERT/RoBERTa/MiniLM/ELECTRA, DistilBERT, decoder LMs.
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "model.layers", "layers", "transformer.h")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "n_layer")


def _transformer(model: nn.Module) -> nn.Module:
    """The transformers model inside a torchslim wrapper (or the model itself)."""
    return model.model if isinstance(model, (HFSequenceClassifier, HFSentenceEncoder)) else model


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    modules = dict(model.named_modules())
    for prefix in ("", "bert.", "roberta.", "distilbert.", "electra.", "base_model."):
        for path in _LAYER_PATHS:
            found = modules.get(prefix + path)
            if isinstance(found, nn.ModuleList):
                parent_name, _, attr = (prefix + path).rpartition(".")
                return modules[parent_name] if parent_name else model, attr, found
    raise TorchslimError(f"cannot find the transformer layers of {type(model).__name__} (looked for "
                         f"{', '.join(_LAYER_PATHS)}); layer dropping supports BERT-family, DistilBERT and decoder "
                         f"models")


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face model (or of a torchslim wrapper around one), in order: where
    layer dropping, hidden-state distillation and head pruning find them.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        ...                  intermediate_size=32)
        >>> len(transformer_layers(HFSentenceEncoder(BertModel(cfg))))
        3
    """
    return _layer_list(_transformer(model))[2]


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the transformer layers at the indices `keep` (in that order), in place; returns `model`.

    DistilBERT's student is BERT with every other layer (``keep=[0, 2, 4, 6, 8, 10]``); sentence-transformers'
    layer-drop students keep a spread of layers and then distil embeddings. The config's layer count follows, so the
    saved model loads with ``from_pretrained``.

    Example:
        >>> student = drop_layers(load_hf_encoder("all-MiniLM-L6-v2"), keep=[0, 2, 4])   # doctest: +SKIP
    """
    inner = _transformer(model)
    parent, attr, layers = _layer_list(inner)
    n = len(layers)
    if not isinstance(keep, (list, tuple)) or not keep or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in keep):
        raise TorchslimError(f"keep_layers must be a non-empty list of layer indices 0..{n - 1}, got {keep!r}")
    bad = [i for i in keep if not 0 <= i < n]
    if bad:
        raise TorchslimError(f"keep_layers {bad} out of range: the model has {n} layers (valid indices 0..{n - 1})")
    if len(set(keep)) != len(keep):
        raise TorchslimError(f"keep_layers lists a layer twice: {list(keep)}")
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(getattr(parent, attr)):
        for sub in layer.modules():  # attention caches key on the position of the layer
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    config = getattr(inner, "config", None)
    for key in _LAYER_COUNT_KEYS:
        if config is not None and hasattr(config, key):
            setattr(config, key, len(keep))
    return model


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                    "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                                "1_Pooling/config.json")


def hf_directory_problem(model: nn.Module) -> str | None:
    """Why `model` cannot be written as a directory that ``from_pretrained`` loads, or None. BERT-family configs
    derive the head size from hidden_size / num_attention_heads, so a model whose heads were pruned
    (:func:`torchslim.prune.prune_heads_`) would not load from its own directory."""
    for name, m in model.named_modules():
        query = getattr(m, "query", None) or getattr(m, "q_lin", None)
        if isinstance(query, nn.Linear) and query.out_features != query.in_features:
            return (f"{name}: attention heads were pruned ({query.out_features} of {query.in_features} query "
                    f"features left) and this model's config cannot describe fewer heads of the same size; ship it "
                    f"as ONNX (export) or a torchslim checkpoint")
    return None


def save_hf_model(model: nn.Module, path: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write `model` as a Hugging Face model directory (config + safetensors), with the tokenizer files (and, for a
    sentence encoder, sentence-transformers' module files) copied from `tokenizer_from`, the directory the model came
    from. Written to a temporary directory and renamed, so `path` is whole or absent. Users keep their serving code:
    ``AutoModel.from_pretrained(path)`` and ``SentenceTransformer(path)`` load it as they are."""
    import shutil
    import tempfile

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise TorchslimError(f"{out} exists and is not a directory")
    problem = hf_directory_problem(model)
    if problem:
        raise TorchslimError(problem)
    _import_transformers()  # quiets its progress bars ("Writing model shards")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _transformer(model).save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            source = Path(tokenizer_from)
            names = _TOKENIZER_FILES + (_SENTENCE_TRANSFORMERS_FILES if isinstance(model, HFSentenceEncoder) else ())
            for name in names:
                if (source / name).is_file():
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / name, tmp / name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_tokenizer_matches(path: str | os.PathLike, tokenizer: Any) -> None:
    """Refuse, in one line, data tokenized by anything but the model directory's own tokenizer: a word or char
    vocabulary (built from the data, meaningless to a pretrained embedding table), or another tokenizer.json whose
    vocabulary differs from the one in `path`."""
    folder = Path(path)
    own = folder / "tokenizer.json"
    kind = getattr(tokenizer, "kind", None)
    if kind is None:
        return
    if kind != "hf":
        raise TorchslimError(f"the Hugging Face model {folder} reads ids of its own tokenizer, but the data is "
                             f"tokenized by the '{kind}' tokenizer; set data.tokenizer: {own if own.is_file() else folder}")
    if not own.is_file():
        return
    import tokenizers  # the data's tokenizer is one of its tokenizers already (kind "hf"), so it is installed

    if tokenizers.Tokenizer.from_file(str(own)).get_vocab(with_added_tokens=True) != tokenizer.get_vocab():
        raise TorchslimError(f"the tokenizer does not match the model: {getattr(tokenizer, 'source', '') or 'the data'}"
                             f"'s vocabulary differs from {own}'s; set data.tokenizer: {own}")


def check_text_inputs(model: nn.Module, vocab_size: int, max_length: int) -> None:
    """Refuse, in one line, token ids a Hugging Face model cannot read: a tokenizer whose vocabulary is larger than
    the model's embedding table (a tokenizer that does not match the model: ids past the table would crash or, worse,
    read the wrong rows) or sequences longer than its position embeddings.

    Example:
        >>> check_text_inputs(model, data.task.vocab_size, data.task.max_length)   # doctest: +SKIP
    """
    config = getattr(_transformer(model), "config", None)
    if config is None:
        return
    table = getattr(config, "vocab_size", None)
    if table is not None and vocab_size > table:
        raise TorchslimError(f"the tokenizer does not match the model: it makes ids up to {vocab_size - 1}, the model's "
                             f"embedding table has {table} rows; tokenize with the model's own tokenizer.json")
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise TorchslimError(f"max_length {max_length} is longer than the model's maximum sequence length {limit} "
                             f"(max_position_embeddings); use max_length <= {limit}")


@MODELS.register("bert", help="a BERT of any size with fresh weights (Hugging Face transformers): TinyBERT/MiniLM "
                              "students, or a teacher to train; args layers, hidden, heads, intermediate, max_length")
def bert(*, num_classes: int = 2, vocab_size: int = 30522, layers: int = 4, hidden: int = 312, heads: int = 12,
         intermediate: int | None = None, max_length: int = 512, dropout: float = 0.1) -> HFSequenceClassifier:
    """A ``BertForSequenceClassification`` of this shape with fresh weights, taking padded token ids (TinyBERT's
    general student is layers=4, hidden=312, heads=12, intermediate=1200). Needs ``torchslim[transformers]``.

    Example:
        >>> m = bert(num_classes=2, vocab_size=100, layers=2, hidden=32, heads=4)
        >>> m(torch.tensor([[2, 7, 3, 0]])).shape
        torch.Size([1, 2])
    """
    if hidden % heads:
        raise TorchslimError(f"bert: hidden {hidden} is not a multiple of heads {heads}; valid heads divide hidden")
    transformers = _import_transformers()
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                                  max_position_embeddings=max_length, num_labels=num_classes,
                                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return HFSequenceClassifier(transformers.BertForSequenceClassification(cfg))
