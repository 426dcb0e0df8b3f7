"""``error_context``: log a failure once, with its operation, context and duration; never swallow."""

from __future__ import annotations

import contextvars
import logging
import time
from types import TracebackType
from typing import Any

from amulet_lab.errors._exceptions import AmuletError, ValidationError

__all__ = ["error_context"]

log = logging.getLogger("amulet_lab.errors")

_LOGGED = "_amulet_logged"


class error_context:  # noqa: N801 - the design's public name, used like a function
    """Context manager (sync and async) that logs a failure once with operation and context, then re-raises."""

    def __init__(self, operation: str, **context: Any) -> None:
        if not isinstance(operation, str) or not operation.strip():
            raise ValidationError(f"error_context needs an operation name, got {operation!r}", field="operation",
                                  value=repr(operation))
        self.operation = operation
        self.context = context
        # Per thread / per task start times, so one instance shared by concurrent callers keeps durations apart.
        self._started: contextvars.ContextVar[list[float]] = contextvars.ContextVar(f"error_context_{id(self)}")

    def __enter__(self) -> error_context:
        starts = self._started.get(None)
        if starts is None:
            starts = []
            self._started.set(starts)
        starts.append(time.perf_counter())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        starts = self._started.get(None)
        started = starts.pop() if starts else time.perf_counter()
        if exc is not None and isinstance(exc, Exception):
            self._record(exc, time.perf_counter() - started)
        return False  # never swallow

    async def __aenter__(self) -> error_context:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def _record(self, exc: Exception, elapsed: float) -> None:
        if isinstance(exc, AmuletError):
            exc.context.setdefault("operation", self.operation)
            for key, value in self.context.items():
                exc.context.setdefault(key, value)
        # Nested contexts see the same exception: only the innermost (first) one logs it.
        if getattr(exc, _LOGGED, False):
            return
        try:
            setattr(exc, _LOGGED, True)
        except AttributeError:
            log.debug("cannot mark %r as logged", exc)
        code = exc.code if isinstance(exc, AmuletError) else type(exc).__name__
        log.error(
            "%s failed after %.3fs: %s: %s",
            self.operation,
            elapsed,
            code,
            exc,
            extra={"operation": self.operation, "context": self.context, "duration_s": round(elapsed, 6), "code": code},
        )
