"""What the scenarios share: the ``Pipeline`` they drive, the ``ScenarioResult`` they return, metric helpers."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from amulet_lab.bench.stats import percentile

__all__ = ["Pipeline", "ScenarioResult", "STAGES", "Served", "finite", "latency_metrics", "stage_means",
           "stage_metrics"]

#: Pipeline stages reported by ``Prediction.timings`` (ms), in order.
STAGES = ("lookup", "decode", "preprocess", "infer", "postprocess")


class Pipeline(Protocol):
    """What the scenarios drive: ``AmuletClassifier`` or anything shaped like it."""

    def predict(self, image: Any, *, top_k: int = 3) -> Any:
        """One image -> an object with ``.timings`` (ms per stage) and ``.cache_hit``."""
        ...

    def predict_batch(self, images: Sequence[Any], batch_size: int = 16) -> list[Any]:
        """Many images -> one such object per image, in order."""
        ...


@dataclasses.dataclass
class ScenarioResult:
    """What one scenario measured: flat numeric metrics, median ms per stage, latencies and extras."""

    scenario: str
    params: dict[str, Any]
    metrics: dict[str, float]
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    avg_batch_size: float = 1.0
    variant: str = ""
    latencies_ms: list[float] = dataclasses.field(default_factory=list, repr=False)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """``scenario`` or ``scenario[variant]``."""
        return self.scenario + (f"[{self.variant}]" if self.variant else "")

    def to_record(self) -> dict[str, Any]:
        """The history fields this result contributes (the runner adds run id, machine, reference ...)."""
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "params": self.params,
            "metrics": {k: finite(v) for k, v in self.metrics.items()},
            "stages": {k: finite(v) for k, v in self.stages.items()},
            "avg_batch_size": finite(self.avg_batch_size),
            "extra": self.extra,
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:4])
        return f"ScenarioResult({self.key}: {shown})"


def finite(value: float) -> float | None:
    """``value`` rounded to 6 places, or None when it is not finite (JSON has no NaN)."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def latency_metrics(latencies: Sequence[float], prefix: str = "latency") -> dict[str, float]:
    """p50, p90, p99 and mean of ``latencies`` (ms) as ``<prefix>_p50_ms`` ..."""
    return {
        f"{prefix}_p50_ms": percentile(latencies, 50),
        f"{prefix}_p90_ms": percentile(latencies, 90),
        f"{prefix}_p99_ms": percentile(latencies, 99),
        f"{prefix}_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
    }


def stage_means(predictions: Sequence[Any]) -> dict[str, float]:
    """Median ms per stage over predictions that report it (``Prediction.timings``).

    Medians, not means: one query stalled by another process would otherwise move a whole stage.
    """
    out: dict[str, float] = {}
    for stage in STAGES + ("total",):
        values = [float(p.timings[stage]) for p in predictions if getattr(p, "timings", None) and stage in p.timings]
        if values:
            out[stage] = statistics.median(values)
    return out


def stage_metrics(stages: Mapping[str, float]) -> dict[str, float]:
    """``stage_<name>_ms`` for each pipeline stage of ``stages``."""
    return {f"stage_{k}_ms": v for k, v in stages.items() if k in STAGES}


@dataclasses.dataclass
class Served:
    """What one server run collected: latency per query (NaN when refused), predictions, batch sizes, wall time."""

    latencies: list[float]
    preds: list[Any]
    sizes: list[int]
    wall: float
    refused: int = 0
