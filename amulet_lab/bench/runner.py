"""``run_benchmarks``: load the classifier and samples, time the reference workload, run the chosen
scenarios and append one history record per scenario (and variant) of the run.

This is the one place that knows the classifier; ``scenarios`` only knows ``predict``/``predict_batch``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.bench import scenarios as sc
from amulet_lab.bench.scenarios.arguments import check_duration, check_int, check_pos
from amulet_lab.bench.compare import Comparison, compare
from amulet_lab.bench.history import History, new_run_id, utc_now
from amulet_lab.bench.machine import machine_info, reference_workload
from amulet_lab.config import Settings
from amulet_lab.errors import ValidationError

__all__ = ["SCENARIOS", "BenchRun", "run_benchmarks", "classifier_memory_stages", "with_cache", "with_private_cache",
           "with_preprocess_delay", "preprocess_delay_ms"]

log = logging.getLogger("amulet_lab.bench")

#: Scenario names ``run_benchmarks`` (and ``amulet-lab bench run``) accept.
SCENARIOS = ("single_stream", "offline", "server", "cache", "memory")


@dataclasses.dataclass
class BenchRun:
    """One benchmark run: its id, the scenario results, the records appended and the history."""

    run_id: str
    results: list[sc.ScenarioResult]
    records: list[dict[str, Any]]
    history: History | None
    machine: dict[str, Any]
    reference: dict[str, Any]
    seconds: float

    def summary_frame(self):  # -> pandas.DataFrame
        """Key figures per scenario: rows are scenarios, columns the usual metrics (NaN where n/a)."""
        import pandas as pd

        cols = ["latency_p50_ms", "latency_p99_ms", "qps", "samples_per_s", "achieved_qps", "max_qps_meeting_bound",
                "hit_rate", "hit_latency_p50_ms", "miss_latency_p50_ms", "peak_rss_mb", "avg_batch_size"]
        rows = {r.key: {c: r.metrics.get(c) for c in cols} for r in self.results}
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=cols).astype(float)
        return frame.dropna(axis=1, how="all").round(3)

    def stages_frame(self):  # -> pandas.DataFrame
        """Mean ms per stage, per scenario."""
        import pandas as pd

        return pd.DataFrame({r.key: r.stages for r in self.results if r.stages}).T.round(3)

    def result(self, key: str) -> sc.ScenarioResult:
        """The result named ``scenario`` or ``scenario[variant]``."""
        for r in self.results:
            if key in (r.key, r.scenario):
                return r
        raise ValidationError(f"no result {key!r} in this run", field="key", value=key)

    def figures(self) -> dict[str, Any]:
        """The figures that fit this run: stages, latency CDF, and server search / cache / memory when run."""
        from amulet_lab.bench import plots

        figs: dict[str, Any] = {"stages": plots.stage_figure(self.results)}
        timed = [r for r in self.results if r.latencies_ms and r.scenario != "memory"]
        if timed:
            figs["latency"] = plots.latency_figure(timed)
        for r in self.results:
            if r.extra.get("search"):
                figs["server_search"] = plots.server_search_figure(r)
            if r.scenario == "cache":
                figs["cache"] = plots.cache_figure(r)
            if r.scenario == "memory":
                figs["memory"] = plots.memory_figure(r)
        return figs

    def comparison(self) -> Comparison:
        """This run against earlier runs on the same machine in the history."""
        if self.history is None:
            return compare(self.records)
        return compare(self.history.reload(), self.run_id)

    def facts(self) -> str:
        """Stable facts for a notebook's checked cell (no times or figures that vary run to run)."""
        return "\n".join([
            f"scenarios run: {', '.join(r.key for r in self.results)}",
            f"history records appended: {len(self.records)}",
            f"figures: {', '.join(self.figures())}",
            f"every scenario has stage timings: {all(r.stages for r in self.results)}",
        ])

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Benchmark run</b> <code>{self.run_id}</code> · {len(self.results)} scenario result(s) in "
            f"{self.seconds:.1f} s · reference {self.reference['ms']:.3f} ms · {self.machine['cpu_model']} "
            f"× {self.machine['cores_logical']} · torch {self.machine['torch']} ({self.machine['torch_threads']} threads)</p>"
            + self.summary_frame().to_html()
        )

    def __repr__(self) -> str:
        return f"BenchRun({self.run_id!r}, {[r.key for r in self.results]}, {self.seconds:.1f}s)"


def classifier_memory_stages(clf: Any, images: Sequence[bytes], batch_size: int) -> list[tuple[str, Callable[[Any], Any]]]:
    """The classifier's own stages as a chain for ``memory_scenario``: decode -> preprocess -> infer -> postprocess.

    Each link is the public stage method that ``AmuletClassifier.predict_batch`` runs, one stage at a time over
    a batch, so each can be measured alone.
    """
    batch = list(images[:batch_size])
    if not batch:
        raise ValidationError("memory stages need at least one image", field="images", code="E_NO_SAMPLES")

    def decode(_: Any) -> list[Any]:
        return [clf.decode(b) for b in batch]

    def postprocess(answers: list[Any]) -> list[Any]:
        return [clf.postprocess(answer) for answer in answers]

    return [("decode", decode), ("preprocess", clf.preprocess), ("infer", clf.infer), ("postprocess", postprocess)]


