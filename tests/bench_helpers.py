"""Helpers shared by the benchmark tests."""

from __future__ import annotations

from amulet_lab.bench.compare import compare
from amulet_lab.bench.history import History


def unchanged_pair(run_twice, histories, attempts=3):
    """Two runs of unchanged code, judged by ``compare``: the first attempt with no regression, else the last.

    A shared machine's outside load can slow one run of a pair several-fold (seen: p50 6.4 -> 21 ms while
    another job ran); the reference workload, the fastest of its rounds, does not follow such load. So a
    flagged pair is run again, in a fresh history, a bounded number of times; code that compare always
    misjudges fails every attempt.
    """
    for _, history in zip(range(attempts), histories):
        run_twice(history)
        result = compare(History(history))
        if not result.regressions:
            break
    return history, result
