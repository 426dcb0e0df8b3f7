"""Thread-safe containers: a dict with an atomic update, a bounded queue with statistics, a counter."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from amulet_lab.errors import ProcessingError, ValidationError

__all__ = ["AtomicCounter", "ThreadSafeDict", "ThreadSafeQueue", "AsyncSafeDict"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
_MISSING: Any = object()


def _check_int(value: Any, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{field} must be an int", field=field, value=value, code="E_COUNTER")


class AtomicCounter:
    """An int whose read-modify-write operations are atomic across threads.

    Not lock-free: in CPython each operation takes a ``threading.Lock`` around a plain int (the GIL makes
    no ``+=`` atomic, and there is no portable CAS instruction to Python code). Contention costs what a
    lock costs; see the ``threads`` micro-benchmark for the figure.
    """

    __slots__ = ("_lock", "_value")

    def __init__(self, initial: int = 0) -> None:
        _check_int(initial, "initial")
        self._lock = threading.Lock()
        self._value = initial

    def increment(self) -> int:
        """Add one; returns the new value."""
        with self._lock:
            self._value += 1
            return self._value

    def decrement(self) -> int:
        """Subtract one; returns the new value."""
        with self._lock:
            self._value -= 1
            return self._value

    def add(self, amount: int) -> int:
        """Add ``amount`` (may be negative); returns the new value."""
        _check_int(amount, "amount")
        with self._lock:
            self._value += amount
            return self._value

    def get(self) -> int:
        """The current value."""
        return self._value  # reading one reference is atomic

    def set(self, value: int) -> int:
        """Replace the value; returns the old one."""
        _check_int(value, "value")
        with self._lock:
            old, self._value = self._value, value
            return old

    def compare_and_set(self, expected: int, new: int) -> bool:
        """Set to ``new`` only if the value is ``expected``; returns whether it did."""
        _check_int(new, "new")
        with self._lock:
            if self._value != expected:
                return False
            self._value = new
            return True

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"AtomicCounter({self._value})"


class ThreadSafeDict(Generic[K, V]):
    """A dict behind one re-entrant lock, with ``update_with`` (atomic read-modify-write) and access stats.

    Iteration, ``keys``/``values``/``items`` work on snapshots taken under the lock, so they never see a
    dict changing size. ``update_with``'s function runs under the lock: keep it short.
    """

    def __init__(self, initial: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(initial or {})
        self._lock = threading.RLock()  # re-entrant: update_with's fn may read the dict
        self._stats = {"gets": 0, "hits": 0, "misses": 0, "sets": 0, "deletes": 0, "updates": 0}

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` or ``default``."""
        with self._lock:
            self._stats["gets"] += 1
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self._stats["misses"] += 1
                return default
            self._stats["hits"] += 1
            return value

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def keys(self) -> list[K]:
        """A snapshot of the keys."""
        with self._lock:
            return list(self._data)

    def values(self) -> list[V]:
        """A snapshot of the values."""
        with self._lock:
            return list(self._data.values())

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the items."""
        with self._lock:
            return list(self._data.items())

    def copy(self) -> dict[K, V]:
        """A plain-dict snapshot."""
        with self._lock:
            return dict(self._data)

    # -- writes --------------------------------------------------------------------------------------
    def set(self, key: K, value: V) -> None:
        """Set ``key`` to ``value``."""
        with self._lock:
            self._stats["sets"] += 1
            self._data[key] = value

    __setitem__ = set

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._data[key]
            self._stats["deletes"] += 1

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        with self._lock:
            if key in self._data:
                self._stats["deletes"] += 1
                return self._data.pop(key)
            if default is _MISSING:
                raise KeyError(key)
            return default

    def setdefault(self, key: K, default: V) -> V:
        """The value of ``key``, setting it to ``default`` first if absent."""
        with self._lock:
            if key not in self._data:
                self._stats["sets"] += 1
                self._data[key] = default
            return self._data[key]

    def update(self, other: Mapping[K, V] | None = None, **kwargs: V) -> None:
        """Like ``dict.update``, as one atomic step."""
        items = dict(other or {}, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._data.update(items)
            self._stats["sets"] += len(items)

    def update_with(self, key: K, fn: Callable[[V | None], V], default: V | None = None) -> V:
        """Atomically set ``key`` to ``fn(current value or default)``; returns the new value."""
        if not callable(fn):
            raise ValidationError("fn must be callable", field="fn", value=fn, code="E_UPDATE_FN")
        with self._lock:
            new = fn(self._data.get(key, default))
            self._data[key] = new
            self._stats["updates"] += 1
            return new

    def clear(self) -> None:
        """Remove every item."""
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, Any]:
        """Access counts (gets, hits, misses, sets, deletes, updates), size and hit rate."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["size"] = len(self._data)
        out["hit_rate"] = out["hits"] / out["gets"] if out["gets"] else 0.0
        return out

    def __repr__(self) -> str:
        return f"ThreadSafeDict(size={len(self._data)}, gets={self._stats['gets']}, sets={self._stats['sets']})"


