"""History store and regression detection (no model needed: records are built by hand)."""

from __future__ import annotations

import json
import warnings

import pytest

from amulet_lab.bench.compare import Threshold, compare, threshold_for
from amulet_lab.bench.history import History, HistoryWarning, new_run_id
from amulet_lab.errors import ValidationError


def record(run_id, ts, value, *, ref=1.0, machine="m1", scenario="single_stream", metric="latency_p50_ms", params=None, **more):
    return {
        "run_id": run_id,
        "timestamp": ts,
        "machine_id": machine,
        "scenario": scenario,
        "variant": "",
        "params": params or {"queries": 10},
        "metrics": {metric: value, **more},
        "reference": {"name": "matmul", "ms": ref},
    }


def test_append_and_reload_round_trip(tmp_path):
    h = History(tmp_path / "history")
    assert h.path.name == "runs.jsonl" and len(h) == 0
    h.append(record("r1", "2026-01-01T00:00:00Z", 10.0))
    h.append(record("r2", "2026-01-02T00:00:00Z", 11.0))
    again = History(tmp_path / "history")
    assert [r["run_id"] for r in again] == ["r1", "r2"]
    assert again.records[0]["schema"] == 1
    assert again.latest_run_id() == "r2"
    assert again.run_ids() == ["r1", "r2"]
    frame = again.to_frame()
    assert list(frame["value"]) == [10.0, 11.0]
    assert "runs=2" in repr(again)


def test_corrupt_lines_are_counted_warned_and_skipped(tmp_path):
    path = tmp_path / "runs.jsonl"
    good = json.dumps(record("r1", "2026-01-01T00:00:00Z", 10.0))
    path.write_text(good + "\n{not json\n" + json.dumps({"run_id": "x"}) + "\n\n" + good.replace("r1", "r2") + "\n")
    with pytest.warns(HistoryWarning, match="2 corrupt line"):
        h = History(path)
    assert h.corrupt_lines == 2
    assert [r["run_id"] for r in h] == ["r1", "r2"]
    assert any("not valid JSON" in p for p in h.problems) and any("missing field" in p for p in h.problems)
    # Appending after corruption keeps the old lines and adds one whole line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryWarning)
        h.append(record("r3", "2026-01-03T00:00:00Z", 9.0))
        assert History(path).corrupt_lines == 2
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 6


def test_append_rejects_invalid_records(tmp_path):
    h = History(tmp_path)
    with pytest.raises(ValidationError, match="missing field"):
        h.append({"run_id": "r1"})
    with pytest.raises(ValidationError, match="JSON"):
        h.append(record("r1", "t", float("nan")))
    assert not h.path.exists()


def test_new_run_id_sorts_by_time():
    a, b = new_run_id(), new_run_id()
    assert a != b and a[:16] == b[:16] and a.endswith(a[-6:])


def _history(tmp_path, values, refs=None):
    h = History(tmp_path)
    for i, v in enumerate(values):
        h.append(record(f"r{i}", f"2026-01-0{i + 1}T00:00:00Z", v, ref=(refs or [1.0] * len(values))[i]))
    return h


def test_compare_flags_a_slow_latest_run(tmp_path):
    h = _history(tmp_path, [10.0, 10.5, 9.8, 30.0])
    result = compare(h)
    assert result.run_id == "r3" and result.baseline_runs == ["r0", "r1", "r2"]
    (row,) = result.regressions
    assert row.metric == "latency_p50_ms" and row.n_baseline == 3
    assert row.baseline_median == pytest.approx(10.0) and row.change == pytest.approx(2.0)
    assert "REGRESSION single_stream latency_p50_ms" in result.to_text()
    assert json.loads(result.to_json())["regressions"][0]["metric"] == "latency_p50_ms"


def test_compare_does_not_flag_noise_or_improvements_as_regressions(tmp_path):
    result = compare(_history(tmp_path / "a", [10.0, 11.0, 10.2, 12.0]))
    assert result.regressions == [] and {r.status for r in result.rows} == {"ok"}
    better = compare(_history(tmp_path / "b", [10.0, 11.0, 10.2, 3.0]))
    assert better.regressions == [] and len(better.improvements) == 1


