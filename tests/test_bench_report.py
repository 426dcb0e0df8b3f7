"""``run_report`` (papermill 03 then 04, HTML) and ``PerformanceReport`` on a tmp history."""

from __future__ import annotations

import json

import nbformat
import pytest

from amulet_lab.bench.history import History
from amulet_lab.bench.report import LatestRun, PerformanceReport, frame_or_sentence, run_report
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


def test_latest_run_is_one_small_table_per_scenario_without_nan(tmp_path):
    """Fix 9: not a scenarios x metrics matrix mostly NaN, but each scenario's own metrics, with units."""
    h = History(tmp_path)
    h.append(_record("r0", "2026-01-01T00:00:00Z", 10.0))
    h.append({**_record("r0", "2026-01-01T00:00:00Z", 10.0, scenario="cache"),
              "metrics": {"hit_rate": 0.5, "hit_latency_p50_ms": 1.25, "miss_latency_p50_ms": None}})
    report = PerformanceReport(tmp_path)
    view = report.latest_view()
    assert isinstance(view, LatestRun) and list(view.tables) == ["single_stream", "cache"]
    assert [m for m, _, _ in view.tables["single_stream"]] == ["latency_p50_ms", "latency_p99_ms"]
    assert [(m, u) for m, _, u in view.tables["cache"]] == [("hit_latency_p50_ms", "ms"), ("hit_rate", "share")]
    page = view._repr_html_()
    assert page.count("<table>") == 2 and page.count("<h4") == 2 and "nan" not in page.lower()
    assert "50.0%" in page and "latency_p99_ms" in page.split("<h4", 2)[1]  # each metric under its own scenario
    assert "cache\n  hit_latency_p50_ms: 1.25 ms" in repr(view)
    assert "No run" in LatestRun.from_records(None, [])._repr_html_()


def test_no_regressions_is_said_in_words(tmp_path):
    h = History(tmp_path)
    h.append(_record("r0", "2026-01-01T00:00:00Z", 10.0))
    first = PerformanceReport(tmp_path).regressions_frame()
    assert first.empty and "no earlier runs" in first._repr_html_() and "<table" not in first._repr_html_()
    for i, v in enumerate([10.2, 9.9, 10.1], start=1):
        h.append(_record(f"r{i}", f"2026-01-0{i + 1}T00:00:00Z", v))
    frame = PerformanceReport(tmp_path).regressions_frame()
    assert frame.empty and list(frame.columns)[:3] == ["scenario", "variant", "metric"]
    assert frame._repr_html_() == "<p><i>No regressions and no improvements: every metric of the latest run is within " \
                                  "its usual range.</i></p>"
    assert repr(frame).startswith("No regressions")
    assert "No run in the history" in PerformanceReport(tmp_path / "empty").regressions_frame()._repr_html_()


def test_frame_or_sentence_is_a_dataframe_that_shows_a_table_when_it_has_rows():
    import pandas as pd

    full = frame_or_sentence(pd.DataFrame({"a": [1.234]}), "nothing here")
    assert "<table" in full._repr_html_() and "nothing here" not in full._repr_html_()
    empty = frame_or_sentence(pd.DataFrame(columns=["a"]), "nothing here")
    assert empty.round(1)._repr_html_() == "<p><i>nothing here</i></p>"  # survives pandas operations


def test_events_frame_says_when_there_were_no_pressure_events():
    """Fix 9 (02_profile): no events is a sentence, not a table of headers only; events are still a table."""
    from types import SimpleNamespace

    from amulet_lab.bench.profile import PipelineProfile

    quiet = SimpleNamespace(pressure_events=[], pressure_checks=[{"when": "start", "level": "normal"}])
    frame = PipelineProfile.events_frame(quiet)
    assert frame.empty and list(frame.columns)[:3] == ["time", "from", "to"]
    assert frame._repr_html_() == ("<p><i>No memory-pressure events: the pressure level did not change during the "
                                   "profile (level seen: normal).</i></p>")
    busy = SimpleNamespace(pressure_checks=[], pressure_events=[
        {"time": 1.0, "from": "normal", "to": "warning", "score": 0.8, "rss_mb": 300.0,
         "responses": {"cache": "trimmed"}, "errors": {}}])
    frame = PipelineProfile.events_frame(busy)
    assert frame.iloc[0]["to"] == "warning" and frame.iloc[0]["responses"] == "cache" and "<table" in frame._repr_html_()


@pytest.mark.parametrize("name", ["02_profile.ipynb", "04_report.ipynb"])
def test_every_plot_has_a_heading_over_it(name):
    """Between the notebook's start or the previous plot and each plot, there is a markdown heading."""
    from amulet_lab.config import PROJECT_ROOT

    nb = nbformat.read(PROJECT_ROOT / "notebooks" / name, as_version=4)
    plots, headed = 0, False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
            headed = True
        elif cell.cell_type == "code" and "figure" in cell.source:
            assert headed, f"{name}: no heading over the plot of {cell.source!r}"
            plots, headed = plots + 1, False
    assert plots >= 2


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
