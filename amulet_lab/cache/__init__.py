"""Caches: ``TTLCache`` (bytes- and entry-bounded, per-entry TTL, LRU, stampede-protected), ``ImageCache`` and
``SharedStore`` (bytes on a Redis-protocol server that may be down: short timeouts, a circuit breaker).

Generic: they know no model. Importing this package loads no asyncio, numpy, PIL or torch.
``image_cache`` is the process-wide ``ImageCache`` of the design document, created on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from amulet_lab.cache._image import ImageCache
from amulet_lab.cache._shared import SharedStore, redact_url
from amulet_lab.cache._ttl import SWEEP_LIMIT, TTLCache, sizeof

__all__ = ["TTLCache", "ImageCache", "SharedStore", "redact_url", "sizeof", "get_image_cache", "peek_image_cache",
           "SWEEP_LIMIT"]

_image_cache: ImageCache | None = None
_image_cache_lock = threading.Lock()


def get_image_cache() -> ImageCache:
    """The process-wide ``ImageCache`` (the design's ``image_cache``), created on first use with the defaults."""
    global _image_cache
    if _image_cache is None:
        with _image_cache_lock:
            if _image_cache is None:
                _image_cache = ImageCache()
    return _image_cache


def peek_image_cache() -> ImageCache | None:
    """The process-wide ``ImageCache`` if something created it, else None (never creates one)."""
    return _image_cache


def _reset_image_cache() -> None:
    """Forget the process-wide image cache (tests, notebooks that change settings)."""
    global _image_cache
    with _image_cache_lock:
        _image_cache = None


def __getattr__(name: str) -> Any:
    if name == "image_cache":
        return get_image_cache()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

