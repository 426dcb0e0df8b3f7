"""Dynamic batching (a fake model, then the real tiny one) and the pixel budget of /predict."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from fastapi.testclient import TestClient

from amulet_lab.service import create_app
from amulet_lab.service.batching import DynamicBatcher
from amulet_lab.service.budgets import ServiceBudgets, decoded_bytes

KEY = "b" * 32


def _run_concurrently(batcher: DynamicBatcher, rows: list, *, stagger_s: float = 0.0) -> list:
    async def main():
        async def one(i, row):
            await asyncio.sleep(i * stagger_s)
            return await batcher.submit(row)

        return await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)), return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_rows_share_one_forward_pass():
    calls: list[list[int]] = []

    def infer(x):
        calls.append(list(x))
        return [v * 10 for v in x]

    batcher = DynamicBatcher(infer, max_size=8, max_wait_s=0.05, concat=lambda rows: [r for row in rows for r in row])
    results = _run_concurrently(batcher, [[i] for i in range(8)])
    assert [r.answer for r in results] == [i * 10 for i in range(8)]  # each request its own row back
    assert calls == [list(range(8))] and {r.batch_size for r in results} == {8}
    assert batcher.stats()["mean_batch_size"] == 8.0 and batcher.stats()["sizes"] == {"8": 1}
    batcher.close()
    # A second start of the service (lifespan) after close() gets a new inference thread, not a dead one.
    assert [r.answer for r in _run_concurrently(batcher, [[1], [2]])] == [10, 20]
    batcher.close()


def test_batches_are_capped_and_a_lone_row_waits_at_most_max_wait():
    sizes: list[int] = []

    def infer(x):
        sizes.append(len(x))
        return list(x)

    batcher = DynamicBatcher(infer, max_size=4, max_wait_s=0.01, concat=lambda rows: [r for row in rows for r in row])
    _run_concurrently(batcher, [[i] for i in range(10)])
    assert max(sizes) <= 4 and sum(sizes) == 10
    (lone,) = _run_concurrently(batcher, [[99]])
    assert lone.batch_size == 1 and lone.queue_ms < 500
    off = DynamicBatcher(infer, max_size=1, max_wait_s=0.05, concat=lambda rows: [r for row in rows for r in row])
    assert {r.batch_size for r in _run_concurrently(off, [[i] for i in range(4)])} == {1}  # batching off
    batcher.close()
    off.close()


def test_a_failed_forward_pass_reaches_every_request_of_its_batch_and_the_breaker_once():
    from amulet_lab.errors import CircuitBreaker

    def infer(x):
        raise RuntimeError("model broke")

    breaker = CircuitBreaker(failure_threshold=5, timeout=30, name="model")
    batcher = DynamicBatcher(infer, max_size=8, max_wait_s=0.05, breaker=breaker,
                             concat=lambda rows: [r for row in rows for r in row])
    results = _run_concurrently(batcher, [[i] for i in range(6)])
    assert all(isinstance(r, RuntimeError) for r in results)
    assert breaker.stats()["failures"] == 1 and batcher.stats()["failed_batches"] == 1
    batcher.close()


def test_decoded_bytes_reads_the_header_only():
    from PIL import Image

    def encoded(fmt, size, mode="RGB"):
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format=fmt)
        return buf.getvalue()

    limits = dict(draft_size=224, max_side=12_000, max_pixels=50_000_000)
    assert decoded_bytes(encoded("PNG", (700, 500)), **limits) == 700 * 500 * 4
    assert decoded_bytes(encoded("PNG", (700, 500), "RGBA"), **limits) == 700 * 500 * 16
    assert decoded_bytes(encoded("PNG", (700, 500), "L"), **limits) == 700 * 500 * 5
    # A JPEG is decoded at a reduced libjpeg scale: 4000x3000 for a 224 px model decodes at 1/8.
    assert decoded_bytes(encoded("JPEG", (4000, 3000)), **limits) == 500 * 375 * 4
    assert decoded_bytes(b"<html>", **limits) == 0  # refused by validate_image before any pixel
    assert decoded_bytes(encoded("PNG", (700, 500)), **{**limits, "max_pixels": 1000}) == 0


def test_budgets_are_sized_from_the_memory_budget(settings):
    budgets = ServiceBudgets.from_settings(settings.replace(memory_budget_mb=1024.0))
    assert budgets.pixels.capacity == 512 * 2**20 and budgets.uploads.capacity == 256 * 2**20
    small = ServiceBudgets.from_settings(settings.replace(memory_budget_mb=10.0))
    assert small.uploads.capacity >= 2 * settings.max_upload_bytes  # one largest request always fits
    assert ServiceBudgets.from_settings(settings).pixels.capacity == 1024 * 2**20  # no budget: as if 2048 MB


# ------------------------------------------------------------------------------ with the real classifier
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from amulet_lab.data import SAMPLES_DIR
    from amulet_lab.model import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    config = TrainConfig(arch="tiny", img_size=32, epochs=1, batch_size=8, min_epochs=1, patience=1, feature_views=2)
    train(SAMPLES_DIR, out=out, config=config, progress=False)
    return out


@pytest.fixture
def photos():
    from amulet_lab.bench.scenarios import distinct_images
    from amulet_lab.bench.load import sample_images

    return distinct_images(sample_images(limit=8), 24)


def _app(settings, tiny_checkpoint, **changes):
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.perf import PerformanceMonitor

    s = settings.replace(secret_key=KEY, rate_limit_burst=1000, rate_limit_per_minute=60000, **changes)
    return create_app(s, AmuletClassifier.from_settings(s, tiny_checkpoint, monitor=PerformanceMonitor()))


def test_concurrent_requests_are_batched_on_a_real_socket(settings, tiny_checkpoint, photos):
    import httpx

    from amulet_lab.service.server import ServerThread

    app = _app(settings, tiny_checkpoint, batch_max_wait_ms=100.0)
    bodies: list[dict] = []
    with ServerThread(app) as server:
        barrier = threading.Barrier(8)

        def client(data: bytes) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                barrier.wait()
                response = http.post("/predict", files={"front": ("a.jpg", data, "image/jpeg")})
                assert response.status_code == 200, response.text
                bodies.append(response.json())

        threads = [threading.Thread(target=client, args=(photos[i],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        health = httpx.get(server.url + "/health", timeout=10).json()
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert len(bodies) == 8 and all(b["cache"] == "miss" for b in bodies)
    assert health["batching"]["items"] == 8 and health["batching"]["batches"] < 8  # some shared a forward pass
    assert max(b["batch"]["front"] for b in bodies) > 1
    assert "amulet_batch_size_mean" in metrics and "amulet_budget_pixel_bytes" in metrics


def test_the_same_new_photo_twice_in_one_request_is_inferred_once(settings, tiny_checkpoint, photos):
    client = TestClient(_app(settings, tiny_checkpoint), raise_server_exceptions=False)
    files = {"front": ("f.jpg", photos[0], "image/jpeg"), "back": ("b.jpg", photos[0], "image/jpeg")}
    body = client.post("/predict", files=files).json()
    assert body["front"]["cache"] == "miss" and body["back"]["cache"] == "local" and body["back"]["label"]
    assert client.app.state.service.batcher.stats()["items"] == 1


def test_pixel_budget_full_is_503_with_retry_after_and_never_fits_is_503_at_once(settings, tiny_checkpoint, photos):
    app = _app(settings, tiny_checkpoint, pixel_wait_s=0.2)
    client = TestClient(app, raise_server_exceptions=False)
    pixels = app.state.service.budgets.pixels
    pixels.acquire(pixels.capacity)  # another request holds the whole budget
    try:
        response = client.post("/predict", files={"front": ("a.jpg", photos[1], "image/jpeg")})
    finally:
        pixels.release(pixels.capacity)
    err = response.json()["error"]
    assert response.status_code == 503 and err["code"] == "E_PIXEL_BUDGET" and response.headers["Retry-After"] == "2"
    assert err["details"]["never_fits"] is False and err["details"]["upload"] == "front"
    assert client.post("/predict", files={"front": ("a.jpg", photos[1], "image/jpeg")}).status_code == 200
    assert pixels.in_use == 0

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buf, format="PNG")  # 36 MB decoded, over a 20 MB pixel budget
    tight = _app(settings, tiny_checkpoint, memory_budget_mb=40.0)
    big = TestClient(tight, raise_server_exceptions=False).post("/predict", files={"front": ("b.png", buf.getvalue())})
    assert big.status_code == 503 and big.json()["error"]["details"]["never_fits"] is True
