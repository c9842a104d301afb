"""Typed stage records: every shipped kind round-trips through JSON, the report knows none of them, and what each
shows comes from the record itself."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest

from torchslim.artifact import Artifact
from torchslim.distillation.kd import TeacherAgreement
from torchslim.evaluation.report import render_html, render_markdown
from torchslim.export.onnx import OnnxVerification
from torchslim.pipeline.stages.distill import DataFreeRecord
from torchslim.pipeline.stages.llm import Int4ExportRecord, LLMPruningRecord, WeightOnlyRecord
from torchslim.prune.schedules import PruningRecord, SparsityRecord, pruning_records
from torchslim.prune.sensitivity import SensitivityPlan
from torchslim.prune.structured import ChannelPruningRecord
from torchslim.quant.export import QuantizationRecord
from torchslim.quant.sensitivity import MixedPrecisionRecord
from torchslim.records import (Record, TrainingRecord, as_info, info_from_json, jsonable, kinds, record_type,
                               split_info)

SRC = Path(__file__).resolve().parents[1] / "src" / "torchslim"
HISTORY = [{"epoch": 1, "loss": 1.5, "train_accuracy": 0.5, "val_accuracy": 0.6, "lr": 0.01, "seconds": 0.1,
            "terms": {"kd": 1.0, "fitnet": 0.5}},
           {"epoch": 2, "loss": 0.9, "train_accuracy": 0.7, "val_accuracy": 0.75, "lr": 0.01, "seconds": 0.1,
            "terms": {"kd": 0.6, "fitnet": 0.3}}]
PLAN = SensitivityPlan(curves={"fc1": [[0.5, 0.9], [0.9, 0.7]], "fc2": [[0.5, 0.8], [0.9, 0.4]]}, dense_accuracy=0.92,
                       params={"fc1": 2048, "fc2": 320}, samples=144, target=0.6,
                       sparsities={"fc1": 0.65, "fc2": 0.2}, expected_overall=0.6, tolerance_points=1.5)
SAMPLES = [
    TrainingRecord(HISTORY, 2, 0.75),
    PruningRecord({"fc1": 0.65, "fc2": 0.2}, 0.6, {"schedule": "iterative", "criterion": "magnitude"},
                  rounds=[{"target": 0.37, "sparsity": 0.38, "history": HISTORY[:1], "best_epoch": 1,
                           "best_val_accuracy": 0.6}], sensitivity=PLAN),
    SparsityRecord({"fc1": 0.5}, 0.5),
    PLAN,
    ChannelPruningRecord(2368, 1554, 1.52, 2410, 1585, {"fc1": [32, 21]}, [{"target_macs": 1578, "macs": 1554,
                                                                            "params": 1585}], {"rounds": 1}),
    OnnxVerification(1.4e-6, 1.0, 360),
    QuantizationRecord(config={"weight": {"bits": 8}}, verification=OnnxVerification(1e-6, 1.0, 360),
                       vs_fp32=OnnxVerification(0.03, 0.997, 360), kernels={"QGemm": 2, "QuantizeLinear": 1}),
    MixedPrecisionRecord({"fc1": 4, "fc2": 32}, 882, 1554, [{"layer": "fc1", "bits": 4, "drop": 3.4, "kl": 0.1}],
                         "val", budget_bytes=932.4),
    LLMPruningRecord("wanda", "2:4", 0.5, 0.5, {"h.0.fc": 0.5}, {"windows": 128, "batches": 16, "batch_size": 8,
                     "tokens_per_window": 64, "tokens": 8192, "split": "train"}, True, 1.5),
    WeightOnlyRecord("gptq", 4, 32, layers=8, packed_bytes=57_000, float_bytes=393_216),
    Int4ExportRecord(4, 32, 8, 393_216, 62_976, OnnxVerification(1.4e-6, 1.0, 8), {"MatMulNBits": 8}),
    TeacherAgreement(0.97, {"teacher": 0.96, "t2": 0.95}),
    DataFreeRecord("noise", HISTORY[:1], 1, 0.6, few_data_indices=[3, 1], details={"teacher_val_accuracy": 0.8}),
]


def test_every_shipped_kind_has_a_sample_and_is_found_by_its_kind():
    assert sorted(r.kind for r in SAMPLES) == [k for k in kinds() if not k.startswith("test_")]
    for rec in SAMPLES:
        assert record_type(rec.kind) is type(rec)
    assert record_type("opset") is None


@pytest.mark.parametrize("rec", SAMPLES, ids=lambda r: r.kind)
def test_a_record_round_trips_through_json(rec):
    data = json.loads(json.dumps(rec.to_json()))
    assert type(rec).from_json(data) == rec
    assert jsonable(rec) == data
    # what the report shows of it is all text
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rec.summary())
    for headers, rows in rec.tables():
        assert all(len(row) == len(headers) and all(isinstance(c, str) for c in row) for row in rows)


def test_info_holds_records_under_their_kind_and_facts_beside_them():
    training, agreement = SAMPLES[0], SAMPLES[-2]
    info = as_info(training, None, agreement, teachers=["teacher", "t2"])
    assert list(info) == ["training", "teacher_agreement", "teachers"]
    art = Artifact("distill", "distill", "pytorch", None, info=info)
    assert art.records == [training, agreement] and art.record(TeacherAgreement) is agreement
    assert art.record(PruningRecord) is None
    stored = json.loads(json.dumps(jsonable(info)))  # what progress.json and report.json hold
    assert stored["teacher_agreement"] == {"combined": 0.97, "teachers": {"teacher": 0.96, "t2": 0.95}}
    assert info_from_json(stored) == info
    assert split_info(stored) == ([training, agreement], {"teachers": ["teacher", "t2"]})
    with pytest.raises(ValueError, match="two 'training' records"):
        as_info(training, training)
    with pytest.raises(ValueError, match=r"\['pruning'\] are record kinds"):
        as_info(pruning={"sparsity": {}})


def test_json_that_does_not_fit_its_kind_stays_a_fact():
    """An older report.json had `info["sparsity"] = {layer: fraction}`: it is listed as it is, not lost."""
    records, facts = split_info({"sparsity": {"fc1": 0.5}, "opset": 17})
    assert records == [] and facts == {"sparsity": {"fc1": 0.5}, "opset": 17}


def test_pruning_records_split_a_gradual_result_into_pruning_and_training():
    info = {"sparsity": {"fc1": 0.8}, "overall_sparsity": 0.8, "prune": {"schedule": "gradual"}, "history": HISTORY,
            "best_epoch": 2, "best_val_accuracy": 0.75, "sensitivity": PLAN.to_json()}
    pruning, training = pruning_records(info)
    assert pruning.sensitivity == PLAN and pruning.rounds is None
    assert training == TrainingRecord(HISTORY, 2, 0.75)


def test_the_report_imports_no_family():
    tree = ast.parse((SRC / "evaluation" / "report.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m.startswith("torchslim")} == {"torchslim.formatting", "torchslim.io", "torchslim.records"}


def test_the_report_renders_a_record_it_has_never_heard_of(tmp_path):
    """A user's own record, registered nowhere the report knows, shows its rows, table, column and plot."""
    import dataclasses

    from torchslim.records import Figure, register

    @register
    @dataclasses.dataclass
    class Energy(Record):
        kind = "test_energy"
        joules: float

        def summary(self):
            return [("energy", f"{self.joules:.1f} J")]

        def tables(self):
            return [(["phase", "J"], [["all", f"{self.joules:.1f}"]])]

        def columns(self):
            return {"energy J": f"{self.joules:.1f}"}

        def figures(self, artifact):
            return [Figure("energy", f"energy of {artifact}", lambda: b"\x89PNG fake")]

    record = {"name": "m", "stage": "x", "runtime": "pytorch", "path": "m.pt", "accuracy": 0.9, "errors": 1,
              "latency_ms": {"1": {"p50": 0.1, "p90": 0.1, "runs": 5}},
              "info": {"test_energy": Energy(np.float32(2.5)), "note": "hi"}}
    report = {"artifacts": [record], "data": {}, "machine": {}}
    md = render_markdown(report)
    assert "| energy J |" in md.splitlines()[2] and "| 2.5 |" in md.splitlines()[4]
    assert "- energy: 2.5 J" in md and "- note: hi" in md and "| all | 2.5 |" in md
    assert "![energy of m](m-energy.png)" in md
    assert 'alt="energy of m"' in render_html(report)
