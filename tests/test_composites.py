"""The composite scene generator: cut-outs, ground truth in the upright frame, determinism, the written folder.

Real inputs only: synthetic pieces from ``synth_render`` (and, marked ``realdata``, the amulet6 crops).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amulet_lab.data.composites import (Composite, SourcePiece, cut_out, folder_sources, make_composite,
                                        read_manifest, synthetic_sources, write_composites)
from amulet_lab.errors import ValidationError
from amulet_lab.scene import FoundPiece
from amulet_lab.security import validate_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "amulet6"


@pytest.fixture(scope="module")
def sources() -> list[SourcePiece]:
    """One synthetic piece of each class."""
    return synthetic_sources(1, 5)


def test_cut_out_keeps_one_opaque_piece(sources):
    for src in sources:
        cut = src.cutout
        alpha = np.asarray(cut.getchannel("A"), dtype=np.float32) / 255
        assert cut.mode == "RGBA" and max(cut.size) < max(src.image.size)
        assert alpha.mean() > 0.35, src.source  # the piece fills its own box (a tilted triangle: ~0.45)
    assert cut_out(sources[0].image).size == sources[0].cutout.size


def test_same_seed_gives_the_same_composite(sources):
    a = make_composite(sources, 3, 1, sides=(600, 800), fmt="JPEG")
    b = make_composite(sources, 3, 1, sides=(600, 800), fmt="JPEG")
    c = make_composite(sources, 3, 2, sides=(600, 800), fmt="JPEG")
    assert a.data == b.data and a.pieces == b.pieces
    assert a.data != c.data
    assert 1 <= len(a.pieces) <= 6 and a.synthetic


@pytest.mark.parametrize(("orientation", "turn"), [(1, 0), (6, 0), (8, 90), (3, 270)])
def test_ground_truth_is_in_the_upright_frame(sources, orientation, turn):
    comp = make_composite(sources, 8, 0, sides=(600, 700), fmt="JPEG", exif_orientation=orientation,
                          scene_turn=turn, n_pieces=1, quality=95)
    decoded = validate_image(comp.data).image
    assert decoded.size == comp.size
    assert np.abs(np.asarray(decoded, np.float32) - np.asarray(comp.upright, np.float32)).mean() < 6
    (piece,) = comp.pieces
    # Undoing the recorded rotation stands the piece upright: it matches its source best of the four turns.
    crop = FoundPiece(piece.box, 0, 1.0, piece.tilt).crop(comp.upright, margin=0.0)
    source = next(s for s in sources if s.source == piece.source).cutout
    errors = {}
    for r in (0, 90, 180, 270):
        turned = crop.rotate(r, expand=True).resize(source.size)
        alpha = np.asarray(source.getchannel("A"), np.float32)[:, :, None] / 255
        diff = np.abs(np.asarray(turned, np.float32) - np.asarray(source.convert("RGB"), np.float32)) * alpha
        errors[r] = float(diff.mean())
    assert min(errors, key=errors.get) == piece.rotation == (360 - piece.turned) % 360, errors


def test_an_empty_scene_and_heic(sources):
    comp = make_composite(sources, 4, 0, sides=(600, 700), n_pieces=0, fmt="HEIF")
    assert comp.pieces == () and comp.suffix == ".heic"
    checked = validate_image(comp.data)
    assert checked.format == "HEIF" and checked.image.size == comp.size


def test_write_composites_and_manifest(sources, tmp_path):
    out = write_composites(tmp_path / "scenes", sources, 3, 11, sides=(600, 700))
    records = read_manifest(out)
    assert len(records) == 3
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 11
    for rec in records:
        assert Path(rec["path"]).is_file()
        for piece in rec["pieces"]:
            x0, y0, x1, y1 = piece["box"]
            assert 0 <= x0 < x1 <= rec["width"] and 0 <= y0 < y1 <= rec["height"]
            assert piece["rotation"] == (360 - piece["turned"]) % 360
    with pytest.raises(ValidationError) as err:
        write_composites(out, sources, 1, 11)
    assert err.value.code == "E_COMPOSITE_NOT_EMPTY"
    again = write_composites(out, sources, 1, 12, overwrite=True, sides=(600, 700))
    assert sorted(p.name for p in again.iterdir()) == ["manifest.json", read_manifest(again)[0]["file"]]


def test_real_composites_are_refused_inside_the_project(sources):
    from amulet_lab.config import PROJECT_ROOT

    real = [SourcePiece(sources[0].image, sources[0].label, "a real photo", False)]
    with pytest.raises(ValidationError) as err:
        write_composites(PROJECT_ROOT / "data" / "composites-real", real, 1, 0)
    assert err.value.code == "E_COMPOSITE_REAL_IN_PROJECT"
    assert not (PROJECT_ROOT / "data" / "composites-real").exists()


def test_bad_arguments_have_codes(sources):
    for kwargs in ({"n_pieces": 7}, {"background": "sky"}, {"fmt": "GIF"}, {"scene_turn": 45}):
        with pytest.raises(ValidationError) as err:
            make_composite(sources, 0, 0, **kwargs)
        assert err.value.code == "E_COMPOSITE_ARGUMENT"
    with pytest.raises(ValidationError):
        make_composite([], 0, 0)
    assert isinstance(make_composite(sources, 0, 0, sides=(600, 640), background="wood"), Composite)


@pytest.mark.realdata
def test_real_crops_make_composites_in_a_temp_folder(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"real data not present at {SHARED}")
    real = folder_sources(SHARED)
    assert len(real) == 149 and not any(s.synthetic for s in real)
    assert {s.label for s in real} >= {"phra_sivali", "waek_man"}
    out = write_composites(tmp_path / "real", real[:20], 2, 1, sides=(600, 700))
    assert json.loads((out / "manifest.json").read_text())["synthetic"] is False
