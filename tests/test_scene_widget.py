"""``ScenePanel`` (the Phone photo tab) headless, driven as the browser drives it: set ``FileUpload.value``
(ipywidgets 8 shape), type a path, press the buttons, and read the HTML the widgets hold."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re

import pytest

from amulet_lab.data import make_composite, synthetic_sources
from amulet_lab.errors import ValidationError
from amulet_lab.model import AmuletClassifier
from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT
from amulet_lab.widgets import ClassifierApp, ScenePanel
from amulet_lab.widgets.scene import draw_boxes


@pytest.fixture(scope="module")
def clf():
    return AmuletClassifier.from_checkpoint(SYNTHETIC_CHECKPOINT, cache=False)


@pytest.fixture(scope="module")
def sources():
    return synthetic_sources(2, seed=1)


def _upload(name: str, data: bytes, mime: str = "image/jpeg") -> tuple[dict, ...]:
    """What ipywidgets 8 puts in ``FileUpload.value`` after a browser upload."""
    return ({"name": name, "type": mime, "size": len(data), "content": memoryview(data),
             "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},)


def _images(markup: str):
    """Every ``<img>`` of ``markup`` decoded (PIL, RGB); fails on one without inline data (a broken icon)."""
    from PIL import Image

    out = []
    for tag in re.findall(r"<img\b[^>]*>", markup):
        m = re.search(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", tag)
        assert m, f"an <img> without inline image data: {tag[:120]}"
        out.append(Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB"))
    return out


def _iou(a, b) -> float:
    from amulet_lab.bench.micro.finder import box_iou

    return box_iou(a, b)


def _near(pixel, colour, tolerance: int = 90) -> bool:
    """Within ``tolerance`` (sum over channels) of ``colour``: the JPEG of the drawing moves colours a little."""
    return sum(abs(int(a) - int(b)) for a, b in zip(pixel, colour)) <= tolerance


def _edge_pixels(image, box):
    """Pixels on the middle of the left, right and bottom edges of ``box`` (the top carries the label tag)."""
    x0, y0, x1, y1 = box
    my, mx = (y0 + y1) // 2, (x0 + x1) // 2
    return [image.getpixel((x0 + 1, my)), image.getpixel((x1 - 1, my)), image.getpixel((mx, y1 - 1))]


@pytest.mark.parametrize("seed", [4, 7])  # 4: pieces disagree (unknown) and a front/back pair; 7: one answer
def test_each_found_piece_is_boxed_numbered_and_listed(clf, sources, seed):
    from PIL import ImageColor

    scene = make_composite(sources, seed=seed, index=0, n_pieces=3)
    panel = ScenePanel(clf)
    panel.upload.value = _upload("IMG_0001.jpg", scene.data)
    st = panel.state
    assert st["status"] == "done" and st["size"] == scene.size and st["format"] == "JPEG"
    pieces = st["pieces"]
    assert len(pieces) == len(panel.result.pieces) >= 2 and st["boxes_drawn"] == len(pieces)
    matched = sum(any(_iou(p["box"], t.box) >= 0.5 for p in pieces) for t in scene.pieces)
    assert matched >= len(scene.pieces) - 1

    photo, *thumbs = _images(panel.photo.value + panel.table.value)
    assert max(photo.size) <= 900 and len(thumbs) == len(pieces)
    assert abs(photo.width / photo.height - scene.size[0] / scene.size[1]) < 0.01
    for p in pieces:  # the drawn box is there, in its band's colour (grey for unknown)
        colour = ImageColor.getrgb(p["colour"])
        assert all(_near(px, colour) for px in _edge_pixels(photo, p["shown_box"])), p
        assert p["colour"] == "#616161" if p["is_unknown"] else p["band"] in ("reliable", "verify", "retake")
        assert p["word"] == ("unknown" if p["is_unknown"] else p["english"])
    # the same places in the photo as uploaded carry no such line: the drawing made them
    from PIL import Image

    plain = Image.open(io.BytesIO(scene.data)).convert("RGB")
    plain.thumbnail((900, 900))
    assert not all(_near(px, ImageColor.getrgb(pieces[0]["colour"]), 30) for px in _edge_pixels(plain, pieces[0]["shown_box"]))

    rows = re.findall(r"<tr class='amulet-piece'>(.*?)</tr>", panel.table.value)
    assert len(rows) == len(pieces)
    for row, p in zip(rows, pieces):
        assert f">{p['number']}</b>" in row and f"{p['rotation']}°" in row and str(p["box"]) in row
        assert p["band_text"] in row
        if p["is_unknown"]:
            assert "unknown" in row and "lang='th'" not in row
        else:
            assert p["english"] in row and p["thai"] in row and f"{p['confidence']:.0%}" in row
    alt = re.search(r"alt='([^']*)'", panel.photo.value).group(1)
    assert all(f"{p['number']} {p['word']}" in alt for p in pieces)

    if st["is_unknown"]:  # a headline of its own, with no band
        assert "Not one of the six known types" in panel.headline.value and "border-radius:8px" not in panel.headline.value
    else:
        assert st["english"] in panel.headline.value and st["band_text"] in panel.headline.value
    assert st["is_unknown"] == (seed == 4) and (len(st["pairs"]) >= 1) == (seed == 4)  # both branches exercised
    assert len(st["pairs"]) == len(panel.result.pairs)
    for pair in st["pairs"]:
        assert f"Pieces {pair['pieces'][0]} and {pair['pieces'][1]} look like the front and back" in panel.headline.value
    for stage in ("find", "decode", "classify", "total"):
        assert f"scene {stage} ms" in panel.timings.value and st["timings"][stage] >= 0
    text = panel.describe()
    assert text.count("\npiece ") == len(pieces) and "turned" in text and "timed: " in text
    assert "pieces=" in repr(panel)


def test_a_photo_with_no_amulet_says_so(clf, sources):
    empty = make_composite(sources, seed=7, index=0, n_pieces=0, background="page")
    panel = ScenePanel(clf)
    panel.upload.value = _upload("page.jpg", empty.data)
    st = panel.state
    assert st["status"] == "done" and st["pieces"] == [] and st["boxes_drawn"] == 0
    assert st["answer"] == "no amulet found in the photo" and st["band"] is None
    assert "No amulet found in the photo" in panel.headline.value and panel.table.value == ""
    assert len(_images(panel.photo.value)) == 1  # the photo itself is still shown
    assert "answer: no amulet found in the photo" in panel.describe()


def test_a_bad_file_shows_its_code_and_nothing_of_the_last_photo(clf, sources):
    panel = ScenePanel(clf)
    panel.upload.value = _upload("good.jpg", make_composite(sources, seed=4, index=0, n_pieces=2).data)
    assert panel.state["status"] == "done" and _images(panel.photo.value)
    panel.upload.value = _upload("notes.jpg", b"not an image at all")
    st = panel.state
    assert st["status"] == "error" and st["error"] == "E_IMAGE_SIGNATURE" and st["name"] == "notes.jpg"
    assert "<code>E_IMAGE_SIGNATURE</code>" in panel.status.value
    assert "<img" not in panel.photo.value and "amulet-placeholder" in panel.photo.value
    assert panel.headline.value == panel.table.value == panel.timings.value == "" and panel.result is None
    assert "E_IMAGE_SIGNATURE" in panel.describe()
    half = make_composite(sources, seed=5, index=0, n_pieces=1).data
    panel.upload.value = _upload("cut.jpg", half[: len(half) // 2])  # a truncated JPEG: the decoder's own code
    assert panel.state["status"] == "error" and panel.state["error"].startswith("E_IMAGE")
    assert panel.state["name"] == "cut.jpg" and "<img" not in panel.photo.value
    with pytest.raises(ValidationError) as err:  # from code: raised, and shown the same way
        panel.analyse(b"\x89PNG\r\n\x1a\n broken", name="b.png")
    assert panel.state["error"] == err.value.code and err.value.code in panel.status.value


def test_a_heic_phone_photo_with_exif_orientation(clf, sources):
    heic = make_composite(sources, seed=11, index=1, fmt="HEIF", n_pieces=2, exif_orientation=6)
    assert heic.format == "HEIF"
    panel = ScenePanel(clf)
    panel.upload.value = _upload("IMG_0002.HEIC", heic.data, mime="")
    st = panel.state
    assert st["status"] == "done" and st["format"] == "HEIF" and st["size"] == heic.size  # upright frame
    assert 1 <= len(st["pieces"]) == st["boxes_drawn"]
    assert "decode (display and model) ms" in panel.timings.value  # one HEIC decode serves both
    (photo,) = _images(panel.photo.value)
    assert abs(photo.width / photo.height - heic.size[0] / heic.size[1]) < 0.01
    assert sum(any(_iou(p["box"], t.box) >= 0.5 for p in st["pieces"]) for t in heic.pieces) >= 1


def test_typed_path_run_clear_and_the_app_tab(clf, sources, tmp_path):
    scene = make_composite(sources, seed=4, index=0, n_pieces=2)
    path = tmp_path / "scene.jpg"
    path.write_bytes(scene.data)
    panel = ScenePanel(clf)
    panel.run_button.click()  # nothing given yet
    assert panel.state["error"] == "E_NO_IMAGE"
    panel.path.value = str(tmp_path / "missing.jpg")
    panel.run_button.click()
    assert panel.state["error"] == "E_IMAGE_NOT_FOUND" and "E_IMAGE_NOT_FOUND" in panel.status.value
    panel.path.value = str(path)
    panel.run_button.click()
    assert panel.state["status"] == "done" and panel.state["name"] == "scene.jpg" and panel.state["pieces"]
    panel.clear_button.click()
    assert panel.state == {"status": "waiting for a photo"} and panel.path.value == "" and "<img" not in panel.photo.value
    assert panel.analyse_path(path) is panel.result and panel.path.value == str(path)  # from code, as if typed
    assert panel.state["status"] == "done" and panel.upload.value == ()

    app = ClassifierApp(clf)
    assert tuple(app.tabs.titles)[2] == "Phone photo" and app.tabs.children[2] is app.scene_panel.widget
    app.scene_panel.upload.value = _upload("s.jpg", scene.data)
    assert app.scene_panel.state["status"] == "done" and app.state["status"] == "waiting for a photo"
    # a reopened notebook shows the saved widget state: the boxed photo and the list are in it
    import ipywidgets as w

    saved = w.Widget.get_manager_state(drop_defaults=False)["state"]
    assert saved[app.scene_panel.photo.model_id]["state"]["value"] == app.scene_panel.photo.value
    assert saved[app.scene_panel.table.model_id]["state"]["value"].count("class='amulet-piece'") == len(
        app.scene_panel.state["pieces"])


def test_inputs_are_checked():
    from PIL import Image

    with pytest.raises(ValidationError):
        ScenePanel(object())
    with pytest.raises(ValidationError):
        ScenePanel(type("C", (), {"predict_scene": None})(), max_side=10)
    with pytest.raises(ValidationError):
        draw_boxes(Image.new("RGB", (50, 50)), [(1, 1, 20, 20)], [], [(255, 0, 0)])
    drawn = draw_boxes(Image.new("RGB", (200, 200), "white"), [(50, 60, 150, 160)], ["1 x"], [(255, 0, 0)])
    assert drawn.getpixel((51, 110)) == (255, 0, 0) and drawn.getpixel((100, 110)) == (255, 255, 255)
