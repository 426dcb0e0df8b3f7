"""Regression detection: the latest run against earlier runs on the same machine.

For each metric of the latest run, the baseline is the same scenario, variant and parameters (torch
threads, cache flag and reference workload included: ``baseline_key``) in up to ``window`` earlier runs
on the same machine; runs with the test-only preprocessing delay never serve as baseline for runs
without it (a seeded regression is judged against clean runs, and never becomes their baseline). Values are first normalised by the reference
workload timed in each run (time metrics divided by it, rates multiplied), so a machine that is
slower today (throttled, another host of the same kind) does not read as slower code; the reference is
the fastest of its rounds, so load that other jobs keep up during a run is not divided out. A metric
regresses when its normalised value leaves the band ``[median / (1 + rel) - iqr_k * IQR, median * (1 + rel) + iqr_k * IQR]`` on the bad side *and* the raw change exceeds the
metric's absolute floor (so 0.2 ms -> 0.4 ms of a cache hit is not news).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from amulet_lab.bench.history import History, baseline_key
from amulet_lab.bench.stats import quartiles
from amulet_lab.errors import ValidationError

__all__ = ["Threshold", "DEFAULT_THRESHOLDS", "MetricComparison", "Comparison", "compare", "threshold_for",
           "baseline_key"]


@dataclasses.dataclass(frozen=True)
class Threshold:
    """How one metric is judged: which way is better, the relative band, the absolute floor, normalisation."""

    better: str  # "lower" (latency, memory) or "higher" (throughput, hit rate)
    rel: float  # worse by a factor (1 + rel) of the normalised median counts (better: by the same factor)
    abs_min: float = 0.0  # smallest raw change (metric units) that counts
    normalise: bool = True  # scale by the run's reference workload

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValidationError("better must be 'lower' or 'higher'", field="better", value=self.better)
        if not (0 <= self.rel < 10) or self.abs_min < 0:
            raise ValidationError("rel must be in [0, 10) and abs_min >= 0", field="rel", value=(self.rel, self.abs_min))


#: Patterns (fnmatch, first match wins) -> threshold. Metrics matching none are shown, not judged:
#: tails and means (p90, p99 of single queries, mean, qps = 1/mean) swing with other people's load on a
#: shared machine, so the verdict rests on medians, throughput of whole batches, the server search,
#: the cache and memory. Relative bands are wide because such machines are noisy; a seeded 20 ms
#: preprocessing delay still moves the medians several-fold.
DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "latency_p50_ms": Threshold("lower", 0.75, abs_min=2.0),
    "batch_latency_p50_ms": Threshold("lower", 0.75, abs_min=2.0),
    "stage_*_ms": Threshold("lower", 0.75, abs_min=2.0),
    "hit_latency_p50_ms": Threshold("lower", 1.0, abs_min=2.0),
    "miss_latency_p50_ms": Threshold("lower", 0.75, abs_min=2.0),
    "samples_per_s": Threshold("higher", 0.67),  # down to 60 %
    "max_qps_meeting_bound": Threshold("higher", 1.5),  # below 40 %: the search is coarse and load-sensitive
    "hit_rate": Threshold("higher", 0.1, abs_min=0.05, normalise=False),
    "peak_rss_mb": Threshold("lower", 0.25, abs_min=50.0, normalise=False),
}


def threshold_for(metric: str, thresholds: Mapping[str, Threshold] | None = None) -> Threshold | None:
    """The first threshold whose pattern matches ``metric`` (exact names before patterns)."""
    table = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    if metric in table:
        return table[metric]
    for pattern, threshold in table.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return threshold
    return None


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    """One metric of the latest run against its baseline."""

    scenario: str
    variant: str
    metric: str
    value: float
    baseline_median: float | None  # in the latest run's units (rescaled by its reference workload)
    baseline_iqr: float | None
    n_baseline: int
    change: float | None  # relative change of the normalised value against the normalised median
    status: str  # regression, improvement, ok, no-baseline, untracked, failed (NaN or infinity)
    better: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """The verdict on one run: a row per metric, and the regressions among them."""

    run_id: str | None
    machine_id: str | None
    baseline_runs: list[str]
    rows: list[MetricComparison]
    corrupt_lines: int = 0

    @property
    def regressions(self) -> list[MetricComparison]:
        """Rows judged worse than the baseline, and failed measurements (NaN or infinity): neither may pass."""
        return [r for r in self.rows if r.status in ("regression", "failed")]

    @property
    def failed(self) -> list[MetricComparison]:
        """Rows whose latest value is NaN or infinite (a failed measurement, flagged whatever the baseline)."""
        return [r for r in self.rows if r.status == "failed"]

    @property
    def improvements(self) -> list[MetricComparison]:
        """Rows judged better than the baseline."""
        return [r for r in self.rows if r.status == "improvement"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``bench compare --json`` prints)."""
        return {
            "run_id": self.run_id,
            "machine_id": self.machine_id,
            "baseline_runs": self.baseline_runs,
            "corrupt_lines": self.corrupt_lines,
            "regressions": [r.to_dict() for r in self.regressions],
            "failed": [r.to_dict() for r in self.failed],
            "improvements": [r.to_dict() for r in self.improvements],
            "rows": [r.to_dict() for r in self.rows],
        }

    def to_json(self) -> str:
        """``to_dict`` as indented JSON."""
        return json.dumps(_strict(self.to_dict()), indent=2, sort_keys=True, allow_nan=False)

    def to_frame(self):  # -> pandas.DataFrame
        """The rows as a DataFrame."""
        import pandas as pd

        columns = [f.name for f in dataclasses.fields(MetricComparison)]
        return pd.DataFrame([r.to_dict() for r in self.rows], columns=columns)

    def to_text(self) -> str:
        """A short plain-text verdict with one line per regression (and improvement)."""
        if self.run_id is None:
            return "no runs in the history: nothing to compare"
        judged = [r for r in self.rows if r.status in ("regression", "improvement", "ok")]
        lines = [
            f"run {self.run_id} on machine {self.machine_id}: {len(judged)} metric(s) judged against "
            f"{len(self.baseline_runs)} earlier run(s); {len(self.regressions)} regression(s), "
            f"{len(self.improvements)} improvement(s)"
        ]
        if not self.baseline_runs:
            lines.append("  (no earlier run with the same parameters on this machine: nothing to judge yet)")
        for row in self.failed:
            where = row.scenario + (f"[{row.variant}]" if row.variant else "")
            lines.append(f"  FAILED MEASUREMENT {where} {row.metric}: {row.value} (not a finite number)")
        for row in [r for r in self.regressions if r.status == "regression"] + self.improvements:
            word = "REGRESSION" if row.status == "regression" else "improvement"
            where = row.scenario + (f"[{row.variant}]" if row.variant else "")
            change = "n/a" if row.change is None else f"{row.change:+.0%}"
            lines.append(
                f"  {word} {where} {row.metric}: {row.value:.4g} vs baseline {row.baseline_median:.4g} "
                f"(IQR {row.baseline_iqr:.3g}, n={row.n_baseline}, {change} normalised)"
            )
        if self.corrupt_lines:
            lines.append(f"  note: {self.corrupt_lines} corrupt history line(s) were skipped")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        frame = self.to_frame()
        shown = frame[frame["status"].isin(["regression", "improvement"])]
        head = f"<p><b>{len(self.regressions)} regression(s)</b>, {len(self.improvements)} improvement(s) in run {self.run_id}</p>"
        return head + (shown.to_html(index=False) if len(shown) else "<p>No metric left its band.</p>")

    def __repr__(self) -> str:
        return f"Comparison(run_id={self.run_id!r}, regressions={len(self.regressions)}, rows={len(self.rows)})"


