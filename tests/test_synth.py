"""The synthetic stand-in generator: layout, pairing, determinism, variety, unknowns and the CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amulet_lab.cli import main
from amulet_lab.data import load_dataset, load_labels, synthesize, synthesize_unknowns
from amulet_lab.data.synth import UNKNOWN_KINDS, render_amulet
from amulet_lab.errors import ValidationError

KEYS = [label.key for label in load_labels()]


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "set", 4, seed=7, size=64, progress=False)


def test_layout_names_and_groups(small_set):
    for key in KEYS:
        names = sorted(p.name for p in (small_set / key).iterdir())
        assert names == [f"{key}_back_0000.jpg", f"{key}_back_0001.jpg", f"{key}_front_0000.jpg",
                         f"{key}_front_0001.jpg"]
    groups = json.loads((small_set / "groups.json").read_text())
    assert len(groups) == 24
    assert groups[f"{KEYS[0]}/{KEYS[0]}_front_0001.jpg"] == groups[f"{KEYS[0]}/{KEYS[0]}_back_0001.jpg"]
    assert len(set(groups.values())) == 12
    meta = json.loads((small_set / "synth.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 7 and meta["per_class"] == 4


def test_images_are_jpeg_rgb_of_the_asked_size(small_set):
    for path in small_set.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 64)


def test_load_dataset_reads_the_pairs(small_set):
    splits = load_dataset(small_set, val_fraction=0.5, seed=0)
    assert all(s.group for s in splits.all)
    assert {s.group for s in splits.train}.isdisjoint({s.group for s in splits.val})
    assert Counter((s.key, s.side) for s in splits.all) == {(k, side): 2 for k in KEYS for side in ("front", "back")}


def test_same_seed_same_bytes_other_seed_other_bytes(small_set, tmp_path):
    again = synthesize(tmp_path / "again", 4, seed=7, size=64, progress=False)
    assert _digests(again) == _digests(small_set)
    other = synthesize(tmp_path / "other", 4, seed=8, size=64, progress=False)
    name = f"{KEYS[0]}/{KEYS[0]}_front_0000.jpg"
    assert _digests(other)[name] != _digests(small_set)[name]


def test_more_per_class_only_adds_pieces(small_set, tmp_path):
    bigger = synthesize(tmp_path / "bigger", 6, seed=7, size=64, progress=False)
    old, new = _digests(small_set), _digests(bigger)
    images = {name: digest for name, digest in old.items() if name.endswith(".jpg")}
    assert all(new[name] == digest for name, digest in images.items())
    assert len([n for n in new if n.endswith(".jpg")]) == 36


def test_odd_per_class_leaves_a_front_alone(tmp_path):
    out = synthesize(tmp_path / "odd", 3, seed=0, size=48, progress=False)
    assert sorted(p.name for p in (out / KEYS[1]).iterdir()) == [
        f"{KEYS[1]}_back_0000.jpg", f"{KEYS[1]}_front_0000.jpg", f"{KEYS[1]}_front_0001.jpg"]


def test_refuses_to_mix_into_an_existing_set_unless_overwrite(small_set, tmp_path):
    out = synthesize(tmp_path / "set", 4, seed=1, size=48, progress=False)
    with pytest.raises(ValidationError) as info:
        synthesize(out, 2, seed=1, size=48, progress=False)
    assert info.value.code == "E_SYNTH_NOT_EMPTY"
    (out / "README.md").write_text("kept")
    synthesize(out, 2, seed=1, size=48, progress=False, overwrite=True)
    assert len(list(out.glob("*/*.jpg"))) == 12  # the stale pieces 0001 are gone
    assert (out / "README.md").read_text() == "kept"


@pytest.mark.parametrize(("kwargs", "field"), [({"per_class": 0}, "per_class"), ({"size": 16}, "size"),
                                               ({"seed": -1}, "seed"), ({"per_class": 2.5}, "per_class"),
                                               ({"size": 5000}, "size")])
def test_argument_validation(tmp_path, kwargs, field):
    args = {"per_class": 2, "seed": 0, "size": 64} | kwargs
    with pytest.raises(ValidationError) as info:
        synthesize(tmp_path / "x", progress=False, **args)
    assert info.value.code == "E_SYNTH_ARGUMENT" and info.value.field == field


def test_render_validates_class_and_side():
    rng = np.random.default_rng(0)
    with pytest.raises(ValidationError):
        render_amulet("not_a_class", "front", 64, rng)
    with pytest.raises(ValidationError):
        render_amulet(KEYS[0], "edge", 64, rng)


def _silhouette(image: Image.Image) -> np.ndarray:
    """Pixels that differ clearly from the border colour: a rough foreground mask."""
    a = np.asarray(image, dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0)
    return np.abs(a - border).sum(axis=2) > 60


def test_classes_differ_and_pieces_vary():
    """Within a class photos vary (pose, colour); between classes the mean silhouettes differ more."""
    masks = {key: [_silhouette(render_amulet(key, "front", 64, np.random.default_rng([1, i, n])))
                   for n in range(6)] for i, key in enumerate(KEYS)}
    images = [np.asarray(render_amulet(KEYS[0], "front", 64, np.random.default_rng([2, n])), dtype=np.float32)
              for n in range(3)]
    assert np.abs(images[0] - images[1]).mean() > 10 and np.abs(images[1] - images[2]).mean() > 10
    fill = {key: np.mean([m.mean() for m in ms]) for key, ms in masks.items()}
    assert all(0.1 < share < 0.8 for share in fill.values())  # a piece on a background, not all one or the other
    # The tall pointed piece covers the least of its box, the square piece the most.
    assert fill["phra_sivali"] < fill["portrait_back"]


def test_unknowns(tmp_path):
    paths = synthesize_unknowns(tmp_path / "_unknown", 4, seed=0, size=64)
    assert [p.name.split("_")[0] for p in paths] == [*UNKNOWN_KINDS, UNKNOWN_KINDS[0]]
    assert all(Image.open(p).size == (64, 64) for p in paths)
    again = synthesize_unknowns(tmp_path / "again", 4, seed=0, size=64)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    with pytest.raises(ValidationError):
        synthesize_unknowns(tmp_path / "x", 0, seed=0)
    for size in (8, 2048, True):
        with pytest.raises(ValidationError) as info:
            synthesize_unknowns(tmp_path / "x", 1, seed=0, size=size)
        assert info.value.code == "E_SYNTH_ARGUMENT" and info.value.field == "size"
    with pytest.raises(ValidationError) as info:  # no mixing into an earlier run
        synthesize_unknowns(tmp_path / "_unknown", 2, seed=1, size=64)
    assert info.value.code == "E_SYNTH_NOT_EMPTY"
    fewer = synthesize_unknowns(tmp_path / "_unknown", 2, seed=1, size=64, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "_unknown").iterdir()) == sorted(p.name for p in fewer)


@pytest.fixture
def _restore_logging():
    """``main()`` configures the amulet_lab logger as a real run would; undo it so later tests see a clean logger."""
    import logging

    logger = logging.getLogger("amulet_lab")
    before, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
    logger.propagate, logger.level = propagate, level


@pytest.mark.usefixtures("_restore_logging")
def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--per-class", "2", "--seed", "3", "--size", "48", "--unknowns", "3",
                 "--quiet"]) == 0
    assert "wrote 12 synthetic images" in capsys.readouterr().out
    assert len(list(out.glob("*/*.jpg"))) == 12 + 3
    api = synthesize(tmp_path / "api", 2, seed=3, size=48, progress=False)
    assert {k: v for k, v in _digests(api).items() if k.endswith(".jpg")} == {
        k: v for k, v in _digests(out).items() if k.endswith(".jpg") and not k.startswith("_")}
    assert main(["synth", "--out", str(out), "--per-class", "2", "--seed", "3", "--quiet"]) == 1
    assert "E_SYNTH_NOT_EMPTY" in capsys.readouterr().err


@pytest.mark.slow
def test_committed_samples_match_the_documented_command(tmp_path):
    """data/samples is exactly what its README's command produces (so it can be regenerated, never hand-edited)."""
    from amulet_lab.data import SAMPLES_DIR

    readme = (SAMPLES_DIR / "README.md").read_text()
    assert "amulet-lab synth --out data/samples --per-class 4 --seed 0 --size 224 --unknowns 3" in readme
    out = synthesize(tmp_path / "s", 4, seed=0, size=224, progress=False)
    synthesize_unknowns(out / "_unknown", 3, seed=0, size=224)
    fresh = {k: v for k, v in _digests(out).items()}
    committed = {k: v for k, v in _digests(SAMPLES_DIR).items() if k != "README.md"}
    assert fresh == committed
