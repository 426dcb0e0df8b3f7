"""Memory: usage and pressure levels, responders, gc, streaming, large images, budgets, per-op figures."""

from __future__ import annotations

import gc
import hashlib
import io
import mmap
import threading
import time
import types

import pytest
from memory_helpers import resident_block

from amulet_lab.errors import MemoryBudgetExceeded, SecurityError, ValidationError
from amulet_lab.security import ImageLimits
from amulet_lab.memory import (
    GCManager,
    MemoryMonitor,
    MemoryUsage,
    StreamingHandler,
    memory_efficient_operation,
    memory_limit_context,
    shrink_caches_responder,
)

MB = 2**20


class FakeProcess:
    """A psutil.Process stand-in whose RSS the test sets."""

    def __init__(self, rss_mb: float) -> None:
        self.rss = int(rss_mb * MB)

    def memory_info(self):
        return types.SimpleNamespace(rss=self.rss)


class FakeSystem:
    """psutil.virtual_memory stand-in: 1000 MB total, ``used`` fraction set by the test."""

    def __init__(self, used: float = 0.1) -> None:
        self.used = used

    def __call__(self):
        return types.SimpleNamespace(total=1000 * MB, available=int(1000 * MB * (1 - self.used)))


class FakeCache:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    def shrink(self, fraction: float) -> int:
        self.fractions.append(fraction)
        return 3


@pytest.fixture
def fakes(settings):
    process, system = FakeProcess(100), FakeSystem(0.1)
    monitor = MemoryMonitor.from_settings(settings, process=process, virtual_memory=system, builtin_responders=False,
                                          timer=lambda: 42.0)
    return monitor, process, system


def test_current_usage_of_this_process_is_sane(settings):
    monitor = MemoryMonitor()
    usage = monitor.get_current_usage()
    assert isinstance(usage, MemoryUsage)
    assert 5 < usage.rss_mb < usage.system_total_mb and 0 < usage.percent < 1
    assert 0 < usage.system_percent_used < 1 and 0 < usage.system_available_mb <= usage.system_total_mb
    assert usage.peak_rss_mb >= usage.rss_mb
    with pytest.raises(dataclasses_frozen_error()):
        usage.rss_mb = 1  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_pressure_levels_on_the_system_basis_and_responders_run_only_when_rising(fakes):
    monitor, process, system = fakes
    calls: list[tuple[str, str]] = []
    monitor.register_responder(lambda level, check: calls.append((level, check["level"])))
    usage = monitor.get_current_usage()
    assert usage.rss_mb == 100 and usage.percent == pytest.approx(0.1) and usage.system_percent_used == pytest.approx(0.1)

    check = monitor.check_memory_pressure()
    assert check["level"] == "normal" and check["should_gc"] is False and check["basis"] == "system_used_fraction"
    assert check["process_budget_fraction"] is None and calls == []
    system.used = 0.85
    assert monitor.check_memory_pressure()["level"] == "warning" and calls == [("warning", "warning")]
    monitor.check_memory_pressure()  # still warning: nothing runs again
    assert len(calls) == 1
    system.used = 0.95
    check = monitor.check_memory_pressure()
    assert check["level"] == "critical" and check["should_gc"] and calls[-1] == ("critical", "critical")
    system.used = 0.5
    assert monitor.check_memory_pressure()["level"] == "normal" and len(calls) == 2  # a fall runs nothing
    system.used = 0.92
    monitor.check_memory_pressure()  # normal -> critical in one step: runs
    assert len(calls) == 3
    moves = [(e["from"], e["to"]) for e in monitor.events]
    assert moves == [("normal", "warning"), ("warning", "critical"), ("critical", "normal"), ("normal", "critical")]
    assert monitor.events[0]["time"] == 42.0


def test_budget_basis_raises_the_level_when_the_process_nears_its_budget(settings):
    process, system = FakeProcess(170), FakeSystem(0.1)
    monitor = MemoryMonitor(budget_mb=200.0, process=process, virtual_memory=system, builtin_responders=False)
    check = monitor.check_memory_pressure()
    assert check["level"] == "warning" and check["process_budget_fraction"] == pytest.approx(0.85)
    assert check["basis"].startswith("max(") and check["score"] == pytest.approx(0.85)
    process.rss = 190 * MB
    assert monitor.check_memory_pressure()["level"] == "critical"


