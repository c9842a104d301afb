"""Text models: parameter counts by hand, padding masks, short inputs, a keyword task learnt, ONNX with dynamic axes."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.models import BiLSTMClassifier, TextCNN, create_model, list_models
from torchslim.tasks import TextClassification

SMALL = {"textcnn": {"embed_dim": 16, "filters": 8}, "bilstm": {"embed_dim": 16, "hidden": 12, "fc": 10}}
STANDARD_MODULES = (nn.Embedding, nn.Conv1d, nn.LSTM, nn.Linear, nn.ReLU, nn.Dropout, nn.ModuleList)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # embedding 1,000·128 = 128,000; conv widths 3/4/5: 100·128·w + 100 = 38,500 + 51,300 + 64,100;
        # fc 300·2 + 2 = 602. Total 282,502.
        ("textcnn", 282_502),
        # embedding 1,000·300 = 300,000; each direction 4·150·(300 + 150) + 2·4·150 = 271,200, two of them 542,400
        # (as one bidirectional nn.LSTM); fc1 300·200 + 200 = 60,200; fc2 200·2 + 2 = 402. Total 903,002.
        ("bilstm", 903_002),
    ],
)
def test_parameter_counts_match_the_papers_shapes(name: str, expected: int) -> None:
    model = create_model(name, num_classes=2, vocab_size=1000)
    assert n_params(model) == expected
    assert all(isinstance(m, STANDARD_MODULES) for m in model.modules() if m is not model)
    assert model.embedding.padding_idx == 0
    assert name in list_models()


@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_logits_do_not_depend_on_how_far_a_batch_is_padded(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, vocab_size=50, **SMALL[name]).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [9, 3, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0]])
    logits = model(ids)
    assert torch.allclose(model(nn.functional.pad(ids, (0, 30))), logits, atol=1e-6)
    assert torch.allclose(model(ids[1:2, :2]), logits[1:2], atol=1e-6)  # the text alone, no padding at all
    # An explicit attention mask means the same as input_ids != 0.
    assert torch.allclose(model(ids, attention_mask=(ids != 0).long()), logits, atol=1e-6)
    # ...and it is what decides: the same ids with a shorter mask give other logits.
    assert not torch.allclose(model(ids[:1], attention_mask=torch.tensor([[1, 1, 0, 0, 0, 0]])), logits[:1])


@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_short_and_empty_inputs(name: str) -> None:
    model = create_model(name, num_classes=2, vocab_size=20, **SMALL[name]).eval()
    for length in (1, 2):  # shorter than TextCNN's widest filter (5)
        assert model(torch.randint(1, 20, (4, length))).shape == (4, 2)
    assert torch.isfinite(model(torch.zeros(2, 7, dtype=torch.long))).all()  # all padding: finite, not NaN


@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_learns_a_keyword_task_and_padding_gets_no_gradient(name: str) -> None:
    """Class 1 iff token 3 occurs anywhere in a text of random length: needs every position, masking and both
    LSTM directions to work."""
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 256, 12, 30
    ids = torch.randint(4, vocab, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    y = torch.arange(n) % 2
    where = (torch.rand(n, generator=g) * lengths).long()
    ids[y == 1, where[y == 1]] = 3
    ids[torch.arange(length) >= lengths[:, None]] = 0
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, vocab_size=vocab, dropout=0.0, **SMALL[name])
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids), y).backward()
        assert model.embedding.weight.grad[0].abs().sum() == 0  # padding_idx=0: the pad embedding never moves
        opt.step()
    accuracy = (model.eval()(ids).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95, f"{name} reached only {accuracy:.2f} on a keyword task"


@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_hooks_and_pruning_of_linear_layers(name: str) -> None:
    from torch.nn.utils import prune

    model = create_model(name, num_classes=2, vocab_size=40, **SMALL[name]).eval()
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    seen = []
    linear[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    prune.l1_unstructured(linear[0], "weight", amount=0.5)
    model(torch.randint(1, 40, (3, 9)))
    assert seen == [(3, linear[0].out_features)]
    assert (linear[0].weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


# Two warnings that torch raises for every nn.LSTM it exports: the TorchScript exporter's about batch sizes (whatever
# the batch), and a TracerWarning from nn.LSTM's own input-size check (a traced size is a tensor). This test runs
# the exported graph on other batch sizes and sequence lengths, which is what both warn about.
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1:UserWarning")
@pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean:torch.jit.TracerWarning:torch.nn.modules.rnn")
@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_onnx_export_with_dynamic_batch_and_sequence(name: str) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, vocab_size=60, **SMALL[name]).eval()
    task = TextClassification(vocab_size=60, max_length=16, num_classes=3)
    buffer = io.BytesIO()
    torch.onnx.export(model, (task.example_inputs(1),), buffer, input_names=task.input_names,
                      output_names=["logits"], dynamic_axes=task.dynamic_axes(), dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for batch, length in ((2, 5), (4, 23)):
        ids = torch.randint(1, 60, (batch, length), generator=g)
        ids[0, length // 2:] = 0  # one padded text, so the masks run in ONNX too
        (ort_logits,) = session.run(None, {"input_ids": ids.numpy()})
        np.testing.assert_allclose(ort_logits, model(ids).detach().numpy(), atol=1e-4)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(TorchslimError, match="textcnn filters must be a positive whole number, got 0"):
        create_model("textcnn", vocab_size=10, filters=0)
    with pytest.raises(TorchslimError, match="bilstm dropout must be a number in \\[0, 1\\)"):
        create_model("bilstm", vocab_size=10, dropout=1.5)
    with pytest.raises(TorchslimError, match="takes no input_shape"):
        create_model("bilstm", vocab_size=10, input_shape=(1, 28, 28))
    with pytest.raises(TorchslimError, match="model 'textcnn' has no argument 'hidden'"):
        create_model("textcnn", vocab_size=10, hidden=3)
    assert isinstance(create_model("textcnn", vocab_size=10), TextCNN)
    assert isinstance(create_model("bilstm", vocab_size=10), BiLSTMClassifier)
