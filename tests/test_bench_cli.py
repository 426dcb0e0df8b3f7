"""``amulet-lab bench compare`` / ``bench micro`` on hand-made histories (no model needed)."""

from __future__ import annotations

import json

import pytest

from amulet_lab.bench.history import History
from amulet_lab.cli import main
from model_helpers import untrained_tiny_checkpoint


def _write(tmp_path, values):
    h = History(tmp_path)
    for i, v in enumerate(values):
        h.append({"run_id": f"r{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00Z", "machine_id": "m", "scenario": "offline",
                  "variant": "bs=8", "params": {"batch_size": 8}, "metrics": {"samples_per_s": v},
                  "reference": {"ms": 1.0}})
    return h


def test_compare_text_and_exit_codes(tmp_path, capsys):
    _write(tmp_path, [100.0, 102.0, 99.0, 30.0])
    assert main(["bench", "compare", "--history-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 regression(s)" in out and "REGRESSION offline[bs=8] samples_per_s" in out
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--fail-on-regression"]) == 1
    capsys.readouterr()
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--json", "--run-id", "r2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_id"] == "r2" and data["regressions"] == []


def test_compare_clean_history_passes_fail_on_regression(tmp_path, capsys):
    _write(tmp_path, [100.0, 102.0, 99.0])
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--fail-on-regression"]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_compare_unknown_run_is_a_coded_error(tmp_path, capsys):
    _write(tmp_path, [100.0])
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--run-id", "nope"]) == 1
    assert "E_VALIDATION" in capsys.readouterr().err


def test_micro_quick_runs_a_named_benchmark(capsys):
    assert main(["bench", "micro", "errors", "--quick", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["name"] == "errors" and result["ratios"]
    assert main(["bench", "micro", "nope"]) == 1


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("bench", "report", "demo"):
        assert word in out


def test_bench_run_cli_appends_a_record(tmp_path, capsys):
    """``bench run`` end to end on a tiny checkpoint (a few seconds), with a progress bar on stderr."""
    tiny = untrained_tiny_checkpoint(tmp_path / "tiny.pt", size=32)
    history_dir = tmp_path / "history"
    code = main(["bench", "run", "single_stream", "--samples", "2", "--min-duration", "0", "--threads", "1",
                 "--history-dir", str(history_dir), "--checkpoint", str(tiny)])
    captured = capsys.readouterr()
    assert code == 0 and "appended 1 record(s)" in captured.out
    assert "single_stream:" in captured.err and "/2 [" in captured.err  # the scenario's tqdm bar, 2 queries
    (record,) = History(history_dir).records
    assert record["scenario"] == "single_stream" and record["params"]["torch_threads"] == 1
    assert record["metrics"]["latency_p50_ms"] > 0


@pytest.mark.slow
def test_seeded_regression_from_the_environment_fails_compare(tmp_path, capsys, monkeypatch):
    """Acceptance, from the command line: ``AMULET_TEST_PREPROCESS_DELAY_MS`` switches the seeded regression on;
    ``bench compare --fail-on-regression`` passes two unchanged runs and fails the seeded one (``--json``)."""
    from amulet_lab.config import _reset_settings_cache
    from bench_helpers import unchanged_pair

    tiny = untrained_tiny_checkpoint(tmp_path / "tiny.pt")

    def run(history):
        return ["bench", "run", "single_stream", "--samples", "12", "--min-duration", "0.5", "--threads", "1",
                "--history-dir", str(history), "--checkpoint", str(tiny)]

    def judge(history):
        return ["bench", "compare", "--history-dir", str(history), "--json", "--fail-on-regression"]

    monkeypatch.delenv("AMULET_TEST_PREPROCESS_DELAY_MS", raising=False)
    def run_twice(history):
        assert main(run(history)) == 0 and main(run(history)) == 0

    history, _ = unchanged_pair(run_twice, (tmp_path / f"history{i}" for i in range(3)))
    capsys.readouterr()
    code = main(judge(history))
    clean = json.loads(capsys.readouterr().out)
    assert code == 0 and clean["regressions"] == [] and len(clean["baseline_runs"]) == 1, clean["regressions"]

    monkeypatch.setenv("AMULET_TEST_PREPROCESS_DELAY_MS", "50")  # see test_bench_runner
    _reset_settings_cache()
    assert main(run(history)) == 0
    capsys.readouterr()
    assert main(judge(history)) == 1
    seeded = json.loads(capsys.readouterr().out)
    assert {"latency_p50_ms", "stage_preprocess_ms"} <= {r["metric"] for r in seeded["regressions"]}
    assert len(seeded["baseline_runs"]) == 2
    assert History(history).run(seeded["run_id"])[0]["settings"]["test_preprocess_delay_ms"] == 50.0


def test_report_and_demo_run_the_report_and_say_where_it_is(tmp_path, capsys, monkeypatch):
    """``report`` and ``demo`` hand their options to ``run_report`` (tested on its own in test_bench_report) and
    print its summary; ``demo`` ends with the report page to open."""
    from amulet_lab.bench import report as report_module
    from amulet_lab.bench.compare import compare

    calls = []

    def fake_run_report(out_dir=None, **kwargs):
        calls.append((out_dir, kwargs))
        out = tmp_path / "out"
        return report_module.ReportResult(out, [out / "03_benchmark.ipynb", out / "04_report.ipynb"],
                                          [out / "03_benchmark.html", out / "04_report.html"], out / "history" / "runs.jsonl",
                                          0, 6, 1, "r1", compare([]), 1.0)

    monkeypatch.setattr(report_module, "run_report", fake_run_report)
    assert main(["report", "--out", str(tmp_path / "out"), "--quick", "--no-html"]) == 0
    assert calls[-1][0] == str(tmp_path / "out") and calls[-1][1]["quick"] is True and calls[-1][1]["html"] is False
    assert "report written to" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert calls[-1][1]["quick"] is False
    assert out.rstrip().endswith(f"open the report: file://{(tmp_path / 'out' / '04_report.html').resolve()}")
    assert "6 record(s) appended" in out


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_metric_fails_compare_and_the_json_stays_strict(tmp_path, capsys, bad):
    """A failed measurement is flagged (exit 1 with --fail-on-regression) and never printed as NaN/Infinity."""
    # History.append refuses NaN; a file written by an older version (json.dumps allows NaN) may still hold it.
    lines = [json.dumps({
        "run_id": f"r{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00Z", "machine_id": "m", "scenario": "single_stream",
        "variant": "", "params": {"queries": 10}, "metrics": {"latency_p50_ms": value, "samples_per_s": bad},
        "reference": {"ms": 1.0}}) for i, value in enumerate([10.0, 10.2, 9.9, bad])]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--fail-on-regression"]) == 1
    assert "FAILED MEASUREMENT single_stream latency_p50_ms" in capsys.readouterr().out
    assert main(["bench", "compare", "--history-dir", str(tmp_path), "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert {row["metric"] for row in parsed["failed"]} == {"latency_p50_ms", "samples_per_s"}
    assert all(row["value"] is None for row in parsed["failed"])
