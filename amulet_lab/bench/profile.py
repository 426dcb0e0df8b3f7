"""``profile_pipeline``: what ``02_profile.ipynb`` shows — time and memory per stage, the cache's
effect, memory-pressure events and thread-pool use, for one classifier on a folder of photos.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from amulet_lab.bench import scenarios as sc
from amulet_lab.config import Settings

__all__ = ["PipelineProfile", "profile_pipeline"]


@dataclasses.dataclass
class PipelineProfile:
    """The measurements of one profiling pass (see ``profile_pipeline``)."""

    classifier: Any
    images: list[bytes]
    single: sc.ScenarioResult
    batch: sc.ScenarioResult
    memory: sc.ScenarioResult
    cache: sc.ScenarioResult
    pressure_checks: list[dict[str, Any]]
    pressure_events: list[dict[str, Any]]
    thread_stats: dict[str, Any]
    monitor_stats: dict[str, Any]
    seconds: float

    def stages_frame(self):  # -> pandas.DataFrame
        """Mean ms per stage, one image at a time against batched."""
        import pandas as pd

        return pd.DataFrame({self.single.key: self.single.stages, self.batch.key: self.batch.stages}).T.round(3)

    def memory_frame(self):  # -> pandas.DataFrame
        """Peak RSS and increment (MB) per stage."""
        import pandas as pd

        stages = [k[len("peak_rss_mb_"):] for k in self.memory.metrics if k.startswith("peak_rss_mb_")]
        m = self.memory.metrics
        return pd.DataFrame(
            {"peak_rss_mb": [m[f"peak_rss_mb_{s}"] for s in stages], "increment_mb": [m[f"increment_mb_{s}"] for s in stages]},
            index=stages,
        ).round(2)

    def cache_frame(self):  # -> pandas.DataFrame
        """Hit rate and hit/miss latency of the cache scenario."""
        import pandas as pd

        return pd.DataFrame({"value": self.cache.metrics}).round(4)

    def pressure_frame(self):  # -> pandas.DataFrame
        """Memory-pressure checks taken between stages (level, score, RSS); level changes: ``events_frame``."""
        import pandas as pd

        cols = ["when", "level", "score", "rss_mb", "system_used_fraction"]
        return pd.DataFrame([{k: c.get(k) for k in cols} for c in self.pressure_checks], columns=cols)

    def events_frame(self):  # -> pandas.DataFrame
        """Memory-pressure events seen during the profile: a level change each (from, to, score, RSS, responders run);
        with none, a frame that shows a sentence saying so instead of bare headers."""
        import pandas as pd

        cols = ["time", "from", "to", "score", "rss_mb", "responses", "errors"]
        rows = [{k: e.get(k) for k in cols} for e in self.pressure_events]
        for row in rows:
            row["responses"] = ", ".join(row["responses"] or {}) or "-"
            row["errors"] = len(row["errors"] or {})
        from amulet_lab.bench.report import frame_or_sentence

        levels = sorted({str(c.get("level")) for c in self.pressure_checks if c.get("level")})
        seen = f" (level seen: {', '.join(levels)})" if levels else ""
        return frame_or_sentence(pd.DataFrame(rows, columns=cols),
                                 f"No memory-pressure events: the pressure level did not change during the profile{seen}.")

    def threads_frame(self):  # -> pandas.DataFrame
        """Thread pools (name, workers, submitted, completed ...) as the thread manager reports them."""
        import pandas as pd

        pools = (self.thread_stats.get("pools") or {}).get("pools") or {}
        frame = pd.DataFrame.from_dict(pools, orient="index") if pools else pd.DataFrame()
        return frame

    def monitor_frame(self):  # -> pandas.DataFrame
        """The process-wide performance monitor's per-operation figures (this profile's calls among them)."""
        import pandas as pd

        return pd.DataFrame.from_dict(self.monitor_stats, orient="index") if self.monitor_stats else pd.DataFrame()

    def figures(self) -> dict[str, Any]:
        """Stage, memory and cache figures."""
        from amulet_lab.bench import plots

        return {
            "stages": plots.stage_figure([self.single, self.batch]),
            "memory": plots.memory_figure(self.memory),
            "cache": plots.cache_figure(self.cache),
        }

    def facts(self) -> str:
        """Stable facts for the notebook's checked cell."""
        return "\n".join([
            f"photos profiled: {len(self.images)}",
            f"stages timed: {', '.join(k for k in sc.STAGES if k in self.single.stages)}",
            f"memory stages: {', '.join(self.memory_frame().index)}",
            f"cache hits seen: {self.cache.extra['hits'] > 0}",
            f"pressure checks: {len(self.pressure_checks)}",
            f"figures: {', '.join(self.figures())}",
        ])

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Pipeline profile</b>: {len(self.images)} photos in {self.seconds:.1f} s · single p50 "
            f"{self.single.metrics['latency_p50_ms']:.2f} ms · batched {self.batch.metrics['samples_per_s']:.1f} /s · "
            f"peak RSS {self.memory.metrics['peak_rss_mb']:.0f} MB · cache hit rate {self.cache.metrics['hit_rate']:.0%}</p>"
        )

    def __repr__(self) -> str:
        return f"PipelineProfile(photos={len(self.images)}, seconds={self.seconds:.1f})"


