"""Token bucket: refill with an injected clock, refusals, headers, client identity."""

from __future__ import annotations

import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.service.ratelimit import RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_counts_down_then_refuses_then_refills():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, timer=clock)  # one token a second
    remaining = [limiter.hit("a").remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = limiter.hit("a")
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed
    assert limiter.refused == 2 and limiter.allowed == 4


def test_clients_have_separate_buckets_and_peek_takes_nothing():
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=1, timer=clock)
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed
    assert limiter.hit("b").allowed
    assert limiter.peek("c").remaining == 1
    assert limiter.peek("c").remaining == 1


def test_headers_reset_is_unix_time_and_retry_after_only_when_refused():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, timer=clock)
    ok = limiter.hit("a")
    headers = ok.headers(now_wall=5000.0)
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "1"
    assert headers["X-RateLimit-Reset"] == "5001"  # one token short of full, one token a second
    assert "Retry-After" not in headers
    limiter.hit("a")
    refused = limiter.hit("a").headers(now_wall=5000.0)
    assert refused["Retry-After"] == "1"


def test_idle_buckets_are_dropped_beyond_max_clients():
    limiter = RateLimiter(per_minute=60, burst=1, timer=Clock(), max_clients=2)
    for key in ("a", "b", "c"):
        limiter.hit(key)
    assert len(limiter) == 2
    assert limiter.hit("a").allowed  # "a" was forgotten: a fresh full bucket


def test_bad_limits_are_refused():
    with pytest.raises(ValidationError):
        RateLimiter(per_minute=0, burst=1)
    with pytest.raises(ValidationError):
        RateLimiter(per_minute=10, burst=0)


def test_client_key_prefers_subject_and_trusts_forwarded_for_only_when_told():
    headers = {"x-forwarded-for": "203.0.113.9, 10.0.0.1"}
    assert client_key("alice", "127.0.0.1", headers, trust_forwarded_for=True) == "sub:alice"
    assert client_key(None, "127.0.0.1", headers, trust_forwarded_for=False) == "ip:127.0.0.1"
    # The right-most entry is the one our proxy appended; the left-most is client-controlled.
    assert client_key(None, "127.0.0.1", headers, trust_forwarded_for=True) == "ip:10.0.0.1"
    forged = {"x-forwarded-for": "1.2.3.4, 203.0.113.9"}
    assert client_key(None, "127.0.0.1", forged, trust_forwarded_for=True) == "ip:203.0.113.9"
    assert client_key(None, "127.0.0.1", {}, trust_forwarded_for=True) == "ip:127.0.0.1"
