"""HttpPool against a real HTTP server on 127.0.0.1: reuse, retry on 503, breaker, limits, monitor."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from amulet_lab.errors import (
    CircuitBreaker,
    CircuitOpenError,
    NetworkError,
    ProcessingError,
    RetryPolicy,
    ValidationError,
)
from amulet_lab.perf import HttpPool, PerformanceMonitor


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_next = 0  # /flaky answers 503 this many times, then 200
        self.connections = 0
        self.hits: dict[str, int] = {}
        self.release = threading.Event()  # /slow holds its answer until this is set (at the latest: teardown)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a pooled client can reuse its connection
    # Headers and body go out in two writes: with Nagle on, the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    state: _State

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections += 1

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/slow":
            self.state.release.wait(30)
            self.close_connection = True  # the client gave up long ago: no answer to write
            return
        with self.state.lock:
            self.state.hits[self.path] = self.state.hits.get(self.path, 0) + 1
            failing = self.path == "/down" or (self.path == "/flaky" and self.state.fail_next > 0)
            if self.path == "/flaky" and failing:
                self.state.fail_next -= 1
        if failing:
            self._answer(503, b"busy")
        else:
            self._answer(200, b"ok " + self.path.encode())

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        with self.state.lock:
            self.state.hits[self.path] = self.state.hits.get(self.path, 0) + 1
        self._answer(503 if self.path == "/down" else 200, body[::-1])

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def server():
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def run(coro):
    return asyncio.run(coro)


def test_connections_are_reused_and_requests_recorded(server, settings):
    url, state = server
    mon = PerformanceMonitor()

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings, monitor=mon, trust_env=False) as pool:
            for i in range(10):
                r = await pool.get(f"/item/{i}")
                assert r.status_code == 200 and r.text == f"ok /item/{i}"
            echo = await pool.post("/echo", content=b"abc")
            assert echo.content == b"cba"
            return pool.stats(), pool

    stats, pool = run(main())
    assert stats["requests"] == 11 and stats["errors"] == 0 and stats["attempts"] == 11
    assert stats["connections_opened"] == 1 == state.connections  # one TCP connection served all 11
    assert stats["max_connections"] == settings.connection_pool_size and stats["timeout"] == settings.http_timeout
    assert pool.stats()["state"] == "closed"
    assert mon.get_stats("http.get")["count"] == 10 and mon.get_stats("http.post")["count"] == 1


@pytest.mark.parametrize("limit", [1, 3])
def test_the_connection_limit_from_settings_is_enforced(server, settings, limit):
    url, state = server

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings.replace(connection_pool_size=limit),
                            monitor=PerformanceMonitor(), trust_env=False) as pool:
            responses = await asyncio.gather(*(pool.get(f"/c/{i}") for i in range(8)))  # 8 at once
            return [r.status_code for r in responses], pool.stats()

    codes, stats = run(main())
    assert codes == [200] * 8 and stats["max_connections"] == limit
    assert stats["connections_opened"] == limit == state.connections  # never more than the limit, all of it used


def test_a_slow_answer_times_out_as_a_network_error(server, settings):
    url, state = server
    mon = PerformanceMonitor()

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings.replace(http_timeout=0.2), monitor=mon, trust_env=False) as pool:
            with pytest.raises(NetworkError) as err:
                await pool.get("/slow")
            return err.value, pool.stats()

    err, stats = run(main())
    assert err.code == "E_HTTP_TRANSPORT" and err.retryable and "ReadTimeout" in str(err)
    assert stats["errors"] == 1 and mon.get_stats("http.get")["errors"] == 1


def test_a_new_pool_per_request_opens_a_connection_each_time(server, settings):
    url, state = server

    async def main():
        opened = 0
        for _ in range(3):
            async with HttpPool.from_settings(base_url=url, settings=settings, monitor=PerformanceMonitor(), trust_env=False) as pool:
                await pool.get("/x")
                opened += pool.stats()["connections_opened"]
        return opened

    assert run(main()) == 3 == state.connections


def test_retry_on_503_then_success(server, settings, caplog):
    caplog.set_level("WARNING", logger="amulet_lab.errors")
    url, state = server
    state.fail_next = 2
    mon = PerformanceMonitor()

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings, retry=RetryPolicy(max_retries=3, delay=0.0), monitor=mon,
                            trust_env=False) as pool:
            r = await pool.get("/flaky")
            return r, pool.stats()

    r, stats = run(main())
    assert r.status_code == 200 and state.hits["/flaky"] == 3
    assert stats["attempts"] == 3 and stats["retries"] == 2 and stats["errors"] == 0 and stats["requests"] == 1
    assert mon.get_stats("http.get")["errors"] == 0
    retried = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying HTTP GET /flaky")]
    assert len(retried) == 2 and "NetworkError" in retried[0]  # RetryPolicy.arun logs every retry


def test_503_without_retry_or_after_retries_is_a_network_error(server, settings):
    url, state = server
    mon = PerformanceMonitor()

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings, retry=2, monitor=mon, trust_env=False) as pool:
            with pytest.raises(NetworkError) as err:
                await pool.get("/down")
            assert err.value.code == "E_HTTP_UNAVAILABLE" and err.value.context["status"] == 503
            with pytest.raises(NetworkError):
                await pool.post("/down", content=b"x")  # POST is not idempotent: never retried on a 503
            return pool.stats()

    stats = run(main())
    assert state.hits["/down"] == 3 + 1 and stats["errors"] == 2
    assert mon.get_stats("http.get")["errors"] == 1 and mon.get_stats("http.post")["errors"] == 1


def test_breaker_opens_after_repeated_failures(server, settings):
    url, state = server
    breaker = CircuitBreaker(failure_threshold=3, timeout=60, name="upstream")

    async def main():
        async with HttpPool.from_settings(base_url=url, settings=settings, breaker=breaker, monitor=PerformanceMonitor(),
                            trust_env=False) as pool:
            for _ in range(3):
                with pytest.raises(NetworkError):
                    await pool.get("/down")
            with pytest.raises(CircuitOpenError):
                await pool.get("/down")
            return pool.stats()

    stats = run(main())
    assert breaker.state == "open" and stats["breaker"] == "open"
    assert state.hits["/down"] == 3  # the fourth call failed fast, without reaching the server


def test_connect_error_is_retried_and_converted(settings):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        async with HttpPool.from_settings(base_url=f"http://127.0.0.1:{port}", settings=settings, retry=RetryPolicy(max_retries=2, delay=0),
                            monitor=PerformanceMonitor(), trust_env=False) as pool:
            with pytest.raises(NetworkError) as err:
                await pool.post("/x", content=b"1")  # a connect error is safe to retry even for POST
            return err.value, pool.stats()

    err, stats = run(main())
    assert err.code == "E_HTTP_CONNECT" and stats["attempts"] == 3 and stats["connections_opened"] == 0


def test_validation_and_closed_pool(server, settings):
    url, _ = server
    with pytest.raises(ValidationError):
        HttpPool(url, max_connections=0)
    with pytest.raises(ValidationError):
        HttpPool(url, timeout=-1)
    with pytest.raises(ValidationError):
        HttpPool(url, retry="yes")

    async def main():
        pool = HttpPool.from_settings(base_url=url, settings=settings.replace(connection_pool_size=2, http_timeout=3.0),
                        monitor=PerformanceMonitor(), trust_env=False)
        assert pool.stats()["state"] == "new" and pool.max_connections == 2 and pool.timeout == 3.0
        with pytest.raises(ValidationError):
            await pool.request("GET /", "/x")
        await pool.get("/x")  # opens on first use
        await pool.aclose()
        with pytest.raises(ProcessingError):
            await pool.get("/x")
        return repr(pool)

    assert "closed" in run(main())


def test_http_micro_benchmark_shape(monkeypatch):
    from amulet_lab.bench.micro import MicroResult, run_micro

    # A proxy in the environment (nothing listens on port 9) must not carry the benchmark's loopback traffic.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    (result,) = run_micro(["http"], quick=True)
    assert isinstance(result, MicroResult) and result.name == "http"
    assert set(result.ratios) == {"pooled_vs_new_client_throughput", "pooled_vs_new_client_shared_ssl"}
    assert set(result.verdicts()) == {"pooled_vs_new_client_throughput"}
    assert all(v > 0 for v in result.ratios.values())
    assert result.figures["pooled_requests"] > 0 and result.figures["pooled_connections_opened"] >= 1