def test_shrink_caches_responder_and_a_failing_responder_is_recorded(fakes, settings):
    monitor, _, system = fakes
    cache_a, cache_b = FakeCache(), FakeCache()
    monitor.register_responder(shrink_caches_responder([cache_a, cache_b], settings.cache_shrink_fraction))

    def broken(level, check):
        raise RuntimeError("responder bug")

    monitor.register_responder(broken)
    system.used = 0.99
    monitor.check_memory_pressure()
    assert cache_a.fractions == [settings.cache_shrink_fraction] == cache_b.fractions
    event = monitor.events[-1]
    assert "RuntimeError: responder bug" in event["errors"]["test_shrink_caches_responder_and_a_failing_responder_is_recorded.<locals>.broken"]
    assert sum(next(v for k, v in event["responses"].items() if k.startswith("shrink_caches")).values()) == 6
    assert monitor.unregister_responder(broken) and not monitor.unregister_responder(broken)
    with pytest.raises(ValidationError):
        shrink_caches_responder([object()], 0.5)
    with pytest.raises(ValidationError):
        shrink_caches_responder([FakeCache()], 1.5)
    with pytest.raises(ValidationError):
        monitor.register_responder("nope")  # type: ignore[arg-type]


def test_shrink_responder_works_on_the_real_cache(settings):
    from amulet_lab.cache import TTLCache

    cache = TTLCache(max_items=100)
    for i in range(10):
        cache.set(i, i)
    dropped = shrink_caches_responder([cache], 0.5)("warning", {})
    assert dropped == {"TTLCache#0": 5} and len(cache) == 5


def test_builtin_gc_responder_runs_on_rise(settings):
    system = FakeSystem(0.1)
    monitor = MemoryMonitor.from_settings(settings, process=FakeProcess(50), virtual_memory=system)
    system.used = 0.95
    monitor.check_memory_pressure()
    response = monitor.events[-1]["responses"]["gc_responder"]
    assert set(response["collected"]) == {"gen0", "gen1", "gen2"}


def test_periodic_monitoring_starts_only_when_asked_and_stops_cleanly(fakes):
    monitor, _, _ = fakes
    assert not monitor.running and monitor.checks == 0
    monitor.start(interval_s=0.005)
    assert monitor.start(interval_s=0.005) is monitor  # already running: no second thread
    deadline = time.monotonic() + 5
    while monitor.checks < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    monitor.stop()
    assert monitor.checks >= 3 and not monitor.running
    assert not any(t.name == "amulet-memory-monitor" for t in threading.enumerate())
    with pytest.raises(ValidationError):
        monitor.start(interval_s=0)


def test_get_stats_and_notebook_views(fakes):
    monitor, _, _ = fakes
    stats = monitor.get_stats()
    assert set(stats) >= {"current", "pressure_check", "events"}
    assert stats["current"]["rss_mb"] == 100 and stats["pressure_check"]["level"] == "normal"
    assert "<table>" in monitor._repr_html_() and "MemoryMonitor(level='normal'" in repr(monitor)


def test_get_stats_reports_the_last_check_without_running_one(fakes):
    monitor, process, system = fakes
    calls = []
    monitor.register_responder(lambda level, check: calls.append(level))
    first = monitor.get_stats()  # no check yet: exactly one is run
    assert monitor.checks == 1 and first["pressure_check"]["level"] == "normal"
    system.used = 0.99  # pressure is now critical, but reading stats must not act on it
    process.rss = 300 * MB
    stats = monitor.get_stats()
    assert monitor.checks == 1 and calls == [] and monitor.level == "normal"
    assert stats["pressure_check"] is monitor.last_check and stats["current"]["rss_mb"] == 300
    monitor.check_memory_pressure()  # an explicit check acts and becomes the reported one
    assert calls == ["critical"] and monitor.get_stats()["pressure_check"]["level"] == "critical"


def test_image_cache_responder_peeks_and_uses_the_monitors_settings(settings):
    import amulet_lab.cache as cache_module
    from amulet_lab.memory import image_cache_responder

    system = FakeSystem(0.1)
    monitor = MemoryMonitor(cache_shrink_fraction=0.25, process=FakeProcess(50), virtual_memory=system,
                            builtin_responders=False)
    monitor.register_responder(image_cache_responder)
    cache_module._reset_image_cache()
    try:
        system.used = 0.99
        monitor.check_memory_pressure()
        assert monitor.events[-1]["responses"]["image_cache_responder"] == {}
        assert cache_module.peek_image_cache() is None  # the responder did not create a cache
        cache = cache_module.get_image_cache()
        for i in range(8):
            cache.put(f"k{i}", b"x")
        system.used = 0.1
        monitor.check_memory_pressure()
        system.used = 0.99
        monitor.check_memory_pressure()
        assert monitor.events[-1]["responses"]["image_cache_responder"] == {"ImageCache#0": 2}  # 25% of 8
    finally:
        cache_module._reset_image_cache()