def test_compare_normalises_by_the_reference_workload(tmp_path):
    # The machine got 3x slower (reference 1 -> 3 ms) and latency tripled: not our code.
    h = _history(tmp_path, [10.0, 10.0, 30.0], refs=[1.0, 1.0, 3.0])
    result = compare(h)
    assert result.regressions == []
    assert result.rows[0].baseline_median == pytest.approx(30.0)  # shown in today's units


def test_compare_throughput_down_is_bad(tmp_path):
    h = History(tmp_path)
    for i, v in enumerate([100.0, 104.0, 40.0]):
        h.append(record(f"r{i}", f"2026-01-0{i + 1}", v, metric="samples_per_s"))
    (row,) = compare(h).regressions
    assert row.better == "higher" and row.change < -0.5


def test_compare_respects_absolute_floor_machine_and_params(tmp_path):
    h = History(tmp_path)
    h.append(record("r0", "2026-01-01", 0.2))
    h.append(record("other", "2026-01-02", 50.0, machine="m2"))  # another machine: never a baseline
    h.append(record("p", "2026-01-02", 50.0, params={"queries": 99}))  # other parameters: not comparable
    h.append(record("r1", "2026-01-03", 0.6))  # 3x, but only 0.4 ms: under the 1.5 ms floor
    result = compare(h)
    assert result.baseline_runs == ["r0"] and result.regressions == []


def test_compare_no_baseline_and_empty(tmp_path):
    assert compare(History(tmp_path / "empty")).run_id is None
    assert "nothing to compare" in compare(History(tmp_path / "empty")).to_text()
    result = compare(_history(tmp_path, [10.0]))
    assert [r.status for r in result.rows] == ["no-baseline"]
    with pytest.raises(ValidationError):
        compare(_history(tmp_path / "x", [1.0, 2.0]), latest_run_id="nope")


def test_custom_thresholds_and_untracked_metrics(tmp_path):
    h = History(tmp_path)
    h.append(record("r0", "2026-01-01", 10.0, widgets=1.0))
    h.append(record("r1", "2026-01-02", 12.0, widgets=5.0))
    strict = {"latency_*": Threshold("lower", 0.1, abs_min=0.5)}
    result = compare(h, thresholds=strict)
    statuses = {r.metric: r.status for r in result.rows}
    assert statuses == {"latency_p50_ms": "regression", "widgets": "untracked"}
    assert threshold_for("stage_infer_ms").better == "lower"
    assert threshold_for("samples_per_s").better == "higher"
    with pytest.raises(ValidationError):
        Threshold("sideways", 0.1)
    with pytest.raises(ValidationError):
        compare(h, thresholds={"x": 1.0})


def test_a_runs_records_land_in_one_atomic_append(tmp_path, monkeypatch):
    from amulet_lab.bench import history as history_module

    calls = []
    real = history_module.atomic_append_lines
    monkeypatch.setattr(history_module, "atomic_append_lines", lambda path, lines: calls.append(list(lines)) or real(path, lines))
    h = history_module.History(tmp_path)
    recs = [{"run_id": "r", "timestamp": "t", "machine_id": "m", "scenario": s, "metrics": {"x": 1.0}} for s in ("a", "b", "c")]
    h.extend(recs)
    assert len(calls) == 1 and len(calls[0]) == 3
    with pytest.raises(ValidationError):
        h.extend([recs[0], {"run_id": "r"}])  # one invalid record: nothing of the run is written
    assert len(calls) == 1 and len(history_module.History(tmp_path)) == 3


def test_a_seeded_run_is_judged_against_clean_runs_only(tmp_path):
    """An earlier seeded run must not become a baseline: seeded, clean, seeded again is still flagged."""
    def seeded(r, delay):
        r["settings"] = {"test_preprocess_delay_ms": delay}
        return r

    h = History(tmp_path)
    h.append(seeded(record("r0", "2026-01-01T00:00:00Z", 60.0), 50.0))
    h.append(seeded(record("r1", "2026-01-01T00:00:01Z", 10.0), 0.0))
    h.append(seeded(record("r2", "2026-01-01T00:00:02Z", 61.0), 50.0))
    result = compare(h)
    assert result.run_id == "r2" and result.baseline_runs == ["r1"]
    assert [r.metric for r in result.regressions] == ["latency_p50_ms"]
