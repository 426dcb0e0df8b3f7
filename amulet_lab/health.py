"""The health report: model status, request metrics, memory, cache and threads in the design's shape.

``build_health_report`` is given the parts it reads (the service passes its own); any part
left out falls back to the process-wide one (``amulet_lab.memory.memory_monitor``, the image
cache, ``amulet_lab.threads.get_stats``), imported only when called. ``HEALTH_SCHEMA`` is the
JSON schema the report satisfies (the tests check it, clients may too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["build_health_report", "api_metrics", "overall_status", "public_model_status", "PUBLIC_MODEL_KEYS",
           "HEALTH_SCHEMA", "ERROR_RATE_DEGRADED"]

#: Share of requests failing (5xx) above which the service reports itself degraded (the design's alert level).
ERROR_RATE_DEGRADED = 0.05


def api_metrics(perf_stats: Mapping[str, Mapping[str, Any]], *, uptime_s: float, prefix: str = "http.") -> dict[str, Any]:
    """``total_requests``, ``error_count``, ``error_rate``, ``uptime_minutes`` from a ``PerformanceMonitor``'s stats.

    Only operations named ``<prefix>...`` count (the service records each request as ``http.<route>``).
    """
    total = errors = 0
    for name, stats in perf_stats.items():
        if name.startswith(prefix):
            total += int(stats.get("count", 0))
            errors += int(stats.get("errors", 0))
    return {
        "total_requests": total,
        "error_count": errors,
        "error_rate": round(errors / total, 6) if total else 0.0,
        "uptime_minutes": round(max(0.0, uptime_s) / 60.0, 3),
    }


#: The model-status keys anyone may see on an unauthenticated ``/health``. ``loading`` and ``error`` (a code
#: only, never a message) are there so an operator sees why a replica is not ready.
PUBLIC_MODEL_KEYS = ("loaded", "loading", "error", "arch", "num_classes", "labels", "version", "loaded_at", "headline")


def public_model_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model status that is safe to show publicly (no paths, metrics or counters).

    ``version`` falls back to the checkpoint's ``amulet_lab_version``, the name ``model_status()`` uses.
    """
    merged = dict(status)
    if "version" not in merged and "amulet_lab_version" in merged:
        merged["version"] = merged["amulet_lab_version"]
    return {k: merged[k] for k in PUBLIC_MODEL_KEYS if k in merged}