def profile_pipeline(
    classifier: Any = None,
    *,
    checkpoint: str | Path | None = None,
    data_dir: str | Path | None = None,
    samples: int = 16,
    batch_size: int = 8,
    repeat_ratio: float = 0.5,
    seed: int = 0,
    settings: Settings | None = None,
    progress: bool = True,
    timer: Any = time.perf_counter,
) -> PipelineProfile:
    """Time each stage (one at a time and batched), measure memory per stage, run the cache scenario,
    and record memory-pressure checks, thread-pool and performance-monitor figures along the way."""
    from amulet_lab import memory, threads
    from amulet_lab.bench.runner import classifier_memory_stages, with_cache, with_private_cache
    from amulet_lab.config import get_settings
    from amulet_lab.perf import performance_monitor

    settings = settings or get_settings()
    from amulet_lab.runtime import apply_settings

    apply_settings(settings)
    start = timer()
    if classifier is None:
        from amulet_lab.model import AmuletClassifier

        classifier = AmuletClassifier.from_settings(settings, checkpoint)
    if data_dir is None:
        from amulet_lab.data import SAMPLES_DIR

        data_dir = SAMPLES_DIR
    base = sc.load_images(data_dir, seed=seed)
    pool = sc.distinct_images(base, samples * 2, seed=seed)
    uncached, cached = with_cache(classifier, False), with_private_cache(classifier)
    monitor = memory.get_memory_monitor()
    # Events are picked by time, not by position: the monitor keeps them in a bounded deque, so once it is
    # full an index taken now points at a different event later. The monitor stamps events with time.time.
    since = time.time()
    checks: list[dict[str, Any]] = []

    def check(when: str) -> None:
        checks.append({"when": when, **monitor.check_memory_pressure()})

    check("start")
    single = sc.single_stream(uncached, pool[:samples], queries=samples, warmup=1, timer=timer, progress=progress)
    check("after single_stream")
    batch = sc.offline(uncached, pool[samples:], batch_size=batch_size, warmup=1, timer=timer, progress=progress)
    check("after offline")
    mem = sc.memory_scenario(classifier_memory_stages(uncached, pool, batch_size), timer=timer,
                             batch_size=min(batch_size, len(pool)), params={"batch_size": batch_size})
    check("after memory")
    cache = sc.cache_scenario(cached, base, repeat_ratio=repeat_ratio, queries=max(samples, 10), seed=seed,
                              clear=cached.cache.clear, timer=timer, progress=progress)
    check("after cache")
    return PipelineProfile(
        classifier=classifier,
        images=pool[:samples],
        single=single,
        batch=batch,
        memory=mem,
        cache=cache,
        pressure_checks=checks,
        pressure_events=[e for e in list(monitor.events) if e.get("time", 0.0) >= since],
        thread_stats=threads.get_stats(),
        monitor_stats=performance_monitor.get_stats(),
        seconds=timer() - start,
    )
