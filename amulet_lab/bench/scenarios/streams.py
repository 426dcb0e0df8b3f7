"""Queries issued back to back by the caller: ``single_stream`` (one at a time) and ``offline`` (in batches)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from amulet_lab.bench.scenarios.arguments import check_duration, check_images, check_int, progress_bar
from amulet_lab.bench.scenarios.result import Pipeline, ScenarioResult, latency_metrics, stage_means, stage_metrics
from amulet_lab.errors import ProcessingError

__all__ = ["single_stream", "offline"]


def single_stream(
    pipeline: Pipeline,
    images: Sequence[Any],
    *,
    queries: int | None = None,
    min_duration_s: float = 0.0,
    warmup: int = 2,
    top_k: int = 3,
    timer: Callable[[], float] = time.perf_counter,
    progress: bool = True,
) -> ScenarioResult:
    """One query at a time, each waiting for the last: latency percentiles and queries per second.

    At least ``queries`` queries and at least ``min_duration_s`` seconds (cycling over the images), as
    MLPerf asks for a minimum duration: a short window is at the mercy of one burst of other load.
    """
    items = check_images(images)
    n = check_int("queries", queries if queries is not None else len(items))
    check_int("warmup", warmup, 0)
    check_duration("min_duration_s", min_duration_s)
    for i in range(warmup):
        pipeline.predict(items[i % len(items)], top_k=top_k)
    latencies, preds = [], []
    with progress_bar(total=n, desc="single_stream", enabled=progress) as bar:
        start = timer()
        i = 0
        while i < n or timer() - start < min_duration_s:
            t0 = timer()
            preds.append(pipeline.predict(items[i % len(items)], top_k=top_k))
            latencies.append((timer() - t0) * 1000.0)
            i += 1
            bar.update(1)
        wall = timer() - start
    stages = stage_means(preds)
    metrics = {**latency_metrics(latencies), "qps": i / wall if wall > 0 else float("nan"), **stage_metrics(stages),
               "queries_run": float(i)}
    params = {"queries": n, "min_duration_s": min_duration_s, "warmup": warmup, "top_k": top_k, "distinct_images": len(items)}
    return ScenarioResult("single_stream", params, metrics, stages, 1.0, latencies_ms=latencies)


def offline(
    pipeline: Pipeline,
    images: Sequence[Any],
    *,
    batch_size: int = 8,
    queries: int | None = None,
    min_duration_s: float = 0.0,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
    progress: bool = True,
) -> ScenarioResult:
    """All samples at once, in batches of ``batch_size``: samples per second and per-batch latency.

    The ``queries`` samples are passed over again until ``min_duration_s`` has gone by.
    """
    items = check_images(images)
    bs = check_int("batch_size", batch_size)
    n = check_int("queries", queries if queries is not None else len(items))
    check_int("warmup", warmup, 0)
    check_duration("min_duration_s", min_duration_s)
    stream = [items[i % len(items)] for i in range(n)]
    for _ in range(warmup):
        pipeline.predict_batch(stream[:bs], batch_size=bs)
    batches = [stream[i : i + bs] for i in range(0, n, bs)]
    preds: list[Any] = []
    batch_ms: list[float] = []
    sizes: list[int] = []
    with progress_bar(total=len(batches), desc=f"offline bs={bs}", enabled=progress) as bar:
        start = timer()
        k = 0
        while k < len(batches) or timer() - start < min_duration_s:
            batch = batches[k % len(batches)]
            t0 = timer()
            out = pipeline.predict_batch(batch, batch_size=bs)
            batch_ms.append((timer() - t0) * 1000.0)
            if len(out) != len(batch):
                raise ProcessingError(
                    f"predict_batch returned {len(out)} predictions for {len(batch)} images", stage="infer",
                    code="E_BENCH_BATCH",
                )
            preds.extend(out)
            sizes.append(len(batch))
            k += 1
            bar.update(1)
        wall = timer() - start
    stages = stage_means(preds)
    done = sum(sizes)
    metrics = {
        "samples_per_s": done / wall if wall > 0 else float("nan"),
        **latency_metrics(batch_ms, prefix="batch_latency"),
        **stage_metrics(stages),
        "avg_batch_size": done / len(sizes),
        "samples_run": float(done),
    }
    params = {"queries": n, "batch_size": bs, "min_duration_s": min_duration_s, "warmup": warmup, "distinct_images": len(items)}
    return ScenarioResult("offline", params, metrics, stages, done / len(sizes), variant=f"bs={bs}", latencies_ms=batch_ms)
