"""The health report: shape (JSON schema), api metrics from a PerformanceMonitor, overall status."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import jsonschema
import pytest

from amulet_lab.health import HEALTH_SCHEMA, api_metrics, build_health_report, overall_status
from amulet_lab.memory import MemoryMonitor
from amulet_lab.perf import PerformanceMonitor

GB = 1024**3


def monitor_at(settings, used_fraction: float) -> MemoryMonitor:
    vm = SimpleNamespace(total=8 * GB, available=int(8 * GB * (1 - used_fraction)))
    return MemoryMonitor.from_settings(settings, virtual_memory=lambda: vm, builtin_responders=False)


def test_api_metrics_count_only_http_operations():
    perf = PerformanceMonitor()
    for status_error in (False, False, False, True):
        perf.record("http./predict", 0.01, error=status_error)
    perf.record("http./health", 0.001)
    perf.record("model.infer", 0.5, error=True)  # not a request
    metrics = api_metrics(perf.get_stats(), uptime_s=90)
    assert metrics == {"total_requests": 5, "error_count": 1, "error_rate": 0.2, "uptime_minutes": 1.5}
    assert api_metrics({}, uptime_s=0)["error_rate"] == 0.0


def test_report_matches_schema_and_design_shape(settings):
    perf = PerformanceMonitor()
    perf.record("http./predict", 0.02)
    report = build_health_report(
        model_status={"loaded": True, "arch": "tiny"},
        perf_stats=perf.get_stats(),
        uptime_s=600,
        memory_monitor=monitor_at(settings, 0.3),
        cache_stats={"hit_rate": 0.85, "size": 450, "total_size_bytes": 95_000_000, "hits": 85, "misses": 15},
        thread_stats=lambda: {"active_threads": 3},
    )
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["status"] == "healthy"
    assert report["api_metrics"]["total_requests"] == 1 and report["api_metrics"]["uptime_minutes"] == 10.0
    assert report["memory_stats"]["pressure_check"]["level"] == "normal"
    assert "rss_mb" in report["memory_stats"]["current"]
    assert report["cache_stats"]["hit_rate"] == 0.85 and report["cache_stats"]["hits"] == 85
    assert report["thread_stats"] == {"active_threads": 3}


def test_defaults_use_process_wide_parts(settings):
    report = build_health_report(model_status={"loaded": False}, memory_monitor=monitor_at(settings, 0.1))
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["status"] == "degraded"  # no model
    assert "active_threads" in report["thread_stats"]
    assert report["cache_stats"]["size"] >= 0


@pytest.mark.parametrize(
    ("loaded", "error_rate", "level", "expected"),
    [
        (True, 0.0, "normal", "healthy"),
        (False, 0.0, "normal", "degraded"),
        (True, 0.06, "normal", "degraded"),
        (True, 0.0, "warning", "degraded"),
        (True, 0.0, "critical", "unhealthy"),
    ],
)
def test_overall_status(loaded, error_rate, level, expected):
    assert overall_status({"loaded": loaded}, {"error_rate": error_rate}, {"level": level}) == expected


def test_memory_pressure_makes_the_report_unhealthy(settings):
    report = build_health_report(
        model_status={"loaded": True}, memory_monitor=monitor_at(settings, 0.95), cache_stats={}, thread_stats={}
    )
    assert report["status"] == "unhealthy"
    assert report["memory_stats"]["pressure_check"]["level"] == "critical"


def test_schema_rejects_a_broken_report(settings):
    report = build_health_report(
        model_status={"loaded": True}, memory_monitor=monitor_at(settings, 0.1), cache_stats={}, thread_stats={}
    )
    broken = copy.deepcopy(report)
    del broken["api_metrics"]["error_rate"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, HEALTH_SCHEMA)
