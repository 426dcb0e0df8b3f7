"""Shared builders for the model tests: a tiny synthetic dataset and a tiny trained checkpoint."""

from __future__ import annotations

from pathlib import Path

TINY_SIZE = 32


def tiny_dataset(root: Path, per_class: int = 6, seed: int = 3) -> Path:
    """A small synthetic dataset (class folders + groups.json) at 64 px."""
    from amulet_lab.data import synthesize

    return synthesize(root, per_class, seed, size=64, progress=False)


def tiny_checkpoint(data: Path, out: Path, *, epochs: int = 2, seed: int = 0) -> Path:
    """Train the ``tiny`` arch for a couple of epochs and save it."""
    from amulet_lab.model import TrainConfig, train

    config = TrainConfig(arch="tiny", img_size=TINY_SIZE, epochs=epochs, batch_size=16, seed=seed, min_epochs=1,
                         feature_views=2, probes_per_batch=2)
    train(data, out=out, config=config, val_fraction=0.25, progress=False)
    return out


def untrained_tiny_checkpoint(path: Path, size: int = 64) -> Path:
    """A real, untrained, seeded ``tiny`` checkpoint: for tests of the pipeline's cost and plumbing, not accuracy."""
    import torch

    from amulet_lab.images import PreprocessSpec
    from amulet_lab.model import build_model, make_checkpoint, save_checkpoint
    from amulet_lab.model.checkpoint import project_labels

    torch.manual_seed(0)
    labels = project_labels()
    ck = make_checkpoint(build_model("tiny", len(labels)), arch="tiny", arch_kwargs={}, labels=labels,
                         spec=PreprocessSpec(size=size))
    return save_checkpoint(ck, path)
