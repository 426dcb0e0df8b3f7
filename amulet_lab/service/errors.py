"""The one error envelope of the service and the handlers that produce it.

Every error leaves the service as ``{"error": {"code", "message", "details", "request_id"}}``
with a fitting status. Our own ``AmuletError`` tree maps to statuses by type and code;
FastAPI's validation errors become 422 and Starlette's 404/405 keep their status. A 500
never carries the exception's text: that goes to the log with the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from amulet_lab.errors import AmuletError, CircuitOpenError, ModelError, ProcessingError, SecurityError, ValidationError

__all__ = ["ApiError", "error_body", "error_response", "status_for", "install_error_handlers"]

log = logging.getLogger("amulet_lab.service")

#: Codes of our error tree that mean something more precise than 400.
_CODE_STATUS: dict[str, int] = {
    "E_UPLOAD_TOO_LARGE": 413,
    "E_IMAGE_TOO_LARGE": 413,  # validate_image: the file is over max_upload_bytes
    "E_UNSUPPORTED_MEDIA_TYPE": 415,
    "E_IMAGE_SIGNATURE": 415,  # validate_image: not one of the allowed image formats
    "E_AUTH_REQUIRED": 401,
    "E_AUTH_INVALID": 401,
    "E_AUTH_EXPIRED": 401,
    "E_AUTH_SCOPE": 403,
}

#: Default codes for statuses Starlette raises on its own (404 on unknown paths, 405 ...).
_HTTP_CODES: dict[int, str] = {
    400: "E_BAD_REQUEST",
    401: "E_AUTH_REQUIRED",
    403: "E_FORBIDDEN",
    404: "E_NOT_FOUND",
    405: "E_METHOD_NOT_ALLOWED",
    408: "E_UPLOAD_TIMEOUT",
    413: "E_UPLOAD_TOO_LARGE",
    415: "E_UNSUPPORTED_MEDIA_TYPE",
    422: "E_VALIDATION",
    429: "E_RATE_LIMITED",
    431: "E_HEADERS_TOO_LARGE",
    500: "E_INTERNAL",
    503: "E_UNAVAILABLE",
}


class ApiError(Exception):
    """An error the service answers with a given status, code, message and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def status_for(exc: AmuletError) -> int:
    """The HTTP status an ``AmuletError`` maps to."""
    if exc.code in _CODE_STATUS:
        return _CODE_STATUS[exc.code]
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, SecurityError):
        # A hostile or malformed upload: the request is refused, the client is not "unauthenticated".
        return 400
    if isinstance(exc, ProcessingError) and exc.stage == "decode":
        return 400  # the photo could not be decoded: the client's input, not the service's fault
    if isinstance(exc, (CircuitOpenError, ModelError)):
        return 503
    return 500


def error_body(code: str, message: str, details: Any, request_id: str | None) -> dict[str, Any]:
    """The envelope as a dict."""
    return {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON response carrying the envelope."""
    return JSONResponse(
        error_body(code, message, details if details is not None else {}, request_id), status_code=status, headers=headers
    )


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.message, details=exc.details, request_id=_request_id(request), headers=exc.headers
    )


async def _amulet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AmuletError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, CircuitOpenError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if status >= 500:
        # Our own errors are safe to name, but their context may hold paths: log it, answer with the code only.
        log.error("request %s failed: %r", _request_id(request), exc, extra={"request_id": _request_id(request)})
        details: dict[str, Any] = {}
        if isinstance(exc, CircuitOpenError):
            message = exc.message  # names the breaker and the wait, nothing of the server
        elif status == 503:
            # A ModelError's message can name the checkpoint path: clients get the code, the log the rest.
            message = "The model is unavailable."
        else:
            message = "The service could not complete the request."
    else:
        details = {k: v for k, v in exc.to_dict()["context"].items() if k != "value" or isinstance(v, (int, float))}
        message = exc.message
    return error_response(status, exc.code, message, details=details, request_id=_request_id(request), headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Keep where and why; drop the echoed input (it can be a whole upload).
    problems = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    return error_response(
        422, "E_VALIDATION", "The request is not valid.", details={"errors": problems}, request_id=_request_id(request)
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"E_HTTP_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    if exc.status_code == 404:
        message = f"No such endpoint: {request.method} {request.url.path}"
    details = {"path": request.url.path, "method": request.method} if exc.status_code in (404, 405) else {}
    return error_response(
        exc.status_code, code, message, details=details, request_id=_request_id(request), headers=exc.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope handlers on ``app`` (uncaught exceptions are turned into 500s by the middleware)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AmuletError, _amulet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