def test_stop_keeps_the_handle_of_a_thread_that_did_not_stop(fakes, caplog):
    monitor, _, _ = fakes
    release, entered = threading.Event(), threading.Event()

    def stuck(level, check):
        entered.set()
        release.wait(5)

    monitor.register_responder(stuck)
    monitor.warning_threshold = 0.0  # the first check rises
    monitor.start(interval_s=0.001)
    try:
        assert entered.wait(5)
        monitor.stop(timeout=0.01)
        assert monitor.running and monitor._thread is not None  # still alive: kept, not forgotten
        assert "did not stop" in caplog.text
        assert monitor.start(interval_s=0.001)._thread is not None  # no second loop beside it
        assert sum(t.name == "amulet-memory-monitor" for t in threading.enumerate()) == 1
    finally:
        release.set()
        monitor.stop()
    assert not monitor.running and monitor._thread is None


def test_module_level_instances_are_lazy_and_shared():
    import amulet_lab.memory as memory

    assert memory.memory_monitor is memory.get_memory_monitor()
    assert memory.get_current_usage().rss_mb > 0 and memory.check_memory_pressure()["level"] in memory.LEVELS
    stats = memory.get_stats()
    assert {"current", "pressure_check", "events", "gc"} <= set(stats)
    assert isinstance(memory.gc_manager, GCManager) and isinstance(memory.streaming_handler, StreamingHandler)
    # the image cache shrinks before gc runs, so what it dropped is collected and trimmed in the same response
    assert [fn.__name__ for fn in memory.memory_monitor.responders] == ["image_cache_responder", "gc_responder"]
    with pytest.raises(AttributeError):
        memory.no_such_thing  # noqa: B018


def test_gc_manager_reports_what_it_collected():
    manager = GCManager()
    gc.disable()
    try:
        for _ in range(500):
            a: list = []
            a.append(a)  # a reference cycle only the collector can free
        del a
        report = manager.perform_cleanup()
    finally:
        gc.enable()
    assert report["collected_total"] >= 500 and sum(report["collected"].values()) == report["collected_total"]
    assert report["freed_mb"] == pytest.approx(report["rss_before_mb"] - report["rss_after_mb"], abs=0.02)
    assert manager.stats()["runs"] == 1


# -- streaming -------------------------------------------------------------------------------------------


def test_iter_chunks_hash_file_and_mapping(tmp_path, settings):
    data = bytes(range(256)) * 100  # 25,600 bytes
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    handler = StreamingHandler(ImageLimits(mmap_threshold=10_000), chunk_size=1000)
    chunks = list(handler.iter_chunks(path))
    assert b"".join(chunks) == data and {len(c) for c in chunks[:-1]} == {1000} and len(chunks) == 26
    assert b"".join(handler.iter_chunks(io.BytesIO(data), chunk_size=4096)) == data
    assert handler.hash_file(path) == hashlib.blake2b(data).hexdigest()
    assert handler.hash_file(path, "sha256") == hashlib.sha256(data).hexdigest()
    assert handler.hash_file(io.BytesIO(data), "md5") == hashlib.md5(data).hexdigest()
    with handler.open_mapped(path) as mapped:
        assert isinstance(mapped, mmap.mmap) and mapped[:256] == bytes(range(256)) and len(mapped) == len(data)
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    with handler.open_mapped(small) as content:
        assert content == b"abc"
    with pytest.raises(ValidationError) as missing:
        handler.iter_chunks(tmp_path / "nope")  # checked at the call, before any next()
    assert missing.value.code == "E_FILE_NOT_FOUND"
    with pytest.raises(ValidationError):
        handler.hash_file(path, "not-a-hash")
    with pytest.raises(ValidationError):
        handler.iter_chunks(12345)  # type: ignore[arg-type]


