"""The service under hostile load, in a child process on 127.0.0.1: stalled uploads, then a pixel flood.

Bounded: about 30 s in all (start-up, 10 s of stalls beside honest clients, the flood). The child is
stopped by its pid (``ServerProcess.stop``) whatever happens.
"""

from __future__ import annotations

import io
import secrets
import threading
import time

import httpx
import psutil
import pytest

from amulet_lab.service.server import ServerProcess

MB = 1024 * 1024
BUDGET_MB = 1024


@pytest.fixture(scope="module")
def hostile_server():
    env = {
        "AMULET_SECRET_KEY": secrets.token_urlsafe(32),
        "AMULET_DEBUG": "false",
        "AMULET_MEMORY_BUDGET_MB": str(BUDGET_MB),
        "AMULET_RATE_LIMIT_PER_MINUTE": "600000",
        "AMULET_RATE_LIMIT_BURST": "10000",
        "AMULET_LOG_LEVEL": "WARNING",
        "AMULET_TORCH_THREADS": "1",
    }
    from amulet_lab.config import PROJECT_ROOT

    synth = PROJECT_ROOT / "data" / "models" / "amulet6-synth.pt"
    if synth.is_file():  # the bundled model, whatever the default checkpoint is called this week
        env["AMULET_MODEL_PATH"] = str(synth)
    server = ServerProcess(env, host="127.0.0.1", wait_ready=True, startup_timeout=90.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()  # SIGTERM to its pid, then SIGKILL if it lingers
        assert server.process is not None and server.process.poll() is not None


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_64_stalled_uploads_leave_honest_clients_unaffected(hostile_server):
    from amulet_lab.bench.load import run_load, sample_images

    result = run_load(hostile_server.url, duration_s=10.0, clients=8, images=sample_images(limit=8), stall=64)
    assert result.sent > 0 and result.lost == 0, result.to_dict()
    assert result.status_counts == {200: result.ok}, result.to_dict()  # every honest request got 200
    assert result.stalled["opened"] >= 64
    assert httpx.get(hostile_server.url + "/health/live", timeout=5).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_pixel_flood_stays_within_the_memory_budget(hostile_server):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000), (120, 130, 140)).save(buf, format="PNG", optimize=True)
    flood = buf.getvalue()
    assert len(flood) < 200_000  # a small file of 49 M pixels
    proc = psutil.Process(hostile_server.pid)
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def distinct(i: int) -> bytes:
        """The flood with a tEXt chunk of its own after IHDR: other bytes (no cache, no shared decode), same pixels."""
        import struct
        import zlib

        body = b"tEXt" + f"flood\x00{i}".encode("latin-1")
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return flood[:33] + chunk + flood[33:]  # 8 signature + 25 IHDR bytes

    def send(i: int) -> None:
        with httpx.Client(base_url=hostile_server.url, timeout=45) as client:
            response = client.post("/predict", files={"front": (f"flood{i}.png", distinct(i), "image/png")})
        with lock:
            answers.append(response)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(50)
    done.set()
    sampler.join(5)
    assert len(answers) == 16
    for response in answers:
        assert response.status_code in (200, 503), response.text[:300]
        if response.status_code == 503:
            assert response.json()["error"]["code"] in ("E_PIXEL_BUDGET", "E_UPLOAD_BUDGET")
    assert any(r.status_code == 200 for r in answers)
    # 16 different photos: each was decoded (or refused for budget), none answered from the cache
    assert all(r.json()["front"]["cache"] == "miss" for r in answers if r.status_code == 200)
    assert peak[0] < BUDGET_MB * MB, f"peak RSS {peak[0] / MB:.0f} MB over the {BUDGET_MB} MB budget"
    health = httpx.get(hostile_server.url + "/health", timeout=10).json()
    assert health["budgets"]["pixel_bytes"]["in_use"] == 0 and health["budgets"]["upload_bytes"]["in_use"] == 0
    assert httpx.get(hostile_server.url + "/health/live", timeout=5).status_code == 200  # the server stays up
    print(f"pixel flood: peak RSS {peak[0] / MB:.0f} MB, statuses {sorted(r.status_code for r in answers)}")
