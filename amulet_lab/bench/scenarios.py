"""Benchmark scenarios modelled on MLPerf inference, over any pipeline with ``predict``/``predict_batch``.

- ``single_stream``: one query at a time; latency percentiles.
- ``offline``: every sample at once, in batches; samples per second.
- ``server``: Poisson arrivals at a target QPS, served by a thread pool that batches what is queued;
  achieved QPS and p99 against a latency bound; optionally a search for the highest QPS meeting it.
  With ``url=`` the same load drives a running service (``POST /predict``, multipart ``front``).
- ``cache``: a query stream that repeats earlier images with a given probability; hit and miss
  latency and the hit rate.
- ``memory``: peak RSS per pipeline stage (``amulet_lab.memory.RssSampler``: a thread samples this process).

``server`` and ``server_search`` have async twins (``aserver``, ``aserver_search``) for code that is
already in an event loop; the sync ones work in a notebook cell too (``amulet_lab.bench.aio.run_sync``).

A pipeline is anything with ``predict(image, top_k=...)`` and ``predict_batch(images, batch_size=...)``
returning objects with ``.timings`` (ms per stage) and ``.cache_hit``; ``AmuletClassifier`` is one.
Every scenario is seeded and takes every knob as an argument; the clock and sleep are passed in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from amulet_lab.bench.aio import run_sync
from amulet_lab.bench.stats import percentile
from amulet_lab.errors import AmuletError, ProcessingError, ValidationError

__all__ = [
    "Pipeline",
    "ScenarioResult",
    "STAGES",
    "single_stream",
    "offline",
    "server",
    "server_search",
    "aserver",
    "aserver_search",
    "cache_scenario",
    "memory_scenario",
    "image_paths",
    "load_images",
    "distinct_images",
    "resize_images",
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


def _check_duration(name: str, value: Any) -> float:
    """A duration in seconds in [0, 3600): the one validator of every ``min_duration_s``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise ValidationError(f"{name} must be a number of seconds in [0, 3600), got {value!r}", field=name, value=value)
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
def image_paths(root: str | Path, *, limit: int | None = None, seed: int | None = None) -> list[Path]:
    """Image files under ``root`` (any depth; ``amulet_lab.data.IMAGE_SUFFIXES``), in path order or shuffled
    with ``seed``, at most ``limit`` of them."""
    from amulet_lab.data.dataset import IMAGE_SUFFIXES

    folder = Path(root)
    if not folder.is_dir():
        raise ValidationError(f"data folder not found: {folder}", field="data_dir", value=str(folder), code="E_NO_SAMPLES")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValidationError(f"no images under {folder}", field="data_dir", value=str(folder), code="E_NO_SAMPLES")
    if seed is not None:
        random.Random(seed).shuffle(paths)
    if limit is not None:
        paths = paths[: _check_int("limit", limit)]
    return paths


def load_images(data_dir: str | Path, *, limit: int | None = None, seed: int | None = 0) -> list[bytes]:
    """The bytes of up to ``limit`` images under ``data_dir`` (any depth), shuffled with ``seed`` (None: path order).

    Bytes, not paths: the scenarios then time decoding, not the disk.
    """
    return [p.read_bytes() for p in image_paths(data_dir, limit=limit, seed=seed)]


def resize_images(images: Sequence[bytes], size: int, *, quality: int = 92) -> list[bytes]:
    """Each image re-encoded as JPEG with its longer side ``size`` px (aspect kept): the ``image_sizes`` knob."""
    from PIL import Image

    side = _check_int("image_size", size, 8)
    out = []
    for data in _check_images(images):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


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
    _check_duration("min_duration_s", min_duration_s)
    for i in range(warmup):
        pipeline.predict(items[i % len(items)], top_k=top_k)
    latencies, preds = [], []
    with _progress(total=n, desc="single_stream", enabled=progress) as bar:
        start = timer()
        i = 0
        while i < n or timer() - start < min_duration_s:
            t0 = timer()
            preds.append(pipeline.predict(items[i % len(items)], top_k=top_k))
            latencies.append((timer() - t0) * 1000.0)
            i += 1
            bar.update(1)
        wall = timer() - start
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
    _check_duration("min_duration_s", min_duration_s)
    stream = [items[i % len(items)] for i in range(n)]
    for _ in range(warmup):
        pipeline.predict_batch(stream[:bs], batch_size=bs)
    batches = [stream[i : i + bs] for i in range(0, n, bs)]
    preds: list[Any] = []
    batch_ms: list[float] = []
    sizes: list[int] = []
    with _progress(total=len(batches), desc=f"offline bs={bs}", enabled=progress) as bar:
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


@dataclasses.dataclass
class _Served:
    """What one server run collected: latency per query (NaN when refused), predictions, batch sizes, wall time."""

    latencies: list[float]
    preds: list[Any]
    sizes: list[int]
    wall: float
    refused: int = 0


