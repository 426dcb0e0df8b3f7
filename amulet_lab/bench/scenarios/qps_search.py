"""``server_search``: bisect (in log space) for the highest target QPS whose p99 meets a latency bound."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from amulet_lab.bench.scenarios.arguments import check_images, check_int, check_pos
from amulet_lab.bench.scenarios.result import Pipeline, ScenarioResult
from amulet_lab.bench.scenarios.server_runs import aserver, server
from amulet_lab.errors import ValidationError

__all__ = ["server_search", "aserver_search"]


def _search(*, latency_bound_ms: float, qps_low: float, qps_high: float | None, steps: int, duration_s: float,
            threads: int, max_batch: int, seed: int, url: str | None,
            ) -> Generator[dict[str, Any], ScenarioResult, ScenarioResult]:
    """The I/O-free core of ``server_search``: yields the keyword arguments of each server run to do,
    is sent its result, and returns the search result. ``server_search`` and ``aserver_search`` drive it."""
    bound = check_pos("latency_bound_ms", latency_bound_ms)
    lo = check_pos("qps_low", qps_low)
    check_int("steps", steps)
    auto_high = qps_high is None
    if qps_high is None:
        # Capacity guess from a short, gentle probe at qps_low: threads / median latency, doubled.
        probe = yield dict(target_qps=lo, latency_bound_ms=bound, duration_s=min(duration_s, 1.0), threads=threads,
                           max_batch=1, seed=seed, progress=False)
        p50 = probe.metrics["latency_p50_ms"]
        per_query_s = max(p50 / 1000.0, 1e-4) if math.isfinite(p50) else 1.0  # all refused: assume 1 s
        qps_high = max(2.0 * threads / per_query_s, lo * 2)
    hi = check_pos("qps_high", qps_high)
    if hi <= lo:
        raise ValidationError("qps_high must be above qps_low", field="qps_high", value=hi)
    common = dict(latency_bound_ms=bound, duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed)
    trace: list[dict[str, float]] = []
    best: ScenarioResult | None = None
    first = yield dict(target_qps=lo, **common)
    trace.append({"target_qps": lo, "p99_ms": first.metrics["latency_p99_ms"], "meets": first.metrics["meets_bound"]})
    if first.metrics["meets_bound"]:
        best = first
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            result = yield dict(target_qps=mid, **common)
            trace.append({"target_qps": mid, "p99_ms": result.metrics["latency_p99_ms"],
                          "meets": result.metrics["meets_bound"]})
            if result.metrics["meets_bound"]:
                lo, best = mid, result
            else:
                hi = mid
    final = best or first
    metrics = {**final.metrics, "max_qps_meeting_bound": lo if best else 0.0, "search_qps_high": hi}
    params = {"latency_bound_ms": bound, "qps_low": qps_low, "steps": steps, "duration_s": duration_s, "threads": threads,
              "max_batch": max_batch, "seed": seed, "url": url, "qps_high": "auto" if auto_high else round(hi, 6)}
    return ScenarioResult(
        "server", params, metrics, final.stages, final.avg_batch_size, variant="search",
        latencies_ms=final.latencies_ms, extra={"search": trace},
    )


def server_search(
    pipeline: Pipeline | None,
    images: Sequence[Any],
    *,
    latency_bound_ms: float = 100.0,
    qps_low: float = 1.0,
    qps_high: float | None = None,
    steps: int = 5,
    duration_s: float = 3.0,
    threads: int = 2,
    max_batch: int = 4,
    seed: int = 0,
    url: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    settings: Any = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> ScenarioResult:
    """Bisect (in log space) for the highest target QPS whose p99 latency meets ``latency_bound_ms``.

    Without ``qps_high`` the upper end is twice the capacity implied by a short probe at ``qps_low``
    (workers / median latency).
    The result carries the last run at the best QPS found plus ``max_qps_meeting_bound``.
    """
    items = check_images(images)
    fixed = dict(url=url, token=token, headers=headers, settings=settings, timer=timer, sleep=sleep)
    steps_ = _search(latency_bound_ms=latency_bound_ms, qps_low=qps_low, qps_high=qps_high, steps=steps,
                     duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed, url=url)
    try:
        run = next(steps_)
        while True:
            run = steps_.send(server(pipeline, items, **{"progress": progress, **fixed, **run}))
    except StopIteration as done:
        return done.value


async def aserver_search(
    pipeline: Pipeline | None,
    images: Sequence[Any],
    *,
    latency_bound_ms: float = 100.0,
    qps_low: float = 1.0,
    qps_high: float | None = None,
    steps: int = 5,
    duration_s: float = 3.0,
    threads: int = 2,
    max_batch: int = 4,
    seed: int = 0,
    url: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    settings: Any = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> ScenarioResult:
    """``server_search`` for async code (each run through ``aserver``)."""
    items = check_images(images)
    fixed = dict(url=url, token=token, headers=headers, settings=settings, timer=timer, sleep=sleep)
    steps_ = _search(latency_bound_ms=latency_bound_ms, qps_low=qps_low, qps_high=qps_high, steps=steps,
                     duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed, url=url)
    try:
        run = next(steps_)
        while True:
            run = steps_.send(await aserver(pipeline, items, **{"progress": progress, **fixed, **run}))
    except StopIteration as done:
        return done.value
