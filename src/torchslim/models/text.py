"""Text classifiers on token ids (int64 N×L, 0 = padding): Kim's TextCNN and Tang et al.'s BiLSTM student.

Both mask padding, so a text's logits do not depend on how far its batch was padded (a model trained on batches of
length 64 gives the same answer on the text alone), and both export to ONNX with dynamic batch and sequence axes.

Example:
    >>> import torch
    >>> from torchslim.models import create_model
    >>> model = create_model("textcnn", num_classes=2, vocab_size=100).eval()
    >>> model(torch.tensor([[5, 6, 7, 0, 0]])).shape
    torch.Size([1, 2])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models.registry import MODELS


def _check_positive(model: str, **values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TorchslimError(f"{model} {key} must be a positive whole number, got {value!r}")


def _check_dropout(model: str, dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise TorchslimError(f"{model} dropout must be a number in [0, 1), got {dropout!r}")


def _real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """bool N×L, True at real tokens: the attention mask when given, else input_ids != 0."""
    return attention_mask.bool() if attention_mask is not None else input_ids.ne(0)


class TextCNN(nn.Module):
    """Kim (2014): embedding → Conv1d of widths 3, 4, 5 (``filters`` each) → ReLU → max over time → dropout → fc.

    The sequence is zero-padded by (widest width - 1) at the end, so inputs shorter than a filter still work, and
    windows that start past a text's last token are left out of the max: they see only padding.
    """

    def __init__(
        self, num_classes: int = 2, vocab_size: int = 30000, embed_dim: int = 128,
        widths: Sequence[int] = (3, 4, 5), filters: int = 100, dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        _check_positive("textcnn", num_classes=num_classes, vocab_size=vocab_size, embed_dim=embed_dim,
                        filters=filters)
        if not widths:
            raise TorchslimError("textcnn widths must list at least one filter width")
        _check_positive("textcnn", **{f"widths[{i}]": w for i, w in enumerate(widths)})
        _check_dropout("textcnn", dropout)
        self.widths = widths
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, w) for w in widths)
        self.relus = nn.ModuleList(nn.ReLU() for _ in widths)  # one instance per use, so hooks see each
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(filters * len(widths), num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        real = _real_tokens(input_ids, attention_mask)
        lengths = real.sum(1, keepdim=True).unsqueeze(1)  # N×1×1
        x = self.embedding(input_ids).masked_fill(~real.unsqueeze(-1), 0.0).transpose(1, 2)  # N×E×L
        # Concatenated zeros rather than F.pad, whose ONNX export reverses the pad list with a Slice of step -1.
        x = torch.cat([x, torch.zeros_like(x[:, :, :1]).expand(-1, -1, max(self.widths) - 1)], 2)
        pooled = []
        for conv, relu, width in zip(self.convs, self.relus, self.widths):
            h = relu(conv(x))  # N×F×T, T = L + max width - width
            # Window t covers tokens t..t+width-1: keep t ≤ length - width, and always window 0 (a short text).
            start = torch.ones_like(h[:, :1, :], dtype=torch.long).cumsum(-1) - 1  # 0, 1, 2 ... N×1×T, dynamic T
            keep = start <= (lengths - width).clamp(min=0)
            # After the ReLU every value is ≥ 0, so 0 at dropped windows never wins over a kept one.
            pooled.append(h.masked_fill(~keep, 0.0).amax(-1))  # N×F
        return self.fc(self.dropout(torch.cat(pooled, 1)))


class BiLSTMClassifier(nn.Module):
    """Tang et al. (2019)'s distillation student: embedding → BiLSTM → max over time → fc → ReLU → dropout → fc.

    The two directions are two ``nn.LSTM`` modules: the backward one reads each text reversed within its own length
    (a gather, not ``pack_padded_sequence``, so it exports to ONNX), so it starts at the text's last token rather
    than at the padding. Padding positions are left out of the max-pooling.
    """

    def __init__(
        self, num_classes: int = 2, vocab_size: int = 30000, embed_dim: int = 300, hidden: int = 150,
        fc: int = 200, dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_positive("bilstm", num_classes=num_classes, vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden,
                        fc=fc)
        _check_dropout("bilstm", dropout)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm_forward = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.lstm_backward = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.fc1 = nn.Linear(2 * hidden, fc)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        real = _real_tokens(input_ids, attention_mask)  # N×L, padding at the end
        x = self.embedding(input_ids)  # N×L×E
        lengths = real.sum(1, keepdim=True)  # N×1
        position = torch.ones_like(input_ids).cumsum(1) - 1  # 0, 1, 2 ... N×L, dynamic L
        # Position i of a text of length n reads token n-1-i; padding positions stay where they are. The map is its
        # own inverse, so the same gather puts the backward outputs back in text order.
        reverse = torch.where(position < lengths, lengths - 1 - position, position).unsqueeze(-1)  # N×L×1
        # Widths from the modules rather than tensor shapes: under ONNX tracing a shape is a traced tensor, and a
        # constant keeps the exported graph free of Shape/Gather nodes.
        embed_dim, hidden = self.embedding.embedding_dim, self.lstm_backward.hidden_size
        forward_out, _ = self.lstm_forward(x)  # N×L×H
        backward_out, _ = self.lstm_backward(x.gather(1, reverse.expand(-1, -1, embed_dim)))
        backward_out = backward_out.gather(1, reverse.expand(-1, -1, hidden))
        h = torch.cat([forward_out, backward_out], -1)  # N×L×2H
        # LSTM outputs lie in (-1, 1), so -1 at padding never wins over a real token and an all-padding row pools
        # to a finite -1 instead of -inf.
        pooled = h.masked_fill(~real.unsqueeze(-1), -1.0).amax(1)  # N×2H
        return self.fc2(self.dropout(self.relu(self.fc1(pooled))))


@MODELS.register("textcnn")
def textcnn(
    *, num_classes: int = 2, vocab_size: int = 30000, embed_dim: int = 128, filters: int = 100,
    widths: Sequence[int] = (3, 4, 5), dropout: float = 0.5,
) -> TextCNN:
    """Kim's TextCNN: embedding 128, Conv1d widths 3/4/5 × 100 filters, max over time, dropout 0.5, linear."""
    return TextCNN(num_classes, vocab_size, embed_dim, widths, filters, dropout)


@MODELS.register("bilstm")
def bilstm(
    *, num_classes: int = 2, vocab_size: int = 30000, embed_dim: int = 300, hidden: int = 150, fc: int = 200,
    dropout: float = 0.5,
) -> BiLSTMClassifier:
    """Tang et al.'s BiLSTM student: embedding 300, BiLSTM 2×150, masked max over time, fc 200 + ReLU, linear."""
    return BiLSTMClassifier(num_classes, vocab_size, embed_dim, hidden, fc, dropout)