async def _aserve_http(
    url: str,
    items: list[Any],
    arrivals: list[float],
    *,
    connections: int,
    headers: Mapping[str, str],
    settings: Any,
    progress: bool,
    desc: str,
) -> _Served:
    """Issue ``POST {url}/predict`` (multipart ``front``) at ``arrivals`` through one ``HttpPool``.

    One task per query, started at its scheduled time; latency runs from the scheduled time to the
    answer, as in ``_serve``. A 429 counts the query as refused and every later query waits out the
    ``Retry-After`` (its latency still runs from its own schedule); any other failure ends the run.
    """
    from amulet_lab.bench.http_client import post_predict
    from amulet_lab.errors import CircuitBreaker, RetryPolicy
    from amulet_lab.perf import HttpPool

    endpoint = url.rstrip("/")
    if not endpoint.endswith("/predict"):
        endpoint += "/predict"
    latencies: list[float] = [float("nan")] * len(arrivals)
    preds: list[Any] = [None] * len(arrivals)
    loop = asyncio.get_running_loop()
    backoff = {"until": 0.0, "refused": 0}

    async def one(pool: Any, bar: Any, i: int, due: float) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        if backoff["until"] > loop.time():  # the service asked us to back off: honour it
            await asyncio.sleep(backoff["until"] - loop.time())
        outcome = await post_predict(pool, endpoint, bytes(items[i % len(items)]), headers=headers, filename=f"q{i}.jpg")
        bar.update(1)
        if outcome.refused:
            backoff["refused"] += 1
            backoff["until"] = max(backoff["until"], loop.time() + outcome.retry_after_s)
            return
        if not outcome.ok:
            what = f"no answer ({outcome.lost_reason})" if outcome.lost else f"{outcome.status}: {outcome.body}"
            raise ProcessingError(f"{endpoint} answered {what}", stage="http", code="E_BENCH_HTTP",
                                  context={"status": outcome.status})
        latencies[i] = (loop.time() - due) * 1000.0
        body = outcome.body
        front = body.get("front", body) if isinstance(body, dict) else {}
        preds[i] = _Remote(timings=dict(front.get("timings") or {}), cache_hit=bool(front.get("cache_hit", False)))

    # Connection failures and timeouts are retried (briefly: a retried query still counts its full latency);
    # a breaker stops the run fast when the service is down instead of queueing every query on a dead host.
    retry = RetryPolicy(max_retries=2, delay=0.05, max_delay=0.5)
    breaker = CircuitBreaker(failure_threshold=5, timeout=5.0, name="bench-server")
    with _progress(total=len(arrivals), desc=desc, enabled=progress) as bar:
        async with HttpPool(settings=settings, max_connections=connections, retry=retry, breaker=breaker) as pool:
            start = loop.time()
            try:
                # A TaskGroup, not gather: the first failed query cancels the rest instead of letting them run on.
                async with asyncio.TaskGroup() as group:
                    for i, at in enumerate(arrivals):
                        group.create_task(one(pool, bar, i, start + at))
            except ExceptionGroup as failed:
                first = failed.exceptions[0]
                code = first.code if isinstance(first, AmuletError) else "E_BENCH_HTTP"
                raise ProcessingError(f"server run against {endpoint} failed: {first}", stage="http", code=code) from failed
            wall = loop.time() - start
    return _Served(latencies, preds, [1] * len(arrivals), wall, backoff["refused"])


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
) -> _Served:
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

    with _progress(total=len(arrivals), desc=desc, enabled=progress) as bar, \
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
    return _Served(latencies, preds, batch_sizes, wall)


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
    items = _check_images(images)
    qps = _check_pos("target_qps", target_qps)
    bound = _check_pos("latency_bound_ms", latency_bound_ms)
    dur = _check_pos("duration_s", duration_s)
    _check_int("threads", threads)
    _check_int("max_batch", max_batch)
    if url is None and pipeline is None:
        raise ValidationError("server needs a pipeline or a url", field="pipeline", code="E_BENCH_TARGET")
    params = {"target_qps": round(qps, 6), "latency_bound_ms": bound, "duration_s": dur, "threads": threads,
              "max_batch": max_batch, "seed": seed, "url": url}
    return _ServerPlan(items, poisson_arrivals(qps, dur, seed), params, bound, f"server {qps:.3g} qps")


def _server_result(plan: _ServerPlan, served: _Served) -> ScenarioResult:
    """The ``server`` result from what a run collected (latencies of answered queries only)."""
    answered = [v for v in served.latencies if not math.isnan(v)]
    stages = _stage_means([p for p in served.preds if p is not None])
    p99 = percentile(answered, 99)
    n = len(served.latencies)
    metrics = {
        "achieved_qps": len(answered) / served.wall if served.wall > 0 else float("nan"),
        **_latency_metrics(answered),
        "within_bound": sum(1 for v in answered if v <= plan.bound) / n,
        # A refused query did not meet the bound either: a rate-limited run does not count as meeting it.
        "meets_bound": 1.0 if answered and p99 <= plan.bound and not served.refused else 0.0,
        "queries": float(n),
        "refused": float(served.refused),
        **_stage_metrics(stages),
        "avg_batch_size": statistics.fmean(served.sizes) if served.sizes else float("nan"),
    }
    return ScenarioResult("server", dict(plan.params), metrics, stages, metrics["avg_batch_size"],
                          latencies_ms=answered)


