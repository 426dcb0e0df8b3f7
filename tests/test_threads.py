"""Thread safety: counter, dict, queue, named locks, the decorator (sync and async), pools, stats."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from amulet_lab.errors import LockTimeoutError, ProcessingError, ValidationError
from amulet_lab.threads import (
    AsyncSafeDict,
    AtomicCounter,
    LockManager,
    ThreadPoolManager,
    ThreadSafeDict,
    ThreadSafeQueue,
    get_lock_manager,
    get_stats,
    named_lock,
    thread_safe_operation,
)


def _run_threads(n: int, target, *args) -> None:
    threads = [threading.Thread(target=target, args=args) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def fast_switching():
    """Switch threads every 1 us so races show up in few iterations (the default is 5 ms)."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_atomic_counter_8_threads_x_100000_increments_is_exact():
    counter = AtomicCounter()

    def work():
        inc = counter.increment
        for _ in range(100_000):
            inc()

    _run_threads(8, work)
    assert counter.get() == 800_000


class _YieldingInt(int):
    """An int whose ``+`` releases the GIL midway, so an unguarded ``value += 1`` is interrupted every time.

    Needed because on CPython 3.11 a bare ``self._value += 1`` is never interrupted between its read and its
    write (no eval-breaker check there): a counter with its lock removed still passes the 8 x 100,000 test.
    """

    def __add__(self, other):
        time.sleep(0)  # drops the GIL: another thread reads the same old value if nothing serialises us
        return _YieldingInt(int(self) + int(other))

    def __sub__(self, other):
        time.sleep(0)
        return _YieldingInt(int(self) - int(other))


def test_atomic_counter_stays_exact_when_the_addition_yields_the_gil():
    """Fails if the counter's operations are not serialised (checked: without the lock it ends near 1/8th)."""
    counter = AtomicCounter(_YieldingInt(0))

    def work():
        for _ in range(300):
            counter.increment()
            counter.add(2)
            counter.decrement()

    _run_threads(6, work)
    assert counter.get() == 6 * 300 * 2


