"""``amulet-lab classify``: classify whole folders of photos on Dask into a resumable CSV."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def _classify(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.batch import classify
    from amulet_lab.model.classifier import default_checkpoint_path

    checkpoint = args.checkpoint or default_checkpoint_path(settings.model_path)
    result = classify(args.paths, args.out, checkpoint=checkpoint, workers=args.workers, scheduler=args.scheduler,
                      scene=args.scene, top_k=args.top_k, task_size=args.task_size, chunk_size=args.chunk_size,
                      progress=not args.quiet, bands=(settings.band_reliable, settings.band_verify))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.describe())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` sub-command."""
    parser = subparsers.add_parser(
        "classify", help="classify every photo under folders or globs into a CSV (Dask; resumable)",
        description="Classify every image under PATH... (folders recursively, files, glob patterns; JPEG, PNG, WebP, "
                    "HEIC) into OUT, one row per photo (path,sha256,label,confidence,band,is_unknown,top_k,model,error) "
                    "or per piece with --scene. A rerun skips photos already in OUT with the same hash and model. "
                    "Runs on a LocalCluster on 127.0.0.1, or on an existing Dask scheduler (--scheduler).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders, image files or glob patterns")
    parser.add_argument("--out", required=True, help="the results CSV (appended to; created if missing)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (its workers must see the photos "
                             "and the checkpoint at the same paths); no LocalCluster is started")
    parser.add_argument("--scene", action="store_true", help="find the pieces in each photo: one row per piece")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: AMULET_MODEL_PATH or the bundled one)")
    parser.add_argument("--top-k", type=int, default=3, help="classes in the top_k column (default 3)")
    parser.add_argument("--task-size", type=int, default=None, help="images per Dask task (default: 20..100)")
    parser.add_argument("--chunk-size", type=int, default=100, help="write rows at least every N images (default 100)")
    parser.add_argument("--json", action="store_true", help="print the run's figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_classify)
