"""A bounded closed-loop load test of an HTTP service, by URL.

``clients`` concurrent clients each send ``POST /predict`` back to back for ``duration_s``
seconds through one ``amulet_lab.perf.HttpPool`` (retry on connect errors, circuit breaker).
With one token per client (``tokens``), each client has its own rate-limit bucket; a 429 is
honoured (the client waits ``Retry-After``, bounded by the end of the run) and counted, not lost.

This module only talks to a service at a URL: starting one for the run, and issuing its tokens,
is the caller's job (``amulet-lab load`` does both when given no ``--url``).

A request is *lost* when it got no HTTP answer at all (transport failure after the retries,
or the breaker refused it). The run passes when nothing was lost and no answer was a 5xx.

The mean batch size is the service's own (``/health``'s ``batching`` figures before and after the run);
when ``/health`` cannot say, it is estimated from the answers (each names the size of the forward pass
its front went through: the number of passes is the sum of 1/size). ``stall=N`` keeps N hostile uploads
open beside the clients for the whole run (``POST /predict`` announcing ``STALL_DECLARED`` bytes, sending
``STALL_SENT``, then nothing; one that the server closes is opened again), to measure what slow clients
cost honest ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.bench.aio import run_sync
from amulet_lab.bench.stats import percentile
from amulet_lab.errors import CircuitBreaker, RetryPolicy, ValidationError

__all__ = ["LoadResult", "run_load", "arun_load", "sample_images", "check_load_args", "STALL_DECLARED", "STALL_SENT"]

#: What one stalled upload announces and what it sends before it goes quiet.
STALL_DECLARED = 1_000_000
STALL_SENT = 100


@dataclasses.dataclass
class LoadResult:
    """What a load run measured."""

    url: str
    duration_s: float
    clients: int
    sent: int
    answered: int
    ok: int
    lost: int
    server_errors: int
    rate_limited: int
    status_counts: dict[int, int]
    latencies_ms: list[float] = dataclasses.field(repr=False)
    pool_stats: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    lost_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    batch_sizes: list[int] = dataclasses.field(default_factory=list, repr=False)
    service_batching: dict[str, float] | None = None
    stalled: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        """Photos per forward pass during the run: the service's own figure, else estimated from the answers."""
        if self.service_batching and self.service_batching.get("batches", 0) > 0:
            return self.service_batching["items"] / self.service_batching["batches"]
        sizes = [b for b in self.batch_sizes if b > 0]
        return len(sizes) / sum(1.0 / b for b in sizes) if sizes else math.nan

    @property
    def throughput_rps(self) -> float:
        """Successful answers per second of the run."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile of successful (200) requests (nan when none)."""
        return percentile(self.latencies_ms, q)

    @property
    def passed(self) -> bool:
        """No request lost and no 5xx answer."""
        return self.lost == 0 and self.server_errors == 0 and self.sent > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the raw latencies)."""
        return {
            "url": self.url,
            "duration_s": round(self.duration_s, 3),
            "clients": self.clients,
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "lost": self.lost,
            "lost_reasons": dict(self.lost_reasons),
            "server_errors": self.server_errors,
            "rate_limited": self.rate_limited,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "throughput_rps": round(self.throughput_rps, 3),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p95_ms": round(self.percentile_ms(95), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else math.nan,
            "mean_batch_size": round(self.mean_batch_size, 3),
            "batching": self.service_batching,
            "stalled": dict(self.stalled),
            "pool": self.pool_stats,
            "passed": self.passed,
        }

    def to_text(self) -> str:
        """A short plain-text report."""
        d = self.to_dict()
        return "\n".join(
            [
                f"== load {d['url']}  {d['clients']} clients, {d['duration_s']} s",
                f"  sent {d['sent']}  answered {d['answered']}  ok {d['ok']}  lost {d['lost']}  "
                f"5xx {d['server_errors']}  429 {d['rate_limited']}",
                f"  throughput {d['throughput_rps']} req/s   p50 {d['p50_ms']} ms   p95 {d['p95_ms']} ms   "
                f"p99 {d['p99_ms']} ms   max {d['max_ms']} ms",
                f"  mean batch size {d['mean_batch_size']}"
                + (f"   stalled uploads {d['stalled']}" if d["stalled"] else ""),
                f"  statuses {d['status_counts']}   {'PASS' if d['passed'] else 'FAIL'}",
            ]
        )

    def __repr__(self) -> str:
        return (
            f"<LoadResult {self.url} ok={self.ok} lost={self.lost} 5xx={self.server_errors} "
            f"{self.throughput_rps:.1f} req/s p95={self.percentile_ms(95):.1f} ms>"
        )


def sample_images(root: str | Path | None = None, *, limit: int = 32) -> list[bytes]:
    """The bytes of up to ``limit`` images under ``root`` (default: the committed samples), in path order."""
    from amulet_lab.bench.scenarios import load_images

    if root is None:
        from amulet_lab.data import SAMPLES_DIR

        root = SAMPLES_DIR
    return load_images(root, limit=limit, seed=None)


def check_load_args(duration_s: float, clients: int, warmup_s: float = 0.0) -> None:
    """``ValidationError`` unless 0 < duration_s <= 3600, clients is an int >= 1 and 0 <= warmup_s <= 60."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 < duration_s <= 3600:
        raise ValidationError("duration_s must be a number in (0, 3600]", field="duration_s", value=duration_s)
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= 1000:
        raise ValidationError("clients must be an int in [1, 1000]", field="clients", value=clients)
    if isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float)) or not 0 <= warmup_s <= 60:
        raise ValidationError("warmup_s must be a number in [0, 60]", field="warmup_s", value=warmup_s)


