"""The prediction cache: a model's answer for an image, keyed by the image's content hash and the model's fingerprint.

An ``Answer`` is what inference produced for one image, before any ``top_k`` is chosen: the whole
calibrated probability vector, the feature distance and the unknown decision, plus the source's facts
(format, original size, bytes). It is small (about 200 bytes for six classes), so any ``top_k``, band or
name is served from it, and it has a compact, versioned binary form (``to_bytes``/``from_bytes``, not
pickle) for a cache that other processes share.

``PredictionCache`` holds answers in a ``cache.TTLCache``: bounded in bytes (AMULET_CACHE_MAX_SIZE),
expiring after a time to live (AMULET_CACHE_DEFAULT_TTL), least recently used out first, and
stampede-protected: identical concurrent requests infer once, the others wait for that answer. The key
is ``<model fingerprint>:<sha256 of the bytes>``, so a new model never serves an old model's answer.

With a shared tier (``SharedAnswers``, on a Redis/Valkey server: AMULET_REDIS_URL) the local tier is asked
first, then the shared one, then the model: an answer found in the shared tier is put in the local one too,
and a computed answer goes into both (shared key ``amulet:pred:v1:<model fingerprint>:<sha256>``, value
``Answer.to_bytes()``, expiring after the same TTL). A shared tier that is down or slow is skipped (short
timeouts, a circuit breaker): the answer then comes from the local tier or the model. ``lookup`` and
``get_or_compute_origin`` say where an answer came from: ``"local"``, ``"shared"`` or ``"miss"``.

Why not keep decoded inputs instead (the earlier design): a cached input still paid the forward pass,
so a repeated photo cost 23 ms against 55 ms for a new one; a cached answer costs the hash and a lookup.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from amulet_lab.cache import TTLCache
from amulet_lab.display import html_table
from amulet_lab.errors import ValidationError

__all__ = ["Answer", "PredictionCache", "SharedAnswers", "ANSWER_FORMAT", "SHARED_PREFIX", "live_prediction_caches"]

#: Leading bytes of ``Answer.to_bytes`` (format name and version): another version is refused, not misread.
ANSWER_FORMAT = b"AMA1"
_HEAD = struct.Struct("<4sBBdH")  # format, flags, n probs, distance, len(format name)
_FACTS = struct.Struct("<IIQ")  # width, height, nbytes
#: Namespace and version of the shared tier's keys: ``amulet:pred:v1:<model fingerprint>:<sha256>``.
SHARED_PREFIX = b"amulet:pred:v1:"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One image's calibrated probabilities, feature distance, unknown decision and source facts."""

    probs: tuple[float, ...]
    distance: float | None
    unknown: bool
    source: tuple[str, int, int, int] | None = None  # format, width, height, bytes of the original (None: in memory)

    @property
    def nbytes(self) -> int:
        """Approximate bytes held (what the cache's byte bound counts)."""
        return 120 + 32 * len(self.probs) + (80 if self.source else 0)

    def facts(self) -> dict[str, Any] | None:
        """The source's format, original size and bytes, or None for an image given in memory."""
        if self.source is None:
            return None
        fmt, width, height, nbytes = self.source
        return {"format": fmt, "width": width, "height": height, "bytes": nbytes}

    def to_bytes(self) -> bytes:
        """The compact binary form: a versioned header, float32 probabilities, the source's facts."""
        flags = (1 if self.unknown else 0) | (2 if self.distance is not None else 0) | (4 if self.source else 0)
        fmt = (self.source[0] if self.source else "").encode("ascii")
        out = [_HEAD.pack(ANSWER_FORMAT, flags, len(self.probs), self.distance or 0.0, len(fmt)),
               struct.pack(f"<{len(self.probs)}f", *self.probs), fmt]
        if self.source:
            out.append(_FACTS.pack(*self.source[1:]))
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Answer:
        """Inverse of ``to_bytes``; a ``ValidationError`` (E_ANSWER_FORMAT) for anything else."""
        try:
            magic, flags, n, distance, fmt_len = _HEAD.unpack_from(data, 0)
            if magic != ANSWER_FORMAT:
                raise ValueError(f"format {magic!r}, expected {ANSWER_FORMAT!r}")
            pos = _HEAD.size
            probs = struct.unpack_from(f"<{n}f", data, pos)
            pos += 4 * n
            fmt = bytes(data[pos:pos + fmt_len]).decode("ascii")
            pos += fmt_len
            source = (fmt, *_FACTS.unpack_from(data, pos)) if flags & 4 else None
            if pos + (_FACTS.size if flags & 4 else 0) != len(data):
                raise ValueError("trailing or missing bytes")
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"not an amulet-lab answer: {exc}", field="answer", code="E_ANSWER_FORMAT") from exc
        return cls(tuple(float(p) for p in probs), distance if flags & 2 else None, bool(flags & 1), source)


