"""The batch engine: Dask distributed (a LocalCluster on 127.0.0.1, or an existing scheduler), resumable output."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["BatchResult", "classify", "dask_client", "worker_environ", "cluster_config", "task_size_for"]

#: Smallest task (images per Dask task): below it the per-task overhead shows.
MIN_TASK = 20
MAX_TASK = 100


def worker_environ() -> dict[str, str]:
    """What ``distributed.nanny.pre-spawn-environ`` becomes: Dask's defaults without ``MALLOC_TRIM_THRESHOLD_``
    (on image work it roughly halves throughput), one OpenMP/MKL/OpenBLAS thread per worker."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def cluster_config() -> dict[str, Any]:
    """The Dask settings a LocalCluster of ours starts with (its nannies pass them to the workers).

    Besides ``worker_environ`` and one retry of a task whose worker died: no statistical profiler in the workers
    (it takes the GIL every 10 ms to sample the task thread's stack, for a dashboard we do not start), the event
    loop's health tick every 500 ms instead of 20 ms, and the system monitor every 2 s instead of 0.5 s. Measured
    on 2 cores, an idle 2-worker cluster (workers, nannies, scheduler) then uses 3% of a core instead of 19%,
    CPU that the workers' image work otherwise loses."""
    return {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.scheduler.allowed-failures": 1,
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "500ms",
        "distributed.admin.system-monitor.interval": "2s",
    }


@dataclasses.dataclass
class BatchResult:
    """What one run did: images found, skipped (already in the output), classified, error rows, rows written, times."""

    out: Path
    images: int
    skipped: int
    classified: int
    errors: int
    rows: int
    tasks: int
    workers: int
    seconds: float
    cluster_start_s: float = 0.0
    cluster_stop_s: float = 0.0
    model_load_s: float = 0.0
    model: str = ""
    scheduler: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        out["out"] = str(self.out)
        return out

    def summary(self) -> str:
        """One line in words."""
        rate = self.classified / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.images} images: {self.classified} classified ({self.errors} errors), {self.skipped} already "
                f"in {self.out}; {self.rows} rows written in {self.seconds:.1f} s ({rate:.1f} images/s) on "
                f"{self.workers} worker(s)")

    def describe(self) -> str:
        """``summary()``, and where a cluster ran: its address, start, model-load and stop times."""
        if not self.workers:
            return self.summary()
        return (f"{self.summary()}\ncluster {self.scheduler}: started in {self.cluster_start_s:.2f} s, model loaded "
                f"on every worker in {self.model_load_s:.2f} s, stopped in {self.cluster_stop_s:.2f} s")


def task_size_for(n: int, workers: int, task_size: int | None = None) -> int:
    """Images per task: ``task_size`` if given, else about four tasks per worker, kept within 20..100."""
    if task_size is not None:
        if isinstance(task_size, bool) or not isinstance(task_size, int) or task_size < 1:
            raise ValidationError("task_size must be an int >= 1", field="task_size", value=task_size)
        return task_size
    return max(MIN_TASK, min(MAX_TASK, math.ceil(n / max(1, workers * 4))))


@contextlib.contextmanager
def dask_client(workers: int = 2, scheduler: str | None = None, *, timeout: float = 60.0
                ) -> Iterator[tuple[Any, dict[str, float]]]:
    """(client, times) on ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``), else on a LocalCluster of
    ``workers`` processes on 127.0.0.1 (one thread each, dashboard off, ``cluster_config``) that is stopped on exit,
    its processes with it. ``times`` holds ``start_s`` and, after exit, ``stop_s``."""
    import dask
    from distributed import Client, LocalCluster

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if scheduler:
        client = Client(scheduler, timeout=f"{timeout}s")
        times["start_s"] = time.perf_counter() - t0
        try:
            yield client, times
        finally:
            t1 = time.perf_counter()
            client.close()
            times["stop_s"] = time.perf_counter() - t1
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValidationError("workers must be an int >= 1", field="workers", value=workers)
    with dask.config.set(cluster_config()):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               scheduler_port=0, dashboard_address=None, protocol="tcp", silence_logs=40,
                               worker_dashboard_address=None)
        try:
            client = Client(cluster, timeout=f"{timeout}s")
        except BaseException:
            cluster.close()
            raise
    times["start_s"] = time.perf_counter() - t0
    try:
        yield client, times
    finally:
        t1 = time.perf_counter()
        try:
            client.close()
        finally:
            cluster.close(timeout=timeout)
        times["stop_s"] = time.perf_counter() - t1


