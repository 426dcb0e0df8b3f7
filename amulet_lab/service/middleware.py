"""The service's one ASGI middleware: request id, auth, rate limit, headers, metrics, last-resort 500.

A pure ASGI middleware (not ``BaseHTTPMiddleware``) so the request body streams through
untouched (the upload reader depends on it) and so that an exception escaping the app can
still be answered with the envelope, headers included, before Starlette's bare 500.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amulet_lab.errors import SecurityError
from amulet_lab.service.auth import bearer_token, verify_token
from amulet_lab.service.errors import error_response
from amulet_lab.service.ratelimit import client_key

__all__ = ["ServiceMiddleware", "SECURITY_HEADERS", "PROBE_PATHS"]

#: Probes an orchestrator polls: never rate-limited and never auth-checked (a bad Authorization header is
#: ignored there), so a busy client or a stale token cannot make a healthy replica look dead. Their
#: X-RateLimit-* headers show the caller's bucket without taking from it.
PROBE_PATHS = frozenset({"/health/live", "/health/ready"})

log = logging.getLogger("amulet_lab.service")

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


#: Methods kept as themselves in metric labels; any other (a client can send "FOO") becomes "OTHER",
#: so a client cannot grow the label set, and with it the metrics' memory, without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metric_method(method: str) -> str:
    """``method`` as a metric label: itself when standard, else ``"OTHER"``."""
    return method if method in KNOWN_METHODS else "OTHER"


class ServiceMiddleware:
    """Wraps the app; ``state`` is the app's ``ServiceState`` (settings, limiter, metrics, monitor)."""

    def __init__(self, app: ASGIApp, state: Any, *, wall: Callable[[], float] = time.time) -> None:
        self.app = app
        self.state = state
        self.wall = wall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        st = self.state
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        req_state = scope.setdefault("state", {})
        req_state["request_id"] = request_id

        # Auth first: the rate-limit bucket is the token's subject when there is a valid one.
        probe = scope.get("path") in PROBE_PATHS
        auth_error: SecurityError | None = None
        claims = None
        if not probe:
            try:
                token = bearer_token(headers.get("authorization"))
                if token is not None:
                    claims = verify_token(token, st.settings)
            except SecurityError as exc:
                auth_error = exc
        req_state["claims"] = claims
        peer = scope.get("client")[0] if scope.get("client") else None
        key = client_key(
            claims.subject if claims else None, peer, headers, trust_forwarded_for=st.settings.trust_forwarded_for
        )
        check = st.limiter.peek if probe else st.limiter.hit
        if getattr(st.limiter, "blocking", False):  # buckets on a Redis/Valkey server: a network call
            decision = await anyio.to_thread.run_sync(check, key)
        else:
            decision = check(key)
        extra = {"X-Request-ID": request_id, **SECURITY_HEADERS, **decision.headers(self.wall())}
        if probe:
            extra.pop("Retry-After", None)  # a probe is never refused
        drop = {k.lower() for k in extra}
        status_box = [500]
        response_started = [False]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_box[0] = message["status"]
                raw = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in drop]
                raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
                message = {**message, "headers": raw}
            await send(message)

        try:
            if not decision.allowed and not probe:
                response = error_response(
                    429,
                    "E_RATE_LIMITED",
                    f"Too many requests; try again in {extra['Retry-After']} s.",
                    details={"limit": decision.limit, "retry_after_s": int(extra["Retry-After"])},
                    request_id=request_id,
                )
                await response(scope, receive, send_with_headers)
            elif auth_error is not None:
                response = error_response(
                    401,
                    auth_error.code,
                    auth_error.message,
                    request_id=request_id,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client went away mid-request (often mid-upload): nobody to answer, nothing went wrong here.
            log.info("client disconnected during %s %s (%s)", scope.get("method"), scope.get("path"), request_id)
            status_box[0] = 499
        except Exception:
            # Logged in full with the request id; the client gets the envelope and no internals.
            log.exception("unhandled error in request %s %s (%s)", scope.get("method"), scope.get("path"), request_id)
            if response_started[0]:
                raise
            response = error_response(
                500, "E_INTERNAL", "The service could not complete the request.", request_id=request_id
            )
            await response(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "<unmatched>"
            st.observe(metric_method(scope.get("method", "GET")), label, status_box[0], time.perf_counter() - started)

