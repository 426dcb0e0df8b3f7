"""``AmuletClassifier.predict_scene``: every piece of a photo found, turned upright and classified; CLI and service."""

from __future__ import annotations

import io
import json

import pytest

from amulet_lab.data import make_composite, synthetic_sources
from amulet_lab.errors import ValidationError
from amulet_lab.model import AmuletClassifier
from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT
from amulet_lab.perf import PerformanceMonitor


@pytest.fixture(scope="module")
def clf():
    return AmuletClassifier.from_checkpoint(SYNTHETIC_CHECKPOINT, cache=False, monitor=PerformanceMonitor())


@pytest.fixture(scope="module")
def sources():
    return synthetic_sources(2, seed=1)


def _iou(a, b) -> float:
    from amulet_lab.bench.micro.finder import box_iou

    return box_iou(a, b)


def test_each_piece_of_a_composite_gets_a_box_a_turn_and_an_answer(clf, sources):
    scene = make_composite(sources, seed=3, index=0)
    found = clf.predict_scene(scene.data)
    assert found.size == scene.upright.size and 1 <= len(found.pieces) <= 6
    matched = sum(any(_iou(p.box, t.box) >= 0.5 for p in found.pieces) for t in scene.pieces)
    assert matched >= len(scene.pieces) - 1, (matched, len(scene.pieces))
    for piece in found.pieces:
        assert piece.rotation in (0, 90, 180, 270) and all(isinstance(v, int) for v in piece.box)
        assert piece.prediction.label and (piece.prediction.confidence_band == "unknown") == piece.prediction.is_unknown
    body = json.loads(json.dumps(found.to_dict()))
    assert len(body["pieces"]) == len(found.pieces) and {"box", "rotation", "label", "confidence_band"} <= set(
        body["pieces"][0])
    assert set(found.timings) == {"find", "decode", "classify", "total"}
    assert found.is_unknown == (found.label is None)
    assert "piece(s)" in repr(found) and "<table>" in found._repr_html_()


def test_heic_photo_and_a_photo_with_no_amulet(clf, sources):
    heic = make_composite(sources, seed=11, index=1, fmt="HEIF", n_pieces=2)
    assert heic.format == "HEIF" and len(clf.predict_scene(heic.data).pieces) >= 1
    empty = make_composite(sources, seed=7, index=0, n_pieces=0)
    none = clf.predict_scene(empty.data)
    assert none.pieces == [] and none.is_unknown and none.label is None
    assert none.answer == "no amulet found in the photo"


def test_a_bad_file_gets_the_decoders_code(clf):
    with pytest.raises(ValidationError) as err:
        clf.predict_scene(b"not an image at all")
    assert err.value.code == "E_IMAGE_SIGNATURE"
    with pytest.raises(ValidationError):
        clf.predict_scene(None)
    with pytest.raises(ValidationError):
        clf.predict_scene(make_composite([], seed=1, n_pieces=0).data, top_k=0)


def test_a_tight_crop_gets_exactly_predicts_answer(clf, sources):
    """A photo that is already a tight crop is one piece, classified whole: the same answer as ``predict``."""
    from PIL import Image

    piece = sources[0]
    box = (60, 14, 180, 214)  # the piece of a 224 px synthetic render fills most of this
    buf = io.BytesIO()
    piece.image.crop(box).save(buf, "JPEG", quality=92)
    tight = buf.getvalue()
    found = clf.predict_scene(tight)
    assert len(found.pieces) == 1 and found.pieces[0].rotation == 0
    assert found.pieces[0].prediction.probabilities == clf.predict(tight).probabilities
    assert Image.open(io.BytesIO(tight)).size == found.size


