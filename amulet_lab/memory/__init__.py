"""Memory: usage and pressure monitoring, garbage collection, streaming of large files, memory budgets.

``memory_monitor``, ``gc_manager`` and ``streaming_handler`` are process-wide instances created on first
use (module ``__getattr__``) from the documented defaults; importing this package starts nothing and
reads no settings (an edge that wants AMULET_* values builds its own, e.g. ``MemoryMonitor.from_settings``).
"""

from __future__ import annotations

import threading
from typing import Any

from amulet_lab.memory._limits import memory_efficient_operation, memory_limit_context
from amulet_lab.memory._monitor import (
    LEVELS,
    GCManager,
    MemoryMonitor,
    MemoryUsage,
    default_gc_manager,
    gc_responder,
    image_cache_responder,
    shrink_caches_responder,
)
from amulet_lab.memory._sampling import RssSampler, rss_bytes
from amulet_lab.memory._streaming import StreamingHandler

__all__ = [
    "LEVELS",
    "GCManager",
    "MemoryMonitor",
    "MemoryUsage",
    "RssSampler",
    "StreamingHandler",
    "check_memory_pressure",
    "gc_manager",
    "gc_responder",
    "get_current_usage",
    "get_memory_monitor",
    "get_stats",
    "image_cache_responder",
    "memory_efficient_operation",
    "memory_limit_context",
    "memory_monitor",
    "register_responder",
    "rss_bytes",
    "shrink_caches_responder",
    "streaming_handler",
]

_globals: dict[str, Any] = {}
_globals_lock = threading.Lock()


def _make(name: str) -> Any:
    if name == "memory_monitor":
        # Caches shrink first, then gc collects and trims the heap: what the shrink dropped is returned too.
        monitor = MemoryMonitor(builtin_responders=False)
        monitor.register_responder(image_cache_responder)
        monitor.register_responder(gc_responder)
        return monitor
    if name == "gc_manager":
        return default_gc_manager()  # the one gc_responder uses
    return StreamingHandler()


def __getattr__(name: str) -> Any:
    if name in ("memory_monitor", "gc_manager", "streaming_handler"):
        with _globals_lock:
            if name not in _globals:
                _globals[name] = _make(name)
            return _globals[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_memory_monitor() -> MemoryMonitor:
    """The process-wide monitor (image-cache shrink, then gc, registered as responders), created on first use."""
    return __getattr__("memory_monitor")


def get_current_usage() -> MemoryUsage:
    """``memory_monitor.get_current_usage()``."""
    return get_memory_monitor().get_current_usage()


def check_memory_pressure() -> dict[str, Any]:
    """``memory_monitor.check_memory_pressure()``."""
    return get_memory_monitor().check_memory_pressure()


def register_responder(fn: Any) -> Any:
    """``memory_monitor.register_responder(fn)``."""
    return get_memory_monitor().register_responder(fn)


def get_stats() -> dict[str, Any]:
    """``memory_monitor.get_stats()`` plus the gc manager's figures, for the health report."""
    stats = get_memory_monitor().get_stats()
    stats["gc"] = __getattr__("gc_manager").stats()
    return stats
