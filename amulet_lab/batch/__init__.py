"""Batch classification of whole folders of photos on Dask distributed, into a resumable CSV.

``classify(paths, out, checkpoint=...)`` finds every image under the folders and globs given, skips those
already in ``out`` (same SHA-256 and model), and classifies the rest on a LocalCluster on 127.0.0.1 (or an
existing scheduler), appending rows atomically in chunks. Dask is imported only when a run starts.
``BatchReport`` reads an output back as a pandas table with its summaries (counts per class, the unknowns, the most
uncertain photos): what notebooks/05_batch.ipynb shows.
"""

from amulet_lab.batch._engine import (
    BatchResult,
    classify,
    cluster_config,
    dask_client,
    task_size_for,
    worker_environ,
)
from amulet_lab.batch._results import (
    BatchReport,
    class_counts,
    error_rows,
    most_uncertain,
    results_frame,
    unknown_rows,
)
from amulet_lab.batch._rows import COLUMNS, SCENE_COLUMNS, collect_images, file_sha256, read_rows
from amulet_lab.batch._worker import classify_files, load_worker_model, prepare_worker, worker_model_loads

__all__ = [
    "classify",
    "BatchResult",
    "COLUMNS",
    "SCENE_COLUMNS",
    "collect_images",
    "file_sha256",
    "read_rows",
    "classify_files",
    "load_worker_model",
    "prepare_worker",
    "worker_model_loads",
    "dask_client",
    "task_size_for",
    "worker_environ",
    "cluster_config",
    "BatchReport",
    "results_frame",
    "class_counts",
    "unknown_rows",
    "most_uncertain",
    "error_rows",
]
