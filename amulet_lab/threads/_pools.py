"""Named thread pools of a given size, with counts of what they ran, and a graceful shutdown."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from amulet_lab.errors import ProcessingError, ValidationError

if TYPE_CHECKING:
    from amulet_lab.config import Settings

__all__ = ["ThreadPoolManager", "get_thread_pool_manager", "peek_thread_pool_manager"]


class _PoolEntry:
    def __init__(self, name: str, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"amulet-{name}")
        self.workers = workers
        self.counts = {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0}


#: Workers of a pool unless told otherwise: AMULET_THREAD_POOL_SIZE's documented default.
DEFAULT_WORKERS = 4


class ThreadPoolManager:
    """Named ``ThreadPoolExecutor`` pools created on first use, each with ``default_workers`` workers by default."""

    def __init__(self, default_workers: int = DEFAULT_WORKERS) -> None:
        self.set_default_workers(default_workers)
        self._lock = threading.Lock()
        self._pools: dict[str, _PoolEntry] = {}
        self._closed = False

    def set_default_workers(self, workers: int) -> None:
        """Workers of the pools created from now on (pools that exist keep theirs)."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValidationError("default_workers must be an int >= 1", field="default_workers",
                                  value=workers, code="E_POOL_SIZE")
        self.default_workers = workers

    @classmethod
    def from_settings(cls, settings: Settings) -> ThreadPoolManager:
        """A manager whose pools have AMULET_THREAD_POOL_SIZE workers (``settings.thread_pool_size``)."""
        return cls(settings.thread_pool_size)

    def get_pool(self, name: str = "default", max_workers: int | None = None) -> ThreadPoolExecutor:
        """The pool called ``name``, created with ``max_workers`` (default: ``default_workers``) on first use."""
        return self._entry(name, max_workers).executor

    def _entry(self, name: str, max_workers: int | None) -> _PoolEntry:
        if not isinstance(name, str) or not name:
            raise ValidationError("pool name must be a non-empty string", field="name", value=name, code="E_POOL_NAME")
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValidationError("max_workers must be an int >= 1", field="max_workers", value=max_workers,
                                  code="E_POOL_SIZE")
        with self._lock:
            if self._closed:
                raise ProcessingError("the thread pool manager has been shut down", stage="threads",
                                      code="E_POOL_SHUTDOWN", context={"pool": name})
            entry = self._pools.get(name)
            if entry is None:
                entry = self._pools[name] = _PoolEntry(name, max_workers or self.default_workers)
            return entry

    def submit(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in pool ``name``; the returned future's outcome is counted."""
        entry = self._entry(name, None)
        try:
            future = entry.executor.submit(fn, *args, **kwargs)
        except RuntimeError as exc:  # shutdown() ran between _entry and submit (the executor says so)
            raise ProcessingError("the thread pool manager has been shut down", stage="threads",
                                  code="E_POOL_SHUTDOWN", context={"pool": name}) from exc
        with self._lock:
            entry.counts["submitted"] += 1
        future.add_done_callback(lambda f: self._done(entry, f))
        return future

    def _done(self, entry: _PoolEntry, future: Future[Any]) -> None:
        key = "cancelled" if future.cancelled() else "failed" if future.exception() is not None else "completed"
        with self._lock:
            entry.counts[key] += 1

    def map(self, name: str, fn: Callable[[Any], Any], items: Any, *, timeout: float | None = None) -> list[Any]:
        """``[fn(x) for x in items]`` run in pool ``name``, results in order.

        On the first error (or timeout) the futures not yet started are cancelled, then the error is raised:
        the rest of a failed batch does not keep the pool busy. ``timeout`` applies to each result.
        """
        futures: list[Future[Any]] = []
        try:
            for item in items:
                futures.append(self.submit(name, fn, item))
            return [f.result(timeout=timeout) for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # no-op for running or finished ones
            raise

    def stats(self) -> dict[str, Any]:
        """Per pool: workers, submitted, completed, failed, cancelled, pending; and whether shut down."""
        with self._lock:
            pools = {name: {"workers": e.workers, **e.counts,
                            "pending": e.counts["submitted"] - e.counts["completed"] - e.counts["failed"]
                            - e.counts["cancelled"]}
                     for name, e in self._pools.items()}
            return {"pools": pools, "default_workers": self.default_workers, "shut_down": self._closed}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop every pool: queued work finishes (or is cancelled with ``cancel_futures``); later use raises."""
        with self._lock:
            self._closed = True
            entries = list(self._pools.values())
        for entry in entries:
            entry.executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> ThreadPoolManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"ThreadPoolManager(pools={sorted(self._pools)}, default_workers={self.default_workers})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{v}</td>" for v in s.values()) + "</tr>"
            for n, s in self.stats()["pools"].items())
        head = "<tr><th>pool</th><th>workers</th><th>submitted</th><th>completed</th><th>failed</th>" \
               "<th>cancelled</th><th>pending</th></tr>"
        return f"<table><caption>ThreadPoolManager</caption>{head}{rows}</table>"


_manager: ThreadPoolManager | None = None
_manager_lock = threading.Lock()


def get_thread_pool_manager() -> ThreadPoolManager:
    """The process-wide pool manager, created on first use (or after a shutdown) with the default pool size.

    The edges size it from AMULET_THREAD_POOL_SIZE through ``runtime.apply_settings``.
    """
    global _manager
    with _manager_lock:
        if _manager is None or _manager._closed:
            _manager = ThreadPoolManager()
        return _manager


def peek_thread_pool_manager() -> ThreadPoolManager | None:
    """The process-wide pool manager if one was created, without creating it."""
    return _manager
