"""`torchslim compare`: one table over several runs, compare.html, warnings when runs were measured differently, and
one-line errors for what is not a run.

Run directories are made cheaply but really: two small models evaluated on digits by `evaluate`, the report built by
`build_report` and written by `write_report` — what `torchslim run` ends with. Only the bad-input cases write JSON by
hand.
"""
from __future__ import annotations

import base64
import json
import re

import pytest
import torch

import torchslim.evaluation as ev
from torchslim.cli import _parser, main
from torchslim.compare import compare_runs
from torchslim.data import load_dataset
from torchslim.errors import TorchslimError
from torchslim.models import create_model

OTHER_MACHINE = {**ev.machine_info(), "platform": "Linux-other", "processor": "Some Other CPU", "cpu_count": 64}


def _write_run(path, data, models, threads=1):
    latency = ev.LatencyConfig(threads=threads, batch_sizes=(1, 8), max_seconds=0.01, min_runs=5, warmup=1, rounds=1)
    records = ev.evaluate(models, data, latency=latency, teacher="teacher")
    report = ev.build_report(records, recipe={}, data=data, threads=threads, meta={}, latency=latency)
    ev.write_report(report, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders: a and same (measured alike), threads (2 threads), machine (another machine), x/run and y/run."""
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("digits", limit_test=60)
    torch.manual_seed(0)
    shape = tuple(data.input_shape)
    models = {"teacher": create_model("mlp", num_classes=10, input_shape=shape, widths=[64]).eval(),
              "student": create_model("mlp", num_classes=10, input_shape=shape, widths=[8]).eval()}
    out = {name: _write_run(root / name, data, models) for name in ("a", "same")}
    out["threads"] = _write_run(root / "threads", data, models, threads=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "machine_info", lambda: dict(OTHER_MACHINE))
        out["machine"] = _write_run(root / "machine", data, models)
    for parent in ("x", "y"):
        out[parent] = _write_run(root / parent / "run", data, {"teacher": models["teacher"]})
    return out


def _report(path):
    return json.loads((path / "report.json").read_text())


def test_table_has_every_artifact_of_every_run_with_its_measured_numbers(runs):
    comparison = compare_runs([runs["a"], runs["threads"]])
    headers, rows = comparison.headers(), comparison.rows()
    assert headers[:6] == ["run/artifact", "runtime", "accuracy %", "file KB", "lzma KB", "MACs"]
    assert [h for h in headers if h.startswith("p50")] == ["p50 ms @1", "p50 ms @8"]
    assert [h for h in headers if h.startswith("speedup")] == ["speedup @1", "speedup @8"]
    assert [r[0] for r in rows] == ["a/teacher", "a/student", "threads/teacher", "threads/student"]
    student = _report(runs["a"])["artifacts"][1]
    row = dict(zip(headers, rows[1]))
    assert row["accuracy %"] == f"{100 * student['accuracy']:.2f}"
    assert row["lzma KB"] == f"{student['file_bytes_lzma'] / 1000:,.1f}"
    assert row["p50 ms @1"] == f"{student['latency_ms']['1']['p50']:.3f}"
    assert row["speedup @8"] == f"{student['vs_teacher']['speedup']['8']:.2f}×"
    text = comparison.table()
    assert "threads/student" in text and text.splitlines()[0].startswith("run/artifact")
    assert comparison.html_path is None  # nothing written without `out`


def test_runs_measured_alike_give_no_warning(runs, tmp_path):
    comparison = compare_runs([runs["a"], runs["same"]], out=tmp_path / "c.html")
    assert comparison.warnings == []
    assert 'class="warning"' not in (tmp_path / "c.html").read_text()


def test_different_threads_and_machines_are_warned_about_in_text_and_html(runs, tmp_path):
    comparison = compare_runs([runs["a"], runs["threads"], runs["machine"]], out=tmp_path / "c.html")
    by_topic = {w.split("different ")[1].split(" (")[0]: w for w in comparison.warnings}
    assert set(by_topic) == {"thread counts", "machines"}
    assert "a: 1; threads: 2; machine: 1" in by_topic["thread counts"]
    assert "Some Other CPU, 64 CPUs" in by_topic["machines"]
    page = (tmp_path / "c.html").read_text()
    banner = re.search(r'<div class="warning".*?</div>', page, re.DOTALL).group(0)
    assert "thread counts" in banner and "Some Other CPU" in banner
    assert "warning: runs measured with different thread counts" in str(comparison)


def test_html_puts_every_run_on_shared_size_and_latency_plots(runs, tmp_path):
    out = tmp_path / "nested" / "compare.html"  # folders are created
    comparison = compare_runs([runs["a"], runs["threads"]], out=out)
    assert comparison.html_path == out
    page = out.read_text()
    alts = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [a for a, _ in alts] == ["accuracy vs lzma size", "accuracy vs latency at batch 1",
                                    "accuracy vs latency at batch 8"]
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for _, png in alts)
    assert "<td>a/student</td>" in page and "<td>threads/teacher</td>" in page


def test_run_names_grow_until_they_differ_and_a_report_json_path_is_its_run(runs):
    comparison = compare_runs([runs["x"], runs["y"] / "report.json"])
    assert [r.name for r in comparison.runs] == ["x/run", "y/run"]
    assert [row[0] for row in comparison.rows()] == ["x/run/teacher", "y/run/teacher"]


def test_a_report_without_machine_info_is_compared_and_warned_about(runs, tmp_path):
    report = _report(runs["a"])
    del report["machine"], report["threads"]  # an older or stripped report: keys are read defensively
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(report))
    comparison = compare_runs([runs["a"], tmp_path / "old"])
    assert len(comparison.rows()) == 4
    assert any("machines" in w and "old: not recorded" in w for w in comparison.warnings)
    assert any("thread counts" in w and "old: not recorded" in w for w in comparison.warnings)


def _bad_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "report.json").write_text('{"artifacts": [')
    (tmp_path / "notreport").mkdir()
    (tmp_path / "notreport" / "report.json").write_text('[1, 2]')
    (tmp_path / "file.txt").write_text("x")
    return {
        "missing": (tmp_path / "missing", "no such folder"),
        "empty": (tmp_path / "empty", "is not a run: it holds no report.json"),
        "corrupt": (tmp_path / "corrupt", "is corrupt: not valid JSON (line 1"),
        "notreport": (tmp_path / "notreport", "is not a torchslim report"),
        "file": (tmp_path / "file.txt", "is a file, not a run directory"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "notreport", "file"])
def test_what_is_not_a_run_is_one_clear_error(runs, tmp_path, case):
    path, message = _bad_runs(tmp_path)[case]
    with pytest.raises(TorchslimError, match=re.escape(message)) as err:
        compare_runs([runs["a"], path])
    assert str(path.name) in str(err.value) and "\n" not in str(err.value)


def test_the_same_run_twice_is_an_error(runs):
    with pytest.raises(TorchslimError, match="same run"):
        compare_runs([runs["a"], runs["a"] / "report.json"])


_HAS_CLI = "compare" in _parser()._subparsers._group_actions[0].choices
needs_cli = pytest.mark.skipif(not _HAS_CLI, reason="cli.py has no `compare` command yet (snippet not applied)")


@needs_cli
def test_cli_prints_the_table_warns_on_stderr_and_writes_the_page(runs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert main(["compare", str(runs["a"]), str(runs["threads"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "threads/student" in captured.out and str(out) in captured.out
    assert captured.err.splitlines() == [w for w in captured.err.splitlines() if w.startswith("torchslim: warning: ")]
    assert "different thread counts" in captured.err
    assert out.is_file()


@needs_cli
def test_cli_default_page_is_compare_html_in_the_current_folder(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(runs["a"]), str(runs["same"])]) == 0
    assert (tmp_path / "compare.html").is_file()
    assert capsys.readouterr().err == ""  # measured alike: nothing to warn about


@needs_cli
def test_cli_bad_run_is_one_line_and_exit_code_2(runs, tmp_path, capsys):
    path, message = _bad_runs(tmp_path)["corrupt"]
    assert main(["compare", str(runs["a"]), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchslim: error: ") and message in err
