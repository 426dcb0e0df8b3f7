"""Token-bucket rate limiting per client, with the caller's clock.

Each client (the token's subject, else the socket address) has a bucket of
``burst`` tokens refilled at ``per_minute / 60`` tokens a second; a request takes one.
Written here rather than taken from slowapi/limits: those count fixed or sliding
windows in a storage backend, while the design asks for a token bucket whose headers
(limit, remaining, reset) are computed from the same state that made the decision.
Buckets of idle clients are dropped (LRU, ``max_clients``) so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from amulet_lab.config import Settings
from amulet_lab.errors import ValidationError

__all__ = ["RateLimiter", "Decision", "client_key"]


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
