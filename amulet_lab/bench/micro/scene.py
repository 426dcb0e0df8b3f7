"""Micro-benchmark ``scene``: a 12-MP phone photo (JPEG and HEIC, 4032x3024) from bytes to its scene answer.

Per format: p50 and p95 of ``predict_scene`` over repeated calls, split into find (the reduced decode and the
finder), decode (the crops' decode, up to 2048 px) and classify; and the peak RSS above the idle process
(after the model is loaded and warm) during one call. Targets: p95 at most 1.0 s, at most 300 MB. The photos
are composites of synthetic pieces on generated backgrounds (``data.make_composite``); the model is the
default checkpoint (one torch thread).
"""

from __future__ import annotations

import statistics

from amulet_lab.bench.micro import MicroResult, Target, one_torch_thread

__all__ = ["run"]


def run(quick: bool = False) -> MicroResult:
    """Time and measure ``predict_scene`` on a JPEG and a HEIC phone photo (``quick``: smaller, fewer calls)."""

    from amulet_lab.data import make_composite, synthetic_sources
    from amulet_lab.memory import RssSampler
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.perf import PerformanceMonitor

    with one_torch_thread():
        clf = AmuletClassifier.from_checkpoint(cache=False, monitor=PerformanceMonitor())
        sources = synthetic_sources(1, seed=5)
        size = (1600, 1200) if quick else (4032, 3024)
        repeat = 2 if quick else 8
        figures: dict[str, float] = {}
        for fmt in ("JPEG", "HEIF"):
            photo = make_composite(sources, seed=21, index=0, size=size, fmt=fmt, n_pieces=3, quality=90).data
            clf.predict_scene(photo)  # warm: the backbone, the allocator
            runs = [clf.predict_scene(photo) for _ in range(repeat)]
            totals = sorted(r.timings["total"] for r in runs)
            name = fmt.lower()
            figures[f"{name}_mb"] = len(photo) / 2**20
            figures[f"{name}_pieces"] = float(len(runs[0].pieces))
            figures[f"{name}_p50_ms"] = statistics.median(totals)
            figures[f"{name}_p95_ms"] = totals[min(len(totals) - 1, round(0.95 * (len(totals) - 1)))]
            for stage in ("find", "decode", "classify"):
                figures[f"{name}_{stage}_ms"] = statistics.median(r.timings[stage] for r in runs)
            with RssSampler(0.005) as sampler:
                clf.predict_scene(photo)
            figures[f"{name}_peak_rss_above_idle_mb"] = sampler.peak_delta_bytes / 2**20
    ratios = {f"{f}_p95_s": figures[f"{f}_p95_ms"] / 1000 for f in ("jpeg", "heif")}
    ratios |= {f"{f}_peak_rss_mb": figures[f"{f}_peak_rss_above_idle_mb"] for f in ("jpeg", "heif")}
    targets = {**{f"{f}_p95_s": Target("<=", 1.0) for f in ("jpeg", "heif")},
               **{f"{f}_peak_rss_mb": Target("<=", 300.0) for f in ("jpeg", "heif")}}
    notes = (f"{size[0]}x{size[1]} composites of 3 synthetic pieces; default checkpoint, 1 torch thread; "
             "'ratios' here are the p95 in seconds and the peak RSS above idle in MB")
    return MicroResult("scene", figures, ratios, targets, notes)