def test_atomic_counter_operations():
    c = AtomicCounter(5)
    assert c.decrement() == 4 and c.add(10) == 14 and c.add(-4) == 10 and int(c) == 10
    assert c.compare_and_set(10, 20) is True and c.get() == 20
    assert c.compare_and_set(10, 30) is False and c.get() == 20
    assert c.set(1) == 20 and repr(c) == "AtomicCounter(1)"
    with pytest.raises(ValidationError):
        c.add(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AtomicCounter("0")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        c.set("2")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        c.compare_and_set(1, None)  # type: ignore[arg-type]
    assert c.get() == 1  # a refused value never got in


def test_plain_int_loses_updates_where_counter_does_not():
    """The contrast that makes the counter test meaningful: an unlocked read-modify-write loses an update.

    Forced, not hoped for: both threads read, meet at a barrier, then write, so one write is always lost.
    """
    box = {"n": 0}
    counter = AtomicCounter()
    both_read = threading.Barrier(2, timeout=5)

    def racy():
        value = box["n"]
        both_read.wait()
        box["n"] = value + 1
        counter.increment()

    _run_threads(2, racy)
    assert box["n"] == 1 and counter.get() == 2


def test_update_with_loses_no_update_under_contention(fast_switching):
    d: ThreadSafeDict[str, int] = ThreadSafeDict()

    def work():
        for i in range(5_000):
            d.update_with("hits", lambda v: v + 1, default=0)
            d.update_with(f"k{i % 7}", lambda v: (v or 0) + 1)

    _run_threads(6, work)
    assert d["hits"] == 30_000
    assert sum(d[f"k{i}"] for i in range(7)) == 30_000
    assert d.stats()["updates"] == 60_000


def test_thread_safe_dict_mapping_api_and_stats():
    d = ThreadSafeDict({"a": 1})
    d["b"] = 2
    d.set("c", 3)
    d.update({"d": 4}, e=5)
    assert "a" in d and "z" not in d and len(d) == 5
    assert d.get("a") == 1 and d.get("z", 0) == 0 and d["b"] == 2
    with pytest.raises(KeyError):
        d["missing"]
    assert d.setdefault("a", 99) == 1 and d.setdefault("f", 6) == 6
    assert d.pop("f") == 6 and d.pop("f", None) is None
    with pytest.raises(KeyError):
        d.pop("f")
    del d["e"]
    assert sorted(d) == ["a", "b", "c", "d"] and dict(d.items()) == d.copy()
    assert d.values() == [1, 2, 3, 4]
    # update_with's function may read the dict (re-entrant lock)
    assert d.update_with("sum", lambda _: sum(d.get(k) for k in "abcd")) == 10
    s = d.stats()
    assert s["misses"] >= 2 and s["hits"] >= 4 and 0 < s["hit_rate"] < 1 and s["size"] == 5
    with pytest.raises(ValidationError):
        d.update_with("x", "not callable")  # type: ignore[arg-type]
    d.clear()
    assert len(d) == 0 and "ThreadSafeDict(size=0" in repr(d)


def test_queue_bounded_put_get_timeouts_and_stats():
    q: ThreadSafeQueue[int] = ThreadSafeQueue(maxsize=2)
    q.put(1)
    q.put(2)
    with pytest.raises(ProcessingError) as full:
        q.put(3, timeout=0.01)
    assert full.value.code == "E_QUEUE_FULL"
    assert q.offer(3) is False
    assert q.get() == 1 and q.get(timeout=0) == 2
    with pytest.raises(ProcessingError) as empty:
        q.get(timeout=0.01)
    assert empty.value.code == "E_QUEUE_EMPTY"
    assert q.poll(default="none") == "none"
    s = q.stats()
    assert (s["puts"], s["gets"], s["max_depth"], s["put_timeouts"], s["get_timeouts"]) == (2, 2, 2, 2, 2)
    assert s["put_wait_s"] >= 0.005 and s["depth"] == 0
    with pytest.raises(ValidationError):
        ThreadSafeQueue(-1)
    with pytest.raises(ValidationError):
        q.get(timeout=-1)
    with pytest.raises(ValidationError):
        q.put(1, timeout="1")  # type: ignore[arg-type]


def test_queue_get_waits_for_a_producer_and_counts_the_wait():
    q: ThreadSafeQueue[str] = ThreadSafeQueue(maxsize=1)
    timer = threading.Timer(0.05, q.put, args=("late",))
    timer.start()
    assert q.get(timeout=5) == "late"
    timer.join()
    assert q.stats()["max_get_wait_s"] >= 0.03


def test_named_lock_timeout_names_the_holder():
    manager = LockManager()
    held, release = threading.Event(), threading.Event()

    def holder():
        with manager.lock("model-load"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder, name="loader-thread")
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeoutError) as info:
            with manager.lock("model-load", timeout=0.05):
                pass
        err = info.value
        assert err.code == "E_LOCK_TIMEOUT" and "loader-thread" in err.holder and "loader-thread" in str(err)
        assert err.context["lock"] == "model-load" and err.context["timeout"] == 0.05
        diag = manager.diagnostics()["model-load"]
        assert diag["holders"][0]["thread"] == "loader-thread" and diag["holders"][0]["held_s"] > 0
        assert diag["timeouts"] == 1 and diag["contended"] == 1
        assert "model-load" in manager.held()
    finally:
        release.set()
        t.join()
    assert manager.diagnostics()["model-load"]["holders"] == []
    with manager.lock("model-load", timeout=0.05):  # free again
        pass


def test_named_lock_kinds_reentry_and_validation():
    manager = LockManager()
    with manager.lock("plain"):
        with pytest.raises(LockTimeoutError) as info:  # a plain lock taken twice by one thread would hang
            with manager.lock("plain"):
                pass
        assert info.value.code == "E_LOCK_REENTRY"
    with manager.lock("re", kind="rlock"), manager.lock("re", kind="rlock"):
        assert manager.diagnostics()["re"]["holders"][0]["depth"] == 2
    with manager.lock("sem", kind="semaphore", value=2), manager.lock("sem", kind="semaphore", value=2):
        with pytest.raises(LockTimeoutError):
            with manager.lock("sem", kind="semaphore", value=2, timeout=0):
                pass
    with pytest.raises(ValidationError):
        with manager.lock("plain", kind="rlock"):
            pass
    with pytest.raises(ValidationError):
        with manager.lock("x", kind="mutex"):
            pass
    with pytest.raises(ValidationError):
        with manager.lock("", timeout=1):
            pass
    with named_lock("tests.process-wide", timeout=1):  # the process-wide manager
        pass


def test_decorated_recursive_function_does_not_deadlock():
    @thread_safe_operation(timeout=2)
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    assert fact(20) == 2432902008176640000
    assert "test_decorated_recursive_function_does_not_deadlock.<locals>.fact#" in fact.lock_name


