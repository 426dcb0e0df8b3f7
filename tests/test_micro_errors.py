"""The errors micro-benchmark runs and reports its ratios (timing targets are checked in benchmarks, not here)."""

from amulet_lab.bench.micro import MicroResult, run_micro
from amulet_lab.errors import ValidationError

import pytest


def test_errors_micro_benchmark_shape():
    (result,) = run_micro(["errors"], quick=True)
    assert isinstance(result, MicroResult)
    assert set(result.ratios) == {"retry_vs_tenacity", "breaker_vs_pybreaker"}
    assert all(v > 0 for v in result.ratios.values())
    assert set(result.verdicts()) == set(result.ratios)
    assert "retry_vs_tenacity" in result.to_text()


def test_unknown_micro_benchmark_is_refused():
    with pytest.raises(ValidationError):
        run_micro(["nope"])
