"""``WeightedSemaphore``: a budget of units (bytes, pixels) shared by threads and asyncio tasks alike.

A holder takes ``weight`` units and gives them back when done; a request that does not fit waits, first
come first served (a large request is not starved by a stream of small ones), up to a timeout. One
instance serves both worlds: ``acquire``/``hold`` block a thread, ``aacquire``/``ahold`` suspend a task
without blocking its event loop, and either may release what the other took (a coroutine reserves, a
worker thread releases). A weight above the whole capacity can never be granted and is refused at once.
It knows nothing of what the units are.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from amulet_lab.errors import LockTimeoutError, ValidationError

__all__ = ["WeightedSemaphore"]


class _Waiter:
    """One queued request: its weight and how to wake it (a thread event, or a future on a loop)."""

    __slots__ = ("weight", "event", "loop", "future", "granted")

    def __init__(self, weight: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.weight = weight
        self.granted = False
        self.loop = loop
        self.event: threading.Event | None = None if loop is not None else threading.Event()
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None

    def wake(self) -> None:
        self.granted = True
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _check_weight(weight: Any) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise ValidationError("weight must be an int >= 0", field="weight", value=weight, code="E_BUDGET_WEIGHT")
    return weight


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0):
        raise ValidationError("timeout must be a number >= 0 or None", field="timeout", value=timeout,
                              code="E_TIMEOUT")


class WeightedSemaphore:
    """``capacity`` units shared by threads and tasks; FIFO grants; ``LockTimeoutError`` after a timeout."""

    def __init__(self, capacity: int, *, name: str = "budget", timer: Callable[[], float] = time.monotonic) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValidationError("capacity must be an int >= 1", field="capacity", value=capacity,
                                  code="E_BUDGET_CAPACITY")
        self.capacity = capacity
        self.name = name
        self._timer = timer
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.stats_counts = {"acquired": 0, "released": 0, "timeouts": 0, "refused": 0, "waited": 0, "peak": 0}

    # -- core (under the lock) ---------------------------------------------------------------------
    def _check_fits(self, weight: int) -> None:
        if weight > self.capacity:
            with self._lock:
                self.stats_counts["refused"] += 1
            raise LockTimeoutError(
                f"{self.name}: {weight} units can never fit in a capacity of {self.capacity}",
                lock_name=self.name, holder=None, timeout=0.0, code="E_BUDGET_EXCEEDED",
                context={"weight": weight, "capacity": self.capacity})

    def _take(self, weight: int) -> None:
        self._in_use += weight
        self.stats_counts["acquired"] += 1
        self.stats_counts["peak"] = max(self.stats_counts["peak"], self._in_use)

    def _grant_waiters(self) -> None:
        """Wake queued waiters in order while the first one fits (called with the lock held)."""
        while self._waiters and self._in_use + self._waiters[0].weight <= self.capacity:
            waiter = self._waiters.popleft()
            self._take(waiter.weight)
            waiter.wake()

    def _try_now(self, weight: int) -> bool:
        """Take ``weight`` at once if nobody is queued and it fits (lock held)."""
        if not self._waiters and self._in_use + weight <= self.capacity:
            self._take(weight)
            return True
        return False

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gave up (timeout, cancel): unqueue it, or give back what was granted meanwhile."""
        with self._lock:
            if waiter.granted:
                self._in_use -= waiter.weight
                self.stats_counts["acquired"] -= 1
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            self._grant_waiters()  # the head may have been this waiter, blocking smaller ones behind it

    def _timed_out(self, weight: int, timeout: float | None) -> LockTimeoutError:
        with self._lock:
            self.stats_counts["timeouts"] += 1
            in_use, waiting = self._in_use, len(self._waiters)
        return LockTimeoutError(
            f"{self.name}: {weight} units not free within {timeout}s ({in_use} of {self.capacity} in use, "
            f"{waiting} waiting)", lock_name=self.name, holder=None, timeout=timeout, code="E_BUDGET_TIMEOUT",
            context={"weight": weight, "in_use": in_use, "capacity": self.capacity})

    # -- threads -----------------------------------------------------------------------------------
    def try_acquire(self, weight: int) -> bool:
        """Take ``weight`` units if they are free right now (and nobody waits before us); never blocks."""
        weight = _check_weight(weight)
        if weight > self.capacity:
            self._check_fits(weight)
        with self._lock:
            return self._try_now(weight)

    def acquire(self, weight: int, timeout: float | None = None) -> None:
        """Block until ``weight`` units are ours; ``LockTimeoutError`` (E_BUDGET_TIMEOUT) after ``timeout`` s."""
        weight = _check_weight(weight)
        _check_timeout(timeout)
        self._check_fits(weight)
        with self._lock:
            if self._try_now(weight):
                return
            waiter = _Waiter(weight)
            self._waiters.append(waiter)
            self.stats_counts["waited"] += 1
        assert waiter.event is not None
        if not waiter.event.wait(timeout):
            self._abandon(waiter)  # also when granted in the very moment of the timeout: given back
            raise self._timed_out(weight, timeout)

    def release(self, weight: int) -> None:
        """Give ``weight`` units back and wake whoever now fits (from any thread or task)."""
        weight = _check_weight(weight)
        with self._lock:
            if weight > self._in_use:
                raise ValidationError(f"{self.name}: releasing {weight} units but only {self._in_use} are held",
                                      field="weight", value=weight, code="E_BUDGET_RELEASE")
            self._in_use -= weight
            self.stats_counts["released"] += 1
            self._grant_waiters()

    @contextlib.contextmanager
    def hold(self, weight: int, timeout: float | None = None) -> Iterator[None]:
        """``with budget.hold(n):`` - ``acquire`` for the block, ``release`` after it."""
        self.acquire(weight, timeout)
        try:
            yield
        finally:
            self.release(weight)

    # -- asyncio -----------------------------------------------------------------------------------
    async def aacquire(self, weight: int, timeout: float | None = None) -> None:
        """Suspend this task (not the loop) until ``weight`` units are ours; ``LockTimeoutError`` after ``timeout``."""
        weight = _check_weight(weight)
        _check_timeout(timeout)
        self._check_fits(weight)
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._try_now(weight):
                return
            waiter = _Waiter(weight, loop)
            self._waiters.append(waiter)
            self.stats_counts["waited"] += 1
        assert waiter.future is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            self._abandon(waiter)
            raise self._timed_out(weight, timeout) from None
        except BaseException:  # cancelled: leave no units and no queue entry behind
            self._abandon(waiter)
            raise

    @contextlib.asynccontextmanager
    async def ahold(self, weight: int, timeout: float | None = None) -> AsyncIterator[None]:
        """``async with budget.ahold(n):`` - ``aacquire`` for the block, ``release`` after it."""
        await self.aacquire(weight, timeout)
        try:
            yield
        finally:
            self.release(weight)

    # -- reports -----------------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        """Units held right now."""
        return self._in_use

    @property
    def available(self) -> int:
        """Units free right now."""
        return self.capacity - self._in_use

    def stats(self) -> dict[str, Any]:
        """capacity, in_use, waiting, peak, and counts of acquisitions, releases, waits, timeouts and refusals."""
        with self._lock:
            return {"name": self.name, "capacity": self.capacity, "in_use": self._in_use,
                    "waiting": len(self._waiters), **self.stats_counts}

    def __repr__(self) -> str:
        return f"<WeightedSemaphore {self.name} {self._in_use}/{self.capacity} waiting={len(self._waiters)}>"
