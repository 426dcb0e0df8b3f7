"""Datasets of amulet photos: labels, image-folder loading and splits, and the synthetic stand-in generator.

``import amulet_lab.data`` is light: Pillow and numpy load only when images are rendered.
"""

from __future__ import annotations

from amulet_lab.config import PROJECT_ROOT
from amulet_lab.data.composites import (
    Composite,
    CompositePiece,
    SourcePiece,
    folder_sources,
    make_composite,
    read_manifest,
    synthetic_sources,
    write_composites,
)
from amulet_lab.data.dataset import DatasetSplits, Sample, content_fingerprint, fingerprint, load_dataset, stratified_kfold
from amulet_lab.data.labels import DEFAULT_LABELS_PATH, Label, load_labels
from amulet_lab.data.review import NOT_AMULET, REVIEW_HEADER, ReviewLabels, ReviewRow, photo_sha256
from amulet_lab.data.synth import synthesize, synthesize_unknowns

__all__ = [
    "Label",
    "load_labels",
    "ReviewLabels",
    "ReviewRow",
    "REVIEW_HEADER",
    "NOT_AMULET",
    "photo_sha256",
    "Sample",
    "DatasetSplits",
    "load_dataset",
    "stratified_kfold",
    "fingerprint",
    "content_fingerprint",
    "synthesize",
    "synthesize_unknowns",
    "SourcePiece",
    "CompositePiece",
    "Composite",
    "synthetic_sources",
    "folder_sources",
    "make_composite",
    "write_composites",
    "read_manifest",
    "SAMPLES_DIR",
    "DEFAULT_LABELS_PATH",
]

#: The small committed sample of synthetic photos (class folders, ``groups.json``, ``_unknown/``).
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"