def redact_path(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with an absolute checkpoint ``path`` cut to its file name (server layout stays private)."""
    out = dict(status)
    if isinstance(out.get("path"), str):
        out["path"] = out["path"].replace("\\", "/").rsplit("/", 1)[-1]
    return out


def overall_status(model_status: Mapping[str, Any], metrics: Mapping[str, Any], pressure: Mapping[str, Any]) -> str:
    """``unhealthy`` under critical memory pressure; ``degraded`` when the model is not loaded, memory is
    at warning level or the error rate is high; ``healthy`` otherwise."""
    level = str(pressure.get("level", "normal")).lower()
    if level == "critical":
        return "unhealthy"
    if not model_status.get("loaded", False) or level == "warning" or metrics.get("error_rate", 0.0) > ERROR_RATE_DEGRADED:
        return "degraded"
    return "healthy"


def _default_memory_monitor() -> Any:
    from amulet_lab.memory import memory_monitor

    return memory_monitor


def _default_cache_stats() -> dict[str, Any]:
    """The process image cache's figures if one exists (never creates one), else zeros."""
    from amulet_lab.cache import peek_image_cache

    cache = peek_image_cache()
    return cache.get_stats() if cache is not None else {"hit_rate": 0.0, "size": 0, "total_size_bytes": 0}


def _default_thread_stats() -> dict[str, Any]:
    from amulet_lab.threads import get_stats

    return get_stats()


def build_health_report(
    *,
    model_status: Mapping[str, Any] | None = None,
    perf_stats: Mapping[str, Mapping[str, Any]] | None = None,
    uptime_s: float = 0.0,
    memory_monitor: Any = None,
    cache_stats: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    thread_stats: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    service_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report served at ``GET /health`` (see ``HEALTH_SCHEMA``).

    ``service_stats``: the service's own parts (``budgets`` in use, ``batching``), added as top-level keys.
    """
    model = dict(model_status) if model_status is not None else {"loaded": False, "error": "no model given"}
    metrics = api_metrics(perf_stats or {}, uptime_s=uptime_s)
    monitor = memory_monitor if memory_monitor is not None else _default_memory_monitor()
    mem = monitor.get_stats()
    pressure = dict(mem["pressure_check"])
    memory = {"current": dict(mem["current"]), "pressure_check": pressure}
    cache_src = cache_stats if cache_stats is not None else _default_cache_stats
    cache = dict(cache_src() if callable(cache_src) else cache_src)
    threads_src = thread_stats if thread_stats is not None else _default_thread_stats
    threads = dict(threads_src() if callable(threads_src) else threads_src)
    return {
        "status": overall_status(model, metrics, pressure),
        "timestamp": time.time(),
        "model_status": model,
        "api_metrics": metrics,
        "memory_stats": memory,
        "cache_stats": {
            "hit_rate": float(cache.get("hit_rate", 0.0)),
            "size": int(cache.get("size", cache.get("items", 0))),
            "total_size_bytes": int(cache.get("total_size_bytes", cache.get("bytes", 0))),
            **{k: v for k, v in cache.items() if k not in ("hit_rate", "size", "total_size_bytes")},
        },
        "thread_stats": threads,
        **{k: dict(v) for k, v in (service_stats or {}).items()},
    }


_NUMBER = {"type": "number", "minimum": 0}

#: JSON schema of ``build_health_report``'s result (draft 2020-12).
HEALTH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["status", "model_status", "api_metrics", "memory_stats", "cache_stats", "thread_stats"],
    "properties": {
        "status": {"enum": ["healthy", "degraded", "unhealthy"]},
        "timestamp": _NUMBER,
        "model_status": {
            "type": "object",
            "required": ["loaded"],
            "properties": {"loaded": {"type": "boolean"}},
        },
        "api_metrics": {
            "type": "object",
            "required": ["total_requests", "error_count", "error_rate", "uptime_minutes"],
            "properties": {
                "total_requests": {"type": "integer", "minimum": 0},
                "error_count": {"type": "integer", "minimum": 0},
                "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
                "uptime_minutes": _NUMBER,
            },
        },
        "memory_stats": {
            "type": "object",
            "required": ["current", "pressure_check"],
            "properties": {
                "current": {"type": "object"},
                "pressure_check": {"type": "object", "required": ["level"]},
            },
        },
        "cache_stats": {
            "type": "object",
            "required": ["hit_rate", "size", "total_size_bytes"],
            "properties": {
                "hit_rate": {"type": "number", "minimum": 0, "maximum": 1},
                "size": {"type": "integer", "minimum": 0},
                "total_size_bytes": {"type": "integer", "minimum": 0},
            },
        },
        "thread_stats": {"type": "object"},
        "budgets": {
            "type": "object",
            "properties": {name: {"type": "object", "required": ["capacity", "in_use", "waiting"],
                                  "properties": {"capacity": {"type": "integer", "minimum": 1},
                                                 "in_use": {"type": "integer", "minimum": 0},
                                                 "waiting": {"type": "integer", "minimum": 0}}}
                           for name in ("upload_bytes", "pixel_bytes")},
        },
        "batching": {
            "type": "object",
            "required": ["batches", "items", "mean_batch_size"],
            "properties": {"batches": {"type": "integer", "minimum": 0}, "items": {"type": "integer", "minimum": 0},
                           "mean_batch_size": _NUMBER},
        },
    },
}
