"""The ``server`` scenario: Poisson arrivals at a target QPS, served by in-process batching workers or at ``url``."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from amulet_lab.bench.aio import run_sync
from amulet_lab.bench.scenarios.arguments import check_images, check_int, check_pos, progress_bar
from amulet_lab.bench.scenarios.result import (
    Pipeline,
    ScenarioResult,
    Served,
    latency_metrics,
    stage_means,
    stage_metrics,
)
from amulet_lab.bench.scenarios.server_http import aserve_http, http_headers
from amulet_lab.bench.stats import percentile
from amulet_lab.errors import ProcessingError, ValidationError

__all__ = ["server", "aserver", "poisson_arrivals"]


def poisson_arrivals(qps: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times (seconds from start) of a Poisson process at rate ``qps`` within ``duration_s``."""
    rng = random.Random(seed)
    rate, out, t = check_pos("target_qps", qps), [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out or [0.0]
        out.append(t)


def _local_caller(pipeline: Pipeline, top_k: int) -> Callable[[list[Any]], list[Any]]:
    def call(batch: list[Any]) -> list[Any]:
        if len(batch) == 1:
            return [pipeline.predict(batch[0], top_k=top_k)]
        return pipeline.predict_batch(batch, batch_size=len(batch))

    return call


def _serve(
    call: Callable[[list[Any]], list[Any]],
    items: list[Any],
    arrivals: list[float],
    *,
    threads: int,
    max_batch: int,
    timer: Callable[[], float],
    sleep: Callable[[float], None],
    progress: bool,
    desc: str,
) -> Served:
    """Issue queries at ``arrivals``; ``threads`` workers each take what is queued (up to ``max_batch``).

    Latency runs from the *scheduled* arrival to completion, so time spent queued (or issued late
    because the machine was busy) counts against the system, as in MLPerf's server scenario.
    """
    pending: queue.Queue[tuple[int, float] | None] = queue.Queue()
    latencies: list[float] = [float("nan")] * len(arrivals)
    preds: list[Any] = [None] * len(arrivals)
    batch_sizes: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(bar: Any) -> None:
        while True:
            first = pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < max_batch:
                try:
                    nxt = pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    pending.put(None)  # hand the stop signal on to a sibling
                    break
                batch.append(nxt)
            try:
                out = call([items[i % len(items)] for i, _ in batch])
            except BaseException as exc:  # recorded and re-raised by the issuing thread
                with lock:
                    errors.append(exc)
                continue
            done = timer()
            with lock:
                batch_sizes.append(len(batch))
                for (i, due), pred in zip(batch, out):
                    latencies[i] = (done - due) * 1000.0
                    preds[i] = pred
                bar.update(len(batch))

    with progress_bar(total=len(arrivals), desc=desc, enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-server") as pool:
        futures = [pool.submit(worker, bar) for _ in range(threads)]
        start = timer()
        try:
            for i, at in enumerate(arrivals):
                delay = start + at - timer()
                if delay > 0:
                    sleep(delay)
                pending.put((i, start + at))
        finally:
            for _ in range(threads):  # the workers stop even when issuing was interrupted
                pending.put(None)
        for f in futures:
            f.result()
        wall = timer() - start
    if errors:
        raise ProcessingError(f"{len(errors)} server query batch(es) failed: {errors[0]!r}", stage="bench") from errors[0]
    return Served(latencies, preds, batch_sizes, wall)


@dataclasses.dataclass(frozen=True)
class _ServerPlan:
    """A validated server run: what to issue and how, before any I/O (shared by ``server`` and ``aserver``)."""

    items: list[Any]
    arrivals: list[float]
    params: dict[str, Any]
    bound: float
    desc: str


def _plan_server(pipeline: Any, images: Sequence[Any], *, target_qps: float, latency_bound_ms: float,
                 duration_s: float, threads: int, max_batch: int, seed: int, url: str | None) -> _ServerPlan:
    items = check_images(images)
    qps = check_pos("target_qps", target_qps)
    bound = check_pos("latency_bound_ms", latency_bound_ms)
    dur = check_pos("duration_s", duration_s)
    check_int("threads", threads)
    check_int("max_batch", max_batch)
    if url is None and pipeline is None:
        raise ValidationError("server needs a pipeline or a url", field="pipeline", code="E_BENCH_TARGET")
    params = {"target_qps": round(qps, 6), "latency_bound_ms": bound, "duration_s": dur, "threads": threads,
              "max_batch": max_batch, "seed": seed, "url": url}
    return _ServerPlan(items, poisson_arrivals(qps, dur, seed), params, bound, f"server {qps:.3g} qps")


def _server_result(plan: _ServerPlan, served: Served) -> ScenarioResult:
    """The ``server`` result from what a run collected (latencies of answered queries only)."""
    answered = [v for v in served.latencies if not math.isnan(v)]
    stages = stage_means([p for p in served.preds if p is not None])
    p99 = percentile(answered, 99)
    n = len(served.latencies)
    metrics = {
        "achieved_qps": len(answered) / served.wall if served.wall > 0 else float("nan"),
        **latency_metrics(answered),
        "within_bound": sum(1 for v in answered if v <= plan.bound) / n,
        # A refused query did not meet the bound either: a rate-limited run does not count as meeting it.
        "meets_bound": 1.0 if answered and p99 <= plan.bound and not served.refused else 0.0,
        "queries": float(n),
        "refused": float(served.refused),
        **stage_metrics(stages),
        "avg_batch_size": _mean_batch_size(served.sizes, remote=plan.params.get("url") is not None),
    }
    return ScenarioResult("server", dict(plan.params), metrics, stages, metrics["avg_batch_size"],
                          latencies_ms=answered)


def _mean_batch_size(sizes: list[int], *, remote: bool) -> float:
    """Queries per forward pass: in process, the mean over batches; against a service, from each answer's batch size.

    A service answer names the size ``b`` of the pass its photo went through, so each query is ``1/b`` of a
    pass: passes = sum(1/b) and the mean is their harmonic mean (answers from the cache, size 0, left out).
    """
    if not remote:
        return statistics.fmean(sizes) if sizes else float("nan")
    inferred = [b for b in sizes if b > 0]
    return len(inferred) / sum(1.0 / b for b in inferred) if inferred else float("nan")


def server(
    pipeline: Pipeline | None,
    images: Sequence[Any],
    *,
    target_qps: float = 10.0,
    latency_bound_ms: float = 100.0,
    duration_s: float = 5.0,
    threads: int = 2,
    max_batch: int = 4,
    seed: int = 0,
    top_k: int = 3,
    url: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    settings: Any = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> ScenarioResult:
    """Poisson arrivals at ``target_qps`` for ``duration_s``: achieved QPS, latency percentiles, bound met.

    In-process on a thread pool of ``threads`` workers that batch up to ``max_batch`` queued queries;
    with ``url`` each query is sent to a running service instead (``pipeline`` is then unused), with
    ``token`` as a bearer token and ``headers`` added. A 429 is counted in ``refused`` and its
    ``Retry-After`` honoured. Works inside a running event loop (a notebook cell); see ``aserver``.
    """
    plan = _plan_server(pipeline, images, target_qps=target_qps, latency_bound_ms=latency_bound_ms,
                        duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed, url=url)
    if url:
        sent = http_headers(token, headers)
        served = run_sync(lambda: aserve_http(url, plan.items, plan.arrivals, connections=threads, headers=sent,
                                               settings=settings, progress=progress, desc=plan.desc))
    else:
        served = _serve(_local_caller(pipeline, top_k), plan.items, plan.arrivals, threads=threads,  # type: ignore[arg-type]
                        max_batch=max_batch, timer=timer, sleep=sleep, progress=progress, desc=plan.desc)
    return _server_result(plan, served)


async def aserver(
    pipeline: Pipeline | None,
    images: Sequence[Any],
    *,
    target_qps: float = 10.0,
    latency_bound_ms: float = 100.0,
    duration_s: float = 5.0,
    threads: int = 2,
    max_batch: int = 4,
    seed: int = 0,
    top_k: int = 3,
    url: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    settings: Any = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> ScenarioResult:
    """``server`` for async code: the HTTP load runs on the caller's loop, the in-process one in a worker thread."""
    plan = _plan_server(pipeline, images, target_qps=target_qps, latency_bound_ms=latency_bound_ms,
                        duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed, url=url)
    if url:
        served = await aserve_http(url, plan.items, plan.arrivals, connections=threads,
                                    headers=http_headers(token, headers), settings=settings, progress=progress,
                                    desc=plan.desc)
    else:
        served = await asyncio.to_thread(
            _serve, _local_caller(pipeline, top_k), plan.items, plan.arrivals, threads=threads,  # type: ignore[arg-type]
            max_batch=max_batch, timer=timer, sleep=sleep, progress=progress, desc=plan.desc)
    return _server_result(plan, served)