def _load(history: History | str | Path | Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    if isinstance(history, History):
        return list(history.records), history.corrupt_lines
    if isinstance(history, (str, Path)):
        h = History(history)
        return list(h.records), h.corrupt_lines
    if isinstance(history, Iterable):
        return [dict(r) for r in history], 0
    raise ValidationError("history must be a History, a path or records", field="history", value=type(history).__name__)


def _delay(record: Mapping[str, Any]) -> float:
    value = (record.get("settings") or {}).get("test_preprocess_delay_ms", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _ref(record: Mapping[str, Any]) -> float | None:
    ms = (record.get("reference") or {}).get("ms")
    return float(ms) if isinstance(ms, (int, float)) and ms > 0 else None


def compare(
    history: History | str | Path | Iterable[Mapping[str, Any]],
    latest_run_id: str | None = None,
    thresholds: Mapping[str, Threshold] | None = None,
    *,
    window: int = 20,
    iqr_k: float = 1.5,
) -> Comparison:
    """Judge the latest run (or ``latest_run_id``) against earlier runs on the same machine."""
    if not isinstance(window, int) or window < 1:
        raise ValidationError("window must be a whole number >= 1", field="window", value=window)
    if iqr_k < 0:
        raise ValidationError("iqr_k must be >= 0", field="iqr_k", value=iqr_k)
    records, corrupt = _load(history)
    if thresholds is not None:
        bad = {k: v for k, v in thresholds.items() if not isinstance(v, Threshold)}
        if bad:
            raise ValidationError("thresholds must map metric patterns to Threshold", field="thresholds", value=sorted(bad))
    if latest_run_id is None:
        if not records:
            return Comparison(None, None, [], [], corrupt)
        latest_run_id = max(enumerate(records), key=lambda ir: (str(ir[1]["timestamp"]), ir[0]))[1]["run_id"]
    latest = [r for r in records if r["run_id"] == latest_run_id]
    if not latest:
        raise ValidationError(f"run {latest_run_id!r} is not in the history", field="latest_run_id", value=latest_run_id)
    machine = latest[0]["machine_id"]
    latest_ts = min(str(r["timestamp"]) for r in latest)
    earlier = [r for r in records if r["machine_id"] == machine and r["run_id"] != latest_run_id and str(r["timestamp"]) <= latest_ts]
    # The most recent `window` earlier runs only: old history should not anchor today's baseline forever.
    order: dict[str, str] = {}
    for r in earlier:
        order[r["run_id"]] = max(order.get(r["run_id"], ""), str(r["timestamp"]))
    keep = set(sorted(order, key=order.__getitem__)[-window:])
    earlier = [r for r in earlier if r["run_id"] in keep]

    rows: list[MetricComparison] = []
    used_runs: set[str] = set()
    for rec in latest:
        variant = rec.get("variant", "")
        key = baseline_key(rec)
        # Clean runs only: an earlier seeded run as baseline would hide the seeded delay of this one.
        base = [b for b in earlier if baseline_key(b) == key and _delay(b) == 0.0]
        ref_now = _ref(rec)
        for metric, value in sorted(rec["metrics"].items()):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            th = threshold_for(metric, thresholds)
            if not math.isfinite(value):
                rows.append(MetricComparison(rec["scenario"], variant, metric, float(value), None, None, 0, None,
                                             "failed", th.better if th else None))
                continue
            if th is None:
                rows.append(MetricComparison(rec["scenario"], variant, metric, float(value), None, None, 0, None, "untracked", None))
                continue
            norm_now, pairs, scale = _normalised(float(value), ref_now, base, metric, th)
            if not pairs:
                rows.append(MetricComparison(rec["scenario"], variant, metric, float(value), None, None, 0, None, "no-baseline", th.better))
                continue
            used_runs.update(run for run, _ in pairs)
            values = [v for _, v in pairs]
            med = statistics.median(values)
            q1, q3 = quartiles(values)
            iqr = q3 - q1
            change = (norm_now - med) / med if med else None
            # A change counts when it is a factor (1 + rel) beyond the median, plus iqr_k IQRs of slack.
            high = norm_now > med * (1 + th.rel) + iqr_k * iqr
            low = norm_now < med / (1 + th.rel) - iqr_k * iqr
            worse, better = (high, low) if th.better == "lower" else (low, high)
            big_enough = abs(float(value) - med * scale) >= th.abs_min
            status = "regression" if worse and big_enough else "improvement" if better and big_enough else "ok"
            rows.append(
                MetricComparison(rec["scenario"], variant, metric, float(value), med * scale, iqr * scale, len(values), change, status, th.better)
            )
    baseline_runs = [r for r in sorted(order, key=order.__getitem__) if r in used_runs]
    return Comparison(latest_run_id, machine, baseline_runs, rows, corrupt)


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _normalised(
    value: float, ref_now: float | None, base: list[dict[str, Any]], metric: str, th: Threshold
) -> tuple[float, list[tuple[str, float]], float]:
    """The latest value, the baseline values (both normalised when every run has a reference), and the
    factor that turns a normalised figure back into the latest run's units."""
    refs = [_ref(b) for b in base]
    use_ref = th.normalise and ref_now is not None and all(r is not None for r in refs)
    pairs = []
    for b, ref in zip(base, refs):
        v = b["metrics"].get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            continue  # a failed earlier measurement is no baseline
        pairs.append((b["run_id"], _norm(float(v), ref, th) if use_ref else float(v)))
    if not use_ref or ref_now is None:
        return value, pairs, 1.0
    return _norm(value, ref_now, th), pairs, (ref_now if th.better == "lower" else 1.0 / ref_now)


def _norm(value: float, ref: float | None, th: Threshold) -> float:
    # Time-like metrics scale with the machine's speed (divide); rates inversely (multiply).
    if ref is None:
        return value
    return value / ref if th.better == "lower" else value * ref
