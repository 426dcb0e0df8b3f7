"""The service on a real socket: uvicorn in a thread (health, headers) and in a child process (memory under a 50 MB upload)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import jsonschema
import psutil
import pytest

from amulet_lab.health import HEALTH_SCHEMA
from amulet_lab.service import create_app
from amulet_lab.service.server import ServerProcess, ServerThread

KEY = "r" * 32
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """``amulet-lab serve`` in a child process, uploads limited to 5 MB."""
    env = {
        "AMULET_SECRET_KEY": KEY,
        "AMULET_MAX_UPLOAD_BYTES": str(5 * MB),
        "AMULET_LOG_LEVEL": "WARNING",
        # No checkpoint: these tests need none, and a model loading in the background would blur the RSS figures.
        "AMULET_MODEL_PATH": str(tmp_path_factory.mktemp("none") / "missing.pt"),
    }
    with ServerProcess(env) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while client.get("/health/ready").json()["error"]["details"]["loading"]:
                assert time.monotonic() < deadline, "model loading did not settle"
                time.sleep(0.05)
        yield server


def _send_body_and_read_answer(port: int, head: bytes, body_chunks) -> bytes:
    """Send ``head`` then stream ``body_chunks`` from a thread; return the first bytes of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(head)
    sent = [0]

    def sender() -> None:
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            return  # the server closed the connection after refusing: expected

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    thread.join(30)
    sock.close()
    return answer


@pytest.mark.slow  # a child process: a few seconds to start
def test_50mb_upload_is_413_and_server_memory_stays_low(server_process):
    proc = psutil.Process(server_process.pid)
    before = proc.memory_info().rss
    size = 50 * MB
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    answer = _send_body_and_read_answer(server_process.port, head, (b"x" * MB for _ in range(50)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"E_UPLOAD_TOO_LARGE"' in answer
    assert b"x-request-id:" in answer.lower()
    grown = proc.memory_info().rss - before
    assert grown < 10 * MB, f"server RSS grew by {grown / MB:.1f} MB"


@pytest.mark.slow  # a child process: a few seconds to start
def test_50mb_chunked_upload_is_413_once_past_the_limit(server_process):
    proc = psutil.Process(server_process.pid)
    before = proc.memory_info().rss
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = b'--b\r\nContent-Disposition: form-data; name="front"; filename="a.jpg"\r\n\r\n'
    piece = b"x" * (256 * 1024)
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 200
    answer = _send_body_and_read_answer(server_process.port, head, iter(chunks))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    grown = proc.memory_info().rss - before
    assert grown < 5 * MB + 10 * MB, f"server RSS grew by {grown / MB:.1f} MB"  # at most one part's limit is held


@pytest.mark.slow  # a child process: a few seconds to start
def test_child_process_serves_health_and_live(server_process):
    with httpx.Client(base_url=server_process.url, timeout=10) as client:
        live = client.get("/health/live")
        assert live.status_code == 200 and live.headers["x-frame-options"] == "DENY"
        health = client.get("/health")
        assert health.status_code == 200
        jsonschema.validate(health.json(), HEALTH_SCHEMA)


def test_uvicorn_thread_serves_health_matching_schema(settings):
    # No refill during the test; no checkpoint (none is needed here).
    settings = settings.replace(secret_key=KEY, rate_limit_per_minute=0.01, model_path="/nonexistent/amulet.pt")
    app = create_app(settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert server.port > 0
        response = client.get("/health")
        assert response.status_code == 200
        jsonschema.validate(response.json(), HEALTH_SCHEMA)
        assert response.headers["cache-control"] == "no-store"
        assert int(response.headers["x-ratelimit-remaining"]) == settings.rate_limit_burst - 1
        missing = client.get("/missing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "E_NOT_FOUND"
        # uvicorn's own proxy-header handling is off: a forged X-Forwarded-For cannot pick a fresh bucket.
        a = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
        assert int(a.headers["x-ratelimit-remaining"]) == settings.rate_limit_burst - 3


def test_client_hanging_up_mid_upload_leaves_the_server_serving(settings):
    settings = settings.replace(secret_key=KEY, model_path="/nonexistent/amulet.pt")
    app = create_app(settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"front\"\r\n\r\nxxxx"
        )
        sock.close()
        time.sleep(0.2)
        assert client.get("/health/live").status_code == 200
        text = client.get("/metrics").text
        assert 'route="/predict",status="499"' in text


def test_a_thread_that_does_not_start_in_time_is_stopped(settings):
    from amulet_lab.errors import NetworkError

    app = create_app(settings.replace(secret_key="t" * 32))
    server = ServerThread(app, startup_timeout=0.0)
    with pytest.raises(NetworkError):
        server.start()
    assert server.server.should_exit is True
    server._thread.join(10)
    assert not server._thread.is_alive()


def test_a_child_that_fails_to_start_is_cleaned_up():
    from amulet_lab.errors import NetworkError

    child = ServerProcess({"AMULET_SECRET_KEY": "changeme", "AMULET_DEBUG": "false"}, startup_timeout=60.0)
    with pytest.raises(NetworkError) as info:
        child.start()
    assert "E_SECRET_KEY" in str(info.value)
    assert child.process is not None and child.process.poll() is not None  # not left running
    assert child._stderr is None and "E_SECRET_KEY" in child.stderr_text()  # file closed, text kept
