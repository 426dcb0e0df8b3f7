"""Batch classification: the same photos in one process, in a ProcessPoolExecutor and on a 2-worker LocalCluster.

Photos: ``n`` generated JPEGs of 224-320 px (the sample photos, rescaled and grained so that no two are alike;
500, or 60 with ``quick``), classified with ``checkpoint`` (default: the synthetic one) in tasks of
``batch.task_size_for`` images. Every engine is started and has its model loaded before any clock starts (a
LocalCluster's start, model load and stop are figures of their own); then one untimed warm-up round and ``rounds``
timed rounds (3; 1 with ``quick``) in which the engines take turns (one process on one torch thread, one process on
two, the pool, the cluster), so that a change in the machine's load falls on all of them; each figure is the
median of its rounds.

Ratios: ``cluster_vs_single_1thread`` (target >= 1.6; 2 is the ideal on 2 cores), ``cluster_vs_single_2threads``
(target >= 1.0: not slower than one process using both cores), ``pool_vs_single_1thread``, and ``identical``
(1.0 when the three give the same answers: class, band, unknown decision, error and top-k classes of every photo;
their probabilities may differ in the last digits between processes (seen with the real model):
``max_probability_gap`` says by how much).

Overhead per task: ``*_echo_task_ms`` is the wall time per task of tasks that carry the same items and rows but
classify nothing (dispatch, pickling, the rows back). ``*_cpu_ms_per_image`` is the CPU time of the engine's
processes per photo (for the pool and the cluster: their workers and this process, which feeds the pool and hosts
the cluster's scheduler and client). The machines here are shared: ``load_before`` (1-minute load average before
any engine starts; above ~1.5 other jobs were running) and ``single_cpu_share`` (CPU time / wall of the one-thread
process: above 1 its decode thread overlaps the forward pass, well below 1 it did not get the CPU it wanted) say
how disturbed a run was; ``load_after`` includes this benchmark's own processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.bench.micro import MicroResult, Target

__all__ = ["run", "make_photos", "echo_rows"]


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct JPEGs of 224-320 px made from the sample photos."""
    import numpy as np
    from PIL import Image

    from amulet_lab.config import PROJECT_ROOT

    sources = sorted((PROJECT_ROOT / "data" / "samples").rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            side = int(rng.integers(224, 321))
            arr = np.asarray(im.convert("RGB").resize((side, side)), dtype=np.int16)
        arr = np.clip(arr + rng.integers(-6, 7, arr.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(arr).save(path, quality=int(rng.integers(80, 95)))
        out.append(path)
    return out


def echo_rows(items: Sequence[tuple[str, str]], checkpoint: str, model: str) -> list[dict[str, str]]:
    """Rows shaped like ``batch.classify_files``'s for ``items``, without classifying: what a task costs to send,
    run and bring back when the work itself is nothing."""
    top = '[["phra_sivali", 0.512345], ["waek_man", 0.301234], ["wat_nong_e_duk", 0.101234]]'
    return [{"path": path, "sha256": sha, "label": "phra_sivali", "confidence": "0.512345", "band": "verify",
             "is_unknown": "false", "top_k": top, "model": model, "error": ""} for path, sha in items]


def _answers(rows: list[dict]) -> list[tuple]:
    """What must be the same whichever engine ran: the class, band, unknown decision, error and top-k classes."""
    import json

    return sorted((r["path"], r["label"], r["band"], r["is_unknown"], r["error"],
                   tuple(k for k, _ in json.loads(r["top_k"] or "[]"))) for r in rows)


def _probability_gap(a: list[dict], b: list[dict]) -> float:
    """The largest difference between two runs' probabilities (confidence and top-k) of the same photo."""
    import json

    other = {r["path"]: r for r in b}
    gap = 0.0
    for r in a:
        s = other[r["path"]]
        if r["confidence"] and s["confidence"]:
            gap = max(gap, abs(float(r["confidence"]) - float(s["confidence"])))
        for (_, p), (_, q) in zip(json.loads(r["top_k"] or "[]"), json.loads(s["top_k"] or "[]")):
            gap = max(gap, abs(p - q))
    return gap


def _cpu_seconds(pids: Sequence[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _timed(fn: Callable[[], list[dict]], cpu: Callable[[], float]) -> tuple[float, float, list[dict]]:
    c0, t0 = cpu(), time.perf_counter()
    rows = fn()
    wall = time.perf_counter() - t0
    return wall, cpu() - c0, rows


def run(quick: bool = False, *, n: int | None = None, workers: int = 2, checkpoint: str | None = None,
        rounds: int | None = None) -> MicroResult:
    """Time the three engines on the same photos (see the module doc)."""
    import psutil
    import torch

    from amulet_lab.batch import classify_files, dask_client, file_sha256, prepare_worker, task_size_for
    from amulet_lab.errors import ValidationError
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    n = (60 if quick else 500) if n is None else n
    rounds = (1 if quick else 3) if rounds is None else rounds
    for name, value in (("n", n), ("workers", workers), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"{name} must be an int >= 1", field=name, value=value)
    ckpt = str(Path(checkpoint or SYNTHETIC_CHECKPOINT).resolve())
    if not Path(ckpt).is_file():
        raise ValidationError(f"no checkpoint at {ckpt}", field="checkpoint", value=str(checkpoint),
                              code="E_PATH_MISSING")
    load_before = os.getloadavg()[0]
    threads = torch.get_num_threads()
    walls: dict[str, list[float]] = {k: [] for k in ("single1", "single2", "pool", "cluster")}
    cpus: dict[str, list[float]] = {k: [] for k in walls}
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="amulet-batch-bench-") as tmp:
        items = [(str(p), file_sha256(p)) for p in make_photos(Path(tmp), n)]
        size = task_size_for(n, workers)
        tasks = [items[i:i + size] for i in range(0, n, size)]
        model = prepare_worker(ckpt, 1)
        me = psutil.Process()
        before = {p.pid for p in me.children(recursive=True)}
        spawn = multiprocessing.get_context("spawn")  # fork after torch has run threads can hang the children
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn, initializer=prepare_worker,
                                                    initargs=(ckpt, 1)) as pool, \
                dask_client(workers) as (client, times):
            t0 = time.perf_counter()
            client.run(prepare_worker, ckpt, 1)
            t_load = time.perf_counter() - t0
            cluster_pids = list(client.run(os.getpid).values())

            def single(torch_threads: int) -> list[dict]:
                torch.set_num_threads(torch_threads)
                try:
                    return [r for task in tasks for r in classify_files(task, ckpt, model)]
                finally:
                    torch.set_num_threads(threads)

            def on_pool(fn: Callable = classify_files, work: list = tasks) -> list[dict]:
                return [r for part in pool.map(fn, work, [ckpt] * len(work), [model] * len(work)) for r in part]

            def on_cluster(fn: Callable = classify_files, work: list = tasks) -> list[dict]:
                futures = client.map(fn, work, [ckpt] * len(work), [model] * len(work), pure=False)
                return [r for part in client.gather(futures) for r in part]

            def own_cpu() -> float:
                return time.process_time()

            pool_pids: list[int] = []
            engines = {"single1": (lambda: single(1), own_cpu), "single2": (lambda: single(2), own_cpu),
                       "pool": (on_pool, lambda: _cpu_seconds(pool_pids) + own_cpu()),
                       "cluster": (on_cluster, lambda: _cpu_seconds(cluster_pids) + own_cpu())}
            for r in range(rounds + 1):  # round 0: warm-up (first forward passes, allocator growth), not timed
                for name, (fn, cpu) in engines.items():
                    wall, used, got = _timed(fn, cpu)
                    if name == "pool" and not pool_pids:  # the pool starts its processes on demand
                        pool_pids = sorted({p.pid for p in me.children(recursive=True)} - before - set(cluster_pids))
                        pool_pids = [pid for pid in pool_pids if "resource_tracker" not in " ".join(_cmdline(pid))]
                    if r:
                        walls[name].append(wall)
                        cpus[name].append(used)
                        rows.setdefault(name, got)
            echo = [items[i:i + size] for i in range(0, n, size)] * max(1, 80 // max(1, len(tasks)))
            t0 = time.perf_counter()
            on_pool(echo_rows, echo)
            pool_echo = (time.perf_counter() - t0) / len(echo)
            t0 = time.perf_counter()
            on_cluster(echo_rows, echo)
            cluster_echo = (time.perf_counter() - t0) / len(echo)
        start_s, stop_s = times["start_s"], times["stop_s"]
    load_after = os.getloadavg()[0]

    wall = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    identical = float(_answers(rows["single1"]) == _answers(rows["pool"]) == _answers(rows["cluster"]))
    gap = max(_probability_gap(rows["single1"], rows["pool"]), _probability_gap(rows["single1"], rows["cluster"]))
    share = cpu["single1"] / wall["single1"]
    figures = {
        "photos": float(n), "tasks": float(len(tasks)), "images_per_task": float(size), "workers": float(workers),
        "rounds": float(rounds),
        "single_1thread_images_per_s": n / wall["single1"], "single_2threads_images_per_s": n / wall["single2"],
        "pool_images_per_s": n / wall["pool"], "cluster_images_per_s": n / wall["cluster"],
        "single_1thread_cpu_ms_per_image": cpu["single1"] / n * 1000,
        "pool_cpu_ms_per_image": cpu["pool"] / n * 1000, "cluster_cpu_ms_per_image": cpu["cluster"] / n * 1000,
        "pool_echo_task_ms": pool_echo * 1000, "cluster_echo_task_ms": cluster_echo * 1000,
        "cluster_start_s": start_s, "cluster_model_load_s": t_load, "cluster_stop_s": stop_s,
        "max_probability_gap": gap,
        "load_before": load_before, "load_after": load_after, "single_cpu_share": share,
    }
    ratios = {
        "cluster_vs_single_1thread": wall["single1"] / wall["cluster"],
        "cluster_vs_single_2threads": wall["single2"] / wall["cluster"],
        "pool_vs_single_1thread": wall["single1"] / wall["pool"],
        "identical": identical,
    }
    targets = {"cluster_vs_single_1thread": Target(">=", 1.6), "cluster_vs_single_2threads": Target(">=", 1.0),
               "identical": Target(">=", 1.0)}
    busy = load_before > 1.5 or share < 0.9
    return MicroResult("batch", figures, ratios, targets,
                       notes=f"{n} JPEGs of 224-320 px, {Path(ckpt).name}, {workers} workers x 1 thread, median of "
                             f"{rounds} interleaved round(s) after a warm-up"
                             + ("; the machine was busy (load or CPU share): repeat on a quiet machine" if busy else ""))


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