def test_cli_and_service_answer_with_the_pieces(clf, sources, tmp_path, capsys, settings):
    from fastapi.testclient import TestClient

    from amulet_lab.cli import main
    from amulet_lab.service import create_app

    scene = make_composite(sources, seed=3, index=0)
    path = tmp_path / "scene.jpg"
    path.write_bytes(scene.data)
    assert main(["predict", str(path), "--scene", "--checkpoint", str(SYNTHETIC_CHECKPOINT)]) == 0
    text = capsys.readouterr().out
    assert "piece 1: box (" in text and "turned" in text
    assert main(["predict", str(path), "--scene", "--json", "--checkpoint", str(SYNTHETIC_CHECKPOINT)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["image"] == str(path) and printed[0]["pieces"] and "box" in printed[0]["pieces"][0]
    client = TestClient(create_app(settings.replace(debug=True), clf))
    files = {"front": ("scene.jpg", scene.data, "image/jpeg")}
    body = client.post("/predict?scene=true", files=files).json()
    assert body["pieces"] and {"box", "rotation", "label"} <= set(body["pieces"][0]) and body["request_id"]
    both = {**files, "back": ("b.jpg", scene.data, "image/jpeg")}
    refused = client.post("/predict?scene=true", files=both)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "E_SCENE_BACK"


def test_scene_micro_benchmark_quick_has_its_figures():
    from amulet_lab.bench.micro.scene import run

    result = run(quick=True)
    assert result.name == "scene" and set(result.targets) == set(result.ratios)
    for fmt in ("jpeg", "heif"):
        assert result.figures[f"{fmt}_pieces"] >= 1 and result.figures[f"{fmt}_p95_ms"] >= result.figures[f"{fmt}_p50_ms"]
        assert result.figures[f"{fmt}_peak_rss_above_idle_mb"] >= 0


def test_pieces_go_to_the_pieces_model_and_a_tight_crop_to_the_main_one(sources, tmp_path):
    """``pieces`` (the bundled amulet6-scene.pt beside amulet6.pt) classifies what is cut from a photo; a photo
    that is one tight crop stays with the main model, exactly as ``predict``; a ``-scene.pt`` sibling is found."""
    import shutil

    from amulet_lab.model import load_checkpoint

    pieces = AmuletClassifier(load_checkpoint(SYNTHETIC_CHECKPOINT), cache=False, monitor=PerformanceMonitor())
    main = AmuletClassifier(load_checkpoint(SYNTHETIC_CHECKPOINT), cache=False, monitor=PerformanceMonitor(),
                            pieces=pieces)
    scene = make_composite(sources, seed=3, index=0, n_pieces=3)
    found = main.predict_scene(scene.data)
    assert len(found.pieces) >= 2
    assert pieces.stats()["predictions"] >= len(found.pieces) and main.stats()["predictions"] == 0
    x0, y0, x1, y1 = main.predict_scene(sources[0].image).pieces[0].box
    crop = sources[0].image.crop((x0 - 4, y0 - 4, x1 + 4, y1 + 4))  # one piece over most of the frame
    before, main_before = pieces.stats()["predictions"], main.stats()["predictions"]
    tight = main.predict_scene(crop)
    assert len(tight.pieces) == 1
    assert main.stats()["predictions"] == main_before + 1 and pieces.stats()["predictions"] == before
    with pytest.raises(ValidationError):
        AmuletClassifier(load_checkpoint(SYNTHETIC_CHECKPOINT), pieces="nope")
    shutil.copy(SYNTHETIC_CHECKPOINT, tmp_path / "mine.pt")
    assert AmuletClassifier.from_checkpoint(tmp_path / "mine.pt", cache=False).pieces is None
    shutil.copy(SYNTHETIC_CHECKPOINT, tmp_path / "mine-scene.pt")
    assert isinstance(AmuletClassifier.from_checkpoint(tmp_path / "mine.pt", cache=False).pieces, AmuletClassifier)


def test_a_pieces_model_with_other_classes_is_refused():
    from amulet_lab.errors import ModelError
    from amulet_lab.model import load_checkpoint

    other = load_checkpoint(SYNTHETIC_CHECKPOINT)
    other.labels = list(reversed(other.labels))
    with pytest.raises(ModelError) as err:
        AmuletClassifier(load_checkpoint(SYNTHETIC_CHECKPOINT), pieces=AmuletClassifier(other, cache=False))
    assert err.value.code == "E_PIECES_LABELS"
