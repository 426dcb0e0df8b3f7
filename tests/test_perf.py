"""PerformanceMonitor and timed_operation: figures, numpy-equal percentiles, flat memory, sync/async timing."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.perf import PerformanceMonitor, performance_monitor, timed_operation


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_totals_and_throughput_with_injected_clock():
    clock = Clock()
    mon = PerformanceMonitor(timer=clock)
    for duration, error in [(0.5, False), (1.5, True), (1.0, False)]:
        clock.now += duration
        mon.record("op", duration, error=error)
    s = mon.get_stats("op")
    assert s["count"] == 3 and s["errors"] == 1 and s["error_rate"] == pytest.approx(1 / 3)
    assert s["total_duration"] == 3.0 and s["avg_duration"] == 1.0
    assert s["min_duration"] == 0.5 and s["max_duration"] == 1.5
    assert s["throughput"] == pytest.approx(3 / 3.0)  # 3 calls over 3 s from first start to last end
    assert mon.get_stats() == {"op": s}
    empty = mon.get_stats("never")
    assert empty["count"] == 0 and empty["p95"] == 0.0 and empty["throughput"] == 0.0


def test_throughput_when_record_value_came_before_the_first_record():
    clock = Clock()
    mon = PerformanceMonitor(timer=clock)
    mon.record_value("op", "peak_rss_delta_mb", 12.0)  # memory_efficient_operation may report first
    for _ in range(4):
        clock.now += 0.5
        mon.record("op", 0.5)
    s = mon.get_stats("op")
    assert s["throughput"] == pytest.approx(4 / 2.0) and s["values"]["peak_rss_delta_mb"]["last"] == 12.0


def test_percentiles_equal_numpy_over_the_window():
    rng = random.Random(7)
    mon = PerformanceMonitor(window=500)
    samples = [rng.lognormvariate(-4, 1) for _ in range(1234)]
    for s in samples:
        mon.record("op", s)
    window = np.array(samples[-500:])
    stats = mon.get_stats("op")
    for p in (50, 90, 95, 99):
        assert stats[f"p{p}"] == np.percentile(window, p, method="linear")
    # count, min and max cover every call, not only the window
    assert stats["count"] == 1234 and stats["max_duration"] == max(samples) and stats["min_duration"] == min(samples)
    assert stats["window"] == 500


def test_memory_stays_flat_over_a_million_records():
    mon = PerformanceMonitor(window=1000)
    record = mon.record
    for i in range(1000):
        record("op", i * 1e-6)
    internals = mon._ops["op"]
    size_full_window = sys.getsizeof(internals.window)
    # tracemalloc slows every allocation ~10x: it watches the first 50k records, plain sizes the rest.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50_000):
            record("op", (i % 977) * 1e-6)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024  # the window's floats are replaced, nothing accumulates
    for i in range(949_000):
        record("op", (i % 977) * 1e-6)
    assert len(internals.window) == 1000 and sys.getsizeof(internals.window) == size_full_window
    assert len(mon._ops) == 1 and internals.values == {}
    assert mon.get_stats("op")["count"] == 1_000_000


def test_record_validates_input():
    mon = PerformanceMonitor()
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValidationError):
            mon.record("op", bad)
    with pytest.raises(ValidationError):
        mon.record("", 1.0)
    with pytest.raises(ValidationError):
        PerformanceMonitor(window=0)


def test_record_value_to_frame_reset_and_html():
    mon = PerformanceMonitor()
    mon.record("predict", 0.02)
    mon.record("predict", 0.04)
    mon.record_value("predict", "peak_mb", 120.0)
    mon.record_value("predict", "peak_mb", 80.0)
    values = mon.get_stats("predict")["values"]["peak_mb"]
    assert values == {"count": 2, "last": 80.0, "mean": 100.0, "max": 120.0}
    frame = mon.to_frame()
    assert list(frame.index) == ["predict"] and frame.loc["predict", "count"] == 2
    assert frame.loc["predict", "avg_duration"] == pytest.approx(0.03) and frame.loc["predict", "peak_mb_max"] == 120.0
    assert "predict" in mon._repr_html_() and "PerformanceMonitor" in repr(mon)
    with pytest.raises(ValidationError):
        mon.record_value("predict", "peak_mb", float("nan"))
    mon.reset()
    assert mon.get_stats() == {} and mon.to_frame().empty


def test_thread_safe_counts():
    mon = PerformanceMonitor()

    def work():
        for _ in range(2000):
            mon.record("op", 0.001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mon.get_stats("op")["count"] == 16000


def test_timed_operation_decorator_and_context_manager_sync():
    clock = Clock()
    mon = PerformanceMonitor(timer=clock)

    @timed_operation("work", monitor=mon)
    def work(fail: bool) -> str:
        clock.now += 0.25
        if fail:
            raise KeyError("x")
        return "done"

    assert work(False) == "done" and work.__name__ == "work"
    with pytest.raises(KeyError):
        work(True)
    block = timed_operation("block", monitor=mon)
    with block:
        clock.now += 2.0
        with block:  # the same instance nested: each exit pairs with its own enter
            clock.now += 1.0
    with pytest.raises(ValueError), timed_operation("block", monitor=mon):
        raise ValueError("bad")
    w, b = mon.get_stats("work"), mon.get_stats("block")
    assert (w["count"], w["errors"], w["total_duration"]) == (2, 1, 0.5)
    assert (b["count"], b["errors"], b["min_duration"], b["max_duration"]) == (3, 1, 0.0, 3.0)


def test_timed_operation_async_and_global_monitor():
    mon = PerformanceMonitor()

    @timed_operation("fetch", monitor=mon)
    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        return i

    clock = Clock()
    shared = timed_operation("section", monitor=PerformanceMonitor(timer=clock))

    async def section(i: int, go: asyncio.Event) -> None:
        clock.now = 100.0 + i  # task i enters at 100 + i ...
        async with shared:  # one instance entered by many tasks at once
            await go.wait()
            clock.now = 1000.0 + 2 * i  # ... and leaves at 1000 + 2i, after every task has entered

    async def main():
        got = await asyncio.gather(*(fetch(i) for i in range(10)))
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(section(i, go)) for i in range(10)]
        await asyncio.sleep(0)  # every task runs up to go.wait()
        go.set()
        await asyncio.gather(*tasks)
        return got

    assert asyncio.run(main()) == list(range(10))
    assert mon.get_stats("fetch")["count"] == 10
    section_stats = shared.monitor.get_stats("section")
    # each task is timed from its own start (900 + i), not from whichever task entered last
    assert section_stats["count"] == 10
    assert (section_stats["min_duration"], section_stats["max_duration"]) == (900.0, 909.0)
    assert section_stats["total_duration"] == sum(900.0 + i for i in range(10))

    before = performance_monitor.get_stats("test_perf.global")["count"]
    with timed_operation("test_perf.global"):
        pass
    assert performance_monitor.get_stats("test_perf.global")["count"] == before + 1
    performance_monitor.reset("test_perf.global")


def test_cancellation_is_not_recorded_as_an_error():
    mon = PerformanceMonitor()

    @timed_operation("slow", monitor=mon)
    async def slow():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert mon.get_stats("slow")["count"] == 0