def test_decorator_serialises_threads_and_keys_locks_by_module_and_qualname():
    inside = AtomicCounter()
    overlap = AtomicCounter()

    @thread_safe_operation
    def critical():
        if inside.increment() > 1:
            overlap.increment()
        time.sleep(0.002)
        inside.decrement()

    _run_threads(4, lambda: [critical() for _ in range(10)])
    assert overlap.get() == 0

    def make(module: str):
        def work():
            return None

        work.__module__ = module
        return thread_safe_operation()(work)

    a, b = make("pkg.one"), make("pkg.two")
    assert a.lock_name != b.lock_name and a.lock_name.startswith("pkg.one.")
    # Two functions from one factory share module and qualname but must not share a lock.
    c, d = make("pkg.same"), make("pkg.same")
    assert c.lock_name != d.lock_name
    release, holding = threading.Event(), threading.Event()

    def hold_c():
        with get_lock_manager().lock(c.lock_name, kind="rlock"):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold_c)
    holder.start()
    try:
        assert holding.wait(5)
        with get_lock_manager().lock(d.lock_name, timeout=0.5, kind="rlock"):
            pass  # d's lock is free while c's is held by another thread
        with pytest.raises(LockTimeoutError):
            get_lock_manager().lock(c.lock_name, timeout=0.01, kind="rlock").__enter__()
    finally:
        release.set()
        holder.join(5)
    shared1 = thread_safe_operation("shared")(lambda: None)
    shared2 = thread_safe_operation("shared")(lambda: None)
    assert shared1.lock_name == shared2.lock_name == "shared"
    with pytest.raises(ValidationError):
        thread_safe_operation("")


def test_decorated_coroutine_holds_its_lock_across_awaits():
    manager = LockManager()
    log: list[str] = []

    @thread_safe_operation("tests.async-op", manager=manager)
    async def op(name: str, depth: int = 0) -> None:
        log.append(f"{name} in")
        await asyncio.sleep(0.02)
        if depth:
            await op(name, depth - 1)  # recursion in the same task: no deadlock
        log.append(f"{name} out")

    async def main():
        await asyncio.gather(op("a", depth=1), op("b"))

    asyncio.run(main())
    # b waited for a (recursion included) although a awaited in between
    assert log == ["a in", "a in", "a out", "a out", "b in", "b out"]
    assert manager.diagnostics()["async:tests.async-op"]["contended"] == 1


def test_async_lock_timeout_names_the_holding_task():
    manager = LockManager()

    async def main():
        async def hold():
            async with manager.alock("slow"):
                await asyncio.sleep(0.2)

        task = asyncio.create_task(hold(), name="holder-task")
        await asyncio.sleep(0.01)
        with pytest.raises(LockTimeoutError) as info:
            async with manager.alock("slow", timeout=0.02):
                pass
        await task
        return info.value

    err = asyncio.run(main())
    assert "holder-task" in err.holder


def test_async_safe_dict_update_with_coroutine():
    d: AsyncSafeDict[str, int] = AsyncSafeDict()

    async def bump(v):
        await asyncio.sleep(0)  # a yield inside the update: other updates must wait
        return (v or 0) + 1

    async def main():
        await asyncio.gather(*(d.update_with("n", bump) for _ in range(50)))

    asyncio.run(main())
    assert d.get("n") == 50 and "n" in d and len(d) == 1 and d.stats()["updates"] == 50