def with_cache(clf: Any, cache: Any) -> Any:
    """The same loaded model with another prediction cache (``False``: none); no reload, no change to ``clf``.

    A seeded preprocessing delay (``with_preprocess_delay``) is carried over.
    """
    out = type(clf)(clf.checkpoint, limits=clf.limits, bands=clf.bands, cache=cache, monitor=clf.monitor,
                    decode_workers=clf.decode_workers)
    delay_ms = preprocess_delay_ms(clf)
    return with_preprocess_delay(out, delay_ms) if delay_ms else out


def with_private_cache(clf: Any) -> Any:
    """The same model with a fresh prediction cache of its own."""
    from amulet_lab.model import PredictionCache

    return with_cache(clf, PredictionCache())


def with_preprocess_delay(clf: Any, delay_ms: float) -> Any:
    """``clf`` whose ``preprocess`` stage first sleeps ``delay_ms`` (seeds a known regression; benchmark side only).

    The delay wraps the classifier's public stage on this instance; the package's ``predict`` knows nothing of it.
    """
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)) or not 0 <= delay_ms < 60_000:
        raise ValidationError("delay_ms must be a number of ms in [0, 60000)", field="delay_ms", value=delay_ms)
    if not delay_ms:
        return clf
    inner = type(clf).preprocess.__get__(clf)

    def preprocess(decoded: Sequence[Any]) -> Any:
        time.sleep(delay_ms / 1000.0)
        return inner(decoded)

    clf.preprocess = preprocess
    clf.preprocess_delay_ms = float(delay_ms)
    return clf


def preprocess_delay_ms(clf: Any) -> float:
    """The seeded delay ``clf`` runs with (0 when none)."""
    return float(getattr(clf, "preprocess_delay_ms", 0.0))


