"""Token-bucket rate limiting per client, with the caller's clock.

Each client (the token's subject, else the socket address) has a bucket of
``burst`` tokens refilled at ``per_minute / 60`` tokens a second; a request takes one.
Written here rather than taken from slowapi/limits: those count fixed or sliding
windows in a storage backend, while the design asks for a token bucket whose headers
(limit, remaining, reset) are computed from the same state that made the decision.
Buckets of idle clients are dropped (LRU, ``max_clients``) so memory stays bounded.

``SharedRateLimiter`` (AMULET_RATE_LIMIT_BACKEND=redis) keeps the same bucket on a Redis/Valkey server: one
Lua script reads, refills, takes and writes it atomically on the server's clock (EVALSHA, EVAL the first
time), so N replicas enforce one limit and their headers come from the one shared state. While the server
is down or slow (short timeouts, a circuit breaker) each replica falls back to its own local bucket, and
says so in the log once per outage.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from amulet_lab.config import Settings
from amulet_lab.errors import NetworkError, ValidationError

__all__ = ["RateLimiter", "SharedRateLimiter", "Decision", "client_key", "rate_limiter_from_settings"]

log = logging.getLogger("amulet_lab.service")


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of one request against its client's bucket."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float  # until the bucket is full again
    retry_after_s: float  # until one token is there (0 when allowed)

    def headers(self, now_wall: float) -> dict[str, str]:
        """``X-RateLimit-*`` headers (reset as a Unix time, as in the design), plus ``Retry-After`` when refused."""
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(now_wall + self.reset_after_s)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class RateLimiter:
    """Per-client token buckets: ``hit(key)`` takes a token or refuses, ``peek(key)`` only reads."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        timer: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        if per_minute <= 0 or burst < 1 or max_clients < 1:
            raise ValidationError(
                "RateLimiter needs per_minute > 0, burst >= 1 and max_clients >= 1.",
                field="RateLimiter",
                value=(per_minute, burst, max_clients),
            )
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = int(burst)
        self.max_clients = max_clients
        self._timer = timer
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, stamp)
        self.allowed = 0
        self.refused = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, timer: Callable[[], float] = time.monotonic) -> RateLimiter:
        """A limiter with ``rate_limit_per_minute`` and ``rate_limit_burst`` from settings."""
        return cls(settings.rate_limit_per_minute, settings.rate_limit_burst, timer=timer)

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - stamp) * self.rate)

    def _decision(self, allowed: bool, tokens: float) -> Decision:
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=max(0, math.floor(tokens)),
            reset_after_s=(self.burst - tokens) / self.rate,
            retry_after_s=0.0 if allowed else (1.0 - tokens) / self.rate,
        )

    def hit(self, key: str) -> Decision:
        """Take one token from ``key``'s bucket if there is one."""
        with self._lock:
            now = self._timer()
            tokens = self._tokens(key, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
                self.allowed += 1
            else:
                self.refused += 1
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return self._decision(allowed, tokens)

    def peek(self, key: str) -> Decision:
        """The bucket's state without taking a token."""
        with self._lock:
            tokens = self._tokens(key, self._timer())
            return self._decision(tokens >= 1.0, tokens)

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return (
            f"<RateLimiter {self.rate * 60:g}/min burst={self.burst} clients={len(self._buckets)} "
            f"allowed={self.allowed} refused={self.refused}>"
        )


#: One token bucket on the server, atomically: KEYS[1] the bucket; ARGV rate (tokens/s), burst, cost (1: take a
#: token, 0: only read). Returns {allowed (0/1), tokens left as a string (Lua numbers become integers)}.
#: The server's clock (TIME) is the one clock every replica shares.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
if tokens >= 1 then
  allowed = 1
  if cost > 0 then
    tokens = tokens - cost
  end
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
return {allowed, tostring(tokens)}
"""


class SharedRateLimiter:
    """Token buckets on a Redis-protocol server (``cache.SharedStore``), the local ``RateLimiter`` as fallback.

    ``blocking`` tells the middleware to call ``hit``/``peek`` in a worker thread (they make a network call).
    """

    blocking = True

    def __init__(self, store: Any, per_minute: float, burst: int, *, local: RateLimiter | None = None,
                 prefix: str = "amulet:rl:v1:") -> None:
        self.local = local if local is not None else RateLimiter(per_minute, burst)
        self.store = store
        self.rate = self.local.rate
        self.burst = self.local.burst
        self.prefix = prefix
        self._lock = threading.Lock()
        self.allowed = 0
        self.refused = 0
        self.fallbacks = 0
        self._falling_back = False

    @classmethod
    def from_settings(cls, settings: Settings, *, timer: Callable[[], float] = time.monotonic) -> SharedRateLimiter:
        """Buckets on AMULET_REDIS_URL (AMULET_REDIS_TIMEOUT_MS, AMULET_REDIS_BREAKER_TIMEOUT_S), the local
        fallback with AMULET_RATE_LIMIT_PER_MINUTE and AMULET_RATE_LIMIT_BURST (called at the edges)."""
        from amulet_lab.cache import SharedStore

        if not settings.redis_url:
            raise ValidationError("the redis rate-limit backend needs AMULET_REDIS_URL", field="AMULET_REDIS_URL")
        store = SharedStore(settings.redis_url, timeout_ms=settings.redis_timeout_ms,
                            breaker_timeout_s=settings.redis_breaker_timeout_s, name="shared_ratelimit")
        return cls(store, settings.rate_limit_per_minute, settings.rate_limit_burst,
                   local=RateLimiter.from_settings(settings, timer=timer))

    @property
    def breaker(self) -> Any:
        """The store's circuit breaker (for /metrics)."""
        return self.store.breaker

    def _shared(self, key: str, cost: int) -> Decision | None:
        """The server's decision, or None when the server failed (the caller uses the local bucket)."""
        try:
            allowed, tokens = self.store.script(TOKEN_BUCKET_LUA, [self.prefix + key], [self.rate, self.burst, cost])
        except NetworkError:
            with self._lock:
                self.fallbacks += 1
                first, self._falling_back = not self._falling_back, True
            if first:
                log.warning("rate limit: the Redis/Valkey server does not answer; each replica uses its own "
                            "local bucket until it is back")
            return None
        if self._falling_back:
            with self._lock:
                back, self._falling_back = self._falling_back, False
            if back:
                log.warning("rate limit: the Redis/Valkey server answers again; buckets are shared again")
        return self.local._decision(bool(int(allowed)), float(tokens))

    def hit(self, key: str) -> Decision:
        """Take one token from ``key``'s shared bucket if there is one (the local bucket while the server is down)."""
        decision = self._shared(key, 1)
        if decision is None:
            decision = self.local.hit(key)
        with self._lock:
            if decision.allowed:
                self.allowed += 1
            else:
                self.refused += 1
        return decision

    def peek(self, key: str) -> Decision:
        """The shared bucket's state without taking a token (the local one while the server is down)."""
        decision = self._shared(key, 0)
        return decision if decision is not None else self.local.peek(key)

    def stats(self) -> dict[str, Any]:
        """Allowed, refused, fallbacks to the local bucket, and the store's figures."""
        return {"backend": "redis", "allowed": self.allowed, "refused": self.refused, "fallbacks": self.fallbacks,
                **self.store.stats()}

    def __len__(self) -> int:
        return len(self.local)

    def __repr__(self) -> str:
        return (f"<SharedRateLimiter {self.rate * 60:g}/min burst={self.burst} state={self.store.breaker.state} "
                f"allowed={self.allowed} refused={self.refused} fallbacks={self.fallbacks}>")


def rate_limiter_from_settings(settings: Settings, *,
                               timer: Callable[[], float] = time.monotonic) -> RateLimiter | SharedRateLimiter:
    """The limiter AMULET_RATE_LIMIT_BACKEND names: ``RateLimiter`` (memory) or ``SharedRateLimiter`` (redis)."""
    if settings.rate_limit_backend == "redis":
        return SharedRateLimiter.from_settings(settings, timer=timer)
    return RateLimiter.from_settings(settings, timer=timer)


def client_key(
    subject: str | None,
    peer: str | None,
    headers: Mapping[str, str],
    *,
    trust_forwarded_for: bool,
) -> str:
    """Who a request counts against: ``sub:<subject>``, else ``ip:<address>``.

    ``X-Forwarded-For`` is read only when the service is told it sits behind a proxy;
    otherwise any client could pick a fresh bucket per request by forging the header.
    The RIGHT-most address is used: it is the one our own proxy appended (the peer it saw); every
    entry to its left came from the client and can be forged, so keying on it would let a client pick
    a fresh bucket per request. With several proxies in a chain, the last one still names the hop
    that reached ours, which is the best any single trusted proxy can vouch for.
    """
    if subject:
        return f"sub:{subject}"
    if trust_forwarded_for:
        forwarded = headers.get("x-forwarded-for", "")
        last = forwarded.split(",")[-1].strip()
        if last:
            return f"ip:{last}"
    return f"ip:{peer or 'unknown'}"