class SharedAnswers:
    """The shared tier: answers as ``Answer.to_bytes()`` in a ``cache.SharedStore``, under ``SHARED_PREFIX + key``.

    ``get`` and ``put`` never raise for the server (a failure is a miss, counted by the store); a value that
    is not an answer of this format (another version, garbage) is a miss too, counted as ``bad_values``.
    """

    def __init__(self, store: Any, ttl: float = 3600.0) -> None:
        self.store = store
        self.ttl = float(ttl)
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "puts": 0, "bad_values": 0}

    @classmethod
    def from_settings(cls, settings: Any) -> SharedAnswers | None:
        """The tier on AMULET_REDIS_URL (None when unset): AMULET_REDIS_TIMEOUT_MS, AMULET_REDIS_BREAKER_TIMEOUT_S,
        entries living AMULET_CACHE_DEFAULT_TTL (called at the edges)."""
        if not getattr(settings, "redis_url", None):
            return None
        from amulet_lab.cache import SharedStore

        store = SharedStore(settings.redis_url, timeout_ms=settings.redis_timeout_ms,
                            breaker_timeout_s=settings.redis_breaker_timeout_s, name="shared_cache")
        return cls(store, settings.cache_default_ttl)

    @staticmethod
    def shared_key(key: str) -> bytes:
        """The server's key of a prediction-cache key (``<fingerprint>:<sha256>``)."""
        return SHARED_PREFIX + key.encode("ascii")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def get(self, key: str) -> Answer | None:
        """The answer under ``key`` on the server, or None (absent, unreadable, or the server failed)."""
        data = self.store.get(self.shared_key(key))
        if data is None:
            self._count("misses")
            return None
        try:
            answer = Answer.from_bytes(data)
        except ValidationError:
            self._count("bad_values")
            self._count("misses")
            return None
        self._count("hits")
        return answer

    def put(self, key: str, answer: Answer) -> bool:
        """Store ``answer`` under ``key`` for ``ttl`` seconds; False when the server failed."""
        done = bool(self.store.set(self.shared_key(key), answer.to_bytes(), self.ttl))
        if done:
            self._count("puts")
        return done

    @property
    def breaker(self) -> Any:
        """The store's circuit breaker (for /metrics)."""
        return self.store.breaker

    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, puts, bad_values, and the store's errors, skipped calls, breaker state, URL."""
        with self._lock:
            counts = dict(self._counts)
        asked = counts["hits"] + counts["misses"]
        return {**counts, "hit_rate": counts["hits"] / asked if asked else 0.0, "ttl": self.ttl, **self.store.stats()}

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()

    def __repr__(self) -> str:
        return f"<SharedAnswers {self.store!r}>"


