"""Benchmark scenarios modelled on MLPerf inference, over any pipeline with ``predict``/``predict_batch``.

- ``single_stream``: one query at a time; latency percentiles.
- ``offline``: every sample at once, in batches; samples per second.
- ``server``: Poisson arrivals at a target QPS, served by a thread pool that batches what is queued;
  achieved QPS and p99 against a latency bound; optionally a search for the highest QPS meeting it.
  With ``url=`` the same load drives a running service (``POST /predict``, multipart ``front``).
- ``cache``: a query stream that repeats earlier images with a given probability; hit and miss
  latency and the hit rate.
- ``memory``: peak RSS per pipeline stage (``memory_profiler.memory_usage`` samples the process).

A pipeline is anything with ``predict(image, top_k=...)`` and ``predict_batch(images, batch_size=...)``
returning objects with ``.timings`` (ms per stage) and ``.cache_hit``; ``AmuletClassifier`` is one.
Every scenario is seeded and takes every knob as an argument; the clock and sleep are passed in.
"""

from __future__ import annotations

import dataclasses
import io
import math
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from amulet_lab.errors import ProcessingError, ValidationError

__all__ = [
    "Pipeline",
    "ScenarioResult",
    "STAGES",
    "single_stream",
    "offline",
    "server",
    "server_search",
    "cache_scenario",
    "memory_scenario",
    "load_images",
    "distinct_images",
    "percentile",
]

#: Pipeline stages reported by ``Prediction.timings`` (ms), in order.
STAGES = ("decode", "preprocess", "infer", "postprocess")


class Pipeline(Protocol):
    """What the scenarios drive: ``AmuletClassifier`` or anything shaped like it."""

    def predict(self, image: Any, *, top_k: int = 3) -> Any:
        """One image -> an object with ``.timings`` (ms per stage) and ``.cache_hit``."""
        ...

    def predict_batch(self, images: Sequence[Any], batch_size: int = 16) -> list[Any]:
        """Many images -> one such object per image, in order."""
        ...


@dataclasses.dataclass
class ScenarioResult:
    """What one scenario measured: flat numeric metrics, median ms per stage, latencies and extras."""

    scenario: str
    params: dict[str, Any]
    metrics: dict[str, float]
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    avg_batch_size: float = 1.0
    variant: str = ""
    latencies_ms: list[float] = dataclasses.field(default_factory=list, repr=False)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """``scenario`` or ``scenario[variant]``."""
        return self.scenario + (f"[{self.variant}]" if self.variant else "")

    def to_record(self) -> dict[str, Any]:
        """The history fields this result contributes (the runner adds run id, machine, reference ...)."""
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "params": self.params,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "stages": {k: _finite(v) for k, v in self.stages.items()},
            "avg_batch_size": _finite(self.avg_batch_size),
            "extra": self.extra,
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:4])
        return f"ScenarioResult({self.key}: {shown})"


def _finite(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _latency_metrics(latencies: Sequence[float], prefix: str = "latency") -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(latencies, 50),
        f"{prefix}_p90_ms": percentile(latencies, 90),
        f"{prefix}_p99_ms": percentile(latencies, 99),
        f"{prefix}_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
    }


def _stage_means(predictions: Sequence[Any]) -> dict[str, float]:
    """Median ms per stage over predictions that report it (``Prediction.timings``).

    Medians, not means: one query stalled by another process would otherwise move a whole stage.
    """
    out: dict[str, float] = {}
    for stage in STAGES + ("total",):
        values = [float(p.timings[stage]) for p in predictions if getattr(p, "timings", None) and stage in p.timings]
        if values:
            out[stage] = statistics.median(values)
    return out


def _stage_metrics(stages: Mapping[str, float]) -> dict[str, float]:
    return {f"stage_{k}_ms": v for k, v in stages.items() if k in STAGES}


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValidationError(f"{name} must be a whole number >= {minimum}, got {value!r}", field=name, value=value)
    return value


