"""Performance: ``PerformanceMonitor``, the global ``performance_monitor``, ``timed_operation``, ``HttpPool``.

``HttpPool`` loads lazily (it imports httpx), so ``import amulet_lab.perf`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from amulet_lab.perf._monitor import PerformanceMonitor, performance_monitor, timed_operation

__all__ = ["PerformanceMonitor", "performance_monitor", "timed_operation", "HttpPool"]


def __getattr__(name: str) -> Any:
    if name == "HttpPool":
        from amulet_lab.perf._http import HttpPool

        return HttpPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
