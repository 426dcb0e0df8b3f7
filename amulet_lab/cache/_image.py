"""``ImageCache``: image bytes or decoded/preprocessed images keyed by the SHA-256 of the file's bytes.

The design document's ``image_cache`` (``image_cache.cache_image(data, name)``). The classifier does not
use it: it caches answers (``model.PredictionCache``), which skip the forward pass too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from amulet_lab.cache._ttl import TTLCache, _fmt, _stats_table
from amulet_lab.errors import ValidationError
from amulet_lab.files import existing_file, hash_stream

__all__ = ["ImageCache"]

log = logging.getLogger("amulet_lab.cache")


class ImageCache:
    """Decoded or preprocessed images keyed by a content hash of the file bytes plus a transform id.

    The hash is SHA-256 (``amulet_lab.files.hash_stream``), the package's one content hash (the same as
    ``security.content_hash``): collision-resistant, so two different photos never share a key. Paths are
    hashed by streaming ``chunk_size`` bytes at a time into one reused buffer: the file is never held whole
    in memory just to name it. Bounded in entries and in bytes; memory pressure is answered by ``shrink()``.
    """

    def __init__(
        self,
        max_items: int = 500,
        ttl: float = 1800.0,
        *,
        max_bytes: int | float = 104_857_600,
        chunk_size: int = 1 << 16,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValidationError("chunk_size must be an int >= 1", field="chunk_size", value=chunk_size,
                                  code="E_CHUNK_SIZE")
        self.chunk_size = chunk_size
        self._cache = TTLCache(max_bytes, max_items, ttl, timer=timer)

    def key_for(
        self, data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str], transform_id: str = ""
    ) -> str:
        """The cache key: SHA-256 of the bytes (or of the file, streamed), then ``:transform_id`` if given."""
        if not isinstance(transform_id, str):
            raise ValidationError("transform_id must be a str", field="transform_id", value=transform_id)
        if isinstance(data_or_path, (str, os.PathLike)):
            data_or_path = existing_file(data_or_path, field="data_or_path")
        elif not isinstance(data_or_path, (bytes, bytearray, memoryview)):
            raise ValidationError(
                f"expected bytes or a path, got {type(data_or_path).__name__}", field="data_or_path",
                value=type(data_or_path).__name__,
            )
        key = hash_stream(data_or_path, algo="sha256", digest_size=None, chunk_size=self.chunk_size)
        return f"{key}:{transform_id}" if transform_id else key

    def cache_image(self, data: bytes | bytearray | memoryview, filename: str = "", transform_id: str = "") -> str:
        """Store the image bytes under their content key and return the key (``filename`` is for logs only)."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
            raise ValidationError(f"cache_image needs non-empty image bytes (file {filename!r})", field="data",
                                  value=type(data).__name__, context={"filename": filename})
        key = self.key_for(data, transform_id)
        self._cache.set(key, bytes(data))
        log.debug("cached %s (%d bytes) as %s", filename or "image", len(data), key)
        return key

    def get_image(self, key: str) -> Any:
        """The value cached under ``key``, or None."""
        return self._cache.get(key)

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store a decoded or preprocessed ``value`` under ``key`` (from ``key_for``)."""
        if not isinstance(key, str) or not key:
            raise ValidationError("ImageCache keys are non-empty str from key_for()", field="key", value=key)
        self._cache.set(key, value, ttl)

    def get_or_compute(self, key: str, fn: Callable[[], Any], ttl: float | None = None) -> Any:
        """The value under ``key`` or ``fn()``, computed once across threads."""
        return self._cache.get_or_compute(key, fn, ttl)

    async def aget_or_compute(self, key: str, coro_fn: Callable[[], Awaitable[Any]], ttl: float | None = None) -> Any:
        """The value under ``key`` or ``await coro_fn()``, computed once across tasks."""
        return await self._cache.aget_or_compute(key, coro_fn, ttl)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was present."""
        return self._cache.delete(key)

    def clear(self) -> None:
        """Drop every entry."""
        self._cache.clear()

    def shrink(self, fraction: float) -> int:
        """Drop that share of the entries, least recently used first; returns how many."""
        return self._cache.shrink(fraction)

    def get_stats(self) -> dict[str, Any]:
        """hit_rate, hits, misses, size (entries), total_size_bytes, max_size, evictions."""
        s = self._cache.stats()
        return {
            "hit_rate": s["hit_rate"],
            "hits": s["hits"],
            "misses": s["misses"],
            "size": s["items"],
            "max_size": s["max_items"],
            "total_size_bytes": s["bytes"],
            "evictions": s["evictions"],
        }

    def __repr__(self) -> str:
        s = self._cache.stats()
        return f"<ImageCache size={s['items']}/{_fmt(s['max_items'])} hit_rate={s['hit_rate']:.1%}>"

    def _repr_html_(self) -> str:
        return _stats_table("ImageCache", self.get_stats())


