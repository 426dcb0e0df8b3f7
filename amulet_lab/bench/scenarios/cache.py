"""The ``cache`` scenario: a query stream that repeats earlier images; hit and miss latency and the hit rate."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from amulet_lab.bench.scenarios.arguments import check_duration, check_images, check_int, progress_bar
from amulet_lab.bench.scenarios.inputs import distinct_images
from amulet_lab.bench.scenarios.result import Pipeline, ScenarioResult, stage_means
from amulet_lab.bench.stats import percentile
from amulet_lab.errors import ValidationError

__all__ = ["cache_scenario", "repeat_stream"]


def repeat_stream(n: int, repeat_ratio: float, seed: int) -> list[int]:
    """Image indices for ``n`` queries: with probability ``repeat_ratio`` an earlier image, else a new one."""
    check_int("queries", n)
    if not (0.0 <= repeat_ratio < 1.0):
        raise ValidationError("repeat_ratio must be in [0, 1)", field="repeat_ratio", value=repeat_ratio)
    rng = random.Random(seed)
    stream, fresh = [], 0
    for _ in range(n):
        if fresh and rng.random() < repeat_ratio:
            stream.append(rng.randrange(fresh))
        else:
            stream.append(fresh)
            fresh += 1
    return stream


def cache_scenario(
    pipeline: Pipeline,
    images: Sequence[bytes],
    *,
    repeat_ratio: float = 0.5,
    queries: int = 40,
    min_duration_s: float = 0.0,
    seed: int = 0,
    top_k: int = 3,
    clear: Callable[[], Any] | None = None,
    timer: Callable[[], float] = time.perf_counter,
    progress: bool = True,
) -> ScenarioResult:
    """Queries that repeat earlier images with probability ``repeat_ratio``: hit/miss latency, hit rate.

    ``clear`` empties the pipeline's cache before each pass, so every pass starts cold; with it, passes
    of the same seeded stream repeat until ``min_duration_s`` has gone by (more hits and misses timed).
    """
    stream = repeat_stream(check_int("queries", queries), repeat_ratio, seed)
    pool = distinct_images(check_images(images), max(stream) + 1, seed=seed)
    check_duration("min_duration_s", min_duration_s)
    hits: list[float] = []
    misses: list[float] = []
    preds: list[Any] = []
    passes = 0
    with progress_bar(total=len(stream), desc=f"cache r={repeat_ratio}", enabled=progress) as bar:
        start = timer()
        while passes == 0 or (clear is not None and timer() - start < min_duration_s):
            if clear is not None:
                clear()
            for i in stream:
                t0 = timer()
                pred = pipeline.predict(pool[i], top_k=top_k)
                ms = (timer() - t0) * 1000.0
                (hits if getattr(pred, "cache_hit", False) else misses).append(ms)
                preds.append(pred)
                bar.update(1)
            passes += 1
    total = len(hits) + len(misses)
    expected = 1 - (max(stream) + 1) / len(stream)
    hit_p50, miss_p50 = percentile(hits, 50), percentile(misses, 50)
    metrics = {
        "hit_rate": len(hits) / total,
        "expected_hit_rate": expected,
        "hit_latency_p50_ms": hit_p50,
        "hit_latency_mean_ms": statistics.fmean(hits) if hits else float("nan"),
        "miss_latency_p50_ms": miss_p50,
        "miss_latency_mean_ms": statistics.fmean(misses) if misses else float("nan"),
        "speedup": miss_p50 / hit_p50 if hits and misses and hit_p50 > 0 else float("nan"),
        "passes": float(passes),
    }
    stages = stage_means([p for p in preds if not getattr(p, "cache_hit", False)])
    params = {"repeat_ratio": repeat_ratio, "queries": len(stream), "min_duration_s": min_duration_s, "seed": seed,
              "top_k": top_k}
    return ScenarioResult(
        "cache", params, metrics, stages, 1.0, variant=f"r={repeat_ratio}", latencies_ms=hits + misses,
        extra={"hits": len(hits), "misses": len(misses), "passes": passes},
    )
