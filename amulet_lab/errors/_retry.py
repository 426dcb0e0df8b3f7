"""``retry_on_failure``: bounded, jittered exponential backoff for sync and async callables.

Why our own and not tenacity: tenacity builds a ``RetryCallState`` and runs its strategy
objects on every call, success included; our success path is one ``try`` around the call
(``amulet_lab/bench/micro/errors.py`` measures both in one run). The policy (what to retry, how
long to wait) is one small object shared by the sync and the async shell; only the sleep
differs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from amulet_lab.errors._exceptions import AmuletError, NetworkError, ValidationError, _exception_kinds

__all__ = ["RetryPolicy", "retry_on_failure", "set_testing", "is_testing"]

log = logging.getLogger("amulet_lab.errors")
F = TypeVar("F", bound=Callable[..., Any])

# The one testing switch: when on, every retry wait is zero (attempts are still counted).
_TESTING = False


def set_testing(on: bool = True) -> None:
    """Make every retry wait zero (for tests); attempts and errors are unchanged."""
    global _TESTING
    _TESTING = bool(on)


def is_testing() -> bool:
    """Whether retry waits are switched off by ``set_testing``."""
    return _TESTING


TRANSIENT: tuple[type[BaseException], ...] = (NetworkError, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    """What to retry and how long to wait: the I/O-free core of ``retry_on_failure``."""

    max_retries: int = 3
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = ()
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        numbers = (self.delay, self.backoff, self.max_delay)
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in numbers)
            or self.max_retries < 0 or self.delay < 0 or self.backoff < 1 or self.max_delay < 0
        ):
            raise ValidationError(
                "retry_on_failure needs an int max_retries >= 0 and finite delay >= 0, backoff >= 1, max_delay >= 0 "
                f"(got {self.max_retries!r}, {self.delay!r}, {self.backoff!r}, {self.max_delay!r}).",
                field="retry_on_failure",
                value=(self.max_retries, self.delay, self.backoff, self.max_delay),
            )
        object.__setattr__(self, "retry_on", _exception_kinds(self.retry_on, "retry_on"))  # frozen: set once here

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt."""
        if isinstance(exc, AmuletError):
            # Its own ``retryable`` decides; ``retry_on`` overrides it only by naming an amulet_lab class, so
            # ``retry_on=ValueError`` does not retry a ValidationError (the caller's mistake never heals).
            return exc.retryable or any(
                issubclass(kind, AmuletError) and isinstance(exc, kind) for kind in self.retry_on
            )
        return isinstance(exc, TRANSIENT) or (bool(self.retry_on) and isinstance(exc, self.retry_on))

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): capped exponential, equal jitter."""
        if _TESTING:
            return 0.0
        ceiling = min(self.max_delay, self.delay * self.backoff ** (attempt - 1))
        # "Equal jitter": half fixed, half random, so waits never collapse to zero yet callers spread out.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2) if self.jitter else ceiling

    def give_up(self, exc: BaseException, attempt: int, started: float) -> bool:
        """Whether to stop after ``attempt``; annotates ``exc`` with ``attempts`` and ``elapsed_s`` when so."""
        if attempt > self.max_retries or not self.is_transient(exc):
            _annotate(exc, attempt, time.monotonic() - started)
            return True
        return False

    def run(self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)``, retrying transient failures; re-raises the last original exception."""
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if self.give_up(exc, attempt, started):
                    raise
                pause = self._log_retry(name or _name(fn), exc, attempt)
                attempt += 1
                if pause:
                    time.sleep(pause)

    async def arun(self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)``, retrying transient failures; the async twin of ``run``."""
        import asyncio  # here, not at the top: ``import amulet_lab.errors`` must not load asyncio

        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                if self.give_up(exc, attempt, started):
                    raise
                pause = self._log_retry(name or _name(fn), exc, attempt)
                attempt += 1
                await asyncio.sleep(pause)

    def _log_retry(self, name: str, exc: BaseException, attempt: int) -> float:
        pause = self.wait(attempt)
        log.warning("retrying %s after %s (attempt %d, wait %.2fs)", name, type(exc).__name__, attempt, pause)
        return pause


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _annotate(exc: BaseException, attempts: int, elapsed: float) -> None:
    try:
        exc.attempts = attempts  # type: ignore[attr-defined]
        exc.elapsed_s = elapsed  # type: ignore[attr-defined]
    except AttributeError:  # built-in exceptions with __slots__ refuse attributes; the error still propagates
        log.debug("could not annotate %r with attempts", exc)
    if isinstance(exc, AmuletError):
        exc.context.setdefault("attempts", attempts)


def retry_on_failure(
    max_retries: int = 3,
    delay: float = 1.0,
    backoff: float = 2.0,
    max_delay: float = 30.0,
    jitter: bool = True,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> Callable[[F], F]:
    """Retry transient failures (network, timeouts, retryable AmuletErrors) with backoff; sync or async."""
    policy = RetryPolicy(max_retries, delay, backoff, max_delay, jitter, _exception_kinds(retry_on, "retry_on"))

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise ValidationError(
                f"retry_on_failure(...) decorates a callable, got {type(fn).__name__}", field="fn", value=repr(fn)
            )
        name = _name(fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await policy.arun(fn, *args, name=name, **kwargs)

            async_wrapper.retry_policy = policy  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return policy.run(fn, *args, name=name, **kwargs)

        wrapper.retry_policy = policy  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
