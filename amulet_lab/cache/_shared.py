"""``SharedStore``: a Redis-protocol server (Redis 7+, Valkey 8+) as a tier that may fail, through redis-py.

Generic: bytes keys and values under a namespace, a Lua script runner, no model. What it guarantees is
that a server which is down or slow never fails the caller:

- every call has short socket timeouts (``timeout_ms`` for connect and for each read) and no retries of
  redis-py's own (one try; the breaker decides when to try again);
- every call goes through the project's ``errors.CircuitBreaker``: after ``failure_threshold`` failures in a
  row the circuit opens and calls are skipped at once for ``breaker_timeout_s``, then one probe goes through;
- ``get`` answers None and ``set`` does nothing when the server fails (counted in ``stats()``: errors,
  skipped while open, the last error); ``call``/``script`` raise ``NetworkError`` so a caller with a
  fallback of its own (the rate limiter) knows.

redis-py is imported when a store is built, never at ``import amulet_lab.cache`` (it loads asyncio).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from amulet_lab.errors import CircuitBreaker, CircuitOpenError, NetworkError, ValidationError

__all__ = ["SharedStore", "redact_url"]

log = logging.getLogger("amulet_lab.cache")


def redact_url(url: str) -> str:
    """``url`` without its password (for logs, ``/health`` and reprs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


class SharedStore:
    """Bytes values on a Redis-protocol server, each call bounded in time and guarded by a circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: float = 50.0,
        breaker_timeout_s: float = 5.0,
        failure_threshold: int = 3,
        name: str = "shared",
        client: Any = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValidationError("SharedStore needs a redis:// (or rediss://, unix://) URL", field="url",
                                  value=repr(url)[:80], code="E_SHARED_URL")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or not 0 < timeout_ms <= 60_000:
            raise ValidationError("timeout_ms must be in (0, 60000]", field="timeout_ms", value=timeout_ms)
        self.url = url
        self.timeout_ms = float(timeout_ms)
        self.name = name
        self.breaker = CircuitBreaker(failure_threshold=failure_threshold, timeout=breaker_timeout_s,
                                      name=name, timer=timer)
        self._client = client if client is not None else self._connect(url, self.timeout_ms / 1000.0)
        self._lock = threading.Lock()
        self._counts = {"calls": 0, "errors": 0, "skipped": 0}
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._shas: dict[str, str] = {}
        self._down_logged = False

    @staticmethod
    def _connect(url: str, timeout_s: float) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            return redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
                client_name="amulet-lab",
            )
        except ValueError as exc:
            raise ValidationError(f"not a Redis URL: {exc}", field="url", value=redact_url(url),
                                  code="E_SHARED_URL") from exc

    # -- calls ----------------------------------------------------------------------------------------
    def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)`` through the breaker; ``NetworkError`` (retryable) when the server fails or is skipped."""
        try:
            result = self.breaker.call(fn, self._client)
        except CircuitOpenError as exc:
            with self._lock:
                self._counts["skipped"] += 1
            raise NetworkError(f"shared store {self.name!r} skipped: circuit open", retryable=True,
                               code="E_SHARED_DOWN", context={"store": self.name}) from exc
        except Exception as exc:
            self._failed(exc)
            raise NetworkError(f"shared store {self.name!r} failed: {type(exc).__name__}: {exc}", retryable=True,
                               code="E_SHARED_DOWN", context={"store": self.name}) from exc
        with self._lock:
            self._counts["calls"] += 1
            if self._down_logged and self.breaker.state == "closed":
                self._down_logged = False
                log.warning("shared store %s (%s) answers again", self.name, redact_url(self.url))
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._counts["calls"] += 1
            self._counts["errors"] += 1
            self._last_error = f"{type(exc).__name__}: {exc}"[:200]
            self._last_error_at = time.time()
            first = not self._down_logged
            self._down_logged = True
        if first:  # once per outage, not once per request
            log.warning("shared store %s (%s) failed (%s); answering without it until it is back",
                        self.name, redact_url(self.url), self._last_error)

    def get(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None (absent, or the server failed: never raises for the server)."""
        try:
            value = self.call(lambda c: c.get(key))
        except NetworkError:
            return None
        return None if value is None else bytes(value)

    def set(self, key: bytes, value: bytes, ttl_s: float | None = None) -> bool:
        """Store ``value`` (expiring after ``ttl_s``); False when the server failed (never raises for the server)."""
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        try:
            self.call(lambda c: c.set(key, value, px=px))
        except NetworkError:
            return False
        return True

    def script(self, source: str, keys: Sequence[bytes | str], args: Sequence[Any]) -> Any:
        """Run a Lua script: EVALSHA of its SHA-1, EVAL when the server does not know it yet (NOSCRIPT).

        Raises ``NetworkError`` when the server fails or the circuit is open (the caller falls back).
        """
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas.setdefault(source, hashlib.sha1(source.encode()).hexdigest())

        def run(client: Any) -> Any:
            from redis.exceptions import NoScriptError

            try:
                return client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                return client.eval(source, len(keys), *keys, *args)  # loads it too: the next EVALSHA finds it

        return self.call(run)

    def ping(self) -> bool:
        """Whether the server answers PING now (through the breaker)."""
        try:
            return bool(self.call(lambda c: c.ping()))
        except NetworkError:
            return False

    # -- status ---------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while the circuit is open (calls are skipped)."""
        return self.breaker.state != "open"

    def stats(self) -> dict[str, Any]:
        """calls, errors, skipped (while the circuit was open), the breaker's state, the last error, the URL."""
        with self._lock:
            counts = dict(self._counts)
            last, last_at = self._last_error, self._last_error_at
        return {**counts, "state": self.breaker.state, "last_error": last, "last_error_at": last_at,
                "url": redact_url(self.url), "timeout_ms": self.timeout_ms}

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self._client.close()
        except Exception:  # pragma: no cover - closing a broken pool
            pass

    def __repr__(self) -> str:
        s = self.stats()
        return f"<SharedStore {self.name!r} {s['url']} state={s['state']} errors={s['errors']}>"
