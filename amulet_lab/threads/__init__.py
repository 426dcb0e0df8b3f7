"""Thread safety: safe containers, an atomic counter, named locks that name their holder, pools, budgets.

Nothing here starts a thread at import; pools start their workers when first given work.
"""

from __future__ import annotations

import threading
from typing import Any

from amulet_lab.threads._budget import WeightedSemaphore
from amulet_lab.threads._locks import (
    KINDS,
    LockManager,
    async_named_lock,
    get_lock_manager,
    named_lock,
    thread_safe_operation,
)
from amulet_lab.threads._pools import ThreadPoolManager, get_thread_pool_manager, peek_thread_pool_manager
from amulet_lab.threads._structures import AsyncSafeDict, AtomicCounter, ThreadSafeDict, ThreadSafeQueue

__all__ = [
    "KINDS",
    "AsyncSafeDict",
    "AtomicCounter",
    "LockManager",
    "ThreadPoolManager",
    "ThreadSafeDict",
    "ThreadSafeQueue",
    "WeightedSemaphore",
    "async_named_lock",
    "get_lock_manager",
    "get_stats",
    "get_thread_pool_manager",
    "named_lock",
    "thread_safe_operation",
]


def get_stats() -> dict[str, Any]:
    """For the health report (``thread_stats``): live threads, named locks, and pools (if any were made)."""
    manager = peek_thread_pool_manager()
    threads = threading.enumerate()
    return {
        "active_threads": len(threads),
        "thread_names": sorted(t.name for t in threads),
        "locks": get_lock_manager().diagnostics(),
        "pools": manager.stats() if manager is not None else {"pools": {}, "shut_down": False},
    }
