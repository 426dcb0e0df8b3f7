"""Benchmark and prediction figures, returned as ``matplotlib.figure.Figure`` objects.

Figures are built without pyplot (no global figure registry, no backend switch), so tests can
inspect their axes, lines and labels and notebooks display them with ``%matplotlib inline``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from amulet_lab.bench.stats import quartiles
from amulet_lab.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "KEY_METRICS",
    "trend_figure",
    "stage_figure",
    "latency_figure",
    "server_search_figure",
    "memory_figure",
    "cache_figure",
    "topk_figure",
    "figure_to_png",
    "unit_of",
]

#: The metrics the report plots per scenario (when present).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "single_stream": ("latency_p50_ms", "latency_p99_ms", "qps"),
    "offline": ("samples_per_s",),
    "server": ("achieved_qps", "latency_p99_ms", "max_qps_meeting_bound"),
    "cache": ("hit_latency_p50_ms", "miss_latency_p50_ms", "hit_rate"),
    "memory": ("peak_rss_mb",),
}
_STAGE_COLOURS = {"decode": "#4c72b0", "preprocess": "#dd8452", "infer": "#55a868", "postprocess": "#c44e52"}


def unit_of(metric: str) -> str:
    """The unit implied by a metric's name (``ms``, ``MB``, ``per s`` or empty)."""
    if metric.endswith("_ms"):
        return "ms"
    if "_mb" in metric:
        return "MB"
    if metric in ("qps", "achieved_qps", "max_qps_meeting_bound", "samples_per_s"):
        return "per s"
    if metric.endswith("rate") or metric == "within_bound":
        return "share"
    return ""


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q3 = quartiles(values)
    return q1, statistics.median(values), q3


def trend_figure(frame: Any, metrics: Mapping[str, Sequence[str]] | None = None, *, regressions: Iterable[Any] = ()) -> Figure:
    """One panel per scenario/variant and metric: value per run, running median and IQR band.

    ``frame`` is ``History.to_frame()`` (one machine, ideally); ``regressions`` are
    ``MetricComparison`` rows whose latest points are drawn in red. Runs are grouped as ``compare`` groups
    baselines (``baseline_key``): each panel shows the runs sharing the latest run's parameters, so the
    band drawn is the one the latest run was judged against.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or not {"run_id", "timestamp", "scenario", "variant", "metric", "value"} <= set(frame.columns):
        raise ValidationError("trend_figure needs History.to_frame()", field="frame", value=type(frame).__name__)
    wanted = KEY_METRICS if metrics is None else metrics
    flagged = {(r.scenario, r.variant, r.metric) for r in regressions}
    series = []
    for (scenario, variant), group in frame.groupby(["scenario", "variant"], sort=True):
        for metric in wanted.get(scenario, ()):
            rows = group[group["metric"] == metric].sort_values(["timestamp", "run_id"])
            rows = rows.dropna(subset=["value"])
            if len(rows) and "baseline_key" in rows.columns:
                rows = rows[rows["baseline_key"] == rows["baseline_key"].iloc[-1]]
            if len(rows):
                series.append((scenario, variant, metric, rows))
    if not series:
        fig = _figure(6, 2)
        ax = fig.add_subplot()
        ax.set_title("no benchmark history yet")
        ax.set_axis_off()
        return fig
    cols = 2 if len(series) > 1 else 1
    nrows = -(-len(series) // cols)
    fig = _figure(6 * cols, 2.6 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, (scenario, variant, metric, rows) in zip(axes, series):
        values = rows["value"].tolist()
        x = list(range(1, len(values) + 1))
        bands = [_quartiles(values[: i + 1]) for i in range(len(values))]
        ax.fill_between(x, [b[0] for b in bands], [b[2] for b in bands], alpha=0.25, color="#4c72b0", label="IQR (runs so far)")
        ax.plot(x, [b[1] for b in bands], linestyle="--", color="#4c72b0", linewidth=1, label="median")
        ax.plot(x, values, marker="o", color="#222222", linewidth=1.2, label=metric)
        if (scenario, variant, metric) in flagged:
            ax.plot([x[-1]], [values[-1]], marker="o", markersize=10, color="#c44e52", linestyle="none", label="regression")
        where = scenario + (f"[{variant}]" if variant else "")
        ax.set_title(f"{where} · {metric}")
        ax.set_xlabel("run")
        ax.set_ylabel(unit_of(metric) or metric)
        ax.set_xticks(x)
        # From zero: an autoscaled axis would blow run-to-run noise of a few per cent up to full height.
        ax.set_ylim(0, max(max(values), max(b[2] for b in bands)) * 1.15 or 1.0)
        ax.legend(fontsize="x-small", loc="lower left")
    for ax in axes[len(series):]:
        ax.set_axis_off()
    return fig


def _stage_rows(items: Iterable[Any]) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for item in items:
        if isinstance(item, Mapping):
            key = item["scenario"] + (f"[{item['variant']}]" if item.get("variant") else "")
            stages = item.get("stages") or {}
        else:
            key, stages = item.key, item.stages
        stages = {k: float(v) for k, v in stages.items() if k in _STAGE_COLOURS and v is not None}
        if stages:
            rows.append((key, stages))
    return rows


def stage_figure(results: Iterable[Any]) -> Figure:
    """Median ms per stage (decode, preprocess, infer, postprocess), a stacked bar per scenario.

    ``results`` are ``ScenarioResult`` objects or history records.
    """
    rows = _stage_rows(results)
    fig = _figure(8, 1.4 + 0.5 * max(1, len(rows)))
    ax = fig.add_subplot()
    labels = [k for k, _ in rows]
    left = [0.0] * len(rows)
    for stage, colour in _STAGE_COLOURS.items():
        widths = [s.get(stage, 0.0) for _, s in rows]
        ax.barh(labels, widths, left=left, color=colour, label=stage)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("ms per image (median)")
    ax.set_title("latency by stage")
    ax.invert_yaxis()
    # Below the axes, not inside: inside, the legend hid the end of the last bar.
    fig.legend(*ax.get_legend_handles_labels(), fontsize="small", ncols=4, loc="outside lower center")
    return fig


def latency_figure(results: Iterable[Any]) -> Figure:
    """Empirical CDF of latencies (ms) per scenario result that kept them."""
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    for result in results:
        values = sorted(v for v in result.latencies_ms if v == v)
        if not values:
            continue
        y = [(i + 1) / len(values) for i in range(len(values))]
        ax.step(values, y, where="post", label=result.key)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of queries")
    ax.set_title("latency distribution")
    ax.set_ylim(0, 1.02)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


def server_search_figure(result: Any) -> Figure:
    """The server QPS search: p99 latency per target QPS tried, with the latency bound."""
    trace = (result.extra or {}).get("search") if hasattr(result, "extra") else None
    if not trace:
        raise ValidationError("server_search_figure needs a server_search result", field="result", value=getattr(result, "key", result))
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    pts = sorted(trace, key=lambda t: t["target_qps"])
    ax.plot([t["target_qps"] for t in pts], [t["p99_ms"] for t in pts], marker="o", label="p99 latency")
    ok = [t for t in pts if t["meets"]]
    ax.plot([t["target_qps"] for t in ok], [t["p99_ms"] for t in ok], marker="o", linestyle="none", color="#55a868", label="meets bound")
    ax.axhline(result.params["latency_bound_ms"], color="#c44e52", linestyle="--", label="latency bound")
    ax.set_xscale("log")
    ax.set_xlabel("target QPS")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"server: max QPS within bound = {result.metrics['max_qps_meeting_bound']:.3g}")
    ax.legend(fontsize="small")
    return fig


def memory_figure(result: Any) -> Figure:
    """Peak RSS and the increment over the stage's start, per stage (a memory scenario result)."""
    metrics = result.metrics if hasattr(result, "metrics") else result["metrics"]
    stages = [k[len("peak_rss_mb_"):] for k in metrics if k.startswith("peak_rss_mb_")]
    if not stages:
        raise ValidationError("memory_figure needs a memory scenario result", field="result")
    fig = _figure(7, 3.2)
    ax_peak, ax_inc = fig.subplots(1, 2)
    ax_peak.bar(stages, [metrics[f"peak_rss_mb_{s}"] for s in stages], color="#4c72b0")
    ax_peak.set_title("peak RSS per stage")
    ax_peak.set_ylabel("MB")
    ax_inc.bar(stages, [metrics[f"increment_mb_{s}"] for s in stages], color="#dd8452")
    ax_inc.set_title("increase during stage")
    ax_inc.set_ylabel("MB")
    for ax in (ax_peak, ax_inc):
        ax.tick_params(axis="x", labelrotation=30)
    return fig


