"""Prometheus metrics of one app, in the app's own ``CollectorRegistry``.

Request counts and latency histograms are updated per request; cache, breaker and
memory figures are read from their owners at scrape time (a custom collector), so they
are never stale and nothing polls in the background. A registry per app (not the global
one) lets tests and notebooks build many apps in one process without clashes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServiceMetrics", "MetricSources", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BREAKER_STATES = ("closed", "open", "half_open")


@dataclasses.dataclass
class MetricSources:
    """Callables read at scrape time; each may be None when the part is absent."""

    cache_stats: Callable[[], dict[str, Any]] | None = None
    breakers: Callable[[], Iterable[Any]] | None = None
    memory_rss_bytes: Callable[[], float] | None = None
    model_loaded: Callable[[], bool] | None = None
    budgets: Callable[[], dict[str, Any]] | None = None  # ServiceBudgets.stats
    batching: Callable[[], dict[str, Any]] | None = None  # DynamicBatcher.stats


class _LiveCollector(Collector):
    """Yields gauges from ``MetricSources`` on every scrape."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        if src.cache_stats is not None:
            stats = src.cache_stats()
            hits = CounterMetricFamily("amulet_cache_hits", "Image cache hits.")
            hits.add_metric([], float(stats.get("hits", 0)))
            misses = CounterMetricFamily("amulet_cache_misses", "Image cache misses.")
            misses.add_metric([], float(stats.get("misses", 0)))
            size = GaugeMetricFamily("amulet_cache_items", "Entries in the image cache.")
            size.add_metric([], float(stats.get("size", stats.get("items", 0))))
            nbytes = GaugeMetricFamily("amulet_cache_bytes", "Bytes held by the image cache.")
            nbytes.add_metric([], float(stats.get("total_size_bytes", stats.get("bytes", 0))))
            yield from (hits, misses, size, nbytes)
            shared = stats.get("shared")
            if isinstance(shared, dict):  # the Redis/Valkey tier (AMULET_REDIS_URL)
                for name, help_text in (("hits", "Answers found in the shared prediction-cache tier."),
                                        ("misses", "Shared-tier lookups that found nothing (or failed)."),
                                        ("errors", "Calls to the shared tier's server that failed or timed out."),
                                        ("skipped", "Shared-tier calls skipped while its circuit was open.")):
                    counter = CounterMetricFamily(f"amulet_shared_cache_{name}", help_text)
                    counter.add_metric([], float(shared.get(name, 0)))
                    yield counter
                up = GaugeMetricFamily("amulet_shared_cache_up", "1 while the shared tier's circuit is not open.")
                up.add_metric([], 0.0 if shared.get("state") == "open" else 1.0)
                yield up
        if src.breakers is not None:
            state = GaugeMetricFamily(
                "amulet_breaker_state", "Circuit breaker state (1 for the current state).", labels=["breaker", "state"]
            )
            for breaker in src.breakers():
                current = breaker.state
                for name in _BREAKER_STATES:
                    state.add_metric([breaker.name, name], 1.0 if current == name else 0.0)
            yield state
        if src.memory_rss_bytes is not None:
            rss = GaugeMetricFamily("amulet_process_rss_bytes", "Resident memory of the service process.")
            rss.add_metric([], float(src.memory_rss_bytes()))
            yield rss
        if src.model_loaded is not None:
            loaded = GaugeMetricFamily("amulet_model_loaded", "1 once the classifier is loaded.")
            loaded.add_metric([], 1.0 if src.model_loaded() else 0.0)
            yield loaded
        if src.budgets is not None:
            budgets = src.budgets()
            for name, help_text in (("upload_bytes", "Bytes of request bodies in flight (upload budget)."),
                                    ("pixel_bytes", "Bytes of decoded pixels in flight (pixel budget).")):
                part = budgets.get(name) or {}
                gauge = GaugeMetricFamily(f"amulet_budget_{name}", help_text, labels=["state"])
                for key in ("in_use", "capacity", "peak", "waiting"):
                    gauge.add_metric([key], float(part.get(key, 0)))
                yield gauge
                refused = CounterMetricFamily(f"amulet_budget_{name}_refused", f"Requests refused by the {name} budget "
                                              "(timeouts and never-fits).")
                refused.add_metric([], float(part.get("timeouts", 0) + part.get("refused", 0)))
                yield refused
        if src.batching is not None:
            stats = src.batching()
            batches = CounterMetricFamily("amulet_batches", "Batched forward passes run.")
            batches.add_metric([], float(stats.get("batches", 0)))
            rows = CounterMetricFamily("amulet_batched_photos", "Photos inferred in batched forward passes.")
            rows.add_metric([], float(stats.get("items", 0)))
            mean = GaugeMetricFamily("amulet_batch_size_mean", "Mean photos per forward pass since start.")
            mean.add_metric([], float(stats.get("mean_batch_size", 0.0)))
            yield from (batches, rows, mean)


class ServiceMetrics:
    """The metrics of one app: ``observe(...)`` per request, ``render()`` for ``GET /metrics``."""

    def __init__(self, sources: MetricSources | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "amulet_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "amulet_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "amulet_rate_limited", "Requests refused by the rate limiter.", registry=self.registry
        )
        self.sources = sources or MetricSources()
        self.registry.register(_LiveCollector(self.sources))

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(duration_s)
        if status == 429:
            self.rate_limited.inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def __repr__(self) -> str:
        return f"<ServiceMetrics registry={id(self.registry):#x}>"
