"""HTTP pooling: one ``HttpPool`` against a new ``httpx.AsyncClient`` per request, to a local server.

Both send the same GET requests, ``CONCURRENCY`` at a time, to a keep-alive ``ThreadingHTTPServer`` on
127.0.0.1 started here. The baseline pays, per request, for building a client (its SSL context included)
and a TCP connect; the pool pays once. Rounds alternate pooled / per-request so drift on a shared machine
hits both alike. Target: pooled throughput >= 1.25x (the design's "+25 %"). A third variant, a new client
per request sharing one ready SSL context, shows how much of the gain is the TCP connect alone.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from amulet_lab.bench.micro import MicroResult, Target

CONCURRENCY = 4
BODY = b'{"status": "ok"}'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in two writes: with Nagle on, the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def local_server() -> Iterator[str]:
    """A keep-alive HTTP server on 127.0.0.1 in a background thread; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="amulet-lab-bench-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def _drive(n: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Requests per second for ``n`` calls of ``one``, ``CONCURRENCY`` at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def guarded(i: int) -> None:
        async with gate:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> MicroResult:
    """Throughput of pooled requests against a new client per request."""
    import httpx

    from amulet_lab.perf import HttpPool, PerformanceMonitor

    n = 20 if quick else 300
    rounds = 1 if quick else 5
    monitor = PerformanceMonitor()

    async def measure(url: str) -> tuple[list[float], list[float], list[float], dict[str, int]]:
        pooled_rates, fresh_rates, shared_ssl_rates = [], [], []
        ssl_context = ssl.create_default_context()
        # trust_env=False everywhere: a proxy set in the environment must never carry loopback traffic.
        async with HttpPool(url, monitor=monitor, trust_env=False) as pool:

            async def pooled(i: int) -> None:
                (await pool.get(f"/p/{i}")).raise_for_status()

            async def fresh(i: int) -> None:
                async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
                    (await client.get(f"/f/{i}")).raise_for_status()

            async def fresh_shared_ssl(i: int) -> None:
                # Where the gain comes from: a new client with a ready SSL context still pays a TCP connect.
                async with httpx.AsyncClient(base_url=url, verify=ssl_context, trust_env=False) as client:
                    (await client.get(f"/s/{i}")).raise_for_status()

            for one in (pooled, fresh, fresh_shared_ssl):  # warm up: connections and code paths
                await _drive(CONCURRENCY, one)
            for _ in range(rounds):
                pooled_rates.append(await _drive(n, pooled))
                fresh_rates.append(await _drive(n, fresh))
                shared_ssl_rates.append(await _drive(n, fresh_shared_ssl))
            return pooled_rates, fresh_rates, shared_ssl_rates, pool.stats()

    with local_server() as url:
        pooled_rates, fresh_rates, shared_ssl_rates, stats = asyncio.run(measure(url))
    pooled_rps = statistics.median(pooled_rates)
    fresh_rps = statistics.median(fresh_rates)
    shared_ssl_rps = statistics.median(shared_ssl_rates)
    return MicroResult(
        name="http",
        figures={
            "pooled_requests_per_s": pooled_rps,
            "new_client_requests_per_s": fresh_rps,
            "new_client_shared_ssl_requests_per_s": shared_ssl_rps,
            "pooled_connections_opened": float(stats["connections_opened"]),
            "pooled_requests": float(stats["requests"]),
            "pooled_p95_s": monitor.get_stats("http.get")["p95"],
        },
        ratios={
            "pooled_vs_new_client_throughput": pooled_rps / fresh_rps,
            "pooled_vs_new_client_shared_ssl": pooled_rps / shared_ssl_rps,
        },
        targets={"pooled_vs_new_client_throughput": Target(">=", 1.25)},
        notes=f"{n} GETs x {rounds} rounds, {CONCURRENCY} in flight, local ThreadingHTTPServer",
    )
