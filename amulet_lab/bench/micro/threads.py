"""Cost of ``AtomicCounter`` and ``ThreadSafeDict`` against the hand-written baseline: a lock around an int/dict.

Single-threaded timings per call (the uncontended cost every caller pays), baselines timed in the same
run. Ratios are ours / baseline; the targets allow the method call and the stats bookkeeping a modest
premium (<= 2x), since what they buy is correctness by default.
"""

from __future__ import annotations

import functools
import threading

from amulet_lab.bench.micro import MicroResult, Target, time_per_call
from amulet_lab.threads import AtomicCounter, ThreadSafeDict

__all__ = ["run"]


class _LockedInt:
    """The baseline counter: what one writes by hand."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0

    def increment(self) -> int:
        with self.lock:
            self.value += 1
            return self.value


def run(quick: bool = False) -> MicroResult:
    """Time increment, dict get and dict set, ours against a lock around an int / a dict."""
    number = 2_000 if quick else 200_000
    repeat = 3 if quick else 7

    counter, baseline_counter = AtomicCounter(), _LockedInt()
    ours_dict: ThreadSafeDict[int, int] = ThreadSafeDict({i: i for i in range(1000)})
    plain: dict[int, int] = {i: i for i in range(1000)}
    lock = threading.Lock()

    def plain_get() -> int | None:
        with lock:
            return plain.get(500)

    def plain_set() -> None:
        with lock:
            plain[500] = 1

    times = {
        "counter_increment_ours_s": time_per_call(counter.increment, number=number, repeat=repeat),
        "counter_increment_lock_int_s": time_per_call(baseline_counter.increment, number=number, repeat=repeat),
        "dict_get_ours_s": time_per_call(functools.partial(ours_dict.get, 500), number=number, repeat=repeat),
        "dict_get_locked_dict_s": time_per_call(plain_get, number=number, repeat=repeat),
        "dict_set_ours_s": time_per_call(functools.partial(ours_dict.set, 500, 1), number=number, repeat=repeat),
        "dict_set_locked_dict_s": time_per_call(plain_set, number=number, repeat=repeat),
    }
    ratios = {
        "counter_vs_lock_int": times["counter_increment_ours_s"] / times["counter_increment_lock_int_s"],
        "dict_get_vs_locked_dict": times["dict_get_ours_s"] / times["dict_get_locked_dict_s"],
        "dict_set_vs_locked_dict": times["dict_set_ours_s"] / times["dict_set_locked_dict_s"],
    }
    return MicroResult(
        name="threads",
        figures=times,
        ratios=ratios,
        targets={k: Target("<=", 2.0) for k in ratios},
        notes="uncontended, one thread; AtomicCounter is a Lock around an int (not lock-free); "
              "ThreadSafeDict uses an RLock and counts hits/misses",
    )
