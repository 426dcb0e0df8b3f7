"""TTLCache: bounds (bytes exact), TTL with an injected clock, LRU, sizes, stampede protection, stats."""

from __future__ import annotations

import asyncio
import math
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from amulet_lab.cache import TTLCache, sizeof
from amulet_lab.errors import ValidationError


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(max_bytes=1_000_000, max_items=None, ttl=60.0, **kw) -> tuple[TTLCache, Clock]:
    clock = Clock()
    return TTLCache(max_bytes, max_items, ttl, timer=clock, **kw), clock


# ---- sizes ------------------------------------------------------------------------------
def test_sizeof_knows_buffers_arrays_images_tensors_and_containers():
    from PIL import Image

    assert sizeof(b"abcd") == 4
    assert sizeof(bytearray(10)) == 10
    assert sizeof(memoryview(b"x" * 12)[2:]) == 10
    assert sizeof(np.zeros((10, 10), dtype=np.float32)) == 400
    # Pillow pads RGB (and every multi-band 8-bit mode) to 4 bytes a pixel.
    for mode in ("RGB", "RGBA", "RGBX", "YCbCr", "HSV", "LAB", "LA", "CMYK"):
        assert sizeof(Image.new(mode, (20, 10))) == 20 * 10 * 4, mode
    assert sizeof(Image.new("L", (20, 10))) == sizeof(Image.new("P", (20, 10))) == 20 * 10
    assert sizeof(Image.new("F", (4, 5))) == 4 * 5 * 4
    assert sizeof(Image.new("I;16", (4, 5))) == 4 * 5 * 2
    assert sizeof("héllo") == sys.getsizeof("héllo")
    pair = (b"a" * 100, np.zeros(25, dtype=np.int64))
    assert sizeof(pair) == sys.getsizeof(pair) + 100 + 200
    d = {"k": b"x" * 50}
    assert sizeof(d) == sys.getsizeof(d) + sys.getsizeof("k") + 50
    loop: list = [b"x" * 10]
    loop.append(loop)  # a cycle is counted once, not forever
    assert sizeof(loop) == sys.getsizeof(loop) + 10


def test_sizeof_torch_tensor():
    torch = pytest.importorskip("torch")
    t = torch.zeros(3, 4, dtype=torch.float16)
    assert sizeof(t) == 3 * 4 * 2
    assert sizeof(torch.zeros(5, dtype=torch.float64)) == 40


def test_getsizeof_hook_replaces_the_default_and_is_checked():
    cache, _ = make(max_bytes=10, getsizeof=lambda v: 3)
    for k in range(5):
        cache.set(k, object())
    assert len(cache) == 3 and cache.stats()["bytes"] == 9
    bad, _ = make(getsizeof=lambda v: -1)
    with pytest.raises(ValidationError) as err:
        bad.set("k", 1)
    assert err.value.code == "E_CACHE_SIZEOF"


# ---- bounds -----------------------------------------------------------------------------
def test_value_larger_than_the_cache_is_refused_without_evicting():
    cache, _ = make(max_bytes=100)
    cache.set("a", b"x" * 60)
    with pytest.raises(ValidationError) as err:
        cache.set("big", b"x" * 101)
    assert err.value.code == "E_CACHE_VALUE_TOO_LARGE"
    assert cache.get("a") == b"x" * 60 and "big" not in cache
    assert cache.stats()["refused"] == 1 and cache.stats()["evictions"]["size"] == 0


def test_the_byte_bound_is_checked_again_under_the_lock():
    cache = None

    def shrinking_sizer(value):
        cache.resize(max_bytes=10)  # another thread lowers the bound while this value is being sized
        return len(value)

    cache = TTLCache(100, None, 60, getsizeof=shrinking_sizer)
    with pytest.raises(ValidationError) as err:
        cache.set("k", b"x" * 50)
    assert err.value.code == "E_CACHE_VALUE_TOO_LARGE" and err.value.context["max_bytes"] == 10
    assert "k" not in cache and cache.stats()["bytes"] == 0 and cache.stats()["refused"] == 1


