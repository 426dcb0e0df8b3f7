"""Scenario engine on a small real pipeline (decode + a numpy 'model'), independent of the classifier."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time

import pytest

from amulet_lab.bench import scenarios as sc
from amulet_lab.errors import ProcessingError, ValidationError


@dataclasses.dataclass
class Pred:
    label: str
    timings: dict
    cache_hit: bool = False


class MeanColourPipeline:
    """Decodes the image and 'classifies' it by its dominant channel; caches by content hash."""

    def __init__(self, delay_s: float = 0.0):
        self.cache: dict[str, Pred] = {}
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def _one(self, data: bytes) -> Pred:
        import numpy as np

        from amulet_lab.images import decode

        key = hashlib.sha256(data).hexdigest()
        if key in self.cache:
            hit = self.cache[key]
            return Pred(hit.label, {"decode": 0.0, "preprocess": 0.0, "infer": 0.0, "postprocess": 0.01, "total": 0.01}, True)
        t0 = time.perf_counter()
        img = decode(data, target_size=32)
        t1 = time.perf_counter()
        arr = np.asarray(img.resize((32, 32)), dtype=np.float32)
        time.sleep(self.delay_s)
        t2 = time.perf_counter()
        label = "rgb"[int(arr.mean(axis=(0, 1)).argmax())]
        t3 = time.perf_counter()
        ms = lambda a, b: (b - a) * 1000  # noqa: E731
        pred = Pred(label, {"decode": ms(t0, t1), "preprocess": ms(t1, t2), "infer": ms(t2, t3), "postprocess": 0.0,
                            "total": ms(t0, t3)})
        self.cache[key] = pred
        return pred

    def predict(self, image, *, top_k=3):
        with self.lock:
            self.batches.append(1)
        return self._one(bytes(image))

    def predict_batch(self, images, batch_size=16):
        with self.lock:
            self.batches.append(len(images))
        return [self._one(bytes(i)) for i in images]


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    out = []
    for colour in [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)]:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def test_percentile():
    assert sc.percentile([1, 2, 3, 4], 50) == 2.5
    assert sc.percentile([5], 99) == 5
    assert sc.percentile([], 50) != sc.percentile([], 50)  # NaN


def test_single_stream_reports_latency_stages_and_qps(images):
    result = sc.single_stream(MeanColourPipeline(), sc.distinct_images(images, 8), queries=8, progress=False)
    m = result.metrics
    assert result.scenario == "single_stream" and len(result.latencies_ms) == 8
    assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"] <= m["latency_p99_ms"]
    assert m["qps"] > 0 and result.avg_batch_size == 1.0
    assert set(result.stages) >= {"decode", "preprocess", "infer", "postprocess"}
    assert m["stage_decode_ms"] == result.stages["decode"]
    rec = result.to_record()
    assert rec["scenario"] == "single_stream" and rec["params"]["queries"] == 8


def test_offline_batches_and_counts(images):
    pipe = MeanColourPipeline()
    result = sc.offline(pipe, images, batch_size=3, queries=7, warmup=0, progress=False)
    assert pipe.batches == [3, 3, 1]
    assert result.variant == "bs=3" and result.avg_batch_size == pytest.approx(7 / 3)
    assert result.metrics["samples_per_s"] > 0 and len(result.latencies_ms) == 3


def test_offline_rejects_short_answers(images):
    class Short(MeanColourPipeline):
        def predict_batch(self, imgs, batch_size=16):
            return super().predict_batch(imgs)[:-1]

    with pytest.raises(ProcessingError, match="returned 1 predictions for 2"):
        sc.offline(Short(), images[:2], batch_size=2, warmup=0, progress=False)


def test_poisson_arrivals_are_seeded_and_have_the_rate():
    a = sc.poisson_arrivals(200.0, 5.0, seed=1)
    assert a == sc.poisson_arrivals(200.0, 5.0, seed=1) != sc.poisson_arrivals(200.0, 5.0, seed=2)
    assert 850 < len(a) < 1150 and all(x < y for x, y in zip(a, a[1:]))


def test_server_meets_a_loose_bound_and_batches(images):
    pipe = MeanColourPipeline()
    result = sc.server(pipe, sc.distinct_images(images, 20), target_qps=40, latency_bound_ms=2000, duration_s=0.5,
                       threads=2, max_batch=4, seed=3, progress=False)
    m = result.metrics
    assert m["queries"] == len(sc.poisson_arrivals(40, 0.5, 3))
    assert m["meets_bound"] == 1.0 and m["within_bound"] == 1.0
    assert m["achieved_qps"] > 0 and 1 <= m["avg_batch_size"] <= 4
    assert result.params["target_qps"] == 40 and result.params["url"] is None


def test_server_misses_a_tight_bound_when_overloaded(images):
    # 30 ms per query on one worker cannot serve 200 QPS within 5 ms.
    result = sc.server(MeanColourPipeline(delay_s=0.03), images, target_qps=200, latency_bound_ms=5, duration_s=0.2,
                       threads=1, max_batch=1, seed=0, progress=False)
    assert result.metrics["meets_bound"] == 0.0 and result.metrics["within_bound"] < 0.5


def test_server_search_finds_a_qps_between_the_ends(images):
    result = sc.server_search(MeanColourPipeline(delay_s=0.01), images, latency_bound_ms=60, qps_low=5, qps_high=400,
                              steps=3, duration_s=0.3, threads=1, max_batch=1, progress=False)
    best = result.metrics["max_qps_meeting_bound"]
    assert 5 <= best < 400 and len(result.extra["search"]) == 4
    assert result.variant == "search" and result.params["qps_high"] == 400


def test_server_errors_surface(images):
    class Broken(MeanColourPipeline):
        def predict(self, image, *, top_k=3):
            raise ValueError("boom")

    with pytest.raises(ProcessingError, match="failed"):
        sc.server(Broken(), images, target_qps=50, duration_s=0.1, threads=1, max_batch=1, progress=False)


def test_repeat_stream_and_cache_scenario(images):
    stream = sc.repeat_stream(200, 0.5, seed=0)
    repeats = sum(1 for i, s in enumerate(stream) if s in stream[:i])
    assert 70 < repeats < 130 and stream[0] == 0
    pipe = MeanColourPipeline()
    result = sc.cache_scenario(pipe, images, repeat_ratio=0.5, queries=30, seed=0, clear=pipe.cache.clear, progress=False)
    m = result.metrics
    assert m["hit_rate"] == pytest.approx(m["expected_hit_rate"])  # content-addressed: every repeat hits
    assert m["hit_latency_p50_ms"] < m["miss_latency_p50_ms"]
    assert result.extra["hits"] + result.extra["misses"] == 30


def test_distinct_images_have_distinct_bytes(images):
    many = sc.distinct_images(images, 10)
    assert len({hashlib.sha256(b).digest() for b in many}) == 10 and many[:4] == images


def test_memory_scenario_measures_each_stage():
    import numpy as np
    from memory_helpers import resident_block

    stages = [("alloc", lambda _: resident_block(64 * 2**20)), ("sum", lambda a: float(np.frombuffer(a, np.uint8).sum()))]
    result = sc.memory_scenario(stages, params={"what": "test"})
    m = result.metrics
    assert m["increment_mb_alloc"] > 40  # 64 MB array
    assert m["peak_rss_mb"] >= m["peak_rss_mb_alloc"] > 0
    assert result.params == {"what": "test", "interval_s": 0.005}
    assert result.avg_batch_size == 1.0 and set(result.stages) == {"alloc", "sum"}


def test_memory_scenario_reports_its_batch_size_and_ms_per_image():
    clock = iter([0.0, 0.08, 0.08, 0.12])  # stage "a": 80 ms, stage "b": 40 ms, for a batch of 8
    result = sc.memory_scenario([("a", lambda _: 1), ("b", lambda x: x + 1)], batch_size=8, timer=lambda: next(clock))
    assert result.avg_batch_size == 8.0
    assert result.stages == pytest.approx({"a": 10.0, "b": 5.0})
    assert result.extra["stage_wall_ms_with_sampler"] == pytest.approx({"a": 80.0, "b": 40.0})
    assert result.to_record()["avg_batch_size"] == 8.0
    with pytest.raises(ValidationError):
        sc.memory_scenario([("a", lambda _: 1)], batch_size=0)


def test_load_images(tmp_path, images):
    (tmp_path / "a").mkdir()
    for i, data in enumerate(images):
        (tmp_path / "a" / f"{i}.jpg").write_bytes(data)
    (tmp_path / "notes.txt").write_text("x")
    assert sorted(sc.load_images(tmp_path)) == sorted(images)
    assert len(sc.load_images(tmp_path, limit=2, seed=1)) == 2
    with pytest.raises(ValidationError):
        sc.load_images(tmp_path / "missing")


@pytest.mark.parametrize(
    "call",
    [
        lambda p, i: sc.single_stream(p, [], progress=False),
        lambda p, i: sc.offline(p, i, batch_size=0, progress=False),
        lambda p, i: sc.server(p, i, target_qps=-1, progress=False),
        lambda p, i: sc.server(None, i, progress=False),
        lambda p, i: sc.cache_scenario(p, i, repeat_ratio=1.5, progress=False),
        lambda p, i: sc.memory_scenario([]),
    ],
)
def test_invalid_arguments_raise_validation_errors(call, images):
    with pytest.raises(ValidationError):
        call(MeanColourPipeline(), images)


@pytest.fixture
def stub_service():
    """A loopback HTTP stub of ``POST /predict``: records each request; ``plan["refuse"]`` first answers are 429,
    ``plan["status"]`` the status of the others."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []
    plan = {"refuse": 0, "status": 200}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                seen.append({"path": self.path, "type": self.headers["Content-Type"], "front": b'name="front"' in body,
                             "auth": self.headers.get("Authorization"), "x": self.headers.get("X-Bench")})
                refuse = plan["refuse"] > 0
                plan["refuse"] -= 1
            status = 429 if refuse else plan["status"]
            answer = json.dumps({"front": {"label": "x", "timings": {"decode": 1.0, "infer": 2.0}, "cache_hit": False}})
            self.send_response(status)
            if refuse:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, plan
    finally:
        server.shutdown()
        server.server_close()


