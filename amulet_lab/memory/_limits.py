"""Memory budgets for a block of code, and per-operation peak-memory figures."""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from amulet_lab.errors import MemoryBudgetExceeded, ValidationError
from amulet_lab.memory._sampling import MB, RssSampler, check_interval

__all__ = ["memory_limit_context", "memory_efficient_operation"]

logger = logging.getLogger("amulet_lab.memory")
F = TypeVar("F", bound=Callable[..., Any])
_SAMPLES_AFTER_FIRING = 50


def _set_async_exc(thread_id: int, exc_class: type[BaseException] | None) -> int:
    """Ask CPython to raise ``exc_class`` in thread ``thread_id`` at its next bytecode check (None: cancel)."""
    # No argtypes on purpose: ctypes.pythonapi is shared, and None must pass as NULL (cancel), not Py_None.
    obj = ctypes.py_object(exc_class) if exc_class is not None else None
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj))


class memory_limit_context:  # noqa: N801 - used like a function: ``with memory_limit_context(100):``
    """Enforce an RSS growth budget of ``limit_mb`` over the block: over it, ``MemoryBudgetExceeded`` is raised.

    How: at entry the process RSS is recorded; a watchdog thread samples RSS every ``interval_s``
    (default 10 ms). The first sample whose growth over the entry RSS exceeds ``limit_mb`` makes CPython
    raise ``MemoryBudgetExceeded`` in the block's own thread (``PyThreadState_SetAsyncExc``). At exit one
    more sample is taken and, if the highest growth seen was over budget, the error is raised then.

    Limits, stated plainly:
    - A spike shorter than ``interval_s`` that is freed before the next sample and before exit is not seen.
    - RSS is process-wide: other threads' allocations during the block count too.
    - The asynchronous exception lands only when the block's thread next runs Python bytecode; a long C
      call (a numpy operation, a decode) finishes first. A block that sleeps or waits inside C is
      interrupted after it returns.
    - It can land on *any* bytecode of the block: inside a ``finally``, an ``except`` handler, a ``with``
      exit or a library's own cleanup code, which is then cut short (a file left open, a lock left held,
      a half-updated object). Use the context around code whose cleanup you can afford to lose that way
      (a decode, a batch of numpy work), not around code that must finish its cleanup.
    - Memory that is reserved but not touched (e.g. ``bytearray(n)`` from calloc) is not resident, so it
      does not count until written.
    """

    def __init__(self, limit_mb: float, *, interval_s: float = 0.01, process: Any = None) -> None:
        if not isinstance(limit_mb, (int, float)) or isinstance(limit_mb, bool) or not limit_mb > 0:
            raise ValidationError("limit_mb must be a positive number", field="limit_mb", value=limit_mb,
                                  code="E_MEMORY_LIMIT")
        check_interval(interval_s)  # at construction, not at first use
        self.limit_mb = float(limit_mb)
        self.interval_s = interval_s
        self._process = process
        self._sampler: RssSampler | None = None
        self._thread_id = 0
        self._fired = threading.Event()
        self._exc_class: type[MemoryBudgetExceeded] | None = None
        self._samples_after_firing = 0

    @property
    def peak_mb(self) -> float:
        """Highest RSS growth over the entry RSS seen so far, MB."""
        return self._sampler.peak_delta_bytes / MB if self._sampler else 0.0

    def _error(self) -> MemoryBudgetExceeded:
        return MemoryBudgetExceeded(
            f"memory budget exceeded: RSS grew {self.peak_mb:.1f} MB in the block, budget {self.limit_mb:g} MB",
            peak_mb=self.peak_mb, budget_mb=self.limit_mb)

    def _on_sample(self, rss: int) -> bool:
        assert self._sampler is not None
        if self._fired.is_set():
            # Sampling goes on a little to report the true peak, then ends by itself: should the exception
            # land in the first bytecode of __exit__ (before it can stop the sampler), no thread is left behind.
            self._samples_after_firing += 1
            return self._samples_after_firing >= _SAMPLES_AFTER_FIRING
        if rss - self._sampler.start_rss <= self.limit_mb * MB:
            return False
        self._fired.set()
        _set_async_exc(self._thread_id, self._exc_class)
        logger.warning("memory budget %.0f MB exceeded (grew %.1f MB): interrupting the block",
                       self.limit_mb, self.peak_mb)
        return False

    def __enter__(self) -> memory_limit_context:
        owner = self

        class _Exceeded(MemoryBudgetExceeded):
            # CPython instantiates the async exception class with no arguments: this one fills its own.
            def __init__(self) -> None:
                err = owner._error()
                super().__init__(err.message, peak_mb=err.peak_mb, budget_mb=err.budget_mb)

        _Exceeded.__name__ = _Exceeded.__qualname__ = "MemoryBudgetExceeded"
        _Exceeded.__module__ = MemoryBudgetExceeded.__module__
        self._exc_class = _Exceeded
        self._fired.clear()
        self._samples_after_firing = 0
        self._thread_id = threading.get_ident()
        self._sampler = RssSampler(self.interval_s, process=self._process, on_sample=self._on_sample)
        self._sampler.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        assert self._sampler is not None and self._exc_class is not None
        landed = False
        try:
            # Inside the try: the interruption may land on any bytecode of __exit__, this line included.
            landed = exc_type is not None and issubclass(exc_type, self._exc_class)
            self._sampler.stop()  # after this no new interruption can be scheduled
            if self._fired.is_set() and not landed:
                _set_async_exc(self._thread_id, None)  # cancel an interruption that has not landed yet
        except self._exc_class:
            landed = False  # it landed here, during exit; it is raised below as an ordinary error
            self._sampler.stop()  # it may have landed before the first stop finished; stop() is idempotent
        if landed or exc_type is not None:
            return False  # let the block's own exception (ours or another) propagate
        if self.peak_mb > self.limit_mb:
            raise self._error()
        return False

    def __repr__(self) -> str:
        return f"memory_limit_context(limit_mb={self.limit_mb:g}, peak_mb={self.peak_mb:.1f})"


def _record(name: str, peak_mb: float, delta_mb: float) -> None:
    from amulet_lab.perf import performance_monitor

    performance_monitor.record_value(name, "peak_rss_delta_mb", peak_mb)
    performance_monitor.record_value(name, "rss_delta_mb", delta_mb)


def memory_efficient_operation(name: str, *, interval_s: float = 0.005) -> Callable[[F], F]:
    """Decorator (sync or async): records the call's peak RSS growth and RSS change, MB, under ``name``.

    Figures go to ``amulet_lab.perf.performance_monitor.record_value(name, "peak_rss_delta_mb" |
    "rss_delta_mb", v)`` (read back with ``performance_monitor.get_stats(name)["values"]``). The peak is sampled every ``interval_s`` in a
    helper thread, so it is a lower bound (a spike shorter than that can be missed) and process-wide.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("name must be a non-empty string", field="name", value=name, code="E_OPERATION_NAME")
    check_interval(interval_s)  # at construction, not at first use

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                sampler = RssSampler(interval_s).start()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    sampler.stop()
                    _record(name, sampler.peak_delta_bytes / MB, sampler.delta_bytes / MB)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sampler = RssSampler(interval_s).start()
            try:
                return fn(*args, **kwargs)
            finally:
                sampler.stop()
                _record(name, sampler.peak_delta_bytes / MB, sampler.delta_bytes / MB)

        return wrapper  # type: ignore[return-value]

    return decorate