def test_byte_bound_evicts_lru_and_counts_size_evictions():
    cache, _ = make(max_bytes=100)
    cache.set("a", b"1" * 40)
    cache.set("b", b"2" * 40)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.set("c", b"3" * 40)
    assert "b" not in cache and "a" in cache and "c" in cache
    s = cache.stats()
    assert s["bytes"] == 80 and s["evictions"]["size"] == 1


def test_item_bound_evicts_lru():
    cache, _ = make(max_items=2)
    cache.set(1, "a")
    cache.set(2, "b")
    cache.get(1)
    cache.set(3, "c")
    assert list(cache) == [1, 3]
    assert cache.stats()["evictions"]["lru"] == 1


def test_replace_keeps_byte_total_exact():
    cache, _ = make(max_bytes=1000)
    cache.set("k", b"x" * 300)
    cache.set("k", b"x" * 100)
    assert cache.stats()["bytes"] == 100 and len(cache) == 1
    cache.set("k", b"x" * 900)
    assert cache.stats()["bytes"] == 900


class _Model:
    """Reference model of the byte-bounded LRU (no TTL)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: dict[int, int] = {}  # insertion order = LRU order

    def set(self, key: int, size: int) -> None:
        if size > self.max_bytes:
            return
        self.items.pop(key, None)
        self.items[key] = size
        while sum(self.items.values()) > self.max_bytes:
            del self.items[next(iter(self.items))]

    def get(self, key: int) -> None:
        if key in self.items:
            self.items[key] = self.items.pop(key)


ops = st.lists(
    st.tuples(st.sampled_from(["set", "get", "delete"]), st.integers(0, 15), st.integers(0, 120)),
    max_size=80,
)


@hsettings(max_examples=150, deadline=None)
@given(max_bytes=st.integers(1, 300), ops=ops)
def test_byte_bound_holds_exactly_over_random_sequences(max_bytes, ops):
    cache, _ = make(max_bytes=max_bytes)
    model = _Model(max_bytes)
    for op, key, size in ops:
        if op == "set":
            if size > max_bytes:
                with pytest.raises(ValidationError):
                    cache.set(key, b"x" * size)
            else:
                cache.set(key, b"x" * size)
            model.set(key, size)
        elif op == "get":
            cache.get(key)
            model.get(key)
        else:
            cache.delete(key)
            model.items.pop(key, None)
        s = cache.stats()
        assert s["bytes"] == sum(model.items.values()) <= max_bytes
        assert list(cache) == list(model.items)


# ---- TTL --------------------------------------------------------------------------------
def test_ttl_expiry_with_injected_clock():
    cache, clock = make(ttl=10)
    cache.set("a", b"1")
    cache.set("b", b"2", ttl=100)
    clock.now += 9.999
    assert cache.get("a") == b"1"
    clock.now += 0.001
    assert cache.get("a") is None and "a" not in cache  # expiry is exact: never returned at its deadline
    assert cache.get("b") == b"2"
    clock.now += 100
    assert "b" not in cache and len(cache) == 0
    s = cache.stats()
    assert s["evictions"]["ttl"] == 2 and s["bytes"] == 0


def test_expired_entries_are_swept_in_bounded_steps_on_write():
    cache, clock = make(ttl=5)
    for k in range(50):
        cache.set(k, b"x")
    clock.now += 10
    cache.set("new", b"y")  # one write purges a bounded number, not all 50
    swept = cache.stats()["evictions"]["ttl"]
    assert 0 < swept < 50
    assert cache.purge_expired() == 50 - swept
    assert len(cache) == 1 and cache.stats()["bytes"] == 1


def test_ttl_validation_and_infinite_ttl():
    with pytest.raises(ValidationError):
        make(ttl=0)
    cache, clock = make(ttl=math.inf)
    cache.set("k", 1)
    with pytest.raises(ValidationError):
        cache.set("k", 1, ttl=-1)
    clock.now += 1e12
    assert cache.get("k") == 1


def test_defaults_are_the_documented_ones_and_read_no_settings(settings, monkeypatch):
    monkeypatch.setenv("AMULET_CACHE_MAX_SIZE", "1234")
    cache = TTLCache()
    assert (cache.max_bytes, cache.default_ttl) == (settings.cache_max_size, settings.cache_default_ttl)
    assert cache.max_items == math.inf
    unbounded = TTLCache(None, None, None)
    assert unbounded.max_bytes == unbounded.max_items == unbounded.default_ttl == math.inf


# ---- resize / shrink / clear ------------------------------------------------------------
def test_resize_and_shrink():
    cache, _ = make(max_bytes=1000)
    for k in range(10):
        cache.set(k, b"x" * 10)
    assert cache.resize(max_items=8) == 2 and list(cache) == list(range(2, 10))
    assert cache.resize(max_bytes=50) == 3 and cache.stats()["bytes"] == 50
    assert cache.shrink(0.5) == 3 and list(cache) == [8, 9]
    assert cache.shrink(0) == 0
    with pytest.raises(ValidationError):
        cache.shrink(1.5)
    cache.clear()
    assert len(cache) == 0 and cache.stats()["bytes"] == 0
    with pytest.raises(ValidationError):
        cache.resize(max_items=0)


# ---- concurrency ------------------------------------------------------------------------
def _count_waiters(cache: TTLCache) -> tuple[list[int], threading.Condition]:
    """Wrap ``cache._claim`` so the test knows how many callers joined a flight another one leads."""
    waiting: list[int] = []
    changed = threading.Condition()
    claim = cache._claim

    def spy(key):
        outcome = claim(key)
        if outcome[1] is not None and not outcome[2]:
            with changed:
                waiting.append(1)
                changed.notify_all()
        return outcome

    cache._claim = spy
    return waiting, changed


def _wait_for(waiting: list[int], changed: threading.Condition, n: int) -> None:
    with changed:
        changed.wait_for(lambda: len(waiting) >= n, timeout=10)


def test_64_threads_one_cold_key_compute_once():
    cache = TTLCache(10_000, None, 60)
    waiting, changed = _count_waiters(cache)
    calls = []
    gate = threading.Barrier(64)
    release = threading.Event()

    def slow():
        calls.append(1)
        release.wait(10)
        return "value"

    results = []

    def worker():
        gate.wait()
        results.append(cache.get_or_compute("cold", slow))

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    _wait_for(waiting, changed, 63)  # the other 63 are parked on the flight while the leader computes
    release.set()
    for t in threads:
        t.join(10)
    assert len(waiting) == 63 and len(calls) == 1 and results == ["value"] * 64
    s = cache.stats()
    assert s["misses"] == 1 and s["hits"] == 63


def test_exception_reaches_every_waiter_and_is_not_cached():
    cache = TTLCache(10_000, None, 60)
    waiting, changed = _count_waiters(cache)
    started = threading.Event()
    release = threading.Event()
    calls = []

    def boom():
        calls.append(1)
        started.set()
        release.wait(10)
        raise RuntimeError("decode failed")

    errors = []

    def worker():
        try:
            cache.get_or_compute("k", boom)
        except RuntimeError as exc:
            errors.append(str(exc))

    leader = threading.Thread(target=worker)
    leader.start()
    started.wait(5)
    waiters = [threading.Thread(target=worker) for _ in range(7)]
    for t in waiters:
        t.start()
    _wait_for(waiting, changed, 7)
    release.set()
    for t in [leader, *waiters]:
        t.join(10)
    # fn ran once: the 7 waiters got the leader's exception, none of them computed again
    assert len(waiting) == 7 and len(calls) == 1 and errors == ["decode failed"] * 8
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (0, 8)  # a waiter of a failed leader got no value: a miss, not a hit
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: 42) == 42  # the failure was not cached


def test_aget_or_compute_runs_the_coroutine_once_across_tasks():
    cache = TTLCache(10_000, None, 60)
    calls = []

    async def load():
        calls.append(1)
        await asyncio.sleep(0.01)
        return {"x": 1}

    async def main():
        return await asyncio.gather(*(cache.aget_or_compute("k", load) for _ in range(20)))

    results = asyncio.run(main())
    assert len(calls) == 1 and all(r == {"x": 1} for r in results)

    failures = []

    async def fail():
        failures.append(1)
        await asyncio.sleep(0.01)
        raise ValueError("nope")

    async def main_fail():
        return await asyncio.gather(*(cache.aget_or_compute("bad", fail) for _ in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main_fail())
    assert len(outcomes) == 5 and all(isinstance(o, ValueError) for o in outcomes)
    assert len(failures) == 1 and "bad" not in cache  # one run, its error reached all 5 tasks, nothing cached


def test_cancelled_leader_lets_a_waiter_compute():
    cache = TTLCache(10_000, None, 60)

    async def main():
        async def never():
            await asyncio.sleep(10)

        leader = asyncio.ensure_future(cache.aget_or_compute("k", never))
        await asyncio.sleep(0)

        async def quick():
            return "fresh"

        waiter = asyncio.ensure_future(cache.aget_or_compute("k", quick))
        await asyncio.sleep(0)
        leader.cancel()
        return await asyncio.wait_for(waiter, 2)

    assert asyncio.run(main()) == "fresh"


# ---- reporting --------------------------------------------------------------------------
def test_stats_and_html():
    cache, _ = make()
    cache.set("a", b"xy")
    cache.get("a")
    cache.get("missing")
    s = cache.stats()
    assert (s["hits"], s["misses"], s["hit_rate"], s["items"], s["bytes"]) == (1, 1, 0.5, 1, 2)
    assert set(s["evictions"]) == {"lru", "ttl", "size"}
    html = cache._repr_html_()
    assert "<table>" in html and "hit_rate" in html and "50.0%" in html
    assert "TTLCache" in repr(cache)
    cache.reset_stats()
    assert cache.stats()["hits"] == 0


# ---- micro-benchmark --------------------------------------------------------------------
def test_cache_micro_benchmark_shape():
    from amulet_lab.bench.micro import MicroResult, run_micro

    (result,) = run_micro(["cache"], quick=True)
    assert isinstance(result, MicroResult) and result.name == "cache"
    assert set(result.ratios) == {"hit_vs_cachetools", "set_vs_cachetools", "image_hit_speedup"}
    assert set(result.verdicts()) == set(result.ratios)
    assert all(v > 0 for v in result.ratios.values()) and all(v > 0 for v in result.figures.values())
    assert "image_hit_speedup" in result.to_text()


def test_get_or_compute_refuses_a_value_too_large_and_does_not_cache_it():
    cache = TTLCache(10, None, 60)
    with pytest.raises(ValidationError) as err:
        cache.get_or_compute("k", lambda: b"x" * 11)
    assert err.value.code == "E_CACHE_VALUE_TOO_LARGE" and "k" not in cache
    assert cache.get_or_compute("k", lambda: b"ok") == b"ok" and cache.get("k") == b"ok"


def test_bad_keys_and_compute_arguments_raise_coded_errors():
    cache = TTLCache(10_000, None, 60)
    for call in (lambda: cache.get(["list"]), lambda: cache.set({"a": 1}, b"x"), lambda: cache.delete([1]),
                 lambda: ["k"] in cache, lambda: cache.get_or_compute(["k"], lambda: 1),
                 lambda: asyncio.run(cache.aget_or_compute(["k"], _async_value))):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.code == "E_CACHE_KEY"
    assert cache.stats()["bytes"] == 0 and len(cache) == 0
    calls = []
    with pytest.raises(ValidationError) as err:
        cache.get_or_compute("k", lambda: calls.append(1) or 1, ttl=-5)
    assert err.value.code == "E_CACHE_TTL" and calls == []  # refused before computing anything
    with pytest.raises(ValidationError) as err:
        cache.get_or_compute("k", "not callable")
    assert err.value.code == "E_CACHE_FN"
    with pytest.raises(ValidationError) as err:
        asyncio.run(cache.aget_or_compute("k", _async_value, ttl=0))
    assert err.value.code == "E_CACHE_TTL"

    class BadHash:
        def __hash__(self):
            raise TypeError("broken __hash__")

    with pytest.raises(ValidationError):  # an object whose hash fails is an unusable key too
        cache.get(BadHash())


async def _async_value():
    return 1