def test_server_drives_a_service_over_http(images, settings, stub_service):
    """``url=``: each query is a multipart POST /predict with the photo as ``front``, the token and headers sent."""
    url, seen, _ = stub_service
    result = sc.server(None, images, target_qps=50, duration_s=0.2, threads=2, seed=1, url=url, token="tok",
                       headers={"X-Bench": "1"}, settings=settings, progress=False)
    n = len(sc.poisson_arrivals(50, 0.2, 1))
    assert len(seen) == n
    assert all(r["path"] == "/predict" and r["type"].startswith("multipart/form-data") and r["front"] for r in seen)
    assert all(r["auth"] == "Bearer tok" and r["x"] == "1" for r in seen)
    assert result.metrics["queries"] == n and result.params["url"] == url and result.metrics["refused"] == 0
    assert result.stages == {"decode": 1.0, "infer": 2.0}


def test_server_counts_429_as_refused_and_goes_on(images, settings, stub_service):
    url, seen, plan = stub_service
    plan["refuse"] = 3
    result = sc.server(None, images, target_qps=50, duration_s=0.2, threads=2, seed=1, url=url, settings=settings,
                       progress=False)
    n = len(sc.poisson_arrivals(50, 0.2, 1))
    assert len(seen) == n and result.metrics["refused"] == 3 and result.metrics["queries"] == n
    assert len(result.latencies_ms) == n - 3 and result.metrics["meets_bound"] == 0.0  # refusals miss the bound