def _http_headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    from amulet_lab.bench.http_client import bearer_headers

    return bearer_headers(token, headers)


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
        sent = _http_headers(token, headers)
        served = run_sync(lambda: _aserve_http(url, plan.items, plan.arrivals, connections=threads, headers=sent,
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
        served = await _aserve_http(url, plan.items, plan.arrivals, connections=threads,
                                    headers=_http_headers(token, headers), settings=settings, progress=progress,
                                    desc=plan.desc)
    else:
        served = await asyncio.to_thread(
            _serve, _local_caller(pipeline, top_k), plan.items, plan.arrivals, threads=threads,  # type: ignore[arg-type]
            max_batch=max_batch, timer=timer, sleep=sleep, progress=progress, desc=plan.desc)
    return _server_result(plan, served)


def _search(*, latency_bound_ms: float, qps_low: float, qps_high: float | None, steps: int, duration_s: float,
            threads: int, max_batch: int, seed: int, url: str | None,
            ) -> Generator[dict[str, Any], ScenarioResult, ScenarioResult]:
    """The I/O-free core of ``server_search``: yields the keyword arguments of each server run to do,
    is sent its result, and returns the search result. ``server_search`` and ``aserver_search`` drive it."""
    bound = _check_pos("latency_bound_ms", latency_bound_ms)
    lo = _check_pos("qps_low", qps_low)
    _check_int("steps", steps)
    auto_high = qps_high is None
    if qps_high is None:
        # Capacity guess from a short, gentle probe at qps_low: threads / median latency, doubled.
        probe = yield dict(target_qps=lo, latency_bound_ms=bound, duration_s=min(duration_s, 1.0), threads=threads,
                           max_batch=1, seed=seed, progress=False)
        p50 = probe.metrics["latency_p50_ms"]
        per_query_s = max(p50 / 1000.0, 1e-4) if math.isfinite(p50) else 1.0  # all refused: assume 1 s
        qps_high = max(2.0 * threads / per_query_s, lo * 2)
    hi = _check_pos("qps_high", qps_high)
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
    items = _check_images(images)
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
    items = _check_images(images)
    fixed = dict(url=url, token=token, headers=headers, settings=settings, timer=timer, sleep=sleep)
    steps_ = _search(latency_bound_ms=latency_bound_ms, qps_low=qps_low, qps_high=qps_high, steps=steps,
                     duration_s=duration_s, threads=threads, max_batch=max_batch, seed=seed, url=url)
    try:
        run = next(steps_)
        while True:
            run = steps_.send(await aserver(pipeline, items, **{"progress": progress, **fixed, **run}))
    except StopIteration as done:
        return done.value


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
    _check_duration("min_duration_s", min_duration_s)
    hits: list[float] = []
    misses: list[float] = []
    preds: list[Any] = []
    passes = 0
    with _progress(total=len(stream), desc=f"cache r={repeat_ratio}", enabled=progress) as bar:
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
    batch_size: int = 1,
    timer: Callable[[], float] = time.perf_counter,
    params: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Peak RSS (MB) of this process during each stage; each stage gets the previous stage's output.

    ``amulet_lab.memory.RssSampler`` samples the process every ``interval_s`` from a thread of this
    process while the stage runs, so short peaks (a batch tensor freed at once) are still seen. A thread,
    not ``memory_profiler``'s helper process: forking a threaded torch process per stage is unsafe.
    The chain handles ``batch_size`` images at once: that is the average batch size reported, and the
    per-stage split (``stages``) is each stage's wall time, sampler running, divided by it (ms per image).
    """
    from amulet_lab.memory._sampling import MB, RssSampler

    if not stages:
        raise ValidationError("memory_scenario needs at least one stage", field="stages")
    _check_pos("interval_s", interval_s)
    _check_int("batch_size", batch_size)
    metrics: dict[str, float] = {}
    stage_ms: dict[str, float] = {}
    value = first_input
    for name, fn in stages:
        t0 = timer()
        with RssSampler(interval_s) as sampler:
            value = fn(value)
        stage_ms[name] = (timer() - t0) * 1000.0
        metrics[f"peak_rss_mb_{name}"] = sampler.peak_rss / MB
        metrics[f"increment_mb_{name}"] = sampler.peak_delta_bytes / MB
    metrics["peak_rss_mb"] = max(v for k, v in metrics.items() if k.startswith("peak_rss_mb_"))
    per_image = {name: ms / batch_size for name, ms in stage_ms.items()}
    return ScenarioResult(
        "memory", dict(params or {}, interval_s=interval_s), metrics, per_image, float(batch_size),
        extra={"stage_wall_ms_with_sampler": stage_ms},
    )
