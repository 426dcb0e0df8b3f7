"""``CircuitBreaker``: fail fast while a dependency is down, probe it, recover.

Two rules open the circuit, checked after every counted failure:
- consecutive: ``failure_threshold`` failures in a row (the design's rule);
- rate: over the last ``window`` calls the failure share reaches ``failure_rate``,
  once at least ``min_calls`` calls were made (off unless ``failure_rate`` is given).

After ``timeout`` seconds open, up to ``half_open_probes`` trial calls go through. All
succeed: closed. One fails: open again. The state machine (``_before``/``_after``) does
no I/O; the sync and async shells only differ in how they call the function.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from amulet_lab.errors._exceptions import CircuitOpenError, ValidationError, _exception_kinds

__all__ = ["CircuitBreaker"]

log = logging.getLogger("amulet_lab.errors")
F = TypeVar("F", bound=Callable[..., Any])

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Open after repeated failures, fail fast with ``CircuitOpenError``, half-open after ``timeout``."""

    def __init__(
        self,
        failure_threshold: int = 5,
        timeout: float = 60.0,
        *,
        failure_rate: float | None = None,
        window: int = 20,
        min_calls: int = 10,
        half_open_probes: int = 1,
        count: tuple[type[BaseException], ...] = (Exception,),
        exclude: tuple[type[BaseException], ...] = (ValidationError,),
        name: str = "breaker",
        timer: Callable[[], float] = time.monotonic,
        max_transitions: int = 100,
    ) -> None:
        counts = (failure_threshold, half_open_probes, window, min_calls)
        if (
            any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts)
            or isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout < 0
        ):
            raise ValidationError(
                "CircuitBreaker needs int failure_threshold, half_open_probes, window, min_calls >= 1 and a finite "
                f"timeout >= 0 (got {failure_threshold!r}, {half_open_probes!r}, {window!r}, {min_calls!r}, "
                f"{timeout!r}).",
                field="CircuitBreaker",
                value=(failure_threshold, timeout, half_open_probes, window, min_calls),
            )
        if failure_rate is not None:
            if isinstance(failure_rate, bool) or not isinstance(failure_rate, (int, float)) or not 0 < failure_rate <= 1:
                raise ValidationError("failure_rate must be in (0, 1].", field="failure_rate", value=failure_rate)
            if min_calls > window:
                # The window holds at most ``window`` outcomes, so the rate rule could never fire.
                raise ValidationError(
                    f"min_calls ({min_calls}) must not exceed window ({window}), or the rate rule never fires.",
                    field="min_calls",
                    value=min_calls,
                )
        count, exclude = _exception_kinds(count, "count"), _exception_kinds(exclude, "exclude")
        if not callable(timer):
            raise ValidationError("timer must be a callable returning seconds", field="timer", value=repr(timer))
        self.name = name
        self.failure_threshold = failure_threshold
        self.timeout = timeout
        self.failure_rate = failure_rate
        self.window = window
        self.min_calls = min_calls
        self.half_open_probes = half_open_probes
        self.count = count
        self.exclude = exclude
        self._timer = timer
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure; only fed when the rate rule is on
        self._opened_at = 0.0
        self._probes_started = 0
        self._probes_ok = 0
        # Bumped on every state change: an outcome of a call admitted under an older state (a slow call that
        # was already running when the circuit opened) is counted but cannot move the new state.
        self._epoch = 0
        self._calls = self._failures = self._successes = self._rejected = self._ignored = 0
        self.transitions: deque[dict[str, Any]] = deque(maxlen=max_transitions)

    # ---- the I/O-free core -------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (an expired open state reads as half_open)."""
        with self._lock:
            if self._state == OPEN and self._timer() - self._opened_at >= self.timeout:
                return HALF_OPEN
            return self._state

    def _move(self, new: str, now: float, reason: str) -> None:
        self.transitions.append({"from": self._state, "to": new, "at": time.time(), "reason": reason})
        log.info("circuit %s: %s -> %s (%s)", self.name, self._state, new, reason)
        self._state = new
        self._epoch += 1
        if new == OPEN:
            self._opened_at = now
        if new == HALF_OPEN:
            self._probes_started = self._probes_ok = 0
        if new == CLOSED:
            self._consecutive = 0
            self._outcomes.clear()

    def _before(self) -> int:
        """Admit a call (returning the state's epoch) or raise ``CircuitOpenError``."""
        with self._lock:
            self._calls += 1
            if self._state == CLOSED:
                return self._epoch
            now = self._timer()
            if self._state == OPEN:
                waited = now - self._opened_at
                if waited < self.timeout:
                    self._rejected += 1
                    raise CircuitOpenError(
                        f"circuit {self.name!r} is open; next try in {self.timeout - waited:.1f}s",
                        name=self.name,
                        retry_after_s=self.timeout - waited,
                    )
                self._move(HALF_OPEN, now, f"timeout {self.timeout}s elapsed")
            if self._probes_started >= self.half_open_probes:
                self._rejected += 1
                raise CircuitOpenError(
                    f"circuit {self.name!r} is half-open and its {self.half_open_probes} probe(s) are under way",
                    name=self.name,
                    retry_after_s=0.0,
                )
            self._probes_started += 1
            return self._epoch

    def _after(self, exc: BaseException | None, epoch: int) -> None:
        """Record the outcome of a call admitted at ``epoch``."""
        failed = exc is not None and isinstance(exc, self.count) and not isinstance(exc, self.exclude)
        with self._lock:
            stale = epoch != self._epoch
            if exc is not None and not failed:
                # Not the dependency's fault (e.g. the caller's ValidationError): neither success nor failure.
                self._ignored += 1
                if self._state == HALF_OPEN and not stale:
                    self._probes_started -= 1
                return
            now = self._timer()
            if not failed:
                self._successes += 1
                if stale:
                    return
                if self._state == HALF_OPEN:
                    self._probes_ok += 1
                    if self._probes_ok >= self.half_open_probes:
                        self._move(CLOSED, now, f"{self._probes_ok} probe(s) succeeded")
                    return
                self._consecutive = 0
                if self.failure_rate is not None:
                    self._outcomes.append(False)
                return
            self._failures += 1
            if stale:
                return
            if self._state == HALF_OPEN:
                self._move(OPEN, now, f"probe failed: {type(exc).__name__}")
                return
            self._consecutive += 1
            if self._consecutive >= self.failure_threshold:
                self._move(OPEN, now, f"{self._consecutive} consecutive failures")
                return
            if self.failure_rate is not None:
                self._outcomes.append(True)
                n = len(self._outcomes)
                if n >= self.min_calls:
                    rate = sum(self._outcomes) / n
                    if rate >= self.failure_rate:
                        self._move(OPEN, now, f"failure rate {rate:.0%} over {n} calls")

    # ---- shells ------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` through the breaker."""
        epoch = self._before()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._after(exc, epoch)
            raise
        self._after(None, epoch)
        return result

    async def acall(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        epoch = self._before()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._after(exc, epoch)
            raise
        self._after(None, epoch)
        return result

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator on a sync or async function."""
        if not callable(fn):
            raise ValidationError(f"a CircuitBreaker decorates a callable, got {type(fn).__name__}", field="fn",
                                  value=repr(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def reset(self) -> None:
        """Close the circuit by hand."""
        with self._lock:
            self._move(CLOSED, self._timer(), "reset")

    def stats(self) -> dict[str, Any]:
        """Counts, state and the recent state changes."""
        state = self.state
        with self._lock:
            return {
                "name": self.name,
                "state": state,
                "calls": self._calls,
                "successes": self._successes,
                "failures": self._failures,
                "rejected": self._rejected,
                "ignored": self._ignored,
                "consecutive_failures": self._consecutive,
                "transitions": list(self.transitions),
            }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} state={self.state} failures={self._failures} rejected={self._rejected}>"
