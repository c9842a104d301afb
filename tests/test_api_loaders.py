"""The public functions on DataLoaders and non-image inputs: token ids (int64 N×L) and dicts of tensors
(input_ids + attention_mask, called as ``model(**inputs)``), through training, distillation, pruning, export,
quantization and evaluation."""
from __future__ import annotations

import copy
import types

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts
from torchslim.data import DataBundle
from torchslim.errors import TorchslimError
from torchslim.evaluation import LatencyConfig, build_report, render_markdown
from torchslim.export import export_onnx, ort_logits, ort_session, verify_onnx
from torchslim.prune import Masks
from torchslim.quant import DynamicInt8Config, QuantConfig, StaticInt8Config, ptq, quantize
from torchslim.quant.export import QuantizationRecord
from torchslim.tasks import TextClassification
from torchslim.training import TrainConfig, fit, predict, train
from torchslim.training import loop

VOCAB, LENGTH, CLASSES = 20, 8, 2
FAST = LatencyConfig(warmup=1, min_runs=3, max_runs=10, max_seconds=0.02, batch_sizes=(1, 4), rounds=1)
quiet = dict(log=lambda s: None)


class BagOfWords(nn.Module):
    """Mean of the token embeddings (padding, id 0, left out), then a linear layer; an optional attention mask."""

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, width)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = (input_ids != 0).float() if attention_mask is None else attention_mask.float()
        pooled = (self.embed(input_ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.fc(pooled)


class HFStyle(nn.Module):
    """Returns an output object with `.logits`, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BagOfWords()

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.inner(input_ids, attention_mask))


def _tokens(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids N×L (int64, no padding) and a label a bag of words can read: are low ids the majority?"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    y = ((x < VOCAB // 2).sum(1) > LENGTH // 2).long()
    return x, y


def _dict_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int = 32) -> list:
    return [({"input_ids": xb, "attention_mask": torch.ones_like(xb)}, yb)
            for xb, yb in zip(x.split(batch_size), y.split(batch_size))]


def _task() -> TextClassification:
    return TextClassification(vocab_size=VOCAB, max_length=LENGTH, num_classes=CLASSES)


# ------------------------------------------------------------------------------------------------ training


def test_fit_on_a_loader_of_dict_inputs_trains_as_on_the_same_tensor_batches():
    x, y = _tokens()
    cfg = TrainConfig(epochs=3, lr=0.05)
    a, b = BagOfWords(), BagOfWords()
    result = fit(a, _dict_batches(x, y), _dict_batches(*_tokens(128, seed=1)), cfg, **quiet)
    fit(b, list(zip(x.split(32), y.split(32))), None, cfg, **quiet)
    # model(**{"input_ids", "attention_mask" of ones}) computes what model(input_ids) computes: the same steps.
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert result.history[-1]["val_accuracy"] > 0.85
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_fit_on_a_dataloader_with_hf_style_outputs():
    x, y = _tokens()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    loader = [({"input_ids": xb}, yb) for xb, yb in loader]
    model = HFStyle()
    result = fit(model, loader, loader, TrainConfig(epochs=3, lr=0.05), **quiet)
    assert result.history[-1]["val_accuracy"] > 0.85


def test_fit_on_an_int64_token_tensor_dataset():
    x, y = _tokens()
    model = BagOfWords()
    result = fit(model, TensorDataset(x, y), TensorDataset(*_tokens(128, seed=1)), TrainConfig(epochs=4, lr=0.05),
                 **quiet)
    assert x.dtype == torch.int64
    assert result.history[-1]["val_accuracy"] > 0.85
    with pytest.raises(TorchslimError, match=r"jitter shifts images.*int64 \d+×8"):
        fit(BagOfWords(), TensorDataset(x, y), None, TrainConfig(epochs=1, jitter=1), **quiet)


class _DictRows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"input_ids": self.x[i]}, self.y[i]


def test_resume_on_a_shuffling_loader_continues_as_an_uninterrupted_run(tmp_path):
    x, y = _tokens(160)
    loader = DataLoader(_DictRows(x, y), batch_size=32, shuffle=True)  # shuffled by torch's global generator
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="sgd", momentum=0.9)
    torch.manual_seed(7)
    whole = BagOfWords()
    fit(whole, loader, None, cfg, checkpoint=tmp_path / "a.pt", **quiet)
    torch.manual_seed(7)
    fit(BagOfWords(), loader, None, cfg.model_copy(update={"epochs": 1}), checkpoint=tmp_path / "b.pt", **quiet)
    torch.manual_seed(123)  # the resumed run restores the generator state of the checkpoint
    resumed = BagOfWords(seed=9)
    result = fit(resumed, loader, None, cfg, checkpoint=tmp_path / "b.pt", **quiet)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for pa, pb in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_train_takes_a_loader_and_val():
    x, y = _tokens()
    result = train(BagOfWords(), _dict_batches(x, y), TrainConfig(epochs=2, lr=0.05), val=_dict_batches(x, y),
                   **quiet)
    assert len(result.history) == 2 and result.history[-1]["val_accuracy"] is not None


def test_a_one_shot_generator_is_refused():
    x, y = _tokens(64)
    with pytest.raises(TorchslimError, match="re-iterable"):
        fit(BagOfWords(), (b for b in _dict_batches(x, y)), None, TrainConfig(epochs=1), **quiet)


def test_under_torchrun_each_rank_takes_every_world_th_batch_and_the_same_number(monkeypatch):
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2, dtype=torch.long)) for i in range(5)]
    monkeypatch.setattr(loop.dist, "world", lambda: 2)
    taken = {}
    for rank in (0, 1):
        monkeypatch.setattr(loop.dist, "rank", lambda rank=rank: rank)
        steps = loop._loader_steps(batches)
        taken[rank] = [int(x[0, 0]) for x, *_ in loop._epoch_batches(batches, 2, torch.Generator(), 1, steps)]
    assert taken == {0: [0, 2], 1: [1, 3]}  # batch 4, a tail shorter than the world, is dropped on every rank


def test_predict_takes_tensors_dicts_and_loaders():
    x, y = _tokens(70)
    model = BagOfWords()
    ref = predict(model, x, batch_size=16)
    torch.testing.assert_close(predict(model, {"input_ids": x}, batch_size=16), ref)
    torch.testing.assert_close(predict(model, _dict_batches(x, y, 16)), ref)
    torch.testing.assert_close(predict(model, DataLoader(TensorDataset(x, y), batch_size=16)), ref)
    assert loop.accuracy_of(model, _dict_batches(x, y)) == pytest.approx((ref.argmax(1) == y).float().mean().item())


# ------------------------------------------------------------------------------------------------ pruning


def _pruned_mlp(sparsity: float = 0.8) -> tuple[nn.Module, Masks]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    layers = {"0": model[0], "2": model[2]}
    masks = {}
    for name, layer in layers.items():
        w = layer.weight.detach().abs()
        masks[name] = (w > w.flatten().kthvalue(int(sparsity * w.numel())).values).float()
    result = Masks(layers, masks)
    result.apply()
    return model, result


def _zeros(model: nn.Module) -> float:
    weights = [model[0].weight, model[2].weight]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_fit_holds_attached_pruning_masks_and_checkpoints_them(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 6, generator=g), torch.randint(0, 3, (256,), generator=g))
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-4)

    revived, _ = _pruned_mlp()
    fit(revived, data, None, cfg, **quiet)
    assert _zeros(revived) < 0.1  # without masks, training revives pruned weights

    model, masks = _pruned_mlp()
    model.__dict__["_torchslim_masks"] = masks  # what prune_ attaches
    fit(model, data, None, cfg, checkpoint=tmp_path / "ckpt.pt", **quiet)
    assert _zeros(model) == pytest.approx(0.8, abs=0.01)
    assert torch.equal((model[0].weight != 0).float(), masks.masks["0"])
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(state["extra_state"]) == {"masks.0", "masks.2"}


def test_train_after_prune_keeps_the_sparsity():
    from torchslim.prune import MagnitudePruneConfig, prune_

    x, y = _tokens()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(LENGTH, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    prune_(model, MagnitudePruneConfig(sparsity=0.8))
    train(model, [(xb.float(), yb) for xb, yb in zip(x.split(32), y.split(32))],
          TrainConfig(epochs=2, lr=0.05, optimizer="sgd", momentum=0.9), **quiet)
    assert _zeros(model) == pytest.approx(0.8, abs=0.01)


# ------------------------------------------------------------------------------------------------ distillation


def test_distill_on_a_loader_runs_the_teacher_on_every_batch():
    """alpha=0 and random labels: only the teacher's logits, computed on the fly, can teach the student."""
    x, _ = _tokens(256)
    random_labels = torch.randint(0, CLASSES, (256,), generator=torch.Generator().manual_seed(1))
    teacher, student = BagOfWords(width=16, seed=5), BagOfWords(seed=1)
    ts.distill(student, teacher, _dict_batches(x, random_labels),
               ts.KDConfig(temperature=2, alpha=0.0, cache_teacher="always"), TrainConfig(epochs=30, lr=0.05), **quiet)
    agree = (predict(student, x).argmax(1) == predict(teacher, x).argmax(1)).float().mean().item()
    assert agree > 0.9


def test_distill_objective_on_a_loader_and_the_crd_error():
    x, y = _tokens(128)
    teacher, student = BagOfWords(width=16, seed=5), BagOfWords(seed=1)
    kd = ts.KDConfig(losses=["kd", {"name": "fitnet", "student": "fc", "teacher": "fc"}])
    result = ts.distill(student, teacher, _dict_batches(x, y), kd, TrainConfig(epochs=1), **quiet)
    assert set(result.history[0]["terms"]) == {"kd", "fitnet"}
    crd = ts.KDConfig(losses=[{"name": "crd", "student": "fc", "teacher": "fc"}])
    with pytest.raises(TorchslimError, match=r"losses\[0\] \(crd\).*row's index.*DataLoader"):
        ts.distill(student, teacher, _dict_batches(x, y), crd, TrainConfig(epochs=1), **quiet)


def test_distill_data_bundle_with_token_ids_caches_the_teacher():
    x, y = _tokens()
    data = types.SimpleNamespace(train=TensorDataset(x, y), val=None)
    students = []
    for cache in ("always", "never"):
        s = BagOfWords(seed=1)
        ts.distill(s, BagOfWords(width=16, seed=5), data, ts.KDConfig(cache_teacher=cache), TrainConfig(epochs=1),
                   **quiet)
        students.append(s.fc.weight.detach())
    torch.testing.assert_close(students[0], students[1])


# ------------------------------------------------------------------------------------------------ export


def test_export_of_a_token_model_has_dynamic_batch_and_sequence_axes(tmp_path):
    model = BagOfWords()
    path = export_onnx(model, tmp_path / "text.onnx", torch.randint(1, VOCAB, (2, LENGTH)))
    graph = onnx.load(str(path)).graph
    (inp,) = graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    session = ort_session(path)
    for shape in ((3, 5), (1, 13)):
        ids = torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(shape[1]))
        np.testing.assert_allclose(ort_logits(session, ids), predict(model, ids).numpy(), atol=1e-5)


def test_export_of_dict_inputs_uses_their_names_and_the_task_axes(tmp_path):
    model = HFStyle()
    x, y = _tokens(40)
    loader = _dict_batches(x, y, 16)
    path = export_onnx(model, tmp_path / "hf.onnx", loader, task=_task())
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input_ids", "attention_mask"]
    check = verify_onnx(model, path, loader)
    assert check["samples"] == 40 and check["max_abs_diff"] < 1e-5
    short = {"input_ids": x[:3, :5], "attention_mask": torch.ones(3, 5, dtype=torch.int64)}
    np.testing.assert_allclose(ort_logits(ort_session(path), short), predict(model, short).numpy(), atol=1e-5)


def test_export_names_the_shape_and_the_batch_axis_hint(tmp_path):
    model = ts.create_model("lenet5", input_shape=(1, 28, 28))
    with pytest.raises(TorchslimError) as e:
        export_onnx(model, tmp_path / "m.onnx", (1, 1, 28, 28))
    message = str(e.value)
    assert "\n" not in message
    assert "(1, 1, 1, 28, 28)" in message
    assert message.endswith("input_shape excludes the batch axis: did you mean (1, 28, 28)?")
    assert not (tmp_path / "m.onnx").exists()
    assert export_onnx(model, tmp_path / "m.onnx", (1, 28, 28)).is_file()  # the old positional call


# ------------------------------------------------------------------------------------------------ quantization


def _trained_text_model() -> BagOfWords:
    x, y = _tokens()
    model = BagOfWords(width=16)
    fit(model, TensorDataset(x, y), None, TrainConfig(epochs=8, lr=0.05), **quiet)
    return model.eval()


def _text_bundle() -> DataBundle:
    (x, y), (xt, yt) = _tokens(), _tokens(128, seed=1)
    return DataBundle("tokens", TensorDataset(x, y), None, TensorDataset(xt, yt), (LENGTH,), CLASSES, ["a", "b"],
                      None, "made in the test", task=_task())


def test_quantize_a_text_model_static_and_dynamic(tmp_path):
    model, data = _trained_text_model(), _text_bundle()
    static = quantize(model, StaticInt8Config(calibration_batches=2, calibration_batch_size=32), data,
                      tmp_path / "static.onnx")
    x, y = _tokens(128, seed=1)
    dynamic = quantize(model, DynamicInt8Config(), DataLoader(TensorDataset(x, y), batch_size=32),
                       tmp_path / "dynamic.onnx", task=_task())
    for art in (static, dynamic):
        vs_fp32 = art.record(QuantizationRecord).vs_fp32
        assert vs_fp32.samples == 128
        assert vs_fp32.top1_agreement >= 0.95
        (inp,) = onnx.load(str(art.path)).graph.input
        assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    ops = {n.op_type for n in onnx.load(str(static.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(dynamic.path)).graph.node}


def test_ptq_calibrates_on_the_first_batches_of_a_loader():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    x[64:] *= 100  # outliers after the first two batches: calibrating on them would widen every grid
    loader = DataLoader(TensorDataset(x, torch.zeros(128, dtype=torch.long)), batch_size=32)
    cfg = QuantConfig(calibration_batches=2)
    from_loader = ptq(model, cfg, loader)
    from_batches = ptq(model, cfg, [x[:32], x[32:64], x[64:96]])  # a list of batches: the first 2 too
    from_all = ptq(model, cfg.model_copy(update={"calibration_batches": 4}), loader)
    torch.testing.assert_close(from_loader(x[:64]), from_batches(x[:64]))
    assert not torch.allclose(from_loader(x[:64]), from_all(x[:64]))


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluate_a_mapping_of_models_and_files_on_a_task(tmp_path):
    model = _trained_text_model()
    student = BagOfWords(width=4, seed=2)
    x, y = _tokens(128, seed=1)
    int8 = quantize(model, DynamicInt8Config(), _dict_batches(x, y), tmp_path / "int8.onnx", task=_task())
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    ev = ts.evaluate({"teacher": model, "student": student, "int8": str(int8.path)}, _task(), loader, latency=FAST)
    assert isinstance(ev, ts.Evaluation) and [r["name"] for r in ev] == ["teacher", "student", "int8"]
    teacher_rec, student_rec, int8_rec = ev
    assert teacher_rec["primary_metric"] == "accuracy"
    assert set(teacher_rec["metrics"]) == {"accuracy", "errors", "macro_f1"}
    assert teacher_rec["accuracy"] == teacher_rec["metrics"]["accuracy"] > 0.85
    assert teacher_rec["errors"] == int((predict(model, x).argmax(1) != y).sum())
    # An in-memory model is measured as the safetensors file save_checkpoint would write, and the record says so.
    assert teacher_rec["path"] is None and "in memory" in teacher_rec["size_source"]
    assert teacher_rec["file_bytes"] == ts.save_checkpoint(model, tmp_path / "t.safetensors").stat().st_size
    assert int8_rec["file_bytes"] == int8.path.stat().st_size and int8_rec["size_source"] == "file"
    assert teacher_rec["macs"] == 16 * CLASSES  # the embedding is a lookup: only the Linear counts
    assert int8_rec["macs"] is None and int8_rec["accuracy"] >= teacher_rec["accuracy"] - 0.05

    table = ev.table()
    assert str(ev) == table
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["name", "runtime", "accuracy"]
    assert "speedup @1" in lines[0] and "speedup @4" in lines[0] and "p50 ms @4" in lines[0]
    for name in ("teacher", "student", "int8"):
        assert any(line.startswith(name) for line in lines)
    assert "1.00x" in next(line for line in lines if line.startswith("teacher"))
    assert "in memory" in next(line for line in lines if line.startswith("student"))


def test_evaluate_a_text_bundle_reports_the_task(tmp_path):
    model, data = _trained_text_model(), _text_bundle()
    ev = ts.evaluate({"teacher": model}, data, latency=FAST)
    assert ev[0]["latency_ms"]["4"]["runs"] >= FAST.min_runs
    report = build_report(ev, recipe={}, data=data, threads=1, meta={})
    assert report["data"]["task"]["sequence_length"] == LENGTH
    md = render_markdown(report)
    assert "task: text-classification, 2 classes" in md and f"sequence length {LENGTH}" in md


def test_the_ort_runner_feeds_each_input_in_its_declared_dtype(tmp_path):
    from torchslim.artifact import Artifact
    from torchslim.evaluation import make_runner

    model = BagOfWords()
    path = export_onnx(model, tmp_path / "m.onnx", {"input_ids": torch.randint(1, VOCAB, (1, LENGTH)),
                                                    "attention_mask": torch.ones(1, LENGTH, dtype=torch.int64)})
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, LENGTH)).astype(np.int32)  # not the declared int64
    feed = {"input_ids": ids, "attention_mask": np.ones((3, LENGTH), np.float32)}
    ort_out = make_runner(Artifact("m", "export", "onnxruntime", path), 1)(feed)
    torch_out = make_runner(Artifact("m", "train", "pytorch", None, model), 1)({"input_ids": ids.astype(np.int64)})
    np.testing.assert_allclose(ort_out, torch_out, atol=1e-5)