class _ChunkRecorder(io.BytesIO):
    """A file object that records how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size=-1):
        self.asked.append(-1 if size is None else size)
        return super().read(size)

    def readinto(self, buffer):
        self.asked.append(len(buffer))
        return super().readinto(buffer)


def test_hash_file_streams_in_chunks_never_reading_the_whole_file(settings):
    data = bytes(range(256)) * 400  # 102,400 bytes
    handler = StreamingHandler(chunk_size=4096)
    source = _ChunkRecorder(data)
    assert handler.hash_file(source, "sha256") == hashlib.sha256(data).hexdigest()
    assert source.asked and max(source.asked) == 4096 and -1 not in source.asked  # chunks, never read()-all
    assert len(source.asked) >= len(data) // 4096


def _jpeg(size, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def test_process_large_image_drafts_large_jpegs_and_reduces_to_max_side(monkeypatch, settings):
    from PIL import Image, JpegImagePlugin

    drafts: list[tuple] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    handler = StreamingHandler()
    image = handler.process_large_image(_jpeg((1200, 800)), max_side=300)
    assert drafts and drafts[0][1] == (300, 200)
    assert image.mode == "RGB" and image.size == (300, 200)
    assert image.getpixel((150, 100))[0] > 150  # still red: really decoded
    drafts.clear()
    small = handler.process_large_image(_jpeg((400, 300)), max_side=200)
    assert drafts == [("RGB", (200, 150))] and small.size == (200, 150)  # every JPEG over max_side is drafted
    gray = io.BytesIO()
    Image.new("L", (500, 100), 128).save(gray, "PNG")
    out = handler.process_large_image(gray.getvalue(), max_side=1000)
    assert out.mode == "RGB" and out.size == (500, 100)  # never enlarged


def test_process_large_image_validates_input(tmp_path, settings):
    handler = StreamingHandler(ImageLimits(max_image_pixels=10_000))
    with pytest.raises(SecurityError) as too_big:  # the same check (amulet_lab.pixels) as validate_image
        handler.process_large_image(_jpeg((200, 100)))
    assert too_big.value.code == "E_IMAGE_BOMB"
    with pytest.raises(ValidationError) as too_long:
        StreamingHandler(ImageLimits(max_image_side=150)).process_large_image(_jpeg((200, 100)))
    assert too_long.value.code == "E_IMAGE_DIMENSIONS"
    with pytest.raises(ValidationError) as not_image:
        handler.process_large_image(b"not an image at all")
    assert not_image.value.code == "E_IMAGE_SIGNATURE"  # the one decoder's code
    with pytest.raises(ValidationError):
        handler.process_large_image(_jpeg((10, 10)), max_side=0)
    with pytest.raises(ValidationError):
        handler.process_large_image(tmp_path / "missing.jpg")
    with pytest.raises(ValidationError):
        handler.process_large_image(3.14)  # type: ignore[arg-type]
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg((50, 40)))
    assert handler.process_large_image(path).size == (50, 40)


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header is rewritten to claim ``width`` x ``height``."""
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(png)


