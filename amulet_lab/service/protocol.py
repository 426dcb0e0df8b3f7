"""The HTTP/1.1 protocol the service runs on: uvicorn's h11 protocol, with its own errors in the envelope.

Some requests never reach the ASGI app: a ``Content-Length`` that is not a number (``abc``, ``-5``),
headers larger than the limit (a 1 MB ``Authorization``), a malformed request line. uvicorn answers
those itself in plain text; ``envelope_protocol`` makes a subclass that answers them with the service's
JSON envelope (400, or 431 for headers too large) and its security headers. It also

- caps open connections (``max_connections``): one more is answered 503 in the envelope and closed, so
  a flood of idle sockets cannot exhaust the process's file descriptors;
- closes a connection whose request head has not arrived within ``head_timeout_s`` (slowloris);
  between requests uvicorn's own keep-alive timeout applies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from amulet_lab.service.errors import error_body
from amulet_lab.service.middleware import SECURITY_HEADERS

__all__ = ["envelope_protocol", "protocol_error_bytes"]

log = logging.getLogger("amulet_lab.service")

_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_CODES = {400: ("E_BAD_REQUEST", "The HTTP request is malformed (request line, headers or Content-Length)."),
          431: ("E_HEADERS_TOO_LARGE", "The request headers are too large."),
          503: ("E_TOO_MANY_CONNECTIONS", "The service has too many open connections; try again shortly.")}


def _headers(body: bytes, request_id: str, extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close"), (b"x-request-id", request_id.encode())]
    out += [(k.lower().encode(), v.encode()) for k, v in {**SECURITY_HEADERS, **(extra or {})}.items()]
    return out


def protocol_error_bytes(status: int, *, details: dict[str, Any] | None = None) -> bytes:
    """A complete HTTP/1.1 response carrying the envelope for a protocol-level refusal (for a raw socket)."""
    code, message = _CODES[status]
    request_id = uuid.uuid4().hex
    body = json.dumps(error_body(code, message, details or {}, request_id)).encode()
    extra = {"Retry-After": "1"} if status == 503 else None
    conn = h11.Connection(h11.SERVER)
    # h11 needs a request before it can send a response; this local one is never on the wire.
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    return b"".join(conn.send(event) for event in (
        h11.Response(status_code=status, headers=_headers(body, request_id, extra), reason=_REASONS[status]),
        h11.Data(data=body), h11.EndOfMessage()))  # type: ignore[misc]


def envelope_protocol(*, max_connections: int, head_timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass with the envelope for its own errors, a connection cap and a head timeout."""

    class EnvelopeH11Protocol(H11Protocol):
        """uvicorn's h11 protocol whose own errors use the service's JSON envelope."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._protocol_error: h11.RemoteProtocolError | None = None
            self._head_timer: asyncio.TimerHandle | None = None
            next_event = self.conn.next_event

            def recording_next_event() -> Any:
                try:
                    return next_event()
                except h11.RemoteProtocolError as exc:
                    self._protocol_error = exc  # send_400_response learns the status hint (431) from it
                    raise

            self.conn.next_event = recording_next_event  # type: ignore[method-assign]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self.transport = transport
                log.warning("refused a connection: %d open (AMULET_MAX_CONNECTIONS)", len(self.connections))
                transport.write(protocol_error_bytes(503, details={"max_connections": max_connections}))
                transport.close()
                return
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            if self not in self.connections:  # refused in connection_made: nothing of ours to tear down
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None:
                self._cancel_head_timer()  # the head arrived; the body has its own timeouts in the app

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is None and not self.transport.is_closing():
                log.info("closed a connection whose request head did not arrive within %ss", head_timeout_s)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            hint = getattr(self._protocol_error, "error_status_hint", 400)
            status = 431 if hint == 431 else 400
            reason = str(self._protocol_error or msg)[:120]
            code, message = _CODES[status]
            request_id = uuid.uuid4().hex
            body = json.dumps(error_body(code, message, {"reason": reason}, request_id)).encode()
            try:
                for event in (h11.Response(status_code=status, headers=_headers(body, request_id),
                                           reason=_REASONS[status]), h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))  # type: ignore[arg-type]
            except h11.LocalProtocolError:  # the connection is past the point of answering: just close it
                pass
            self.transport.close()

    return EnvelopeH11Protocol
