"""Multipart uploads read in chunks, with the size limit enforced while reading.

``Content-Length`` is checked before a byte of the body is read, so a 200 MB request is
refused at once; a body without a length (chunked) is counted as it streams and refused
the moment a part passes ``max_upload_bytes``. Starlette's own form parser spools every
file to disk first and only limits non-file fields, hence this small reader on
python-multipart's push parser. ``MultipartReader`` does no I/O; ``read_uploads`` feeds it
from the request stream.

Slow clients: every piece of the body must arrive within ``idle_timeout_s`` of the previous one and the
whole body within ``deadline_s``, else 408 (E_UPLOAD_TIMEOUT). Memory: each piece is counted against a
byte budget shared by every upload in flight (an ``UploadLease`` on a ``threads.WeightedSemaphore``);
a piece that does not fit is refused at once with 503 and ``Retry-After`` (E_UPLOAD_BUDGET), so a
stalled upload holds only the few bytes it sent, never a slot that other clients wait for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from amulet_lab.service.errors import ApiError

__all__ = ["Upload", "MultipartReader", "UploadLease", "read_uploads", "body_limit", "MAX_FILENAME_BYTES"]

#: Room for boundaries and part headers on top of the files themselves.
MULTIPART_OVERHEAD = 64 * 1024
#: Longest file name accepted in a part's Content-Disposition, bytes (longer: 400 E_FILENAME_TOO_LONG).
MAX_FILENAME_BYTES = 1024


class UploadLease:
    """The bytes one request holds of the shared upload budget; ``take`` per piece, ``release`` once at the end."""

    def __init__(self, budget: Any = None) -> None:
        self.budget = budget  # a threads.WeightedSemaphore (None: unbounded)
        self.held = 0

    def take(self, nbytes: int) -> None:
        """Count ``nbytes`` more against the budget, or ``ApiError`` 503 (E_UPLOAD_BUDGET) when they do not fit."""
        if self.budget is None or nbytes <= 0:
            return
        from amulet_lab.errors import LockTimeoutError

        try:
            ok = self.budget.try_acquire(nbytes)
        except LockTimeoutError:  # larger than the whole budget
            ok = False
        if not ok:
            raise ApiError(
                503, "E_UPLOAD_BUDGET", "The service is receiving too many uploads at once; try again shortly.",
                details={"budget_bytes": self.budget.capacity, "in_use_bytes": self.budget.in_use},
                headers={"Retry-After": "1", "Connection": "close"},
            )
        self.held += nbytes

    def release(self) -> None:
        """Give every byte back (idempotent)."""
        if self.budget is not None and self.held:
            held, self.held = self.held, 0
            self.budget.release(held)


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file: its form field, the client's filename and the bytes."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes | bytearray  # the reader's own buffer, handed over without a copy (nothing else holds it)

    def __repr__(self) -> str:
        return f"<Upload {self.field} {self.filename!r} {len(self.data)} bytes>"


def body_limit(max_upload_bytes: int, n_fields: int) -> int:
    """Largest request body accepted for ``n_fields`` files of at most ``max_upload_bytes`` each."""
    return max_upload_bytes * n_fields + MULTIPART_OVERHEAD


def _too_large(message: str, limit: int, **details: object) -> ApiError:
    return ApiError(413, "E_UPLOAD_TOO_LARGE", message, details={"limit_bytes": limit, **details})


class MultipartReader:
    """Push-parse a multipart/form-data body; ``feed(chunk)`` as it arrives, then ``finish()``."""

    def __init__(self, content_type: str, *, fields: Iterable[str], max_part_bytes: int, max_total_bytes: int) -> None:
        mime, params = parse_options_header(content_type or "")
        if mime != b"multipart/form-data":
            raise ApiError(
                415,
                "E_UNSUPPORTED_MEDIA_TYPE",
                "Send the images as multipart/form-data.",
                details={"content_type": (content_type or "")[:100]},
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "E_BAD_MULTIPART", "The multipart body has no boundary.")
        self.fields = frozenset(fields)
        self.max_part_bytes = max_part_bytes
        self.max_total_bytes = max_total_bytes
        self.received = 0
        self._parts: dict[str, Upload] = {}
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._buffer = bytearray()
        self._field: str | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
            },
        )

    # ---- parser callbacks ------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._buffer = bytearray()
        self._field = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FILENAME_BYTES + 256:
            raise self._header_too_long()

    def _header_too_long(self) -> ApiError:
        if self._header_name.lower() == b"content-disposition":
            return ApiError(400, "E_FILENAME_TOO_LONG", f"The file name is longer than {MAX_FILENAME_BYTES} bytes.",
                            details={"limit_bytes": MAX_FILENAME_BYTES})
        return ApiError(400, "E_PART_HEADER_TOO_LARGE", "A part header of the multipart body is too large.",
                        details={"header": self._header_name[:40].decode("latin-1")})

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.fields:
            raise ApiError(
                400,
                "E_UNEXPECTED_FIELD",
                f"Unexpected form field {name[:50]!r}; send {', '.join(sorted(self.fields))}.",
                details={"field": name[:50], "expected": sorted(self.fields)},
            )
        if name in self._parts:
            raise ApiError(400, "E_DUPLICATE_FIELD", f"Form field {name!r} was sent twice.", details={"field": name})
        filename = options.get(b"filename")
        if filename is not None and len(filename) > MAX_FILENAME_BYTES:
            raise ApiError(400, "E_FILENAME_TOO_LONG", f"The file name is longer than {MAX_FILENAME_BYTES} bytes.",
                           details={"field": name, "limit_bytes": MAX_FILENAME_BYTES})
        self._field = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self._buffer) + (end - start) > self.max_part_bytes:
            raise _too_large(
                f"The file in {self._field!r} is larger than {self.max_part_bytes} bytes.",
                self.max_part_bytes,
                field=self._field,
            )
        self._buffer += data[start:end]

    def _on_part_end(self) -> None:
        assert self._field is not None  # headers_finished ran or raised
        filename = parse_options_header(self._headers.get(b"content-disposition", b""))[1].get(b"filename")
        content_type = self._headers.get(b"content-type")
        self._parts[self._field] = Upload(
            field=self._field,
            filename=filename.decode("utf-8", "replace") if filename is not None else None,
            content_type=content_type.decode("latin-1") if content_type is not None else None,
            data=self._buffer,  # no copy: the buffer is replaced below, so this part owns it alone
        )
        self._buffer = bytearray()

    # ---- feeding -----------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body; ``ApiError`` 413 as soon as a limit is passed."""
        self.received += len(chunk)
        if self.received > self.max_total_bytes:
            raise _too_large(f"The request body is larger than {self.max_total_bytes} bytes.", self.max_total_bytes)
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            if "header size" in str(exc).lower():  # python-multipart's own cap on a part header line
                raise self._header_too_long() from None
            raise ApiError(400, "E_BAD_MULTIPART", f"The multipart body is malformed ({type(exc).__name__}).") from None

    def finish(self) -> dict[str, Upload]:
        """The uploaded files by field, once the whole body was fed."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise ApiError(400, "E_BAD_MULTIPART", f"The multipart body is malformed ({type(exc).__name__}).") from None
        return dict(self._parts)


async def read_uploads(
    stream: AsyncIterator[bytes],
    headers: Mapping[str, str],
    *,
    fields: Iterable[str],
    required: Iterable[str],
    max_upload_bytes: int,
    idle_timeout_s: float | None = None,
    deadline_s: float | None = None,
    lease: UploadLease | None = None,
) -> dict[str, Upload]:
    """Read the multipart body from ``stream`` under the limits; 413/415/400/422/408/503 as ``ApiError``.

    ``idle_timeout_s``: longest wait for the next piece; ``deadline_s``: for the whole body (None: none);
    ``lease``: counts every piece against the shared upload budget (the caller releases it at the end).
    """
    fields = tuple(fields)
    limit = body_limit(max_upload_bytes, len(fields))
    length = headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
            if declared < 0:
                raise ValueError(length)
        except ValueError:
            raise ApiError(400, "E_BAD_REQUEST", "Content-Length is not a whole number >= 0.") from None
        if declared > limit:
            # Refused before reading: the body is never pulled off the socket.
            raise _too_large(f"The request body ({declared} bytes) is larger than {limit} bytes.", limit, declared_bytes=declared)
    reader = MultipartReader(headers.get("content-type") or "", fields=fields, max_part_bytes=max_upload_bytes, max_total_bytes=limit)
    async for chunk in _paced(stream, idle_timeout_s, deadline_s):
        if chunk:
            if lease is not None:
                lease.take(len(chunk))
            reader.feed(chunk)
    parts = reader.finish()
    for name, part in list(parts.items()):
        if not part.data:
            if not part.filename and name not in required:
                del parts[name]  # a form's file input left empty: the part is there, the file is not
                continue
            raise ApiError(400, "E_EMPTY_FILE", f"The file in {name!r} is empty (0 bytes).", details={"field": name})
    missing = [name for name in required if name not in parts]
    if missing:
        raise ApiError(
            422,
            "E_VALIDATION",
            f"Missing file(s): {', '.join(missing)}.",
            details={"errors": [{"loc": ["body", name], "msg": "Field required", "type": "missing"} for name in missing]},
        )
    return parts


async def _paced(stream: AsyncIterator[bytes], idle_timeout_s: float | None,
                 deadline_s: float | None) -> AsyncIterator[bytes]:
    """The pieces of ``stream``, each within ``idle_timeout_s`` of the last and all within ``deadline_s``; else 408."""
    loop = asyncio.get_running_loop()
    deadline = None if deadline_s is None else loop.time() + deadline_s
    iterator = stream.__aiter__()
    while True:
        now = loop.time()
        until = [t for t in (None if idle_timeout_s is None else now + idle_timeout_s, deadline) if t is not None]
        try:
            async with asyncio.timeout_at(min(until) if until else None):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            whole = deadline is not None and loop.time() >= deadline
            what = f"within {deadline_s:g} s" if whole else f"(no data for {idle_timeout_s:g} s)"
            raise ApiError(
                408, "E_UPLOAD_TIMEOUT", f"The request body did not arrive in time {what}.",
                details={"idle_timeout_s": idle_timeout_s, "deadline_s": deadline_s},
                headers={"Connection": "close"},
            ) from None
        yield chunk