async def arun_load(
    url: str,
    images: Sequence[bytes],
    *,
    duration_s: float = 30.0,
    clients: int = 8,
    tokens: Sequence[str | None] | None = None,
    timer: Callable[[], float] = time.perf_counter,
    stall: int = 0,
) -> LoadResult:
    """Drive ``url`` with ``clients`` closed-loop clients for ``duration_s`` s (client ``i`` sends ``tokens[i % n]``).

    ``stall``: that many stalled uploads are kept open beside them (see the module doc).
    """
    from amulet_lab.bench.http_client import bearer_headers, post_predict
    from amulet_lab.perf import HttpPool, PerformanceMonitor

    if not images:
        raise ValidationError("need at least one image to send", field="images", value=0)
    check_load_args(duration_s, clients)
    _check_stall(stall)
    tokens = list(tokens) if tokens is not None else [None] * clients
    if not tokens:
        raise ValidationError("tokens must be None or hold at least one entry (None: no token)", field="tokens", value=0)
    statuses: Counter[int] = Counter()
    lost_reasons: Counter[str] = Counter()
    latencies: list[float] = []
    batch_sizes: list[int] = []
    counts = {"sent": 0, "lost": 0, "rate_limited": 0}
    stalled = {"opened": 0, "answered": 0, "refused": 0}
    breaker = CircuitBreaker(failure_threshold=10, timeout=2.0, name="load")
    pool = HttpPool(
        url.rstrip("/"),
        max_connections=clients,
        timeout=30.0,
        retry=RetryPolicy(max_retries=2, delay=0.05, max_delay=0.5),
        breaker=breaker,
        monitor=PerformanceMonitor(),  # this run's own figures, not the process-wide monitor's
    )
    started = timer()
    deadline = started + duration_s

    async def client(i: int) -> None:
        headers = bearer_headers(tokens[i % len(tokens)])
        n = i
        while timer() < deadline:
            data = images[n % len(images)]
            n += clients
            counts["sent"] += 1
            t0 = timer()
            outcome = await post_predict(pool, "/predict", data, headers=headers)
            if outcome.lost:
                counts["lost"] += 1
                lost_reasons[str(outcome.lost_reason)] += 1
                if outcome.lost_reason == "E_CIRCUIT_OPEN":
                    await asyncio.sleep(min(0.2, max(0.0, deadline - timer())))
                continue
            statuses[int(outcome.status)] += 1  # type: ignore[arg-type]
            if outcome.ok:
                latencies.append((timer() - t0) * 1000.0)
                size = ((outcome.body or {}).get("batch") or {}).get("front") if isinstance(outcome.body, dict) else None
                if isinstance(size, int):
                    batch_sizes.append(size)
            elif outcome.refused:
                counts["rate_limited"] += 1
                await asyncio.sleep(min(outcome.retry_after_s, max(0.0, deadline - timer())))

    before = await _batching(url)
    stop = asyncio.Event()
    async with pool:
        stallers = [asyncio.create_task(_stalled_upload(url, stop, stalled, headers=bearer_headers(tokens[0])))
                    for _ in range(stall)]
        try:
            if stall:
                await asyncio.sleep(min(1.0, duration_s / 10))  # the stalled uploads are in place first
                started = timer()
                deadline = started + duration_s
            # A TaskGroup, not gather: a client that fails (a bug, Ctrl-C) cancels the others at once.
            async with asyncio.TaskGroup() as group:
                for i in range(clients):
                    group.create_task(client(i))
        finally:
            stop.set()
            for task in stallers:
                task.cancel()
            await asyncio.gather(*stallers, return_exceptions=True)
        pool_stats = pool.stats()
    after = await _batching(url)
    elapsed = timer() - started
    answered = sum(statuses.values())
    return LoadResult(
        url=url,
        duration_s=elapsed,
        clients=clients,
        sent=counts["sent"],
        answered=answered,
        ok=statuses.get(200, 0),
        lost=counts["lost"],
        server_errors=sum(v for k, v in statuses.items() if k >= 500),
        rate_limited=counts["rate_limited"],
        status_counts=dict(statuses),
        latencies_ms=latencies,
        pool_stats=pool_stats,
        lost_reasons=dict(lost_reasons),
        batch_sizes=batch_sizes,
        service_batching=({"batches": after["batches"] - before["batches"], "items": after["items"] - before["items"]}
                          if before is not None and after is not None else None),
        stalled=stalled if stall else {},
    )