class PredictionCache:
    """Answers by ``(model fingerprint, content hash)``: byte-bounded, expiring, computed once per key."""

    def __init__(self, max_bytes: int | float = 104_857_600, ttl: float = 3600.0, *,
                 timer: Callable[[], float] = time.monotonic, shared: SharedAnswers | None = None) -> None:
        self._cache = TTLCache(max_bytes, None, ttl, timer=timer)
        self.shared = shared
        _live.add(self)

    @classmethod
    def from_settings(cls, settings: Any) -> PredictionCache:
        """Bounded by AMULET_CACHE_MAX_SIZE, entries living AMULET_CACHE_DEFAULT_TTL, with the shared tier on
        AMULET_REDIS_URL when set (called at the edges)."""
        return cls(settings.cache_max_size, settings.cache_default_ttl, shared=SharedAnswers.from_settings(settings))

    @staticmethod
    def key(fingerprint: str, content_hash: str) -> str:
        """The key of one image's answer under one model."""
        if not fingerprint or not content_hash:
            raise ValidationError("a prediction-cache key needs a model fingerprint and a content hash",
                                  field="key", code="E_CACHE_KEY")
        return f"{fingerprint}:{content_hash}"

    def get(self, key: str) -> Answer | None:
        """The answer under ``key`` in the local tier, or None (counted as a hit or a miss)."""
        return self._cache.get(key)

    def lookup(self, key: str) -> tuple[Answer | None, str]:
        """(answer, origin): the local tier first (``"local"``), then the shared one (``"shared"``: the answer is
        put in the local tier too), else ``(None, "miss")``."""
        answer = self._cache.get(key)
        if answer is not None:
            return answer, "local"
        if self.shared is not None:
            answer = self.shared.get(key)
            if answer is not None:
                self._cache.set(key, answer)
                return answer, "shared"
        return None, "miss"

    def put(self, key: str, answer: Answer) -> None:
        """Store ``answer`` under ``key``, in the local tier and the shared one (when there is one)."""
        if not isinstance(answer, Answer):
            raise ValidationError("the prediction cache holds Answer values", field="answer",
                                  value=type(answer).__name__, code="E_CACHE_VALUE")
        self._cache.set(key, answer)
        if self.shared is not None:
            self.shared.put(key, answer)

    def get_or_compute(self, key: str, compute: Callable[[], Answer]) -> tuple[Answer, bool]:
        """(answer, whether this call computed it): ``compute()`` runs once however many threads ask at once."""
        computed: list[bool] = []

        def run() -> Answer:
            answer = compute()
            if not isinstance(answer, Answer):
                raise ValidationError("compute() must return an Answer", field="compute",
                                      value=type(answer).__name__, code="E_CACHE_VALUE")
            computed.append(True)
            return answer

        answer, origin = self.get_or_compute_origin(key, run)
        return answer, origin == "miss"

    def get_or_compute_origin(self, key: str, compute: Callable[[], Answer]) -> tuple[Answer, str]:
        """(answer, origin): local, else shared, else ``compute()`` (stored in both tiers); ``origin`` is
        ``"local"``, ``"shared"`` or ``"miss"``. Threads asking for one key at once share one shared-tier lookup
        and one computation (the others say ``"local"``)."""
        origins: list[str] = []

        def fill() -> Answer:
            if self.shared is not None:
                found = self.shared.get(key)
                if found is not None:
                    origins.append("shared")
                    return found
            answer = compute()
            if not isinstance(answer, Answer):
                raise ValidationError("compute() must return an Answer", field="compute",
                                      value=type(answer).__name__, code="E_CACHE_VALUE")
            origins.append("miss")
            if self.shared is not None:
                self.shared.put(key, answer)
            return answer

        answer = self._cache.get_or_compute(key, fill)
        return answer, origins[0] if origins else "local"

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def clear(self) -> None:
        """Drop every answer."""
        self._cache.clear()

    def shrink(self, fraction: float) -> int:
        """Drop that share of the answers, least recently used first (memory pressure); returns how many."""
        return self._cache.shrink(fraction)

    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, items, bytes, evictions and bounds (``size``/``total_size_bytes`` as in /health)."""
        s = self._cache.stats()
        return {**s, "size": s["items"], "total_size_bytes": s["bytes"],
                "max_bytes": s["max_bytes"] if s["max_bytes"] != math.inf else None,
                "max_items": s["max_items"] if s["max_items"] != math.inf else None,
                "shared": self.shared.stats() if self.shared is not None else None}

    def get_stats(self) -> dict[str, Any]:
        """``stats()`` under the name the health report and the memory responders call."""
        return self.stats()

    def reset_stats(self) -> None:
        """Zero the hit, miss and eviction counts."""
        self._cache.reset_stats()

    def __repr__(self) -> str:
        s = self._cache.stats()
        return f"<PredictionCache answers={s['items']} bytes={s['bytes']} hit_rate={s['hit_rate']:.1%}>"

    def _repr_html_(self) -> str:
        return html_table(self.stats(), "PredictionCache")


_live: weakref.WeakSet[PredictionCache] = weakref.WeakSet()


def live_prediction_caches() -> list[PredictionCache]:
    """Every prediction cache of this process still in use (for ``%%amulet_profile`` and memory responders)."""
    return list(_live)
