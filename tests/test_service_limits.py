"""Limits of the service against misbehaving clients: timeouts, budgets, protocol errors in the envelope, codes, tokens.

No model is needed: every request here is refused before a classifier would be used.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import jwt
import pytest
from fastapi.testclient import TestClient

from amulet_lab.service import create_app, issue_token
from amulet_lab.service.errors import ApiError
from amulet_lab.service.server import ServerThread
from amulet_lab.service.uploads import MAX_FILENAME_BYTES, UploadLease, read_uploads
from amulet_lab.threads import WeightedSemaphore

KEY = "l" * 32
CT = "multipart/form-data; boundary=b"


@pytest.fixture
def svc_settings(settings):
    return settings.replace(secret_key=KEY, rate_limit_burst=1000, rate_limit_per_minute=60000,
                            model_path="/nonexistent/amulet.pt")


def _client(settings) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False)


def _code(response, status: int) -> str:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"code", "message", "details", "request_id"}
    return err["code"]


# ------------------------------------------------------------------------------------------ the reader
class Dribble:
    """A body stream that sends ``pieces`` with ``gap_s`` between them."""

    def __init__(self, pieces, gap_s: float) -> None:
        self.pieces, self.gap_s = pieces, gap_s

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece
            await asyncio.sleep(self.gap_s)


PART = b'--b\r\nContent-Disposition: form-data; name="front"; filename="a.jpg"\r\n\r\n'


def _read(stream, **kwargs):
    return asyncio.run(read_uploads(stream, {"content-type": CT}, fields=("front", "back"), required=("front",),
                                    max_upload_bytes=10_000, **kwargs))


def test_a_pause_between_pieces_is_408():
    with pytest.raises(ApiError) as info:
        _read(Dribble([b"--b\r\n", b"x"], gap_s=0.3), idle_timeout_s=0.05)
    assert info.value.status == 408 and info.value.code == "E_UPLOAD_TIMEOUT"
    assert info.value.headers["Connection"] == "close"


def test_a_body_that_trickles_past_the_deadline_is_408():
    pieces = [PART] + [b"x"] * 50
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        _read(Dribble(pieces, gap_s=0.02), idle_timeout_s=1.0, deadline_s=0.2)  # each piece in time, the whole not
    assert info.value.status == 408 and time.monotonic() - started < 1.0


def test_pieces_count_against_the_shared_upload_budget():
    budget = WeightedSemaphore(200)
    lease = UploadLease(budget)
    with pytest.raises(ApiError) as info:
        _read(Dribble([PART + b"x" * 80, b"x" * 100], gap_s=0), lease=lease)
    assert info.value.status == 503 and info.value.code == "E_UPLOAD_BUDGET"
    assert info.value.headers["Retry-After"] == "1"
    assert budget.in_use == len(PART) + 80  # held until the request ends ...
    lease.release()
    lease.release()  # ... and given back once
    assert budget.in_use == 0


def test_empty_file_and_long_file_name_have_codes_of_their_own(svc_settings):
    client = _client(svc_settings)
    assert _code(client.post("/predict", files={"front": ("a.jpg", b"")}), 400) == "E_EMPTY_FILE"
    long_name = "a" * (MAX_FILENAME_BYTES + 1) + ".jpg"
    assert _code(client.post("/predict", files={"front": (long_name, b"x")}), 400) == "E_FILENAME_TOO_LONG"
    longer = "a" * 5000 + ".jpg"  # past python-multipart's own header cap
    assert _code(client.post("/predict", files={"front": (longer, b"x")}), 400) == "E_FILENAME_TOO_LONG"
    # An empty optional back without a file name is a form's unused file input: not an error, not a photo.
    body = (b'--b\r\nContent-Disposition: form-data; name="back"; filename=""\r\n\r\n\r\n--b--\r\n')
    assert _code(client.post("/predict", content=body, headers={"content-type": CT}), 422) == "E_VALIDATION"


def test_the_upload_budget_refuses_with_503_in_the_envelope(svc_settings):
    app = create_app(svc_settings)
    app.state.service.budgets.uploads = WeightedSemaphore(1000, name="upload_bytes")
    response = TestClient(app, raise_server_exceptions=False).post("/predict", files={"front": ("a.jpg", b"x" * 5000)})
    assert _code(response, 503) == "E_UPLOAD_BUDGET" and response.headers["Retry-After"] == "1"
    assert app.state.service.budgets.uploads.in_use == 0  # given back after the refusal


# ------------------------------------------------------------------------------------------- tokens
def test_a_token_living_longer_than_the_maximum_is_refused(svc_settings):
    from amulet_lab.errors import SecurityError, ValidationError
    from amulet_lab.service.auth import verify_token

    now = int(time.time())
    base = {"sub": "x", "iss": svc_settings.jwt_issuer, "aud": svc_settings.jwt_audience, "scope": "predict"}
    forever = jwt.encode({**base, "iat": now, "exp": 10**20}, KEY, algorithm="HS256")
    with pytest.raises(SecurityError) as info:
        verify_token(forever, svc_settings)
    assert info.value.code == "E_AUTH_INVALID"
    future = jwt.encode({**base, "iat": now + 10**9, "exp": now + 10**9 + 60}, KEY, algorithm="HS256")
    with pytest.raises(SecurityError):
        verify_token(future, svc_settings)  # issued in the future: a short "lifetime" that starts decades ahead
    tight = svc_settings.replace(token_max_ttl_s=60)
    with pytest.raises(ValidationError):
        issue_token("x", 61, tight)
    assert verify_token(issue_token("x", 60, tight), tight).subject == "x"
    with pytest.raises(SecurityError):
        verify_token(issue_token("x", 3600, svc_settings), tight)  # valid elsewhere, too long-lived here


# ---------------------------------------------------------------------------------- on a real socket
def _exchange(port: int, raw: bytes, *, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while True:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not piece:
                break
            answer += piece
    return answer


def _envelope_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower() and b"x-request-id" in head.lower(), head
    return status, json.loads(body)["error"]


@pytest.fixture
def live_server(svc_settings):
    settings = svc_settings.replace(upload_idle_timeout_s=0.5, upload_timeout_s=2.0, max_connections=8)
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize("length", ["abc", "-5", "1e3"])
def test_a_bad_content_length_is_answered_in_the_envelope(live_server, length):
    raw = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {CT}\r\nContent-Length: {length}\r\n\r\n".encode()
    status, err = _envelope_of(_exchange(live_server.port, raw))
    assert (status, err["code"]) == (400, "E_BAD_REQUEST") and err["request_id"]


def test_headers_too_large_are_431_in_the_envelope(live_server):
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 1_000_000 + b"\r\n\r\n"
    status, err = _envelope_of(_exchange(live_server.port, raw))
    assert (status, err["code"]) == (431, "E_HEADERS_TOO_LARGE")


def test_a_body_shorter_than_its_length_gets_408_soon(live_server):
    started = time.monotonic()
    raw = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {CT}\r\nContent-Length: 1000\r\n\r\n").encode()
    raw += b'--b\r\nContent-Disposition: form-data; name="front"; filename="a.jpg"\r\n\r\nxx'
    status, err = _envelope_of(_exchange(live_server.port, raw))
    assert (status, err["code"]) == (408, "E_UPLOAD_TIMEOUT") and time.monotonic() - started < 5


def test_connections_over_the_cap_get_503_and_the_server_keeps_serving(live_server):
    import httpx

    idle = [socket.create_connection(("127.0.0.1", live_server.port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.2)
        status, err = _envelope_of(_exchange(live_server.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert (status, err["code"]) == (503, "E_TOO_MANY_CONNECTIONS")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(live_server.url + "/health/live", timeout=5).status_code == 200


def test_a_connection_that_never_sends_its_head_is_closed(live_server):
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost:")  # and then nothing
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server after the idle timeout
        assert time.monotonic() - started < 4
