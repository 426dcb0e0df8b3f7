"""The service's OpenAPI description: what FastAPI cannot infer, written out.

``/predict`` reads its multipart body itself (the size limits apply while reading), so FastAPI sees no
body: ``PREDICT_BODY`` describes it (``front`` required, ``back`` optional, both binary). Every
operation lists every status it can answer, errors with the envelope's schema (``ERROR_SCHEMA``);
``/metrics`` is ``text/plain``. Served at ``/openapi.json`` (and ``/docs``) when AMULET_DEBUG or
AMULET_OPENAPI is true.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_SCHEMA", "PREDICT_BODY", "PREDICTION_SCHEMA", "PAIR_SCHEMA", "error_responses", "install_openapi"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "details", "request_id"],
        "properties": {
            "code": {"type": "string", "pattern": "^E_[A-Z0-9_]+$"},
            "message": {"type": "string"},
            "details": {"type": ["object", "array"]},
            "request_id": {"type": ["string", "null"]},
        },
    }},
}

#: What each error status means here (the description of the response).
_STATUS_TEXT: dict[int, str] = {
    400: "Malformed request or photo (E_BAD_MULTIPART, E_EMPTY_FILE, E_FILENAME_TOO_LONG, E_IMAGE_* ...)",
    401: "Missing or invalid bearer token",
    403: "The token lacks the scope",
    404: "No such endpoint",
    405: "Method not allowed",
    408: "The request body did not arrive in time (E_UPLOAD_TIMEOUT)",
    413: "Upload too large",
    415: "Not multipart/form-data, or not an allowed image format",
    422: "Invalid query parameter or missing file",
    429: "Rate limited (see Retry-After)",
    431: "Request headers too large",
    500: "Internal error (details in the log under the request id)",
    503: "Model not loaded, circuit open, or a memory budget is full (see Retry-After)",
}

PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["front"],
            "properties": {
                "front": {"type": "string", "format": "binary", "description": "Photo of the front (JPEG, PNG, WebP, HEIC)"},
                "back": {"type": "string", "format": "binary", "description": "Photo of the back (optional)"},
            },
            "additionalProperties": False,
        },
        "encoding": {"front": {"contentType": "image/jpeg, image/png, image/webp, image/heic, application/octet-stream"},
                     "back": {"contentType": "image/jpeg, image/png, image/webp, image/heic, application/octet-stream"}},
    }},
}

PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "confidence", "confidence_band", "is_unknown", "top_k", "cache", "timings"],
    "properties": {
        "label": {"type": "string"},
        "thai_name": {"type": "string"},
        "english_name": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence_band": {"enum": ["reliable", "verify", "retake", "unknown"]},
        "is_unknown": {"type": "boolean"},
        "top_k": {"type": "array", "items": {"type": "object", "required": ["key", "probability"]}},
        "cache": {"enum": ["miss", "local"]},
        "cache_hit": {"type": "boolean"},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["front", "back", "combined", "agree", "request_id", "cache", "uploads", "batch"],
    "properties": {
        "front": PREDICTION_SCHEMA,
        "back": {"anyOf": [PREDICTION_SCHEMA, {"type": "null"}]},
        "combined": PREDICTION_SCHEMA,
        "agree": {"type": ["boolean", "null"]},
        "request_id": {"type": "string"},
        "cache": {"enum": ["miss", "local"]},
        "uploads": {"type": "object"},
        "batch": {"type": "object", "description": "Rows of the forward pass each side went through (0: from the cache)",
                  "additionalProperties": {"type": "integer", "minimum": 0}},
    },
}


def _envelope(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries with the envelope for ``statuses``."""
    return {status: _envelope(_STATUS_TEXT[status]) for status in statuses}


#: Statuses every operation can answer (the middleware: rate limit, bad token, last-resort 500; the protocol: 400, 431).
COMMON = (400, 401, 429, 431, 500)
#: Statuses of each operation beyond the common ones.
PER_PATH: dict[tuple[str, str], tuple[int, ...]] = {
    ("/predict", "post"): (403, 408, 413, 415, 422, 503),
    ("/metrics", "get"): (403,),
    ("/health/ready", "get"): (503,),
}
#: The probes skip the rate limit and auth: only a malformed request or an internal error.
PROBES = {"/health/live": (400, 431, 500), "/health/ready": (400, 431, 500, 503)}


def install_openapi(app: Any) -> None:
    """Replace ``app.openapi`` by FastAPI's schema completed as the module doc says (built once, then cached)."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorEnvelope"] = ERROR_SCHEMA
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                statuses = PROBES.get(path) or COMMON + PER_PATH.get((path, method), ())
                responses = op.setdefault("responses", {})
                responses.pop("422", None)  # FastAPI's own shape; ours (the envelope) comes below when it applies
                for status, entry in error_responses(*statuses).items():
                    responses[str(status)] = entry
        app.openapi_schema = schema
        return schema

    app.openapi = build