def _model_id(checkpoint: str | Path, scene: bool = False) -> str:
    """The model column: the checkpoint's fingerprint; with ``scene``, also its pieces' model's (``<name>-scene.pt``),
    so that rebuilding that one reruns the photos instead of keeping answers it did not give."""
    from amulet_lab.model.checkpoint import load_checkpoint

    fingerprint = load_checkpoint(checkpoint).fingerprint
    path = Path(checkpoint)
    pieces = path.with_name(f"{path.stem}-scene{path.suffix}")
    if scene and pieces.is_file():
        return f"{fingerprint}+{load_checkpoint(pieces).fingerprint}"
    return fingerprint


def classify(paths: Sequence[str | Path] | str | Path, out: str | Path, *, checkpoint: str | Path,
             workers: int = 2, scheduler: str | None = None, scene: bool = False, top_k: int = 3,
             task_size: int | None = None, chunk_size: int = 100, batch_size: int = 16, progress: bool = True,
             bands: tuple[float | None, float | None] | None = None, timeout: float = 60.0) -> BatchResult:
    """Classify every image under ``paths`` (folders recursively, files, glob patterns) into the CSV ``out``.

    One row per photo (``batch.COLUMNS``), or per piece with ``scene`` (``batch.SCENE_COLUMNS``); a bad file is a
    row with its error code. Resumable: photos already in ``out`` with the same SHA-256 and model are skipped, the
    rows of a photo whose bytes changed are replaced. Rows are appended atomically at least every ``chunk_size``
    images, so an interrupted run loses at most one chunk. The work runs on Dask (see ``dask_client``) in tasks of
    ``task_size`` images (default: ``task_size_for``); each worker loads the model from ``checkpoint`` once
    (workers must see ``checkpoint`` and the photos at the same paths).
    """
    from amulet_lab.batch._rows import (
        COLUMNS,
        SCENE_COLUMNS,
        collect_images,
        done_keys,
        file_sha256,
        format_rows,
        read_rows,
    )
    from amulet_lab.batch._worker import classify_files, prepare_worker
    from amulet_lab.files import atomic_append_lines, atomic_write_text

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValidationError("chunk_size must be an int >= 1", field="chunk_size", value=chunk_size)
    start = time.perf_counter()
    out = Path(out)
    checkpoint = str(Path(checkpoint).resolve())
    columns = SCENE_COLUMNS if scene else COLUMNS
    images = collect_images(paths)
    model = _model_id(checkpoint, scene)
    found, existing = read_rows(out)
    if found is not None and tuple(found) != columns:
        raise ValidationError(f"{out} has the columns {found}, not those of a {'--scene ' if scene else ''}run "
                              f"{list(columns)}: choose another --out", field="out", value=str(out),
                              code="E_OUTPUT_COLUMNS")
    done = done_keys(existing)
    items = [(str(p), file_sha256(p)) for p in images]
    todo = [(p, h) for p, h in items if (p, h, model) not in done]
    redo = {p for p, _ in todo}
    kept = [r for r in existing if r["path"] not in redo]
    if found is None or len(kept) != len(existing):  # a new output, or stale rows of changed photos dropped
        atomic_write_text(out, "\n".join(format_rows(kept, columns, header=True)) + "\n")
    result = BatchResult(out=out, images=len(images), skipped=len(items) - len(todo), classified=0, errors=0,
                         rows=0, tasks=0, workers=0, seconds=0.0, model=model)
    if not todo:
        result.seconds = time.perf_counter() - start
        return result
    from tqdm.auto import tqdm

    options = {"checkpoint": checkpoint, "model": model, "scene": scene, "top_k": top_k, "batch_size": batch_size,
               "torch_threads": 1, "bands": bands}
    buffer: list[dict[str, Any]] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        if buffer:
            atomic_append_lines(out, format_rows(buffer, columns))
            result.rows += len(buffer)
            buffer.clear()
        pending = 0

    with dask_client(workers, scheduler, timeout=timeout) as (client, times):
        from distributed import as_completed

        result.cluster_start_s = times["start_s"]
        result.scheduler = client.scheduler.address
        t_load = time.perf_counter()
        result.workers = len(client.run(prepare_worker, checkpoint, 1, bands))
        result.model_load_s = time.perf_counter() - t_load
        size = task_size_for(len(todo), result.workers, task_size)
        tasks = [todo[i:i + size] for i in range(0, len(todo), size)]
        result.tasks = len(tasks)
        futures = client.map(classify_files, tasks, pure=False, **options)
        bar = tqdm(total=len(todo), unit="img", desc="classify", disable=not progress)
        try:
            for future in as_completed(futures):
                rows = future.result()
                buffer.extend(rows)
                n = len({r["path"] for r in rows})
                pending += n
                result.classified += n
                result.errors += sum(1 for r in rows if r["error"])
                bar.update(n)
                if pending >= chunk_size:
                    flush()
            flush()
        finally:
            bar.close()
            for future in futures:
                future.cancel()
    result.cluster_stop_s = times.get("stop_s", 0.0)
    result.seconds = time.perf_counter() - start
    return result
