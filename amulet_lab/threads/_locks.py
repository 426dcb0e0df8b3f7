"""Named locks that know who holds them, their asyncio twins, and the ``thread_safe_operation`` decorator."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from amulet_lab.errors import LockTimeoutError, ValidationError

__all__ = ["LockManager", "named_lock", "async_named_lock", "thread_safe_operation", "get_lock_manager", "KINDS"]

F = TypeVar("F", bound=Callable[..., Any])
#: Kinds of named lock: a plain lock, a re-entrant lock, a counting semaphore (``value`` permits).
KINDS = ("lock", "rlock", "semaphore")


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout >= 0):
        raise ValidationError("timeout must be a number >= 0 or None", field="timeout", value=timeout,
                              code="E_TIMEOUT")


class _NamedLock:
    """One named primitive plus who holds it, since when, and counters."""

    def __init__(self, name: str, kind: str, value: int, timer: Callable[[], float]) -> None:
        self.name, self.kind, self.value, self._timer = name, kind, value, timer
        self.primitive: Any = (threading.Lock() if kind == "lock" else threading.RLock() if kind == "rlock"
                               else threading.Semaphore(value))
        self._meta = threading.Lock()
        self.holders: dict[int, list[Any]] = {}  # thread ident -> [thread name, acquired at, depth]
        self.waiting = 0
        self.stats = {"acquisitions": 0, "contended": 0, "timeouts": 0, "wait_s": 0.0, "max_hold_s": 0.0}

    def holder_text(self) -> str | None:
        now = self._timer()
        with self._meta:
            parts = [f"{n} (ident {ident}, held {now - since:.3f}s)" for ident, (n, since, _) in self.holders.items()]
        return ", ".join(parts) or None

    def acquire(self, timeout: float | None) -> None:
        ident = threading.get_ident()
        if self.kind == "lock" and ident in self.holders:
            raise LockTimeoutError(
                f"lock {self.name!r} is already held by this thread ({threading.current_thread().name}); a plain "
                "lock would deadlock here - use kind='rlock' for re-entrant use", lock_name=self.name,
                holder=threading.current_thread().name, timeout=timeout, code="E_LOCK_REENTRY")
        start = self._timer()
        got = self.primitive.acquire(blocking=False)
        if not got:
            with self._meta:
                self.stats["contended"] += 1
                self.waiting += 1
            try:
                got = self.primitive.acquire(timeout=-1 if timeout is None else timeout)
            finally:
                with self._meta:
                    self.waiting -= 1
        waited = self._timer() - start
        if not got:
            with self._meta:
                self.stats["timeouts"] += 1
                self.stats["wait_s"] += waited
            # None: the holder got the primitive but has not recorded itself yet (a window of a few bytecodes).
            holder = self.holder_text() or "an unknown thread (acquiring)"
            raise LockTimeoutError(f"could not acquire {self.kind} {self.name!r} within {timeout}s; held by {holder}",
                                   lock_name=self.name, holder=holder, timeout=timeout)
        with self._meta:
            self.stats["acquisitions"] += 1
            self.stats["wait_s"] += waited
            entry = self.holders.get(ident)
            if entry is None:
                self.holders[ident] = [threading.current_thread().name, self._timer(), 1]
            else:
                entry[2] += 1

    def release(self) -> None:
        ident = threading.get_ident()
        with self._meta:
            entry = self.holders.get(ident)
            if entry is not None:
                entry[2] -= 1
                if entry[2] == 0:
                    del self.holders[ident]
                    self.stats["max_hold_s"] = max(self.stats["max_hold_s"], self._timer() - entry[1])
        self.primitive.release()

    def describe(self) -> dict[str, Any]:
        now = self._timer()
        with self._meta:
            holders = [{"thread": n, "ident": ident, "held_s": round(now - since, 6), "depth": depth}
                       for ident, (n, since, depth) in self.holders.items()]
            return {"kind": self.kind, "holders": holders, "waiting": self.waiting,
                    **{k: round(v, 6) if isinstance(v, float) else v for k, v in self.stats.items()}}


class _AsyncNamedLock:
    """An ``asyncio.Lock`` that is re-entrant for the task holding it and knows that task."""

    def __init__(self, name: str, timer: Callable[[], float]) -> None:
        self.name, self._timer = name, timer
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None
        self.depth = 0
        self.since = 0.0
        self.stats = {"acquisitions": 0, "contended": 0, "timeouts": 0}
        self.waiting = 0

    def holder_text(self) -> str | None:
        if self.owner is None:
            return None
        return f"task {self.owner.get_name()} (held {self._timer() - self.since:.3f}s)"

    async def acquire(self, timeout: float | None) -> None:
        task = asyncio.current_task()
        if task is not None and task is self.owner:
            self.depth += 1  # the same task again (a recursive call): no deadlock
            return
        if self.lock.locked():
            self.stats["contended"] += 1
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await self.lock.acquire()
        except TimeoutError:
            self.stats["timeouts"] += 1
            holder = self.holder_text() or "an unknown task (acquiring)"
            raise LockTimeoutError(f"could not acquire async lock {self.name!r} within {timeout}s; held by {holder}",
                                   lock_name=self.name, holder=holder, timeout=timeout) from None
        finally:
            self.waiting -= 1
        self.owner, self.depth, self.since = task, 1, self._timer()
        self.stats["acquisitions"] += 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.owner = None
            self.lock.release()

    def describe(self) -> dict[str, Any]:
        return {"kind": "async", "holder": self.holder_text(), "waiting": self.waiting,
                **self.stats}


class LockManager:
    """A registry of named locks (thread and asyncio) that can say who holds what, and for how long."""

    def __init__(self, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._lock = threading.Lock()
        self._locks: dict[str, _NamedLock] = {}
        # One asyncio lock per (event loop, name): an asyncio.Lock belongs to the loop that first uses it.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _AsyncNamedLock]] = \
            weakref.WeakKeyDictionary()

    def _get(self, name: str, kind: str, value: int) -> _NamedLock:
        if not isinstance(name, str) or not name:
            raise ValidationError("lock name must be a non-empty string", field="name", value=name, code="E_LOCK_NAME")
        if kind not in KINDS:
            raise ValidationError(f"kind must be one of {KINDS}", field="kind", value=kind, code="E_LOCK_KIND")
        if kind == "semaphore" and (not isinstance(value, int) or value < 1):
            raise ValidationError("a semaphore's value must be an int >= 1", field="value", value=value,
                                  code="E_LOCK_KIND")
        with self._lock:
            existing = self._locks.get(name)
            if existing is None:
                existing = self._locks[name] = _NamedLock(name, kind, value, self._timer)
            elif existing.kind != kind:
                raise ValidationError(f"lock {name!r} exists as a {existing.kind}, asked for a {kind}",
                                      field="kind", value=kind, code="E_LOCK_KIND")
            return existing

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None, kind: str = "lock", value: int = 1) -> Iterator[None]:
        """Hold the named lock for the block; ``LockTimeoutError`` (naming the holder) after ``timeout`` s."""
        _check_timeout(timeout)
        named = self._get(name, kind, value)
        named.acquire(timeout)
        try:
            yield
        finally:
            named.release()

    @contextlib.asynccontextmanager
    async def alock(self, name: str, timeout: float | None = None) -> AsyncIterator[None]:
        """The asyncio twin of ``lock``: re-entrant per task, held across awaits, one lock per event loop."""
        _check_timeout(timeout)
        if not isinstance(name, str) or not name:
            raise ValidationError("lock name must be a non-empty string", field="name", value=name, code="E_LOCK_NAME")
        loop = asyncio.get_running_loop()
        with self._lock:
            named = self._async.setdefault(loop, {}).get(name)
            if named is None:
                named = self._async[loop][name] = _AsyncNamedLock(name, self._timer)
        await named.acquire(timeout)
        try:
            yield
        finally:
            named.release()

    def diagnostics(self) -> dict[str, Any]:
        """Per lock name: kind, holders (thread, held seconds), waiters, acquisitions, contention, timeouts."""
        with self._lock:
            locks = dict(self._locks)
            async_locks = [(name, lk) for per_loop in self._async.values() for name, lk in per_loop.items()]
        out: dict[str, Any] = {name: lk.describe() for name, lk in sorted(locks.items())}
        for name, lk in async_locks:
            out[f"async:{name}"] = lk.describe()
        return out

    def held(self) -> dict[str, Any]:
        """Only the locks held right now, with their holders."""
        return {k: v for k, v in self.diagnostics().items() if v.get("holders") or v.get("holder")}

    def __repr__(self) -> str:
        return f"LockManager(locks={len(self._locks)}, held={len(self.held())})"


_default_manager: LockManager | None = None
_default_lock = threading.Lock()


def get_lock_manager() -> LockManager:
    """The process-wide lock manager, created on first use."""
    global _default_manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = LockManager()
        return _default_manager


def named_lock(name: str, timeout: float | None = None, kind: str = "lock", value: int = 1
               ) -> contextlib.AbstractContextManager[None]:
    """``with named_lock("model-load", timeout=5):`` - a process-wide named lock (see ``LockManager.lock``)."""
    return get_lock_manager().lock(name, timeout, kind, value)


def async_named_lock(name: str, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[None]:
    """``async with async_named_lock("name"):`` - a process-wide named asyncio lock (see ``LockManager.alock``)."""
    return get_lock_manager().alock(name, timeout)


def thread_safe_operation(lock_name: str | Callable[..., Any] | None = None, timeout: float | None = None, *,
                          manager: LockManager | None = None) -> Any:
    """Decorator: the whole body runs under a named lock, for plain functions and coroutines alike.

    The lock is named ``lock_name`` or, by default, ``module.qualname#id`` of the function: the id keeps
    apart functions that share a qualname (two made by one factory, ``make.<locals>.f``), which must not
    share a lock; pass ``lock_name`` for functions that should. Plain functions take a
    re-entrant thread lock (kind ``rlock``), so a recursive call does not deadlock. Coroutines take the
    asyncio lock of that name in the running loop, held across every await of the body and re-entrant
    for the same task (a task the body spawns is another task and would wait). A timeout raises
    ``LockTimeoutError`` naming the holder. Usable bare (``@thread_safe_operation``) or called.
    """
    if callable(lock_name):  # used bare: @thread_safe_operation
        return thread_safe_operation()(lock_name)
    if lock_name is not None and (not isinstance(lock_name, str) or not lock_name):
        raise ValidationError("lock_name must be a non-empty string or None", field="lock_name", value=lock_name,
                              code="E_LOCK_NAME")
    _check_timeout(timeout)

    def decorate(fn: F) -> F:
        name = lock_name or f"{fn.__module__}.{fn.__qualname__}#{id(fn):x}"

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with (manager or get_lock_manager()).alock(name, timeout):
                    return await fn(*args, **kwargs)

            async_wrapper.lock_name = name  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with (manager or get_lock_manager()).lock(name, timeout, kind="rlock"):
                return fn(*args, **kwargs)

        wrapper.lock_name = name  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
