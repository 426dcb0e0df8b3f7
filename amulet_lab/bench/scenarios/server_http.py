"""The ``server`` scenario against a running service: ``POST {url}/predict`` at scheduled times, one ``HttpPool``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from amulet_lab.bench.scenarios.arguments import progress_bar
from amulet_lab.bench.scenarios.result import Served
from amulet_lab.errors import AmuletError, ProcessingError

__all__ = ["aserve_http", "http_headers"]


def http_headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` plus ``Authorization: Bearer <token>`` when a token is given."""
    from amulet_lab.bench.http_client import bearer_headers

    return bearer_headers(token, headers)


async def aserve_http(
    url: str,
    items: list[Any],
    arrivals: list[float],
    *,
    connections: int,
    headers: Mapping[str, str],
    settings: Any,
    progress: bool,
    desc: str,
) -> Served:
    """Issue ``POST {url}/predict`` (multipart ``front``) at ``arrivals`` through one ``HttpPool``.

    ``Served.sizes`` holds, per query, the size of the service's batched forward pass it went through
    (0 when answered from the prediction cache). One task per query, started at its scheduled time; latency runs from the scheduled time to the
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
    # The size of the forward pass each answer's front went through (0: answered from the cache).
    sizes: list[int] = [0] * len(arrivals)

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
        size = (body.get("batch") or {}).get("front") if isinstance(body, dict) else None
        sizes[i] = size if isinstance(size, int) else 1

    # Connection failures and timeouts are retried (briefly: a retried query still counts its full latency);
    # a breaker stops the run fast when the service is down instead of queueing every query on a dead host.
    retry = RetryPolicy(max_retries=2, delay=0.05, max_delay=0.5)
    breaker = CircuitBreaker(failure_threshold=5, timeout=5.0, name="bench-server")
    with progress_bar(total=len(arrivals), desc=desc, enabled=progress) as bar:
        made = dict(max_connections=connections, retry=retry, breaker=breaker)
        # ``settings`` (the caller's, if any) give the request timeout, AMULET_HTTP_TIMEOUT.
        http_pool = HttpPool.from_settings(settings, **made) if settings is not None else HttpPool(**made)
        async with http_pool as pool:
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
    return Served(latencies, preds, sizes, wall, backoff["refused"])


@dataclasses.dataclass
class _Remote:
    """The parts of a service answer the scenarios read."""

    timings: dict[str, float]
    cache_hit: bool