class _Ids(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(input_ids).mean(1))


def test_ptq_leaves_token_ids_off_the_grid():
    model, (x, y) = _Ids(), _tokens(128)
    qmodel = ptq(model, QuantConfig(), DataLoader(TensorDataset(x, y), batch_size=32))
    assert "input" not in qmodel.activation_quantizers  # ids feed the embedding as integers
    assert (qmodel(x) - model(x)).abs().max() < 0.02


def test_prune_with_a_data_criterion_takes_a_loader_of_dict_inputs():
    """taylor needs gradients on training batches: from a user's DataLoader (dict inputs) it scores like from the
    same rows as tensors."""
    import torchslim as ts

    torch.manual_seed(0)
    ids = torch.randint(1, 50, (64, 6))
    labels = (ids[:, 0] > 25).long()

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.EmbeddingBag(50, 8), nn.Linear(8, 2)

        def forward(self, input_ids, attention_mask=None):
            return self.fc(self.emb(input_ids))

    model = Bag()
    twin = copy.deepcopy(model)
    loader = [({"input_ids": ids[i:i + 16]}, labels[i:i + 16]) for i in range(0, 64, 16)]
    cfg = ts.PruneConfig(sparsity=0.5, criterion="taylor", criterion_batches=4)
    masks = ts.prune_(model, cfg, data=loader)
    assert abs(masks.overall() - 0.5) < 0.05
    # The same rows as one tensor batch each: the same scores, so the same mask.
    ts.prune_(twin, cfg, data=[(x["input_ids"], y) for x, y in loader])
    assert torch.equal(model.fc.weight == 0, twin.fc.weight == 0)