def run_benchmarks(
    scenarios: Sequence[str] = ("single_stream", "offline"),
    *,
    classifier: Any = None,
    checkpoint: str | Path | None = None,
    data_dir: str | Path | None = None,
    history_dir: str | Path | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 0,
    samples: int = 24,
    min_duration_s: float = 1.0,
    duration_s: float = 2.0,
    seed: int = 0,
    target_qps: float | None = None,
    latency_bound_ms: float = 200.0,
    server_threads: int = 2,
    server_search: bool = True,
    search_steps: int = 5,
    repeat_ratio: float = 0.5,
    cache: bool = False,
    url: str | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    image_sizes: Sequence[int] | None = None,
    record: bool = True,
    progress: bool = True,
    settings: Settings | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> BenchRun:
    """Run ``scenarios`` on the classifier (default checkpoint) and sample images; append to the history.

    ``samples`` distinct photos are the queries of each scenario; single_stream and offline go on
    cycling over them for at least ``min_duration_s``. ``threads`` sets torch's intra-op threads for the run (0: leave as is). With ``cache=False`` (the
    default) the scenarios other than ``cache`` run the same model with no prediction cache, so every query
    does the whole work; the ``cache`` scenario always uses a fresh private cache. ``url`` (with ``token``
    and ``headers``) sends the ``server`` scenario to a running service. ``image_sizes`` re-encodes the photo
    pool with its longer side at each size and runs every scenario once per size (variant ``img=N``);
    without it the photos are used as they are, once.
    """
    import torch

    from amulet_lab.config import get_settings

    settings = settings or get_settings()
    from amulet_lab.runtime import apply_settings

    apply_settings(settings)
    chosen = list(scenarios)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if not chosen or unknown:
        raise ValidationError(f"unknown scenario(s) {unknown or chosen}; choose from {list(SCENARIOS)}",
                              field="scenarios", value=chosen)
    sizes = [check_int("batch_size", b) for b in batch_sizes] or [1]
    check_int("samples", samples)
    check_int("threads", threads, 0)
    check_pos("duration_s", duration_s)
    check_duration("min_duration_s", min_duration_s)
    sizes_px: list[int | None] = [check_int("image_size", n, 8) for n in image_sizes] if image_sizes else [None]
    started = timer()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        # A service under test (url=) needs no local model; every other scenario does.
        local = url is None or any(name != "server" for name in chosen)
        if classifier is None and local:
            from amulet_lab.model import AmuletClassifier

            classifier = AmuletClassifier.from_settings(settings, checkpoint)
        if data_dir is None:
            from amulet_lab.data import SAMPLES_DIR

            data_dir = SAMPLES_DIR
        base = sc.load_images(data_dir, seed=seed)
        pool = sc.distinct_images(base, samples, seed=seed)
        # The seeded delay (AMULET_TEST_PREPROCESS_DELAY_MS, or one a classifier passed in carries) wraps the
        # timed model here, on the benchmark side; compare must know a seeded run (never a clean baseline).
        if classifier is not None and settings.test_preprocess_delay_ms and not preprocess_delay_ms(classifier):
            classifier = with_preprocess_delay(with_cache(classifier, False if classifier.cache is None else classifier.cache),
                                               settings.test_preprocess_delay_ms)
        delay_ms = preprocess_delay_ms(classifier) if classifier is not None else settings.test_preprocess_delay_ms
        # cache=False: the same model without a cache, so every query does the whole work.
        subject = classifier if cache or classifier is None else with_cache(classifier, False)
        ref_before = reference_workload()
        machine = machine_info(torch_threads=threads or None)
        run_id, stamp = new_run_id(), utc_now().isoformat(timespec="seconds")
        history = History(history_dir) if history_dir else History.from_settings(settings)
        results: list[sc.ScenarioResult] = []
        for px in sizes_px:
            # Each image size gets its own re-encoded pools; without image_sizes the photos as they are, once.
            sized_pool = pool if px is None else sc.resize_images(pool, px)
            sized_base = base if px is None else sc.resize_images(base, px)
            first = len(results)
            for name in chosen:
                if name == "single_stream":
                    results.append(sc.single_stream(subject, sized_pool, queries=samples, min_duration_s=min_duration_s,
                                                    warmup=2, timer=timer, progress=progress))
                elif name == "offline":
                    for bs in sizes:
                        results.append(sc.offline(subject, sized_pool, batch_size=bs, queries=samples,
                                                  min_duration_s=min_duration_s, warmup=1, timer=timer,
                                                  progress=progress))
                elif name == "server":
                    results.append(_server(subject, sized_pool, settings=settings, target_qps=target_qps,
                                           latency_bound_ms=latency_bound_ms, duration_s=duration_s,
                                           threads=server_threads, max_batch=max(sizes), seed=seed, url=url,
                                           token=token, headers=headers, search=server_search, steps=search_steps,
                                           progress=progress, timer=timer))
                elif name == "cache":
                    cached = with_private_cache(classifier)
                    results.append(sc.cache_scenario(cached, sized_base, repeat_ratio=repeat_ratio,
                                                     queries=max(samples, 20), min_duration_s=min_duration_s,
                                                     seed=seed, clear=cached.cache.clear, timer=timer,
                                                     progress=progress))
                elif name == "memory":
                    bs = max(sizes)
                    results.append(sc.memory_scenario(classifier_memory_stages(subject, sized_pool, bs), timer=timer,
                                                      batch_size=min(bs, len(sized_pool)), params={"batch_size": bs}))
            if px is not None:
                for r in results[first:]:
                    r.variant = ",".join(v for v in (r.variant, f"img={px}") if v)
                    r.params["image_size"] = px
        # Timed before and after the scenarios; the faster of the two is the machine's speed this run.
        ref_after = reference_workload()
        reference = {**ref_before, "ms": min(ref_before["ms"], ref_after["ms"]),
                     "before_ms": ref_before["ms"], "after_ms": ref_after["ms"]}
        common = {
            "run_id": run_id,
            "timestamp": stamp,
            "commit": machine["git_commit"],
            "machine_id": machine["machine_id"],
            "machine": machine,
            "reference": {k: round(reference[k], 6) if isinstance(reference[k], float) else reference[k]
                          for k in ("name", "ms", "before_ms", "after_ms", "torch_threads")},
            "settings": {"test_preprocess_delay_ms": delay_ms, "cache": cache,
                         "torch_threads": torch.get_num_threads()},
        }
        for r in results:
            r.params.setdefault("samples", samples)
            r.params.setdefault("cache", cache)
            # compare matches a baseline on params: runs on another number of torch threads are another workload.
            r.params.setdefault("torch_threads", torch.get_num_threads())
        records = [{**common, **r.to_record()} for r in results]
        if record:
            history.extend(records)
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    seconds = timer() - started
    log.info("benchmark run %s: %d record(s) in %.1f s", run_id, len(records), seconds)
    return BenchRun(run_id, results, records, history if record else None, machine, reference, seconds)


def _server(clf: Any, pool: list[bytes], *, settings: Settings, target_qps: float | None, latency_bound_ms: float,
            duration_s: float, threads: int, max_batch: int, seed: int, url: str | None, token: str | None,
            headers: dict[str, str] | None, search: bool, steps: int, progress: bool,
            timer: Callable[[], float]) -> sc.ScenarioResult:
    pipeline = None if url else clf
    common = dict(latency_bound_ms=latency_bound_ms, duration_s=duration_s, threads=threads, max_batch=max_batch,
                  seed=seed, url=url, token=token, headers=headers, settings=settings, timer=timer, progress=progress)
    if search and target_qps is None:
        return sc.server_search(pipeline, pool, steps=steps, **common)
    if target_qps is None:
        raise ValidationError("server needs target_qps when search is off", field="target_qps")
    return sc.server(pipeline, pool, target_qps=target_qps, **common)