def _check_pos(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValidationError(f"{name} must be a number > 0, got {value!r}", field=name, value=value)
    return float(value)


def _check_images(images: Sequence[Any]) -> list[Any]:
    items = list(images)
    if not items:
        raise ValidationError("a scenario needs at least one image", field="images", code="E_NO_SAMPLES")
    return items


def _progress(iterable: Any = None, *, total: int | None = None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


# ----------------------------------------------------------------------------------------- inputs
def load_images(data_dir: str | Path, *, limit: int | None = None, seed: int = 0) -> list[bytes]:
    """The bytes of up to ``limit`` images under ``data_dir`` (any depth), shuffled with ``seed``.

    Bytes, not paths: the scenarios then time decoding, not the disk.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValidationError(f"data folder not found: {root}", field="data_dir", value=str(root), code="E_NO_SAMPLES")
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".bmp"}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not paths:
        raise ValidationError(f"no images under {root}", field="data_dir", value=str(root), code="E_NO_SAMPLES")
    random.Random(seed).shuffle(paths)
    if limit is not None:
        paths = paths[: _check_int("limit", limit)]
    return [p.read_bytes() for p in paths]


def distinct_images(images: Sequence[bytes], n: int, *, seed: int = 0) -> list[bytes]:
    """``n`` images with pairwise different bytes, cycling over ``images``.

    Repeats beyond the first pass get one corner pixel changed and are re-encoded as JPEG, so a
    content-addressed cache sees a new image while the model sees the same photo.
    """
    from PIL import Image

    base = _check_images(images)
    _check_int("n", n)
    out: list[bytes] = []
    rng = random.Random(seed)
    for i in range(n):
        data = base[i % len(base)]
        round_ = i // len(base)
        if round_ == 0:
            out.append(bytes(data))
            continue
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.putpixel((0, 0), (round_ % 256, (round_ // 256) % 256, rng.randrange(256)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------------------------- single stream
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
    items = _check_images(images)
    n = _check_int("queries", queries if queries is not None else len(items))
    _check_int("warmup", warmup, 0)
    if isinstance(min_duration_s, bool) or not isinstance(min_duration_s, (int, float)) or not 0 <= min_duration_s < 3600:
        raise ValidationError("min_duration_s must be in [0, 3600)", field="min_duration_s", value=min_duration_s)
    for i in range(warmup):
        pipeline.predict(items[i % len(items)], top_k=top_k)
    latencies, preds = [], []
    bar = _progress(total=n, desc="single_stream", enabled=progress)
    start = timer()
    i = 0
    while i < n or timer() - start < min_duration_s:
        t0 = timer()
        preds.append(pipeline.predict(items[i % len(items)], top_k=top_k))
        latencies.append((timer() - t0) * 1000.0)
        i += 1
        bar.update(1)
    wall = timer() - start
    bar.close()
    stages = _stage_means(preds)
    metrics = {**_latency_metrics(latencies), "qps": i / wall if wall > 0 else float("nan"), **_stage_metrics(stages),
               "queries_run": float(i)}
    params = {"queries": n, "min_duration_s": min_duration_s, "warmup": warmup, "top_k": top_k, "distinct_images": len(items)}
    return ScenarioResult("single_stream", params, metrics, stages, 1.0, latencies_ms=latencies)


# ---------------------------------------------------------------------------------------- offline
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
    items = _check_images(images)
    bs = _check_int("batch_size", batch_size)
    n = _check_int("queries", queries if queries is not None else len(items))
    _check_int("warmup", warmup, 0)
    if isinstance(min_duration_s, bool) or not isinstance(min_duration_s, (int, float)) or not 0 <= min_duration_s < 3600:
        raise ValidationError("min_duration_s must be in [0, 3600)", field="min_duration_s", value=min_duration_s)
    stream = [items[i % len(items)] for i in range(n)]
    for _ in range(warmup):
        pipeline.predict_batch(stream[:bs], batch_size=bs)
    batches = [stream[i : i + bs] for i in range(0, n, bs)]
    preds: list[Any] = []
    batch_ms: list[float] = []
    sizes: list[int] = []
    bar = _progress(total=len(batches), desc=f"offline bs={bs}", enabled=progress)
    start = timer()
    k = 0
    while k < len(batches) or timer() - start < min_duration_s:
        batch = batches[k % len(batches)]
        t0 = timer()
        out = pipeline.predict_batch(batch, batch_size=bs)
        batch_ms.append((timer() - t0) * 1000.0)
        if len(out) != len(batch):
            raise ProcessingError(
                f"predict_batch returned {len(out)} predictions for {len(batch)} images", stage="infer", code="E_BENCH_BATCH"
            )
        preds.extend(out)
        sizes.append(len(batch))
        k += 1
        bar.update(1)
    wall = timer() - start
    bar.close()
    stages = _stage_means(preds)
    done = sum(sizes)
    metrics = {
        "samples_per_s": done / wall if wall > 0 else float("nan"),
        **_latency_metrics(batch_ms, prefix="batch_latency"),
        **_stage_metrics(stages),
        "avg_batch_size": done / len(sizes),
        "samples_run": float(done),
    }
    params = {"queries": n, "batch_size": bs, "min_duration_s": min_duration_s, "warmup": warmup, "distinct_images": len(items)}
    return ScenarioResult("offline", params, metrics, stages, done / len(sizes), variant=f"bs={bs}", latencies_ms=batch_ms)


# ----------------------------------------------------------------------------------------- server
def poisson_arrivals(qps: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times (seconds from start) of a Poisson process at rate ``qps`` within ``duration_s``."""
    rng = random.Random(seed)
    rate, out, t = _check_pos("target_qps", qps), [], 0.0
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


def _serve_http(
    url: str,
    items: list[Any],
    arrivals: list[float],
    *,
    connections: int,
    settings: Any,
    progress: bool,
    desc: str,
) -> tuple[list[float], list[Any], list[int], float]:
    """Issue ``POST {url}/predict`` (multipart ``front``) at ``arrivals`` through one ``HttpPool``.

    The pool is asyncio-based, so the load generator is too: one task per query, started at its
    scheduled time; latency runs from the scheduled time to the answer, as in ``_serve``.
    """
    import asyncio

    from amulet_lab.errors import CircuitBreaker, RetryPolicy
    from amulet_lab.perf import HttpPool

    endpoint = url.rstrip("/")
    if not endpoint.endswith("/predict"):
        endpoint += "/predict"
    latencies: list[float] = [float("nan")] * len(arrivals)
    preds: list[Any] = [None] * len(arrivals)
    bar = _progress(total=len(arrivals), desc=desc, enabled=progress)

    async def one(pool: Any, i: int, due: float, loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        data = items[i % len(items)]
        response = await pool.post(endpoint, files={"front": (f"q{i}.jpg", bytes(data), "image/jpeg")})
        latencies[i] = (loop.time() - due) * 1000.0
        if response.status_code != 200:
            raise ProcessingError(
                f"{endpoint} answered {response.status_code}: {response.text[:200]}", stage="http", code="E_BENCH_HTTP"
            )
        body = response.json()
        front = body.get("front", body) if isinstance(body, dict) else {}
        preds[i] = _Remote(timings=dict(front.get("timings") or {}), cache_hit=bool(front.get("cache_hit", False)))
        bar.update(1)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        # Connection failures and timeouts are retried (briefly: a retried query still counts its full latency);
        # a breaker stops the run fast when the service is down instead of queueing every query on a dead host.
        retry = RetryPolicy(max_retries=2, delay=0.05, max_delay=0.5)
        breaker = CircuitBreaker(failure_threshold=5, timeout=5.0, name="bench-server")
        async with HttpPool(settings=settings, max_connections=connections, retry=retry, breaker=breaker) as pool:
            start = loop.time()
            await asyncio.gather(*(one(pool, i, start + at, loop) for i, at in enumerate(arrivals)))
            return loop.time() - start

    wall = asyncio.run(main())
    bar.close()
    return latencies, preds, [1] * len(arrivals), wall


@dataclasses.dataclass
class _Remote:
    """The parts of a service answer the scenarios read."""

    timings: dict[str, float]
    cache_hit: bool


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
) -> tuple[list[float], list[Any], list[int], float]:
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

    def worker() -> None:
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

    bar = _progress(total=len(arrivals), desc=desc, enabled=progress)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-server") as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        start = timer()
        for i, at in enumerate(arrivals):
            delay = start + at - timer()
            if delay > 0:
                sleep(delay)
            pending.put((i, start + at))
        for _ in range(threads):
            pending.put(None)
        for f in futures:
            f.result()
        wall = timer() - start
    bar.close()
    if errors:
        raise ProcessingError(f"{len(errors)} server query batch(es) failed: {errors[0]!r}", stage="bench") from errors[0]
    return latencies, preds, batch_sizes, wall


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
    settings: Any = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> ScenarioResult:
    """Poisson arrivals at ``target_qps`` for ``duration_s``: achieved QPS, latency percentiles, bound met.

    In-process on a thread pool of ``threads`` workers that batch up to ``max_batch`` queued queries;
    with ``url`` each query is sent to a running service instead (``pipeline`` is then unused).
    """
    items = _check_images(images)
    qps = _check_pos("target_qps", target_qps)
    bound = _check_pos("latency_bound_ms", latency_bound_ms)
    dur = _check_pos("duration_s", duration_s)
    _check_int("threads", threads)
    _check_int("max_batch", max_batch)
    if url is None and pipeline is None:
        raise ValidationError("server needs a pipeline or a url", field="pipeline", code="E_BENCH_TARGET")
    arrivals = poisson_arrivals(qps, dur, seed)
    if url:
        latencies, preds, sizes, wall = _serve_http(
            url, items, arrivals, connections=threads, settings=settings, progress=progress, desc=f"server {qps:.3g} qps"
        )
    else:
        latencies, preds, sizes, wall = _serve(
            _local_caller(pipeline, top_k), items, arrivals, threads=threads, max_batch=max_batch,  # type: ignore[arg-type]
            timer=timer, sleep=sleep, progress=progress, desc=f"server {qps:.3g} qps",
        )
    stages = _stage_means([p for p in preds if p is not None])
    p99 = percentile(latencies, 99)
    metrics = {
        "achieved_qps": len(latencies) / wall if wall > 0 else float("nan"),
        **_latency_metrics(latencies),
        "within_bound": sum(1 for v in latencies if v <= bound) / len(latencies),
        "meets_bound": 1.0 if p99 <= bound else 0.0,
        "queries": float(len(latencies)),
        **_stage_metrics(stages),
        "avg_batch_size": statistics.fmean(sizes) if sizes else float("nan"),
    }
    params = {
        "target_qps": round(qps, 6),
        "latency_bound_ms": bound,
        "duration_s": dur,
        "threads": threads,
        "max_batch": max_batch,
        "seed": seed,
        "url": url,
    }
    return ScenarioResult("server", params, metrics, stages, metrics["avg_batch_size"], latencies_ms=latencies)


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
    items = _check_images(images)
    bound = _check_pos("latency_bound_ms", latency_bound_ms)
    lo = _check_pos("qps_low", qps_low)
    _check_int("steps", steps)
    auto_high = qps_high is None
    if qps_high is None:
        # Capacity guess from a short, gentle probe at qps_low: threads / median latency, doubled.
        probe = server(pipeline, items, target_qps=lo, latency_bound_ms=bound, duration_s=min(duration_s, 1.0),
                       threads=threads, max_batch=1, seed=seed, url=url, settings=settings, timer=timer,
                       sleep=sleep, progress=False)
        per_query_s = max(probe.metrics["latency_p50_ms"] / 1000.0, 1e-4)
        qps_high = max(2.0 * threads / per_query_s, lo * 2)
    hi = _check_pos("qps_high", qps_high)
    if hi <= lo:
        raise ValidationError("qps_high must be above qps_low", field="qps_high", value=hi)
    common = dict(latency_bound_ms=bound, duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed,
                  url=url, settings=settings, timer=timer, sleep=sleep, progress=progress)
    trace: list[dict[str, float]] = []
    best: ScenarioResult | None = None
    first = server(pipeline, items, target_qps=lo, **common)  # type: ignore[arg-type]
    trace.append({"target_qps": lo, "p99_ms": first.metrics["latency_p99_ms"], "meets": first.metrics["meets_bound"]})
    if first.metrics["meets_bound"]:
        best = first
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            result = server(pipeline, items, target_qps=mid, **common)  # type: ignore[arg-type]
            trace.append({"target_qps": mid, "p99_ms": result.metrics["latency_p99_ms"], "meets": result.metrics["meets_bound"]})
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


# ------------------------------------------------------------------------------------------ cache
def repeat_stream(n: int, repeat_ratio: float, seed: int) -> list[int]:
    """Image indices for ``n`` queries: with probability ``repeat_ratio`` an earlier image, else a new one."""
    _check_int("queries", n)
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
    stream = repeat_stream(_check_int("queries", queries), repeat_ratio, seed)
    pool = distinct_images(_check_images(images), max(stream) + 1, seed=seed)
    if isinstance(min_duration_s, bool) or not isinstance(min_duration_s, (int, float)) or not 0 <= min_duration_s < 3600:
        raise ValidationError("min_duration_s must be in [0, 3600)", field="min_duration_s", value=min_duration_s)
    hits: list[float] = []
    misses: list[float] = []
    preds: list[Any] = []
    passes = 0
    bar = _progress(total=len(stream), desc=f"cache r={repeat_ratio}", enabled=progress)
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
    bar.close()
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
    stages = _stage_means([p for p in preds if not getattr(p, "cache_hit", False)])
    params = {"repeat_ratio": repeat_ratio, "queries": len(stream), "min_duration_s": min_duration_s, "seed": seed,
              "top_k": top_k}
    return ScenarioResult(
        "cache", params, metrics, stages, 1.0, variant=f"r={repeat_ratio}", latencies_ms=hits + misses,
        extra={"hits": len(hits), "misses": len(misses), "passes": passes},
    )


# ----------------------------------------------------------------------------------------- memory
def memory_scenario(
    stages: Sequence[tuple[str, Callable[[Any], Any]]],
    *,
    first_input: Any = None,
    interval_s: float = 0.005,
    timer: Callable[[], float] = time.perf_counter,
    params: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Peak RSS (MB) of this process during each stage; each stage gets the previous stage's output.

    ``memory_profiler.memory_usage`` samples the process every ``interval_s`` from a helper process
    while the stage runs, so short peaks (a batch tensor freed at once) are still seen.
    """
    import psutil
    from memory_profiler import memory_usage

    if not stages:
        raise ValidationError("memory_scenario needs at least one stage", field="stages")
    _check_pos("interval_s", interval_s)
    proc = psutil.Process()
    metrics: dict[str, float] = {}
    stage_ms: dict[str, float] = {}
    value = first_input
    for name, fn in stages:
        before = proc.memory_info().rss / 2**20
        t0 = timer()
        peak, value = memory_usage((fn, (value,), {}), interval=interval_s, max_usage=True, retval=True,
                                   include_children=False)
        stage_ms[name] = (timer() - t0) * 1000.0
        metrics[f"peak_rss_mb_{name}"] = float(peak)
        metrics[f"increment_mb_{name}"] = max(0.0, float(peak) - before)
    metrics["peak_rss_mb"] = max(v for k, v in metrics.items() if k.startswith("peak_rss_mb_"))
    return ScenarioResult(
        "memory", dict(params or {}, interval_s=interval_s), metrics, {}, 1.0,
        extra={"stage_wall_ms_with_sampler": stage_ms},
    )
