"""POST /predict with a real (tiny) classifier trained here on the committed samples; model loading; load run."""

from __future__ import annotations

import io
import time

import pytest
from fastapi.testclient import TestClient

from amulet_lab.data import SAMPLES_DIR
from amulet_lab.perf import PerformanceMonitor
from amulet_lab.service import create_app, issue_token

KEY = "p" * 32


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny real model trained for a few steps on the committed sample photos."""
    from amulet_lab.model import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    config = TrainConfig(arch="tiny", img_size=32, epochs=1, batch_size=8, min_epochs=1, patience=1, feature_views=2)
    train(SAMPLES_DIR, out=out, config=config, progress=False)
    return out


@pytest.fixture(scope="module")
def images():
    paths = sorted(p for p in SAMPLES_DIR.rglob("*.jpg"))
    assert len(paths) >= 2
    return [p.read_bytes() for p in paths[:2]]


@pytest.fixture
def svc_settings(settings):
    return settings.replace(secret_key=KEY, rate_limit_burst=1000, rate_limit_per_minute=60000)


@pytest.fixture
def classifier(tiny_checkpoint, svc_settings):
    from amulet_lab.model import AmuletClassifier

    return AmuletClassifier.from_settings(svc_settings, tiny_checkpoint, monitor=PerformanceMonitor())


@pytest.fixture
def client(svc_settings, classifier):
    return TestClient(create_app(svc_settings, classifier), raise_server_exceptions=False)


def check_prediction(pred: dict, top_k: int) -> None:
    assert len(pred["top_k"]) == top_k
    probabilities = [entry[2] if isinstance(entry, list) else entry["probability"] for entry in pred["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-6
    assert pred["confidence_band"] in {"reliable", "verify", "retake", "unknown"}
    assert (pred["confidence_band"] == "unknown") == pred["is_unknown"]  # an unknown answer has no band
    assert isinstance(pred["is_unknown"], bool)
    assert {"decode", "preprocess", "infer", "total"} <= set(pred["timings"])


def test_predict_front_only(client, images):
    response = client.post("/predict", files={"front": ("front.jpg", images[0], "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(body["front"], 3)
    assert body["back"] is None and body["agree"] is None
    assert body["combined"]["label"] == body["front"]["label"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["uploads"]["front"]["format"] == "JPEG"
    assert response.headers["Cache-Control"] == "no-store"


def test_predict_pair_and_top_k(client, images):
    response = client.post(
        "/predict?top_k=2", files={"front": ("f.jpg", images[0], "image/jpeg"), "back": ("b.jpg", images[1], "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    for side in ("front", "back", "combined"):
        check_prediction(body[side], 2)
    assert isinstance(body["agree"], bool)
    assert body["agree"] == (body["front"]["label"] == body["back"]["label"])


def test_repeated_photo_hits_the_cache_and_metrics_show_it(client, images):
    files = {"front": ("front.jpg", images[0], "image/jpeg")}
    first = client.post("/predict", files=files).json()
    second = client.post("/predict", files=files).json()
    assert first["front"]["cache_hit"] is False and second["front"]["cache_hit"] is True
    assert (first["front"]["cache"], second["front"]["cache"], second["cache"]) == ("miss", "local", "local")
    assert second["front"]["label"] == first["front"]["label"]
    text = client.get("/metrics").text
    assert "amulet_cache_hits_total 1.0" in text
    assert "amulet_model_loaded 1.0" in text
    health = client.get("/health").json()
    import jsonschema

    from amulet_lab.health import HEALTH_SCHEMA

    jsonschema.validate(health, HEALTH_SCHEMA)  # with a model loaded too, not only without one
    assert health["cache_stats"]["size"] == 1 and health["cache_stats"]["hit_rate"] == 0.5
    assert health["model_status"]["loaded"] is True and health["model_status"]["arch"] == "tiny"
    assert client.get("/health/ready").status_code == 200


def test_one_decode_per_new_photo_and_none_for_a_repeated_one(client, images, monkeypatch):
    """A new photo is validated and decoded once, a repeated one not at all (its header is not even read).

    Decodes are counted where the pixels are made (``ImageFile.load``): the service reads a new photo's
    header first (``Image.open``, no pixels) to reserve its pixel budget.
    """
    from PIL import ImageFile

    opened = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self, *args, **kwargs):
        if all(other is not self for other in opened):  # load() runs again on an image already decoded: one decode
            opened.append(self)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    files = {"front": ("f.jpg", images[0], "image/jpeg"), "back": ("b.jpg", images[1], "image/jpeg")}
    first = client.post("/predict", files=files)
    assert first.status_code == 200, first.text
    assert len(opened) == 2 and first.json()["cache"] == "miss"  # two new photos: one decode each
    again = client.post("/predict", files=files)
    assert again.status_code == 200 and again.json()["cache"] == "local"
    assert len(opened) == 2  # repeated photos: answered from the prediction cache, never decoded
    assert again.json()["uploads"] == first.json()["uploads"]  # the facts are kept with the answer
    assert again.json()["uploads"]["front"]["format"] == "JPEG"


def _envelope(response, status, code):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == code and err["request_id"] == response.headers["X-Request-ID"]
    return err


def test_not_an_image_is_415(client):
    err = _envelope(client.post("/predict", files={"front": ("x.jpg", b"<html>hello</html>", "image/jpeg")}), 415,
                    "E_IMAGE_SIGNATURE")
    assert err["details"]["upload"] == "front"


def test_truncated_and_oversized_images_are_400(client, images, svc_settings, tiny_checkpoint):
    from amulet_lab.model import AmuletClassifier

    _envelope(client.post("/predict", files={"front": ("t.jpg", images[0][: len(images[0]) // 2], "image/jpeg")}), 400,
              "E_IMAGE_TRUNCATED")
    narrow = svc_settings.replace(max_image_side=16)
    small = TestClient(create_app(narrow, AmuletClassifier.from_settings(narrow, tiny_checkpoint)),
                       raise_server_exceptions=False)
    err = _envelope(small.post("/predict", files={"back": ("b.jpg", images[1]), "front": ("f.jpg", images[0])}), 400,
                    "E_IMAGE_DIMENSIONS")
    assert err["details"]["upload"] in ("front", "back")


def test_decompression_bomb_is_refused(client, svc_settings, tiny_checkpoint):
    from PIL import Image

    from amulet_lab.model import AmuletClassifier

    buffer = io.BytesIO()
    Image.new("RGB", (400, 400)).save(buffer, format="PNG")
    tight = svc_settings.replace(max_image_pixels=10_000)
    guarded = TestClient(create_app(tight, AmuletClassifier.from_settings(tight, tiny_checkpoint)),
                         raise_server_exceptions=False)
    err = _envelope(guarded.post("/predict", files={"front": ("bomb.png", buffer.getvalue())}), 400, "E_IMAGE_BOMB")
    assert err["details"]["severity"] in ("medium", "high", "critical")


def test_predict_with_required_auth(svc_settings, classifier, images):
    s = svc_settings.replace(require_auth=True)
    client = TestClient(create_app(s, classifier), raise_server_exceptions=False)
    files = {"front": ("front.jpg", images[0], "image/jpeg")}
    _envelope(client.post("/predict", files=files), 401, "E_AUTH_REQUIRED")
    ok = client.post("/predict", files=files, headers={"Authorization": f"Bearer {issue_token('app', 60, s)}"})
    assert ok.status_code == 200
    metrics_only = issue_token("ops", 60, s, scopes=["metrics"])
    _envelope(client.post("/predict", files=files, headers={"Authorization": f"Bearer {metrics_only}"}), 403,
              "E_AUTH_SCOPE")


def test_model_failures_are_500_then_the_breaker_answers_503(svc_settings, classifier, images, monkeypatch):
    def broken(x):
        raise RuntimeError("CUDA exploded at /secret/path")

    monkeypatch.setattr(classifier, "infer", broken)  # fault injection into the real classifier
    client = TestClient(create_app(svc_settings, classifier), raise_server_exceptions=False)
    files = {"front": ("front.jpg", images[0], "image/jpeg")}
    for _ in range(5):
        response = client.post("/predict", files=files)
        _envelope(response, 500, "E_INTERNAL")
        assert "secret" not in response.text and "CUDA" not in response.text
    opened = client.post("/predict", files=files)
    _envelope(opened, 503, "E_CIRCUIT_OPEN")
    assert int(opened.headers["Retry-After"]) >= 1
    assert 'amulet_breaker_state{breaker="model",state="open"} 1.0' in client.get("/metrics").text
    health = client.get("/health").json()
    assert health["api_metrics"]["error_count"] == 6 and health["status"] == "degraded"


def _wait_until_settled(client: TestClient, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/health/ready")
        if response.status_code == 200 or not response.json()["error"]["details"]["loading"]:
            return response
        time.sleep(0.05)
    raise AssertionError("the model neither loaded nor failed in time")


def test_lifespan_loads_the_model_from_settings(svc_settings, tiny_checkpoint, images):
    app = create_app(svc_settings.replace(model_path=str(tiny_checkpoint)))
    with TestClient(app) as client:
        assert _wait_until_settled(client).status_code == 200
        response = client.post("/predict", files={"front": ("front.jpg", images[0], "image/jpeg")})
        assert response.status_code == 200


def test_missing_checkpoint_keeps_ready_at_503(svc_settings, tmp_path, images):
    app = create_app(svc_settings.replace(model_path=str(tmp_path / "missing.pt")))
    with TestClient(app, raise_server_exceptions=False) as client:
        ready = _wait_until_settled(client)
        err = _envelope(ready, 503, "E_NOT_READY")
        assert "E_CHECKPOINT_MISSING" in err["details"]["error"]
        _envelope(client.post("/predict", files={"front": ("f.jpg", images[0])}), 503, "E_MODEL_UNAVAILABLE")
        assert client.get("/health/live").status_code == 200
        assert client.get("/health").json()["model_status"]["loaded"] is False


def _tokens(clients, settings):
    """One token per load client (each client then has its own rate-limit bucket), as ``amulet-lab load`` issues them."""
    from amulet_lab.service.auth import issue_token

    return [issue_token(f"load-{i}", 3600, settings) for i in range(clients)]


def test_short_load_run_loses_nothing_and_has_no_5xx(svc_settings, classifier, images):
    from amulet_lab.bench.load import run_load
    from amulet_lab.service.server import ServerThread

    with ServerThread(create_app(svc_settings, classifier)) as server:
        result = run_load(server.url, duration_s=2.0, clients=3, images=images, tokens=_tokens(3, svc_settings))
    assert result.sent > 0 and result.ok > 0
    assert result.lost == 0 and result.server_errors == 0, result.to_dict()
    assert result.passed
    summary = result.to_dict()
    assert summary["p95_ms"] >= summary["p50_ms"] > 0 and summary["throughput_rps"] > 0
    assert "PASS" in result.to_text()


def test_load_over_the_rate_limit_gets_429s_not_errors(svc_settings, classifier, images):
    from amulet_lab.bench.load import run_load
    from amulet_lab.service.server import ServerThread

    tight = svc_settings.replace(rate_limit_burst=5, rate_limit_per_minute=60)
    with ServerThread(create_app(tight, classifier)) as server:
        result = run_load(server.url, duration_s=1.5, clients=2, images=images, tokens=_tokens(2, tight))
    assert result.rate_limited > 0 and result.status_counts[429] == result.rate_limited
    assert 10 <= result.ok <= 14  # two buckets of 5, plus at most a token or two of refill each
    assert result.lost == 0 and result.server_errors == 0 and result.passed


def test_server_scenario_drives_a_real_uvicorn_service(svc_settings, classifier, images):
    """The bench ``server`` scenario with ``url=`` benchmarks a running deployment through the pooled client."""
    from amulet_lab.bench import scenarios
    from amulet_lab.service.server import ServerThread

    app = create_app(svc_settings, classifier)
    with ServerThread(app) as server:
        result = scenarios.server(None, images, target_qps=20, duration_s=0.5, threads=2, seed=1, url=server.url,
                                  settings=svc_settings, progress=False)
    assert result.metrics["queries"] >= 5
    assert result.params["url"] == server.url
    # per-stage timings come back from the service's answers (mostly cache hits here: two photos sent again and again)
    assert set(scenarios.STAGES) <= set(result.stages) and result.stages["total"] > 0


def test_public_health_hides_the_checkpoint_path_and_a_metrics_token_sees_more(client, svc_settings):
    public = client.get("/health").json()["model_status"]
    assert public["loaded"] is True and public["arch"] == "tiny" and public["num_classes"] == 6
    assert set(public) <= {"loaded", "loading", "error", "arch", "num_classes", "labels", "version", "loaded_at", "headline"}
    assert "path" not in public and "/" not in str(public)
    ops = {"Authorization": f"Bearer {issue_token('ops', 60, svc_settings, scopes=['metrics'])}"}
    full = client.get("/health", headers=ops).json()["model_status"]
    assert "parameters" in full and "temperature" in full
    assert full["path"] and "/" not in full["path"]  # the file name only, never the server's layout


def test_client_input_errors_do_not_open_the_breaker(svc_settings, classifier, images, monkeypatch):
    from amulet_lab.errors import ProcessingError

    client = TestClient(create_app(svc_settings, classifier), raise_server_exceptions=False)
    for _ in range(6):  # refused by validate_image before the model
        _envelope(client.post("/predict", files={"front": ("x.jpg", b"<html>no</html>", "image/jpeg")}), 415,
                  "E_IMAGE_SIGNATURE")

    def undecodable(*args, **kwargs):
        raise ProcessingError("could not decode image", stage="decode", code="E_IMAGE_DECODE")

    monkeypatch.setattr(classifier, "decode", undecodable)
    files = {"front": ("front.jpg", images[0], "image/jpeg")}
    for _ in range(6):  # passed validation, failed to decode inside the classifier: still the client's photo
        assert client.post("/predict", files=files).status_code == 400
    monkeypatch.undo()
    assert client.post("/predict", files=files).status_code == 200  # the breaker is still closed
    assert 'amulet_breaker_state{breaker="model",state="closed"} 1.0' in client.get("/metrics").text


def test_model_error_503_names_the_code_only(svc_settings, classifier, images, monkeypatch):
    from amulet_lab.errors import ModelError

    def broken(*args, **kwargs):
        raise ModelError("checkpoint /srv/secret/model.pt is corrupt", code="E_CHECKPOINT_CORRUPT")

    monkeypatch.setattr(classifier, "infer", broken)
    client = TestClient(create_app(svc_settings, classifier), raise_server_exceptions=False)
    response = client.post("/predict", files={"front": ("front.jpg", images[0], "image/jpeg")})
    err = _envelope(response, 503, "E_CHECKPOINT_CORRUPT")
    assert err["message"] == "The model is unavailable." and "secret" not in response.text
