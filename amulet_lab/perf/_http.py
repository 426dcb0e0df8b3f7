"""``HttpPool``: one pooled ``httpx.AsyncClient`` with limits, timeouts, optional retry and circuit breaker.

Why httpx and not aiohttp: httpx is already pinned for the service's test client (FastAPI's
``TestClient`` is built on it), it has sync and async twins with one API, and its ``trace`` request
extension lets us count new TCP connections, which makes connection reuse visible in ``stats()``.
aiohttp would be a second HTTP stack for no gain at our request rates.

Failures become ``NetworkError``: connect errors, timeouts and 502/503/504 answers. Connect errors
(the request never left) are retryable for every method; timeouts and 502/503/504 only for idempotent
methods, so a POST is never sent twice by accident. Each attempt goes through the breaker when one is
given, so an open circuit stops the retries at once (``CircuitOpenError`` is not retryable). The loop is
``RetryPolicy.arun`` (shared with ``retry_on_failure``), so every retry is logged by ``amulet_lab.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from amulet_lab.errors import CircuitBreaker, NetworkError, ProcessingError, RetryPolicy, ValidationError
from amulet_lab.perf._monitor import PerformanceMonitor, performance_monitor

if TYPE_CHECKING:
    from amulet_lab.config import Settings

__all__ = ["HttpPool"]

#: The documented defaults of AMULET_CONNECTION_POOL_SIZE and AMULET_HTTP_TIMEOUT.
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_TIMEOUT_S = 10.0

RETRY_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_ALWAYS_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # nothing reached the server


class HttpPool:
    """An async HTTP connection pool: ``async with HttpPool(...) as pool: await pool.get(url)``."""

    def __init__(
        self,
        base_url: str = "",
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | int | None = None,
        breaker: CircuitBreaker | None = None,
        monitor: PerformanceMonitor | None = None,
        headers: dict[str, str] | None = None,
        trust_env: bool = True,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValidationError("max_connections must be an int >= 1", field="max_connections", value=max_connections)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValidationError("timeout must be seconds > 0", field="timeout", value=timeout)
        if isinstance(retry, int) and not isinstance(retry, bool):
            retry = RetryPolicy(max_retries=retry, delay=0.1, max_delay=2.0)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError("retry must be a RetryPolicy, an int (max retries) or None", field="retry",
                                  value=retry)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ValidationError("breaker must be a CircuitBreaker or None", field="breaker", value=breaker)
        self.base_url = base_url
        self.max_connections = max_connections
        self.timeout = float(timeout)
        self.retry = retry
        self.breaker = breaker
        self._monitor = monitor
        self._headers = dict(headers or {})
        self._trust_env = trust_env
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._requests = self._attempts = self._retries = self._errors = self._connections = 0

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str = "", **kwargs: Any) -> HttpPool:
        """A pool sized by AMULET_CONNECTION_POOL_SIZE and AMULET_HTTP_TIMEOUT (``kwargs`` override them)."""
        values: dict[str, Any] = {"max_connections": settings.connection_pool_size, "timeout": settings.http_timeout}
        return cls(base_url, **{**values, **kwargs})

    @property
    def monitor(self) -> PerformanceMonitor:
        """The monitor requests are recorded into (``http.<method>``)."""
        return self._monitor if self._monitor is not None else performance_monitor

    # ---- life cycle --------------------------------------------------------------------
    async def open(self) -> HttpPool:
        """Create the client (done on first request too)."""
        if self._closed:
            raise ProcessingError("this HttpPool is closed; make a new one", stage="http", code="E_HTTP_POOL_CLOSED")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                limits=httpx.Limits(max_connections=self.max_connections,
                                    max_keepalive_connections=self.max_connections),
                timeout=httpx.Timeout(self.timeout),
                headers=self._headers,
                trust_env=self._trust_env,
            )
        return self

    async def aclose(self) -> None:
        """Close every connection; the pool cannot be used afterwards."""
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> HttpPool:
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- requests ----------------------------------------------------------------------
    async def request(self, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """Send one request (retry and breaker if configured); 502/503/504 and I/O failures raise NetworkError."""
        if not isinstance(method, str) or not method.isalpha():
            raise ValidationError("method must be an HTTP method name such as 'GET'", field="method", value=method)
        if not isinstance(url, (str, httpx.URL)):
            raise ValidationError("url must be a str or httpx.URL", field="url", value=url)
        method = method.upper()
        await self.open()
        monitor = self.monitor
        name = f"http.{method.lower()}"
        self._requests += 1
        start = monitor.timer()
        try:
            response = await self._with_retry(method, url, kwargs)
        except Exception:
            self._errors += 1
            monitor.record(name, max(0.0, monitor.timer() - start), error=True)
            raise
        monitor.record(name, max(0.0, monitor.timer() - start))
        return response

    async def get(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """``request("GET", url, ...)``."""
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """``request("POST", url, ...)``."""
        return await self.request("POST", url, **kwargs)

    async def _with_retry(self, method: str, url: str | httpx.URL, kwargs: dict[str, Any]) -> httpx.Response:
        """One request through ``RetryPolicy.arun`` (waits, give-up and the retry log line live there)."""
        tries = 0

        async def attempt() -> httpx.Response:
            nonlocal tries
            tries += 1
            if self.breaker is not None:
                return await self.breaker.acall(self._send, method, url, kwargs)
            return await self._send(method, url, kwargs)

        if self.retry is None:
            return await attempt()
        try:
            # What is retried is decided by the errors _send raises: NetworkError.retryable is set per method
            # and failure kind, and an open circuit (CircuitOpenError) is not retryable.
            return await self.retry.arun(attempt, name=f"HTTP {method} {url}")
        finally:
            self._retries += max(0, tries - 1)

    async def _send(self, method: str, url: str | httpx.URL, kwargs: dict[str, Any]) -> httpx.Response:
        client = self._client
        if client is None:
            raise ProcessingError("this HttpPool is closed; make a new one", stage="http", code="E_HTTP_POOL_CLOSED")
        self._attempts += 1
        # The caller's kwargs stay untouched so a retry sends the same request.
        extensions = {**kwargs.get("extensions", {}), "trace": self._trace}
        try:
            response = await client.request(method, url, **{**kwargs, "extensions": extensions})
        except httpx.TransportError as exc:
            raise NetworkError(
                f"{method} {url} failed: {type(exc).__name__}: {exc}",
                code="E_HTTP_CONNECT" if isinstance(exc, _ALWAYS_RETRYABLE) else "E_HTTP_TRANSPORT",
                context={"method": method, "url": str(url)},
                retryable=isinstance(exc, _ALWAYS_RETRYABLE) or method in IDEMPOTENT,
            ) from exc
        if response.status_code in RETRY_STATUSES:
            raise NetworkError(
                f"{method} {url} answered {response.status_code} {response.reason_phrase}",
                code="E_HTTP_UNAVAILABLE",
                context={"method": method, "url": str(url), "status": response.status_code},
                retryable=method in IDEMPOTENT,
            )
        return response

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: a completed TCP connect is a new connection (a reused one sends none)."""
        if event == "connection.connect_tcp.complete":
            self._connections += 1

    # ---- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """requests, attempts, retries, errors, connections_opened, limits, state and the breaker's state."""
        return {
            "requests": self._requests,
            "attempts": self._attempts,
            "retries": self._retries,
            "errors": self._errors,
            "connections_opened": self._connections,
            "max_connections": self.max_connections,
            "timeout": self.timeout,
            "state": "closed" if self._closed else ("open" if self._client is not None else "new"),
            "breaker": None if self.breaker is None else self.breaker.state,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<HttpPool {self.base_url or '(no base url)'} {s['state']} requests={s['requests']} "
                f"errors={s['errors']} connections={s['connections_opened']}/{self.max_connections}>")