def _check_stall(stall: int) -> None:
    if isinstance(stall, bool) or not isinstance(stall, int) or not 0 <= stall <= 1000:
        raise ValidationError("stall must be an int in [0, 1000]", field="stall", value=stall)


async def _batching(url: str) -> dict[str, float] | None:
    """The service's batching counters from ``/health`` (None when it does not report them)."""
    import httpx

    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10.0) as client:
            report = (await client.get("/health")).json()
        stats = report.get("batching") or {}
        return {"batches": float(stats["batches"]), "items": float(stats["items"])}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def _stalled_upload(url: str, stop: asyncio.Event, counts: dict[str, int], *,
                          headers: Mapping[str, str]) -> None:
    """Keep one stalled upload open until ``stop``: the head and ``STALL_SENT`` bytes of a long body, then silence."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=stall\r\n"
            f"Content-Length: {STALL_DECLARED}\r\n{extra}\r\n").encode()
    body = b'--stall\r\nContent-Disposition: form-data; name="front"; filename="s.jpg"\r\n\r\n'
    body += b"x" * max(0, STALL_SENT - len(body))
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["refused"] += 1
            await asyncio.sleep(0.2)
            continue
        counts["opened"] += 1
        try:
            writer.write(head + body[:STALL_SENT])
            await writer.drain()
            answer = await reader.read(65536)  # the server's 408 (or 503) once it gives up on us, or EOF
            if answer:
                counts["answered"] += 1
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


def run_load(
    url: str,
    *,
    duration_s: float = 30.0,
    clients: int = 8,
    image_path: str | Path | None = None,
    images: Sequence[bytes] | None = None,
    tokens: Sequence[str | None] | None = None,
    warmup_s: float = 0.0,
    stall: int = 0,
) -> LoadResult:
    """Run a load test against the service at ``url`` (``tokens``: one bearer token per client, or None).

    ``warmup_s`` seconds of one client go first and are not counted (the first predictions of a fresh
    service pay for lazy initialisation). Works from a notebook cell too (a running event loop): see
    ``amulet_lab.bench.aio.run_sync``.
    """
    check_load_args(duration_s, clients, warmup_s)
    _check_stall(stall)
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("url must be the base URL of a running service", field="url", value=url)
    if images is None:
        if image_path:
            from amulet_lab.files import existing_file

            images = [existing_file(image_path, field="image_path").read_bytes()]
        else:
            images = sample_images()
    if not images:
        raise ValidationError("need at least one image to send", field="images", value=0)
    sent = list(tokens) if tokens is not None else None
    if warmup_s > 0:
        first = sent[:1] if sent is not None else None
        run_sync(lambda: arun_load(url, images[:1], duration_s=warmup_s, clients=1, tokens=first))
    return run_sync(lambda: arun_load(url, images, duration_s=duration_s, clients=clients, tokens=sent, stall=stall))