def test_process_large_image_raises_coded_errors_for_hostile_or_broken_files(settings):
    handler = StreamingHandler(ImageLimits(max_image_side=100_000))
    # 30000 x 30000: over Pillow's own limit, which trips inside Image.open, before our header check
    with pytest.raises(SecurityError) as bomb:
        handler.process_large_image(_png_claiming(30_000, 30_000))
    assert bomb.value.code == "E_IMAGE_BOMB"
    truncated = _jpeg((300, 200))
    with pytest.raises(ValidationError) as broken:
        handler.process_large_image(truncated[: len(truncated) // 2])
    assert broken.value.code == "E_IMAGE_TRUNCATED"


@pytest.mark.slow
def test_process_large_image_of_a_6000x4000_jpeg_has_bounded_peak_memory(tmp_path):
    """Bound: the decode grows RSS by at most 30 MB (the full-size RGB pixels alone are 69 MB).

    Measured in a fresh subprocess as VmHWM minus the RSS before the decode (see bench.micro.memory).
    """
    from amulet_lab.bench.micro.memory import make_test_jpeg, measure_decode

    path = make_test_jpeg(tmp_path / "large.jpg", (6000, 4000))
    facts = measure_decode(path, "ours", max_side=1024)
    assert facts["size"] == [1024, 683] and facts["mode"] == "RGB"
    assert facts["peak_delta_mb"] < 30, facts


# -- budgets and per-operation figures -----------------------------------------------------------------


def _hold_300_mb_and_keep_running_python():
    block = resident_block(300 * MB)
    for _ in range(300):  # bytecode runs (several 10 ms samples long), so the asynchronous exception can land
        time.sleep(0.001)
    return block


def test_memory_limit_context_raises_in_the_block_over_budget():
    reached_end = False
    with pytest.raises(MemoryBudgetExceeded) as info:
        with memory_limit_context(100):
            _hold_300_mb_and_keep_running_python()
            reached_end = True
    err = info.value
    assert not reached_end and err.code == "E_MEMORY_BUDGET" and err.budget_mb == 100 and err.peak_mb > 100
    assert err.context["budget_mb"] == 100 and type(err).__name__ == "MemoryBudgetExceeded"


def test_memory_limit_context_stays_quiet_within_budget():
    with memory_limit_context(500) as budget:
        block = _hold_300_mb_and_keep_running_python()
    assert 250 < budget.peak_mb < 500 and len(block) == 300 * MB
    del block


def test_memory_limit_context_checks_again_at_exit():
    process = FakeProcess(100)
    with pytest.raises(MemoryBudgetExceeded) as info:
        with memory_limit_context(10, interval_s=60, process=process):  # the watchdog never samples
            process.rss = 150 * MB
    assert info.value.peak_mb == pytest.approx(50)
    with pytest.raises(ValidationError):
        memory_limit_context(0)
    with pytest.raises(ValidationError):
        with memory_limit_context(10, interval_s=0):
            pass


def test_sampling_intervals_are_checked_where_they_are_given():
    with pytest.raises(ValidationError) as limit:
        memory_limit_context(10, interval_s=0)  # at construction, not at entry
    assert limit.value.code == "E_INTERVAL"
    with pytest.raises(ValidationError) as op:
        memory_efficient_operation("tests.memory.bad-interval", interval_s=-1)  # at decoration, not first call
    assert op.value.code == "E_INTERVAL"


def test_memory_limit_context_lets_other_errors_through():
    with pytest.raises(KeyError):
        with memory_limit_context(1000):
            raise KeyError("mine")


_ALLOC_IN_A_FRESH_PROCESS = """
import json, time
from memory_helpers import MB, resident_block
from amulet_lab.memory import memory_efficient_operation
from amulet_lab.perf import performance_monitor

@memory_efficient_operation("tests.memory.alloc")
def alloc():
    block = resident_block(60 * MB)
    time.sleep(0.3)  # many 5 ms samples long, even on a busy machine
    return int(block[0])

assert alloc() == 1 and alloc.__name__ == "alloc"
print(json.dumps(performance_monitor.get_stats("tests.memory.alloc")["values"]))
"""


def test_memory_efficient_operation_records_into_the_performance_monitor():
    """The peak is process-wide RSS, so it is measured in a fresh process: in the suite's own process,
    memory that earlier tests' threads free at the same moment can hide the growth (seen in CI)."""
    import asyncio
    import json
    import subprocess
    import sys
    from pathlib import Path

    from amulet_lab.perf import performance_monitor

    child = subprocess.run([sys.executable, "-c", _ALLOC_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).parent, check=False)
    assert child.returncode == 0, child.stderr
    values = json.loads(child.stdout)
    assert values["peak_rss_delta_mb"]["last"] > 40 and values["peak_rss_delta_mb"]["count"] == 1
    assert "rss_delta_mb" in values

    @memory_efficient_operation("tests.memory.async")
    async def aalloc():
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(aalloc()) == 7
    assert performance_monitor.get_stats("tests.memory.async")["values"]["peak_rss_delta_mb"]["count"] == 1
    with pytest.raises(ValidationError):
        memory_efficient_operation("")


def test_memory_micro_benchmark_quick_shape():
    from amulet_lab.bench.micro import MicroResult
    from amulet_lab.bench.micro.memory import run

    result = run(quick=True)
    assert isinstance(result, MicroResult) and result.name == "memory"
    # even the quick image is larger than the default max_side, so the reduced-scale path is what gets measured
    width, height = result.figures["width"], result.figures["height"]
    assert max(width, height) > 1024
    assert set(result.ratios) == {"peak_memory_vs_full", "time_vs_full"} == set(result.verdicts())
    assert result.figures["ours_peak_delta_mb"] >= 0 and result.figures["full_time_s"] > 0