class ThreadSafeQueue(Generic[T]):
    """A bounded FIFO queue (``queue.Queue``) that counts puts, gets, the deepest it got and time spent waiting.

    ``put``/``get`` block up to ``timeout`` seconds (None: forever; 0: not at all) and then raise
    ``ProcessingError`` with code ``E_QUEUE_FULL`` / ``E_QUEUE_EMPTY``. ``offer``/``poll`` are the
    non-raising forms: they return False / ``default`` instead.
    """

    def __init__(self, maxsize: int = 0, *, timer: Callable[[], float] = time.perf_counter) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValidationError("maxsize must be an int >= 0 (0: unbounded)", field="maxsize", value=maxsize,
                                  code="E_QUEUE_SIZE")
        self.maxsize = maxsize
        self._queue: queue.Queue[T] = queue.Queue(maxsize)
        self._timer = timer
        self._lock = threading.Lock()
        self._stats: dict[str, float] = {"puts": 0, "gets": 0, "max_depth": 0, "put_timeouts": 0, "get_timeouts": 0,
                                          "put_wait_s": 0.0, "get_wait_s": 0.0, "max_put_wait_s": 0.0,
                                          "max_get_wait_s": 0.0}

    @staticmethod
    def _check_timeout(timeout: float | None) -> None:
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0):
            raise ValidationError("timeout must be a number >= 0 or None", field="timeout", value=timeout,
                                  code="E_TIMEOUT")

    def _waited(self, kind: str, start: float) -> None:
        waited = self._timer() - start
        self._stats[f"{kind}_wait_s"] += waited
        self._stats[f"max_{kind}_wait_s"] = max(self._stats[f"max_{kind}_wait_s"], waited)

    def offer(self, item: T, timeout: float | None = 0) -> bool:
        """Put ``item``, waiting up to ``timeout``; returns False if the queue stayed full."""
        self._check_timeout(timeout)
        start = self._timer()
        try:
            self._queue.put(item, block=timeout != 0, timeout=timeout or None)
        except queue.Full:
            with self._lock:
                self._stats["put_timeouts"] += 1
                self._waited("put", start)
            return False
        depth = self._queue.qsize()
        with self._lock:
            self._stats["puts"] += 1
            self._stats["max_depth"] = max(self._stats["max_depth"], depth)
            self._waited("put", start)
        return True

    def put(self, item: T, timeout: float | None = None) -> None:
        """Put ``item``, waiting up to ``timeout``; raises ProcessingError E_QUEUE_FULL if it stayed full."""
        if not self.offer(item, timeout):
            raise ProcessingError(f"queue full ({self.maxsize} items) after waiting {timeout}s", stage="queue",
                                  code="E_QUEUE_FULL", context={"maxsize": self.maxsize, "timeout": timeout})

    def poll(self, timeout: float | None = 0, default: Any = None) -> T | Any:
        """Take the oldest item, waiting up to ``timeout``; returns ``default`` if none came."""
        self._check_timeout(timeout)
        start = self._timer()
        try:
            item = self._queue.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            with self._lock:
                self._stats["get_timeouts"] += 1
                self._waited("get", start)
            return default
        with self._lock:
            self._stats["gets"] += 1
            self._waited("get", start)
        return item

    def get(self, timeout: float | None = None) -> T:
        """Take the oldest item, waiting up to ``timeout``; raises ProcessingError E_QUEUE_EMPTY if none came."""
        item = self.poll(timeout, _MISSING)
        if item is _MISSING:
            raise ProcessingError(f"queue empty after waiting {timeout}s", stage="queue", code="E_QUEUE_EMPTY",
                                  context={"timeout": timeout})
        return item  # type: ignore[no-any-return]

    def task_done(self) -> None:
        """Mark one taken item as processed (for ``join``)."""
        self._queue.task_done()

    def join(self) -> None:
        """Wait until every item put has been marked done."""
        self._queue.join()

    def qsize(self) -> int:
        """Items waiting now (approximate under concurrency, as with ``queue.Queue``)."""
        return self._queue.qsize()

    def __len__(self) -> int:
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        """puts, gets, max_depth, timeouts, total/max wait seconds, current depth and mean waits."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
        out["depth"] = self._queue.qsize()
        out["maxsize"] = self.maxsize
        out["avg_put_wait_s"] = out["put_wait_s"] / out["puts"] if out["puts"] else 0.0
        out["avg_get_wait_s"] = out["get_wait_s"] / out["gets"] if out["gets"] else 0.0
        return out

    def __repr__(self) -> str:
        return (f"ThreadSafeQueue(depth={self._queue.qsize()}, maxsize={self.maxsize}, "
                f"puts={int(self._stats['puts'])}, gets={int(self._stats['gets'])})")


class AsyncSafeDict(Generic[K, V]):
    """The asyncio twin of ``ThreadSafeDict``: ``update_with`` may await, and holds the dict's lock meanwhile.

    Plain reads and writes need no lock within one event loop (no await inside them); the lock serialises
    read-modify-write steps whose function is a coroutine. Use from one event loop.
    """

    def __init__(self, initial: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(initial or {})
        self._lock: asyncio.Lock | None = None  # created inside the loop on first use
        self._stats = {"gets": 0, "hits": 0, "misses": 0, "sets": 0, "updates": 0}

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` or ``default``."""
        self._stats["gets"] += 1
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self._stats["misses"] += 1
            return default
        self._stats["hits"] += 1
        return value

    def set(self, key: K, value: V) -> None:
        """Set ``key`` to ``value``."""
        self._stats["sets"] += 1
        self._data[key] = value

    def pop(self, key: K, default: Any = None) -> Any:
        """Remove ``key`` and return its value (or ``default``)."""
        return self._data.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the items."""
        return list(self._data.items())

    async def update_with(self, key: K, fn: Callable[[V | None], Any], default: V | None = None) -> V:
        """Set ``key`` to ``fn(current or default)`` (``fn`` may be a coroutine function) under the lock."""
        if not callable(fn):
            raise ValidationError("fn must be callable", field="fn", value=fn, code="E_UPDATE_FN")
        async with self._get_lock():
            new = fn(self._data.get(key, default))
            if inspect.isawaitable(new):
                new = await new
            self._data[key] = new
            self._stats["updates"] += 1
            return new  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """Access counts and size."""
        return {**self._stats, "size": len(self._data)}

    def __repr__(self) -> str:
        return f"AsyncSafeDict(size={len(self._data)})"