def test_thread_pool_manager_named_pools_stats_and_shutdown(settings):
    manager = ThreadPoolManager.from_settings(settings.replace(thread_pool_size=3))
    assert manager.get_pool("decode")._max_workers == 3
    assert manager.map("decode", lambda x: x * x, range(10)) == [x * x for x in range(10)]
    failing = manager.submit("decode", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    manager.get_pool("io", max_workers=1)
    stats = manager.stats()["pools"]
    assert stats["decode"]["submitted"] == 11 and stats["decode"]["failed"] == 1
    assert stats["decode"]["completed"] == 10 and stats["decode"]["pending"] == 0
    assert stats["io"]["workers"] == 1 and "decode" in manager._repr_html_()
    manager.shutdown(wait=True)
    with pytest.raises(ProcessingError) as info:
        manager.submit("decode", print)
    assert info.value.code == "E_POOL_SHUTDOWN"
    with pytest.raises(ValidationError):
        ThreadPoolManager().get_pool("x", max_workers=0)
    with pytest.raises(ValidationError):
        ThreadPoolManager(0)


def test_submit_after_an_executor_shut_down_and_map_cancels_the_rest_after_an_error(settings):
    manager = ThreadPoolManager()
    manager.get_pool("gone").shutdown()  # as if shutdown() ran between the manager's check and submit
    with pytest.raises(ProcessingError) as info:
        manager.submit("gone", print)
    assert info.value.code == "E_POOL_SHUTDOWN"

    ran, release = [], threading.Event()

    def job(x):
        ran.append(x)
        if x == 0:
            raise ValueError("first item failed")
        release.wait(5)  # item 1 occupies the only worker until the test is done
        return x

    manager.get_pool("one", max_workers=1)
    try:
        with pytest.raises(ValueError):
            manager.map("one", job, range(10))
    finally:
        release.set()
    manager.shutdown(wait=True)
    assert set(ran) <= {0, 1}  # items 2..9 were cancelled, never run
    assert manager.stats()["pools"]["one"]["cancelled"] >= 8


def test_lock_timeout_in_the_acquiring_window_names_no_thread():
    manager = LockManager()
    named = manager._get("window", "lock", 1)
    named.primitive.acquire()  # taken, holder not recorded yet: the window inside acquire()
    try:
        with pytest.raises(LockTimeoutError) as info:
            with manager.lock("window", timeout=0.01):
                pass
        assert "an unknown thread (acquiring)" in str(info.value) and "None" not in str(info.value)
    finally:
        named.primitive.release()


def test_get_stats_for_the_health_report():
    with named_lock("tests.stats-lock"):
        stats = get_stats()
    assert stats["active_threads"] >= 1 and "MainThread" in stats["thread_names"]
    assert stats["locks"]["tests.stats-lock"]["holders"][0]["thread"] == "MainThread"
    assert "pools" in stats


def test_threads_micro_benchmark_quick_shape():
    from amulet_lab.bench.micro import MicroResult
    from amulet_lab.bench.micro.threads import run

    result = run(quick=True)
    assert isinstance(result, MicroResult) and result.name == "threads"
    assert set(result.ratios) == {"counter_vs_lock_int", "dict_get_vs_locked_dict", "dict_set_vs_locked_dict"}
    assert set(result.verdicts()) == set(result.ratios) and all(v > 0 for v in result.figures.values())


# ------------------------------------------------------------------------------------- WeightedSemaphore
def test_weighted_semaphore_grants_by_weight_and_in_order():
    from amulet_lab.errors import LockTimeoutError, ValidationError
    from amulet_lab.threads import WeightedSemaphore

    budget = WeightedSemaphore(10, name="pixels")
    budget.acquire(6)
    assert (budget.in_use, budget.available) == (6, 4)
    assert budget.try_acquire(4) and not budget.try_acquire(1)
    with pytest.raises(LockTimeoutError) as info:
        budget.acquire(3, timeout=0.01)
    assert info.value.code == "E_BUDGET_TIMEOUT" and budget.stats()["waiting"] == 0  # no queue entry left behind
    with pytest.raises(LockTimeoutError) as never:
        budget.acquire(11)  # more than the whole capacity: refused at once, never queued
    assert never.value.code == "E_BUDGET_EXCEEDED"
    budget.release(4)
    budget.release(6)
    with pytest.raises(ValidationError):
        budget.release(1)  # more than is held
    with budget.hold(10):
        assert budget.available == 0
    stats = budget.stats()
    assert stats["in_use"] == 0 and stats["peak"] == 10 and stats["timeouts"] == 1 and stats["refused"] == 1


def test_weighted_semaphore_is_fifo_so_a_large_request_is_not_starved():
    import threading

    from amulet_lab.threads import WeightedSemaphore

    budget = WeightedSemaphore(10)
    budget.acquire(5)
    order: list[str] = []
    big = threading.Thread(target=lambda: (budget.acquire(10), order.append("big"), budget.release(10)))
    big.start()
    while budget.stats()["waiting"] < 1:
        time.sleep(0.001)
    # A small request fits in the free half but must queue behind the large one.
    assert not budget.try_acquire(1)
    small = threading.Thread(target=lambda: (budget.acquire(1), order.append("small"), budget.release(1)))
    small.start()
    while budget.stats()["waiting"] < 2:
        time.sleep(0.001)
    budget.release(5)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.in_use == 0


def test_weighted_semaphore_async_waits_without_blocking_the_loop_and_threads_release():
    import asyncio
    import threading

    from amulet_lab.errors import LockTimeoutError
    from amulet_lab.threads import WeightedSemaphore

    budget = WeightedSemaphore(8)

    async def main() -> list[str]:
        seen: list[str] = []
        await budget.aacquire(8)

        async def waiter() -> None:
            async with budget.ahold(4):
                seen.append("got")

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        seen.append("loop runs")  # the waiting task does not block the event loop
        threading.Timer(0.02, budget.release, args=(8,)).start()  # a worker thread gives the units back
        await asyncio.wait_for(task, 5)
        with pytest.raises(LockTimeoutError):
            async with budget.ahold(8):
                await budget.aacquire(1, timeout=0.01)
        cancelled = asyncio.create_task(budget.aacquire(8))
        await budget.aacquire(8)
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        budget.release(8)
        return seen

    assert asyncio.run(main()) == ["loop runs", "got"]
    assert budget.in_use == 0 and budget.stats()["waiting"] == 0
