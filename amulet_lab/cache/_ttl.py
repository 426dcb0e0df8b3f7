"""``TTLCache``: bytes- and entry-bounded, per-entry TTL, LRU, stampede-protected; ``sizeof``.

Why our own and not ``cachetools``: ``amulet_lab/bench/micro/cache.py`` measures ``cachetools.TTLCache``
(behind a ``threading.Lock``, as every threaded caller must use it) against this class in one run, per hit
and per set (cachetools runs ``expire()`` and three layers of ``__getitem__`` per call); run it for
today's ratios. More to the point,
cachetools lacks what we need on top: a TTL per entry (its ``TLRUCache`` takes one ``ttu`` function, not a
per-call value), locking, stampede protection for sync *and* async callers, hit/miss/eviction counts by
reason, a refusal (not a silent eviction of everything) for a value larger than the byte bound, and
``shrink`` for memory pressure. Wrapping it would mean a second dict beside its own for the per-entry
bookkeeping; one ``OrderedDict`` plus an expiry heap is simpler.

Layout: an ``OrderedDict`` key -> ``(value, size, expires, seq)`` in LRU order (oldest first) and a heap of
``(expires, seq, key)`` for entries with a finite TTL. The heap is only ever popped from the top, a few
entries per write (a bounded sweep), so a write never stalls on a big purge; heap records of replaced or
deleted entries are recognised by their ``seq`` and skipped, and the heap is rebuilt when it holds more
than twice the live entries. Nothing runs in the background.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from amulet_lab.display import html_table
from amulet_lab.errors import ValidationError

__all__ = ["TTLCache", "sizeof", "SWEEP_LIMIT"]

log = logging.getLogger("amulet_lab.cache")

_MISSING = object()
#: Expired entries removed per write, at most: keeps every write O(log n) however many entries expire at once.
SWEEP_LIMIT = 8
#: Bytes per pixel of single-band PIL modes wider than a byte; other single-band modes (L, P, 1) hold one.
_PIL_BAND_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Pillow stores every multi-band 8-bit mode (RGB, RGBA, RGBX, YCbCr, HSV, LAB, CMYK, LA, PA, ...) as 4 bytes
#: a pixel: RGB is padded to 32 bits (checked by measuring RSS around ``Image.new("RGB", (4000, 4000))``).
_PIL_MULTIBAND_PIXEL_BYTES = 4


def sizeof(value: Any) -> int:
    """Bytes held by ``value``: payload of bytes/arrays/tensors/PIL images, str memory, containers summed."""
    return _sizeof(value, set())


def _sizeof(value: Any, seen: set[int]) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, str):
        return sys.getsizeof(value)  # the real footprint: 1, 2 or 4 bytes a character plus the header
    module = type(value).__module__
    if module.startswith("torch"):
        # Detected by module name so that sizing never imports torch.
        if hasattr(value, "element_size") and hasattr(value, "nelement"):
            return int(value.element_size()) * int(value.nelement())
    elif module.startswith("PIL."):
        if hasattr(value, "getbands") and hasattr(value, "size"):
            width, height = value.size
            if len(value.getbands()) > 1:
                return width * height * _PIL_MULTIBAND_PIXEL_BYTES
            return width * height * _PIL_BAND_BYTES.get(value.mode, 1)
    nbytes = getattr(value, "nbytes", None)  # numpy arrays and anything array-like
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        if id(value) in seen:  # a cycle (or an object shared twice): counted once
            return 0
        seen.add(id(value))
        total = sys.getsizeof(value)
        if isinstance(value, dict):
            for k, v in value.items():
                total += _sizeof(k, seen) + _sizeof(v, seen)
        else:
            for item in value:
                total += _sizeof(item, seen)
        return total
    return sys.getsizeof(value)


class TTLCache:
    """A thread-safe LRU cache bounded in entries and bytes, with a time to live per entry."""

    def __init__(
        self,
        max_bytes: int | float | None = 104_857_600,
        max_items: int | float | None = None,
        default_ttl: float | None = 3600.0,
        *,
        timer: Callable[[], float] = time.monotonic,
        getsizeof: Callable[[Any], int] | None = None,
    ) -> None:
        # The defaults are AMULET_CACHE_MAX_SIZE's and AMULET_CACHE_DEFAULT_TTL's; ``None`` or ``math.inf``
        # switches a bound (or expiry) off.
        max_bytes = math.inf if max_bytes is None else max_bytes
        default_ttl = math.inf if default_ttl is None else default_ttl
        self._max_bytes = _check_bound(max_bytes, "max_bytes")
        self._max_items = math.inf if max_items is None else _check_bound(max_items, "max_items")
        self.default_ttl = _check_ttl(default_ttl, "default_ttl")
        self._timer = timer
        self._getsizeof = getsizeof or sizeof
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, tuple[Any, int, float, int]] = OrderedDict()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._bytes = 0
        self._hits = self._misses = 0
        self._evictions = {"lru": 0, "ttl": 0, "size": 0}
        self._refused = 0
        # key -> a concurrent Future shared by every thread or task waiting for that key's computation.
        self._flights: dict[Hashable, concurrent.futures.Future[Any]] = {}

    # ---- bounds ------------------------------------------------------------------------
    @property
    def max_bytes(self) -> int | float:
        """The byte bound (``math.inf``: none)."""
        return self._max_bytes

    @property
    def max_items(self) -> int | float:
        """The entry bound (``math.inf``: none)."""
        return self._max_items

    def resize(self, max_bytes: int | float | None = None, max_items: int | float | None = None) -> int:
        """Change the bounds (None keeps one); evicts LRU entries to fit and returns how many went."""
        new_bytes = self._max_bytes if max_bytes is None else _check_bound(max_bytes, "max_bytes")
        new_items = self._max_items if max_items is None else _check_bound(max_items, "max_items")
        with self._lock:
            self._max_bytes, self._max_items = new_bytes, new_items
            before = len(self._data)
            self._sweep(self._timer(), limit=None)
            self._fit()
            return before - len(self._data)

    # ---- the mapping -------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` if present and not expired, else ``default``."""
        _check_key(key)
        with self._lock:
            value = self._hit_locked(key)
            if value is _MISSING:
                self._misses += 1
                return default
            return value

    def _hit_locked(self, key: Hashable) -> Any:
        """With the lock held: the live value of ``key`` (counted as a hit, moved to the LRU end), else
        ``_MISSING``; an expired entry found on the way is dropped."""
        entry = self._data.get(key)
        if entry is None:
            return _MISSING
        if entry[2] > self._timer():
            self._data.move_to_end(key)
            self._hits += 1
            return entry[0]
        self._drop(key, entry, "ttl")
        return _MISSING

    def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default ``default_ttl``), evicting LRU entries."""
        size = self._getsizeof(value)  # outside the lock: sizing a big container may take a while
        if not isinstance(size, int) or size < 0:
            raise ValidationError(
                f"getsizeof returned {size!r} for a {type(value).__name__}; expected an int >= 0",
                field="getsizeof", value=size, code="E_CACHE_SIZEOF",
            )
        ttl = self.default_ttl if ttl is None else _check_ttl(ttl, "ttl")
        _check_key(key)
        with self._lock:
            # Checked under the lock: a concurrent resize() may have lowered the bound since sizing.
            max_bytes = self._max_bytes
            if size > max_bytes:
                self._refused += 1
            else:
                now = self._timer()
                self._store(key, value, size, now + ttl, now)
                return
        raise ValidationError(
            f"a {type(value).__name__} of {size} bytes is larger than the whole cache ({max_bytes} bytes); "
            "raise max_bytes or do not cache it",
            field="value", value=size, code="E_CACHE_VALUE_TOO_LARGE",
            context={"max_bytes": max_bytes, "key": repr(key)[:100]},
        )

    def _store(self, key: Hashable, value: Any, size: int, expires: float, now: float) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        seq = next(self._seq)
        self._data[key] = (value, size, expires, seq)
        self._bytes += size
        if expires != math.inf:
            heapq.heappush(self._heap, (expires, seq, key))
            if len(self._heap) > 2 * len(self._data) + 64:
                self._rebuild_heap()
        self._sweep(now, limit=SWEEP_LIMIT)
        self._fit()

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; whether it was present (expired entries count as absent)."""
        _check_key(key)
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry[1]
            return entry[2] > self._timer()

    def __contains__(self, key: Hashable) -> bool:
        _check_key(key)
        with self._lock:
            entry = self._data.get(key)
            return entry is not None and entry[2] > self._timer()

    def __len__(self) -> int:
        """Live entries (expired ones are purged first; each is purged once, so this stays cheap)."""
        with self._lock:
            self._sweep(self._timer(), limit=None)
            return len(self._data)

    def __iter__(self) -> Any:
        with self._lock:
            now = self._timer()
            return iter([k for k, e in self._data.items() if e[2] > now])

    def clear(self) -> None:
        """Drop every entry (counts are kept; see ``reset_stats``)."""
        with self._lock:
            self._data.clear()
            self._heap.clear()
            self._bytes = 0

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many."""
        with self._lock:
            return self._sweep(self._timer(), limit=None)

    def shrink(self, fraction: float) -> int:
        """Drop ``fraction`` of the entries (rounded up), expired first then least recently used; returns how many."""
        if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValidationError("shrink needs a fraction in [0, 1]", field="fraction", value=fraction)
        with self._lock:
            before = len(self._data)
            target = before - math.ceil(before * fraction)
            self._sweep(self._timer(), limit=None)
            while len(self._data) > target:
                key, entry = next(iter(self._data.items()))
                self._drop(key, entry, "size")  # shrinking answers memory pressure: a size eviction
            return before - len(self._data)

    # ---- internals (lock held) ---------------------------------------------------------
    def _drop(self, key: Hashable, entry: tuple[Any, int, float, int], reason: str) -> None:
        del self._data[key]
        self._bytes -= entry[1]
        self._evictions[reason] += 1

    def _sweep(self, now: float, limit: int | None) -> int:
        """Pop expired entries off the heap top; at most ``limit`` heap records looked at (None: all due)."""
        heap, data = self._heap, self._data
        removed = looked = 0
        while heap and heap[0][0] <= now and (limit is None or looked < limit):
            _, seq, key = heapq.heappop(heap)
            looked += 1
            entry = data.get(key)
            if entry is not None and entry[3] == seq:
                self._drop(key, entry, "ttl")
                removed += 1
        return removed

    def _fit(self) -> None:
        """Evict least recently used entries until both bounds hold."""
        data = self._data
        while data and len(data) > self._max_items:
            key, entry = next(iter(data.items()))
            self._drop(key, entry, "lru")
        while data and self._bytes > self._max_bytes:
            key, entry = next(iter(data.items()))
            self._drop(key, entry, "size")

    def _rebuild_heap(self) -> None:
        self._heap = [(e[2], e[3], k) for k, e in self._data.items() if e[2] != math.inf]
        heapq.heapify(self._heap)

    # ---- compute once ------------------------------------------------------------------
    def _claim(self, key: Hashable) -> tuple[Any, concurrent.futures.Future[Any] | None, bool]:
        """Under the lock: (value, None, False) on a hit, else (None, flight, leader?)."""
        _check_key(key)
        with self._lock:
            value = self._hit_locked(key)
            if value is not _MISSING:
                return value, None, False
            flight = self._flights.get(key)
            if flight is not None:
                return None, flight, False  # a waiter: counted by _count_waiter once the leader is done
            self._misses += 1
            flight = concurrent.futures.Future()
            self._flights[key] = flight
            return None, flight, True

    def _count_waiter(self, flight: concurrent.futures.Future[Any]) -> None:
        """A waiter did not compute: a hit when the leader succeeded, a miss when it failed (it got no value)."""
        with self._lock:
            if flight.exception() is None:
                self._hits += 1
            else:
                self._misses += 1

    def _land(self, key: Hashable, flight: concurrent.futures.Future[Any], value: Any, ttl: float | None,
              exc: BaseException | None) -> None:
        """The leader's outcome: cache the value (or not), wake every waiter."""
        try:
            if exc is None:
                self.set(key, value, ttl)  # may raise E_CACHE_VALUE_TOO_LARGE: waiters get that error too
        except BaseException as set_exc:
            exc = set_exc
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            # asyncio is looked up, not imported: without it loaded, no task can have been cancelled.
            asyncio = sys.modules.get("asyncio")
            interrupted = (KeyboardInterrupt, SystemExit) + ((asyncio.CancelledError,) if asyncio else ())
            if isinstance(exc, interrupted):
                flight.cancel()  # the leader was cancelled, not failed: waiters compute again
            elif exc is not None:
                flight.set_exception(exc)
            else:
                flight.set_result(value)

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any], ttl: float | None = None) -> Any:
        """The cached value of ``key``, or ``fn()`` computed once however many threads ask at the same time."""
        _check_compute_args(fn, ttl, "fn")
        while True:
            value, flight, leader = self._claim(key)
            if flight is None:
                return value
            if not leader:
                try:
                    flight.exception()  # waits; raises CancelledError if the leader was interrupted
                except concurrent.futures.CancelledError:
                    continue  # the leader was interrupted: try again, possibly as the new leader
                self._count_waiter(flight)
                return flight.result()
            try:
                value = fn()
            except BaseException as exc:
                self._land(key, flight, None, ttl, exc)
                raise
            self._land(key, flight, value, ttl, None)
            return value

    async def aget_or_compute(
        self, key: Hashable, coro_fn: Callable[[], Awaitable[Any]], ttl: float | None = None
    ) -> Any:
        """The cached value of ``key``, or ``await coro_fn()`` run once however many tasks (or threads) ask."""
        _check_compute_args(coro_fn, ttl, "coro_fn")
        while True:
            value, flight, leader = self._claim(key)
            if flight is None:
                return value
            if not leader:
                await _wait_flight(flight)
                if flight.cancelled():
                    continue
                self._count_waiter(flight)
                return flight.result()
            try:
                value = await coro_fn()
            except BaseException as exc:
                self._land(key, flight, None, ttl, exc)
                raise
            self._land(key, flight, value, ttl, None)
            return value

    # ---- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits, misses, hit_rate, evictions by reason (lru, ttl, size), items, bytes and the bounds."""
        with self._lock:
            asked = self._hits + self._misses
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": self._hits / asked if asked else 0.0,
                "evictions": dict(self._evictions),
                "refused": self._refused,
                "items": len(self._data),
                "bytes": self._bytes,
                "max_items": self._max_items,
                "max_bytes": self._max_bytes,
            }

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction and refusal counts."""
        with self._lock:
            self._hits = self._misses = self._refused = 0
            self._evictions = dict.fromkeys(self._evictions, 0)

    def __repr__(self) -> str:
        return (f"<TTLCache items={len(self._data)}/{_fmt(self._max_items)} "
                f"bytes={self._bytes}/{_fmt(self._max_bytes)} "
                f"hits={self._hits} misses={self._misses}>")

    def _repr_html_(self) -> str:
        return _stats_table(type(self).__name__, self.stats())


async def _wait_flight(flight: concurrent.futures.Future[Any]) -> None:
    """Wait for a flight without ever cancelling it (``asyncio.wrap_future`` would pass our cancellation on)."""
    import asyncio

    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    flight.add_done_callback(wake)
    await done


def _check_key(key: Any) -> None:
    """A coded ValidationError for an unhashable key, before the lock is taken (hashing a str key is cached)."""
    try:
        hash(key)
    except TypeError as exc:
        raise ValidationError(f"cache keys must be hashable, got a {type(key).__name__}", field="key",
                              value=repr(key)[:100], code="E_CACHE_KEY") from exc


def _check_compute_args(fn: Any, ttl: Any, name: str) -> None:
    """Checked before anything is computed, so a bad ttl never costs a computation (nor fails its waiters)."""
    if not callable(fn):
        raise ValidationError(f"{name} must be callable, got a {type(fn).__name__}", field=name,
                              value=type(fn).__name__, code="E_CACHE_FN")
    if ttl is not None:
        _check_ttl(ttl, "ttl")


def _check_bound(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ValidationError(f"{name} must be a number >= 1 (math.inf: no bound)", field=name, value=value,
                              code="E_CACHE_BOUND")
    return value


def _check_ttl(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{name} must be seconds > 0 (math.inf: never expires)", field=name, value=value,
                              code="E_CACHE_TTL")
    return float(value)


def _fmt(bound: int | float) -> str:
    return "inf" if bound == math.inf else str(bound)


def _stats_table(title: str, stats: dict[str, Any]) -> str:
    return html_table(stats, title)


