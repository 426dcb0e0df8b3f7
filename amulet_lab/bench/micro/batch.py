"""Batch classification: the same photos in one process, in a ProcessPoolExecutor and on a 2-worker LocalCluster.

Photos: ``n`` generated JPEGs of 224-320 px (the sample photos, rescaled and grained so that no two are alike;
500, or 60 with ``quick``), classified with the synthetic checkpoint in tasks of ``batch.task_size_for`` images.
Each engine has its model loaded before the clock starts (a LocalCluster's start and stop are figures of their own).
Ratios: ``cluster_vs_single_1thread`` (target >= 1.6; 2 is the ideal on 2 cores), ``cluster_vs_single_2threads``
(target >= 1.0: not slower than one process using both cores), ``pool_vs_single_1thread``, and ``identical``
(1.0 when the three give the same rows).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import tempfile
import time
from pathlib import Path

from amulet_lab.bench.micro import MicroResult, Target

__all__ = ["run", "make_photos"]


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


def _strip(rows: list[dict]) -> list[tuple]:
    return sorted((r["path"], r["label"], r["confidence"], r["band"], r["top_k"], r["error"]) for r in rows)


def run(quick: bool = False, *, n: int | None = None, workers: int = 2, checkpoint: str | None = None) -> MicroResult:
    """Time the three engines on the same photos (see the module doc)."""
    import torch

    from amulet_lab.batch import classify_files, dask_client, file_sha256, prepare_worker, task_size_for
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    n = n or (60 if quick else 500)
    ckpt = str(checkpoint or SYNTHETIC_CHECKPOINT)
    with tempfile.TemporaryDirectory(prefix="amulet-batch-bench-") as tmp:
        items = [(str(p), file_sha256(p)) for p in make_photos(Path(tmp), n)]
        size = task_size_for(n, workers)
        tasks = [items[i:i + size] for i in range(0, n, size)]
        model = prepare_worker(ckpt, 1)
        threads = torch.get_num_threads()

        def single(torch_threads: int) -> tuple[float, list[dict]]:
            torch.set_num_threads(torch_threads)
            t0 = time.perf_counter()
            rows = [r for task in tasks for r in classify_files(task, ckpt, model)]
            return time.perf_counter() - t0, rows

        single(1)  # warm-up (first-call costs of torch)
        t_single1, rows_single = single(1)
        t_single2, _ = single(2)
        torch.set_num_threads(threads)

        spawn = multiprocessing.get_context("spawn")  # fork after torch has run threads can hang the children
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn, initializer=prepare_worker,
                                                    initargs=(ckpt, 1)) as pool:
            list(pool.map(prepare_worker, [ckpt] * workers))  # every process started with its model
            t0 = time.perf_counter()
            rows_pool = [r for part in pool.map(classify_files, tasks, [ckpt] * len(tasks), [model] * len(tasks))
                         for r in part]
            t_pool = time.perf_counter() - t0

        with dask_client(workers) as (client, times):
            t0 = time.perf_counter()
            client.run(prepare_worker, ckpt, 1)
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            futures = client.map(classify_files, tasks, pure=False, checkpoint=ckpt, model=model)
            rows_cluster = [r for part in client.gather(futures) for r in part]
            t_cluster = time.perf_counter() - t0
        start_s, stop_s = times["start_s"], times["stop_s"]

    identical = float(_strip(rows_single) == _strip(rows_pool) == _strip(rows_cluster))
    per_task = lambda wall: (wall * workers - t_single1) / len(tasks) * 1000  # noqa: E731 - extra work per task, ms
    figures = {
        "photos": float(n), "tasks": float(len(tasks)), "images_per_task": float(size), "workers": float(workers),
        "single_1thread_images_per_s": n / t_single1, "single_2threads_images_per_s": n / t_single2,
        "pool_images_per_s": n / t_pool, "cluster_images_per_s": n / t_cluster,
        "pool_overhead_per_task_ms": per_task(t_pool), "cluster_overhead_per_task_ms": per_task(t_cluster),
        "cluster_start_s": start_s, "cluster_model_load_s": t_load, "cluster_stop_s": stop_s,
    }
    ratios = {
        "cluster_vs_single_1thread": t_single1 / t_cluster,
        "cluster_vs_single_2threads": t_single2 / t_cluster,
        "pool_vs_single_1thread": t_single1 / t_pool,
        "identical": identical,
    }
    targets = {"cluster_vs_single_1thread": Target(">=", 1.6), "cluster_vs_single_2threads": Target(">=", 1.0),
               "identical": Target(">=", 1.0)}
    return MicroResult("batch", figures, ratios, targets,
                       notes=f"{n} JPEGs of 224-320 px, {Path(ckpt).name}, {workers} workers x 1 thread; overhead per "
                             "task = (wall x workers - one-thread single wall) / tasks")
