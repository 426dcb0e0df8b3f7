"""``amulet-lab bench compare`` / ``bench micro`` on hand-made histories (no model needed)."""

from __future__ import annotations

import json

import pytest

from amulet_lab.bench.history import History
from amulet_lab.cli import main


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
    """``bench run`` end to end on a real (untrained, seeded) tiny checkpoint: a few seconds."""
    import torch

    from amulet_lab.images import PreprocessSpec
    from amulet_lab.model import build_model, make_checkpoint, save_checkpoint
    from amulet_lab.model.checkpoint import project_labels

    torch.manual_seed(0)
    labels = project_labels()
    ck = make_checkpoint(build_model("tiny", len(labels)), arch="tiny", arch_kwargs={}, labels=labels,
                         spec=PreprocessSpec(size=32))
    tiny = save_checkpoint(ck, tmp_path / "tiny.pt")
    history_dir = tmp_path / "history"
    code = main(["bench", "run", "single_stream", "--samples", "2", "--min-duration", "0", "--threads", "1",
                 "--history-dir", str(history_dir), "--checkpoint", str(tiny)])
    out = capsys.readouterr().out
    assert code == 0 and "appended 1 record(s)" in out
    (record,) = History(history_dir).records
    assert record["scenario"] == "single_stream" and record["params"]["torch_threads"] == 1
    assert record["metrics"]["latency_p50_ms"] > 0