def test_a_failing_service_ends_the_run_with_a_coded_error(images, settings, stub_service):
    url, _, plan = stub_service
    plan["status"] = 500
    with pytest.raises(ProcessingError) as info:
        sc.server(None, images, target_qps=50, duration_s=0.2, threads=2, seed=1, url=url, settings=settings,
                  progress=False)
    assert info.value.code == "E_BENCH_HTTP"


def test_sync_server_works_inside_a_running_event_loop(images, settings, stub_service):
    """A notebook cell runs in an event loop: the sync API must not call asyncio.run on it."""
    import asyncio

    url, seen, _ = stub_service

    async def cell():
        sync = sc.server(None, images, target_qps=40, duration_s=0.1, threads=1, seed=2, url=url, settings=settings,
                         progress=False)
        awaited = await sc.aserver(None, images, target_qps=40, duration_s=0.1, threads=1, seed=2, url=url,
                                   settings=settings, progress=False)
        local = await sc.aserver(MeanColourPipeline(), images, target_qps=40, duration_s=0.1, threads=1, seed=2,
                                 progress=False)
        return sync, awaited, local

    sync, awaited, local = asyncio.run(cell())
    n = len(sc.poisson_arrivals(40, 0.1, 2))
    assert sync.metrics["queries"] == awaited.metrics["queries"] == local.metrics["queries"] == n
    assert len(seen) == 2 * n


def test_resize_images_sets_the_longer_side(images):
    from PIL import Image

    out = sc.resize_images(images[:2], 24)
    assert [max(Image.open(io.BytesIO(b)).size) for b in out] == [24, 24]
    with pytest.raises(ValidationError):
        sc.resize_images(images, 0)


def test_min_duration_keeps_single_stream_and_offline_going(images):
    clock = iter(x * 0.01 for x in range(10_000))  # every timer call: +10 ms
    result = sc.single_stream(MeanColourPipeline(), images, queries=2, min_duration_s=0.5, warmup=0,
                              timer=lambda: next(clock), progress=False)
    assert result.metrics["queries_run"] > 2 and result.params["min_duration_s"] == 0.5
    assert len(result.latencies_ms) == result.metrics["queries_run"]
    clock = iter(x * 0.01 for x in range(10_000))
    pipe = MeanColourPipeline()
    result = sc.offline(pipe, images, batch_size=2, queries=4, min_duration_s=0.3, warmup=0,
                        timer=lambda: next(clock), progress=False)
    assert result.metrics["samples_run"] > 4 and result.metrics["avg_batch_size"] == 2
    with pytest.raises(ValidationError):
        sc.single_stream(pipe, images, min_duration_s=-1, progress=False)


def test_cache_passes_repeat_the_stream_cold_until_min_duration(images):
    pipe = MeanColourPipeline()
    clock = iter(x * 0.01 for x in range(100_000))
    result = sc.cache_scenario(pipe, images, repeat_ratio=0.5, queries=10, min_duration_s=0.5, seed=0,
                               clear=pipe.cache.clear, timer=lambda: next(clock), progress=False)
    passes = result.extra["passes"]
    assert passes > 1 and result.extra["hits"] + result.extra["misses"] == 10 * passes
    assert result.metrics["hit_rate"] == pytest.approx(result.metrics["expected_hit_rate"])  # every pass starts cold
    once = sc.cache_scenario(pipe, images, queries=10, min_duration_s=5, clear=None, progress=False)
    assert once.extra["passes"] == 1  # without a way to clear, a second pass would be all hits
