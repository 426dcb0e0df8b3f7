"""The multipart reader: limits enforced while reading, up-front Content-Length check, malformed bodies."""

from __future__ import annotations

import asyncio

import pytest

from amulet_lab.service.errors import ApiError
from amulet_lab.service.uploads import MultipartReader, body_limit, read_uploads

BOUNDARY = "testboundary123"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(**files: bytes) -> bytes:
    out = b""
    for name, data in files.items():
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


class Stream:
    """An async body stream that remembers how much was pulled from it."""

    def __init__(self, body: bytes, chunk: int = 1000) -> None:
        self.body, self.chunk, self.pulled = body, chunk, 0

    async def __aiter__(self):
        for i in range(0, len(self.body), self.chunk):
            piece = self.body[i : i + self.chunk]
            self.pulled += len(piece)
            yield piece


def read(stream, headers, max_upload_bytes=10_000):
    return asyncio.run(
        read_uploads(stream, headers, fields=("front", "back"), required=("front",), max_upload_bytes=max_upload_bytes)
    )


def test_reads_front_and_back_in_small_chunks():
    body = multipart(front=b"F" * 2500, back=b"\r\n--B" * 100)
    parts = read(Stream(body, chunk=7), {"content-type": CT})
    assert parts["front"].data == b"F" * 2500
    assert parts["back"].data == b"\r\n--B" * 100
    assert parts["front"].filename == "front.jpg" and parts["front"].content_type == "image/jpeg"


def test_declared_length_over_the_limit_is_refused_before_reading():
    stream = Stream(multipart(front=b"x" * 100))
    with pytest.raises(ApiError) as info:
        read(stream, {"content-type": CT, "content-length": str(200 * 1024 * 1024)})
    assert info.value.status == 413 and info.value.code == "E_UPLOAD_TOO_LARGE"
    assert stream.pulled == 0


def test_part_over_the_limit_is_refused_while_streaming():
    body = multipart(front=b"x" * 50_000)
    stream = Stream(body, chunk=1000)
    with pytest.raises(ApiError) as info:
        read(stream, {"content-type": CT}, max_upload_bytes=10_000)  # no Content-Length: chunked upload
    assert info.value.status == 413
    assert stream.pulled < 12_000  # stopped right after the limit, not at the end of the body


def test_total_over_the_limit_is_refused_while_streaming():
    reader = MultipartReader(CT, fields=("front",), max_part_bytes=10, max_total_bytes=100)
    with pytest.raises(ApiError) as info:
        reader.feed(b"-" * 101)
    assert info.value.status == 413


def test_missing_front_is_422_and_unexpected_field_is_400():
    with pytest.raises(ApiError) as info:
        read(Stream(multipart(back=b"b")), {"content-type": CT})
    assert info.value.status == 422 and info.value.details["errors"][0]["loc"] == ["body", "front"]
    with pytest.raises(ApiError) as info:
        read(Stream(multipart(front=b"f", extra=b"e")), {"content-type": CT})
    assert info.value.status == 400 and info.value.code == "E_UNEXPECTED_FIELD"


def test_wrong_content_type_is_415_and_malformed_is_400():
    with pytest.raises(ApiError) as info:
        read(Stream(b"{}"), {"content-type": "application/json"})
    assert info.value.status == 415
    with pytest.raises(ApiError) as info:
        read(Stream(b"garbage without boundaries"), {"content-type": CT})
    assert info.value.status in (400, 422)
    with pytest.raises(ApiError) as info:
        read(Stream(b""), {"content-type": "multipart/form-data"})
    assert info.value.code == "E_BAD_MULTIPART"


def test_body_limit_leaves_room_for_both_files():
    assert body_limit(1000, 2) > 2000
