"""``profile_pipeline`` (what ``02_profile.ipynb`` shows) on a tiny seeded checkpoint: every table and figure,
and memory-pressure events seen during the profile."""

from __future__ import annotations

import pytest

from amulet_lab.bench.profile import profile_pipeline
from model_helpers import untrained_tiny_checkpoint


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from amulet_lab.config import load_settings
    from amulet_lab.model import AmuletClassifier

    path = untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", size=32)
    return AmuletClassifier.from_settings(load_settings({}, dotenv=None), path)


@pytest.fixture
def low_pressure_thresholds(settings):
    """Settings under which the process-wide memory monitor reads 'warning' on any machine (a level change: an
    event); the monitor is back at the default settings and level afterwards."""
    from amulet_lab import memory
    from amulet_lab.runtime import apply_settings

    yield settings.replace(memory_warning_threshold=0.0001, memory_critical_threshold=0.9999)
    apply_settings(settings)
    memory.get_memory_monitor().check_memory_pressure()


def test_profile_shows_stages_memory_cache_threads_and_pressure_events(classifier, low_pressure_thresholds):
    # profile_pipeline is an edge: it applies the settings it is given to the process-wide monitor
    prof = profile_pipeline(classifier, samples=4, batch_size=2, seed=0, progress=False, settings=low_pressure_thresholds)
    stages = prof.stages_frame()
    assert list(stages.index) == ["single_stream", "offline[bs=2]"]
    assert {"decode", "preprocess", "infer", "postprocess"} <= set(stages.columns)
    memory = prof.memory_frame()
    assert list(memory.index) == ["decode", "preprocess", "infer", "postprocess"]
    assert (memory["peak_rss_mb"] > 0).all()
    assert prof.memory.avg_batch_size == 2.0
    cache = prof.cache_frame()["value"]
    assert cache["hit_rate"] == pytest.approx(cache["expected_hit_rate"]) and cache["hit_rate"] > 0
    assert list(prof.pressure_frame()["when"]) == ["start", "after single_stream", "after offline", "after memory",
                                                   "after cache"]
    # The thresholds made the first check rise to 'warning': that level change is an event, shown with its responders.
    events = prof.events_frame()
    assert len(events) >= 1 and events.iloc[0]["to"] == "warning"
    assert list(events.columns) == ["time", "from", "to", "score", "rss_mb", "responses", "errors"]
    assert "decode" in prof.threads_frame().index  # the classifier decodes batches on the named pool
    assert "classifier.predict" in prof.monitor_frame().index
    assert set(prof.figures()) == {"stages", "memory", "cache"}
    assert "memory stages: decode, preprocess, infer, postprocess" in prof.facts()
    assert "Pipeline profile" in prof._repr_html_() and "photos=4" in repr(prof)


def test_events_frame_is_empty_without_events(classifier):
    import dataclasses

    prof = profile_pipeline(classifier, samples=2, batch_size=2, seed=0, progress=False)
    quiet = dataclasses.replace(prof, pressure_events=[])
    assert quiet.events_frame().empty and list(quiet.events_frame().columns)[:3] == ["time", "from", "to"]
