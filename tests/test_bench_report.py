"""``run_report`` (papermill 03 then 04, HTML) and ``PerformanceReport`` on a tmp history."""

from __future__ import annotations

import json

import nbformat
import pytest

from amulet_lab.bench.history import History
from amulet_lab.bench.report import PerformanceReport, run_report
from amulet_lab.errors import ValidationError
from model_helpers import untrained_tiny_checkpoint


def _record(run_id, ts, value, scenario="single_stream"):
    return {"run_id": run_id, "timestamp": ts, "machine_id": "m", "scenario": scenario, "variant": "", "params": {},
            "metrics": {"latency_p50_ms": value, "latency_p99_ms": value * 2},
            "stages": {"decode": 1.0, "preprocess": 1.0, "infer": value - 2.5, "postprocess": 0.5},
            "reference": {"ms": 1.0}, "machine": {"cpu_model": "test cpu", "cores_logical": 2}}


def test_performance_report_tables_and_facts(tmp_path):
    h = History(tmp_path)
    for i, v in enumerate([10.0, 10.4, 30.0]):
        h.append(_record(f"r{i}", f"2026-01-0{i + 1}T00:00:00Z", v))
    with open(h.path, "a") as f:
        f.write("{broken\n")
    with pytest.warns(UserWarning, match="corrupt"):
        report = PerformanceReport(tmp_path)
    assert report.latest_run_id == "r2" and report.machine_id == "m"
    assert list(report.runs_frame()["run_id"]) == ["r0", "r1", "r2"]
    assert list(report.regressions_frame()["metric"]) == ["latency_p50_ms"]
    assert report.latest_frame().loc["latency_p50_ms", "single_stream"] == 30.0
    assert report.machine_frame().loc["cpu_model", "value"] == "test cpu"
    facts = report.facts()
    assert "corrupt lines skipped: 1" in facts and "trend panels: 2" in facts
    assert "1 regression(s)" in report._repr_html_()


def test_run_report_validates_its_inputs(tmp_path):
    with pytest.raises(ValidationError, match="not found"):
        run_report(tmp_path / "out", notebooks_dir=tmp_path)


@pytest.mark.slow
def test_run_report_appends_a_run_and_shows_every_run(tmp_path, settings):
    """A second run on top of an earlier one: both in the history, both in the report; HTML with plots."""
    from amulet_lab.bench.runner import run_benchmarks

    ck = untrained_tiny_checkpoint(tmp_path / "tiny.pt")
    small = {"checkpoint": str(ck), "scenarios": ["single_stream"], "batch_sizes": [2], "samples": 3,
             "min_duration_s": 0.0}
    first = run_benchmarks(small["scenarios"], checkpoint=ck, history_dir=tmp_path / "out" / "history", samples=3,
                           min_duration_s=0.0, batch_sizes=[2], threads=1, progress=False, settings=settings)
    result = run_report(tmp_path / "out", quick=True, parameters=small, settings=settings, progress=False)
    assert result.records_before == 1 and result.records_after == 2 and result.runs == 2
    assert result.latest_run_id != first.run_id
    assert [p.name for p in result.notebooks] == ["03_benchmark.ipynb", "04_report.ipynb"]
    page = (tmp_path / "out" / "04_report.html").read_text()
    assert page.count("data:image/png;base64") >= 2  # trend and stage plots are embedded
    assert first.run_id in page and result.latest_run_id in page  # the runs table lists both
    nb = nbformat.read(tmp_path / "out" / "04_report.ipynb", as_version=4)
    text = json.dumps(nb)
    assert "runs in" in text.lower() and not list((tmp_path / "out").glob("*.failed.ipynb"))
    assert "report written to" in result.summary() and "2 run(s)" in result.summary()
