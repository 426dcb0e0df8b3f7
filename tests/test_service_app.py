"""The app through FastAPI's TestClient: envelopes, codes, headers, rate limit, auth (no model needed here)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from amulet_lab.errors import SecurityError
from amulet_lab.service import create_app, issue_token
from amulet_lab.service.middleware import SECURITY_HEADERS

KEY = "s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def svc_settings(settings):
    return settings.replace(secret_key=KEY, rate_limit_burst=1000, rate_limit_per_minute=6000)


def client_for(settings, **kwargs) -> TestClient:
    # No `with`: the lifespan (model loading) does not run; these tests need no model.
    return TestClient(create_app(settings, **kwargs), raise_server_exceptions=False)


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "details", "request_id"}
    assert err["code"] == code
    assert err["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_refuses_to_start_without_a_secret_key(settings):
    with pytest.raises(SecurityError):
        create_app(settings.replace(secret_key=None))
    with pytest.raises(SecurityError):
        create_app(settings.replace(secret_key="changeme"))
    create_app(settings.replace(secret_key=None, debug=True))  # debug: a per-process key


def test_live_and_security_headers(svc_settings):
    client = client_for(svc_settings)
    response = client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert len(response.headers["X-Request-ID"]) == 32
    assert client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    # An id that could smuggle anything into logs is replaced, not echoed.
    assert client.get("/health/live", headers={"X-Request-ID": "a b\tc"}).headers["X-Request-ID"] != "a b\tc"


def test_ready_is_503_without_a_model(svc_settings):
    response = client_for(svc_settings).get("/health/ready")
    err = assert_envelope(response, 503, "E_NOT_READY")
    assert "loading" in err["details"]
    assert response.headers["Retry-After"] == "5"


def test_404_and_405_use_the_envelope(svc_settings):
    client = client_for(svc_settings)
    err = assert_envelope(client.get("/nowhere"), 404, "E_NOT_FOUND")
    assert err["details"]["path"] == "/nowhere"
    assert_envelope(client.get("/predict"), 405, "E_METHOD_NOT_ALLOWED")
    assert client.get("/nowhere").headers["X-Content-Type-Options"] == "nosniff"


def test_query_validation_is_422_envelope(svc_settings):
    response = client_for(svc_settings).post("/predict?top_k=0", files={"front": ("a.jpg", b"x")})
    err = assert_envelope(response, 422, "E_VALIDATION")
    assert err["details"]["errors"][0]["loc"] == ["query", "top_k"]


def test_upload_errors_use_the_envelope(svc_settings):
    client = client_for(svc_settings.replace(max_upload_bytes=1000))
    assert_envelope(client.post("/predict", content=b"{}", headers={"content-type": "application/json"}), 415,
                    "E_UNSUPPORTED_MEDIA_TYPE")
    assert_envelope(client.post("/predict", files={"front": ("a.jpg", b"x" * 5000)}), 413, "E_UPLOAD_TOO_LARGE")
    assert_envelope(client.post("/predict", files={"back": ("a.jpg", b"x")}), 422, "E_VALIDATION")
    assert_envelope(client.post("/predict", files={"front": ("a.jpg", b"x"), "other": ("b", b"y")}), 400,
                    "E_UNEXPECTED_FIELD")


def test_chunked_upload_over_the_limit_is_413(svc_settings):
    client = client_for(svc_settings.replace(max_upload_bytes=1000))
    boundary = "bnd"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="front"; filename="a.jpg"\r\n\r\n'.encode()
        for _ in range(100):
            yield b"x" * 1000

    response = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_envelope(response, 413, "E_UPLOAD_TOO_LARGE")


def test_unhandled_error_is_500_without_internals(svc_settings):
    app = create_app(svc_settings)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail /etc/passwd")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    err = assert_envelope(response, 500, "E_INTERNAL")
    assert "secret" not in response.text and "passwd" not in response.text
    assert err["details"] == {}
    assert response.headers["X-Frame-Options"] == "DENY"


def test_rate_limit_headers_count_down_then_429(svc_settings):
    clock = Clock()
    client = client_for(svc_settings.replace(rate_limit_burst=3, rate_limit_per_minute=60), timer=clock,
                        wall=lambda: 1_700_000_000.0)
    seen = []
    for _ in range(3):
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "3"
        seen.append(int(response.headers["X-RateLimit-Remaining"]))
        assert int(response.headers["X-RateLimit-Reset"]) >= 1_700_000_000
    assert seen == [2, 1, 0]
    limited = client.get("/metrics")
    err = assert_envelope(limited, 429, "E_RATE_LIMITED")
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert err["details"]["limit"] == 3
    clock.now += 1.0  # one token back
    assert client.get("/metrics").status_code == 200


def test_rate_limit_bucket_is_per_subject(svc_settings):
    s = svc_settings.replace(rate_limit_burst=1, rate_limit_per_minute=1)
    client = client_for(s, timer=Clock())
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics").status_code == 429
    alice = {"Authorization": f"Bearer {issue_token('alice', 60, s)}"}
    bob = {"Authorization": f"Bearer {issue_token('bob', 60, s)}"}
    assert client.get("/metrics", headers=alice).status_code == 200
    assert client.get("/metrics", headers=bob).status_code == 200
    assert client.get("/metrics", headers=alice).status_code == 429


def test_forwarded_for_is_trusted_only_when_configured(svc_settings):
    s = svc_settings.replace(rate_limit_burst=1, rate_limit_per_minute=1)
    untrusted = client_for(s, timer=Clock())
    assert untrusted.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert untrusted.get("/metrics", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 429
    trusted = client_for(s.replace(trust_forwarded_for=True), timer=Clock())
    assert trusted.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert trusted.get("/metrics", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    # A client forging a left-hand entry still counts against the address our proxy appended (right-most).
    assert trusted.get("/metrics", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}).status_code == 429


def test_metrics_needs_a_token_when_auth_is_required(svc_settings):
    s = svc_settings.replace(require_auth=True)
    client = client_for(s)
    response = client.get("/metrics")
    assert_envelope(response, 401, "E_AUTH_REQUIRED")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_envelope(client.post("/predict", files={"front": ("a.jpg", b"x")}), 401, "E_AUTH_REQUIRED")
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {issue_token('ops', 60, s)}"})
    assert ok.status_code == 200
    only_predict = issue_token("app", 60, s, scopes=["predict"])
    assert_envelope(client.get("/metrics", headers={"Authorization": f"Bearer {only_predict}"}), 403, "E_AUTH_SCOPE")


@pytest.mark.parametrize("require_auth", [False, True])
def test_invalid_tokens_are_refused_whatever_the_setting(svc_settings, require_auth):
    s = svc_settings.replace(require_auth=require_auth)
    client = client_for(s)
    expired = issue_token("a", 10, s, now=lambda: time.time() - 3600)
    wrong_key = issue_token("a", 60, s.replace(secret_key="w" * 32))
    wrong_aud = issue_token("a", 60, s.replace(jwt_audience="other-api"))
    for token, code in ((expired, "E_AUTH_EXPIRED"), (wrong_key, "E_AUTH_INVALID"), (wrong_aud, "E_AUTH_INVALID")):
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert_envelope(response, 401, code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "X-RateLimit-Remaining" in response.headers
    assert_envelope(client.get("/metrics", headers={"Authorization": "Basic abc"}), 401, "E_AUTH_INVALID")


def test_metrics_text_counts_requests(svc_settings):
    client = client_for(svc_settings)
    client.get("/health/live")
    client.get("/nowhere")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'amulet_http_requests_total{method="GET",route="/health/live",status="200"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "amulet_http_request_duration_seconds_bucket" in text
    assert 'amulet_breaker_state{breaker="model",state="closed"} 1.0' in text
    assert "amulet_cache_hits_total" in text and "amulet_cache_misses_total" in text
    assert "amulet_process_rss_bytes" in text
    assert "amulet_model_loaded 0.0" in text


def test_each_app_has_its_own_registry(svc_settings):
    a, b = client_for(svc_settings), client_for(svc_settings)
    a.get("/health/live")
    assert 'route="/health/live"' not in b.get("/metrics").text


def test_health_is_200_and_matches_the_schema(svc_settings):
    import jsonschema

    from amulet_lab.health import HEALTH_SCHEMA

    client = client_for(svc_settings)
    client.get("/health/live")
    client.get("/nowhere")
    response = client.get("/health")
    assert response.status_code == 200
    report = response.json()
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["model_status"]["loaded"] is False
    assert report["status"] in ("degraded", "unhealthy")  # no model
    assert report["api_metrics"]["total_requests"] == 2  # the /health request itself is counted when it ends
    assert report["api_metrics"]["error_count"] == 0  # a 404 is the client's error, not the service's


def test_unknown_methods_are_one_metric_label(svc_settings):
    client = client_for(svc_settings)
    client.request("FROBNICATE", "/health/live")
    text = client.get("/metrics").text
    assert 'method="OTHER"' in text and "FROBNICATE" not in text


@pytest.mark.parametrize(("value", "status"), [("true", 401), ("false", 200)])
def test_require_auth_is_read_from_amulet_require_auth(value, status):
    from amulet_lab.config import load_settings

    s = load_settings({"AMULET_SECRET_KEY": KEY, "AMULET_REQUIRE_AUTH": value}, dotenv=None)
    response = client_for(s).get("/metrics")
    assert response.status_code == status
    if status == 401:
        assert_envelope(response, 401, "E_AUTH_REQUIRED")


def test_probes_skip_the_rate_limit_and_auth(svc_settings):
    """/health/live and /health/ready answer however empty the bucket and whatever the Authorization header."""
    s = svc_settings.replace(rate_limit_burst=1, rate_limit_per_minute=1, require_auth=True)
    client = client_for(s, timer=Clock())
    assert client.get("/health").status_code == 200
    assert client.get("/health").status_code == 429  # the bucket is empty now
    for _ in range(5):
        live = client.get("/health/live", headers={"Authorization": "Bearer not-a-token"})
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        assert live.headers["X-RateLimit-Remaining"] == "0" and "Retry-After" not in live.headers
        ready = client.get("/health/ready", headers={"Authorization": "x" * 5000})
        assert_envelope(ready, 503, "E_NOT_READY")  # no model here: not ready, but neither 401 nor 429
    assert client.get("/metrics").status_code == 429  # probes took nothing from the bucket, and gave nothing back


def test_health_shows_the_budgets_and_batching(svc_settings):
    import jsonschema

    from amulet_lab.health import HEALTH_SCHEMA

    report = client_for(svc_settings.replace(memory_budget_mb=1024.0)).get("/health").json()
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["budgets"]["pixel_bytes"]["capacity"] == 512 * 1024 * 1024
    assert report["budgets"]["upload_bytes"]["capacity"] == 256 * 1024 * 1024
    assert report["budgets"]["pixel_bytes"]["in_use"] == 0
    assert report["batching"]["max_size"] == 8 and report["batching"]["mean_batch_size"] == 0.0


def test_health_checks_memory_pressure_afresh(svc_settings):
    from types import SimpleNamespace

    from amulet_lab.memory import MemoryMonitor

    rss = [100 * 1024 * 1024]
    process = SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=rss[0]))
    vm = SimpleNamespace(total=64 * 1024**3, available=60 * 1024**3)
    monitor = MemoryMonitor(budget_mb=400, process=process, virtual_memory=lambda: vm, builtin_responders=False)
    client = client_for(svc_settings, memory_monitor=monitor)
    first = client.get("/health").json()
    assert first["memory_stats"]["pressure_check"]["level"] == "normal"
    rss[0] = 480 * 1024 * 1024  # over the 400 MB budget
    monitor._last_check["time"] -= 5  # the last check is older than the report allows
    second = client.get("/health").json()
    assert second["memory_stats"]["pressure_check"]["level"] == "critical"
    assert second["memory_stats"]["pressure_check"]["rss_mb"] == 480 and second["status"] == "unhealthy"