def cache_figure(result: Any) -> Figure:
    """Hit against miss latency (p50 and mean) of a cache scenario result, with the hit rate in the title."""
    m = result.metrics
    fig = _figure(5, 3)
    ax = fig.add_subplot()
    names = ["miss p50", "hit p50", "miss mean", "hit mean"]
    values = [m["miss_latency_p50_ms"], m["hit_latency_p50_ms"], m["miss_latency_mean_ms"], m["hit_latency_mean_ms"]]
    ax.bar(names, [v if v == v else 0.0 for v in values], color=["#c44e52", "#55a868", "#c44e52", "#55a868"])
    ax.set_ylabel("ms")
    ax.set_title(f"cache: hit rate {m['hit_rate']:.0%} (expected {m['expected_hit_rate']:.0%})")
    return fig


def topk_figure(top_k: Sequence[Sequence[Any]], *, title: str = "top-k", width: float = 7.5) -> Figure:
    """A horizontal bar chart of ``(key, name, probability)`` rows, most likely on top, labelled by name.

    Pass the English name as ``name`` (the app does; the Thai name goes beside it in HTML). A Thai name is drawn
    with a Thai-capable font when one is installed (``amulet_lab.fonts``); without one the bar is labelled by its
    key instead of by boxes.
    """
    from amulet_lab.fonts import figure_text, font_family_with_thai

    rows = list(top_k)
    if not rows:
        raise ValidationError("topk_figure needs at least one (key, name, probability) row", field="top_k")
    fig = _figure(width, 0.9 + 0.5 * len(rows))
    ax = fig.add_subplot()
    labels = [figure_text(str(r[1]), str(r[0])) if len(r) >= 3 else str(r[0]) for r in rows]
    probs = [float(r[-1]) for r in rows]
    positions = list(range(len(rows)))
    bars = ax.barh(positions, probs, color=["#55a868"] + ["#8c8c8c"] * (len(rows) - 1))
    ax.set_yticks(positions, labels, fontfamily=font_family_with_thai())
    ax.bar_label(bars, labels=[f"{p:.0%}" for p in probs], padding=3, fontsize="small")
    ax.set_xlim(0, 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("probability")
    ax.set_title(title)
    return fig


def figure_to_png(fig: Figure, *, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (for ``ipywidgets.Image``)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
