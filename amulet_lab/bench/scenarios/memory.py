"""The ``memory`` scenario: peak RSS of this process per pipeline stage, sampled from a thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from amulet_lab.bench.scenarios.arguments import check_int, check_pos
from amulet_lab.bench.scenarios.result import ScenarioResult
from amulet_lab.errors import ValidationError

__all__ = ["memory_scenario"]


def memory_scenario(
    stages: Sequence[tuple[str, Callable[[Any], Any]]],
    *,
    first_input: Any = None,
    interval_s: float = 0.005,
    batch_size: int = 1,
    timer: Callable[[], float] = time.perf_counter,
    params: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Peak RSS (MB) of this process during each stage; each stage gets the previous stage's output.

    ``amulet_lab.memory.RssSampler`` samples the process every ``interval_s`` from a thread of this
    process while the stage runs, so short peaks (a batch tensor freed at once) are still seen. A thread,
    not ``memory_profiler``'s helper process: forking a threaded torch process per stage is unsafe.
    The chain handles ``batch_size`` images at once: that is the average batch size reported, and the
    per-stage split (``stages``) is each stage's wall time, sampler running, divided by it (ms per image).
    """
    from amulet_lab.memory._sampling import MB, RssSampler

    if not stages:
        raise ValidationError("memory_scenario needs at least one stage", field="stages")
    check_pos("interval_s", interval_s)
    check_int("batch_size", batch_size)
    metrics: dict[str, float] = {}
    stage_ms: dict[str, float] = {}
    value = first_input
    for name, fn in stages:
        t0 = timer()
        with RssSampler(interval_s) as sampler:
            value = fn(value)
        stage_ms[name] = (timer() - t0) * 1000.0
        metrics[f"peak_rss_mb_{name}"] = sampler.peak_rss / MB
        metrics[f"increment_mb_{name}"] = sampler.peak_delta_bytes / MB
    metrics["peak_rss_mb"] = max(v for k, v in metrics.items() if k.startswith("peak_rss_mb_"))
    per_image = {name: ms / batch_size for name, ms in stage_ms.items()}
    return ScenarioResult(
        "memory", dict(params or {}, interval_s=interval_s), metrics, per_image, float(batch_size),
        extra={"stage_wall_ms_with_sampler": stage_ms},
    )
