"""Figures of amulet_lab.bench.plots: axes, series and labels (nbval skips images, so they are checked here)."""

from __future__ import annotations

import pytest

from amulet_lab.bench import plots
from amulet_lab.bench.compare import compare
from amulet_lab.bench.history import History
from amulet_lab.bench.scenarios import ScenarioResult
from amulet_lab.errors import ValidationError


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path)
    for i, (lat, sps) in enumerate([(10.0, 100.0), (11.0, 98.0), (10.5, 101.0), (30.0, 99.0)]):
        common = {"run_id": f"r{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00Z", "machine_id": "m", "reference": {"ms": 1.0}}
        h.append({**common, "scenario": "single_stream", "variant": "", "params": {},
                  "metrics": {"latency_p50_ms": lat, "latency_p99_ms": lat * 2, "qps": 1000 / lat},
                  "stages": {"decode": 1.0, "preprocess": 2.0, "infer": lat - 4, "postprocess": 1.0}})
        h.append({**common, "scenario": "offline", "variant": "bs=8", "params": {}, "metrics": {"samples_per_s": sps}})
    return h


def test_trend_figure_has_one_panel_per_metric_with_band_and_median(history):
    comparison = compare(history)
    fig = plots.trend_figure(history.to_frame(), regressions=comparison.regressions)
    axes = [ax for ax in fig.axes if ax.get_title()]
    titles = sorted(ax.get_title() for ax in axes)
    assert titles == sorted([
        "offline[bs=8] · samples_per_s",
        "single_stream · latency_p50_ms",
        "single_stream · latency_p99_ms",
        "single_stream · qps",
    ])
    ax = next(a for a in axes if a.get_title() == "single_stream · latency_p50_ms")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["latency_p50_ms"].get_ydata()) == [10.0, 11.0, 10.5, 30.0]
    assert list(lines["latency_p50_ms"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["median"].get_ydata())[:2] == [10.0, 10.5]
    assert "regression" in lines  # the latest point is flagged
    assert len(ax.collections) == 1  # the IQR band
    assert ax.get_ylabel() == "ms" and ax.get_xlabel() == "run"
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 30.0  # from zero, with the largest value in view
    sps = next(a for a in axes if a.get_title().startswith("offline"))
    assert sps.get_ylabel() == "per s" and "regression" not in {l.get_label() for l in sps.get_lines()}


def test_trend_figure_plots_the_runs_compare_judges_against(history):
    # A later run on other torch threads is another workload: compare has no baseline for it, and the panel
    # shows that run alone rather than a band made of the other workload's runs.
    history.append({"run_id": "r9", "timestamp": "2026-01-09T00:00:00Z", "machine_id": "m", "reference": {"ms": 1.0},
                    "scenario": "offline", "variant": "bs=8", "params": {"torch_threads": 4},
                    "metrics": {"samples_per_s": 50.0}})
    fig = plots.trend_figure(history.to_frame())
    ax = next(a for a in fig.axes if a.get_title() == "offline[bs=8] · samples_per_s")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["samples_per_s"].get_ydata()) == [50.0]
    rows = [r for r in compare(history).rows if r.metric == "samples_per_s"]
    assert rows and rows[0].status == "no-baseline"


def test_trend_figure_empty_and_invalid(tmp_path):
    fig = plots.trend_figure(History(tmp_path).to_frame())
    assert fig.axes[0].get_title() == "no benchmark history yet"
    with pytest.raises(ValidationError):
        plots.trend_figure([1, 2])


def test_stage_figure_stacks_stages(history):
    fig = plots.stage_figure(history.run("r0"))
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["single_stream"]
    assert [c.get_label() for c in ax.containers] == ["decode", "preprocess", "infer", "postprocess"]
    widths = [c.patches[0].get_width() for c in ax.containers]
    assert widths == [1.0, 2.0, 6.0, 1.0]
    assert ax.get_xlabel() == "ms per image (median)"
    # The legend sits below the axes (a figure legend), where it cannot hide the end of a bar.
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["decode", "preprocess", "infer", "postprocess"]


def _result(**kw):
    base = dict(scenario="server", params={"latency_bound_ms": 50.0}, metrics={"max_qps_meeting_bound": 20.0},
                latencies_ms=[3.0, 1.0, 2.0], extra={"search": [{"target_qps": 5, "p99_ms": 10, "meets": 1.0},
                                                                {"target_qps": 40, "p99_ms": 90, "meets": 0.0},
                                                                {"target_qps": 20, "p99_ms": 40, "meets": 1.0}]})
    base.update(kw)
    return ScenarioResult(**base)


def test_latency_and_server_search_figures():
    fig = plots.latency_figure([_result(variant="search")])
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0] and line.get_label() == "server[search]"
    fig = plots.server_search_figure(_result())
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.get_lines()]
    assert labels == ["p99 latency", "meets bound", "latency bound"]
    assert list(ax.get_lines()[0].get_xdata()) == [5, 20, 40]
    assert ax.get_lines()[2].get_ydata()[0] == 50.0 and "20" in ax.get_title()
    with pytest.raises(ValidationError):
        plots.server_search_figure(_result(extra={}))


def test_memory_cache_and_topk_figures():
    mem = _result(scenario="memory", metrics={"peak_rss_mb_decode": 300.0, "increment_mb_decode": 5.0,
                                              "peak_rss_mb_infer": 320.0, "increment_mb_infer": 20.0})
    fig = plots.memory_figure(mem)
    assert [a.get_title() for a in fig.axes] == ["peak RSS per stage", "increase during stage"]
    assert [p.get_height() for p in fig.axes[1].patches] == [5.0, 20.0]
    cache = _result(scenario="cache", metrics={"miss_latency_p50_ms": 9.0, "hit_latency_p50_ms": 0.5,
                                               "miss_latency_mean_ms": 10.0, "hit_latency_mean_ms": 0.6,
                                               "hit_rate": 0.5, "expected_hit_rate": 0.5})
    ax = plots.cache_figure(cache).axes[0]
    assert [p.get_height() for p in ax.patches] == [9.0, 0.5, 10.0, 0.6] and "50%" in ax.get_title()
    # Bars are labelled by (English) name, not by class key; the chart is wide enough to read (Thai: test_fonts.py).
    fig = plots.topk_figure([("somdej_pratanporn_buddhagavak", "Somdej Pratanporn Buddhagavak", 0.7),
                             ("phra_sivali", "Phra Sivali", 0.2)])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Somdej Pratanporn Buddhagavak", "Phra Sivali"]
    assert [p.get_width() for p in ax.patches] == [0.7, 0.2]
    assert fig.get_figwidth() >= 7.5 and ax.get_title() == "top-k"
    png = plots.figure_to_png(plots.topk_figure([("a", "a", 1.0)]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValidationError):
        plots.topk_figure([])


def test_unit_of():
    assert [plots.unit_of(m) for m in ["latency_p50_ms", "peak_rss_mb_infer", "qps", "hit_rate", "x"]] == [
        "ms", "MB", "per s", "share", ""]
