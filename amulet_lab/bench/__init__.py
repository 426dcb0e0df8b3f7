"""Benchmarks: MLPerf-style scenarios, the run history, regression detection, machine info, reports.

Names load on first use (module ``__getattr__``), so ``import amulet_lab.bench.micro`` and
``import amulet_lab.bench`` stay free of torch, pandas and matplotlib.

    from amulet_lab import bench
    run = bench.run_benchmarks(["single_stream", "offline"], samples=24)
    run.comparison().to_text()          # or amulet_lab.bench.compare.compare(history)

(``compare`` is also the name of a submodule, so the function is not re-exported here: importing
the submodule would shadow it.)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "run_benchmarks",
    "BenchRun",
    "SCENARIOS",
    "History",
    "Comparison",
    "Threshold",
    "machine_info",
    "reference_workload",
    "run_report",
]

_WHERE = {
    "run_benchmarks": "amulet_lab.bench.runner",
    "BenchRun": "amulet_lab.bench.runner",
    "SCENARIOS": "amulet_lab.bench.runner",
    "History": "amulet_lab.bench.history",
    "Comparison": "amulet_lab.bench.compare",
    "Threshold": "amulet_lab.bench.compare",
    "machine_info": "amulet_lab.bench.machine",
    "reference_workload": "amulet_lab.bench.machine",
    "run_report": "amulet_lab.bench.report",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
