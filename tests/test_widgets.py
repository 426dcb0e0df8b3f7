"""``ClassifierApp`` headless, driven as the browser drives it: set ``FileUpload.value`` (ipywidgets 8 shape),
type into the path boxes, press the buttons, and read the HTML the widgets hold."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re

import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.fonts import THAI_CSS_FONT_STACK
from amulet_lab.widgets import BAND_WORDS, ClassifierApp, band_words, english_name, sample_pair, upload_bytes
from model_helpers import untrained_tiny_checkpoint


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A real (untrained, seeded) tiny model with its own image cache: the app's logic is under test."""
    from amulet_lab.config import load_settings
    from amulet_lab.model import AmuletClassifier

    from amulet_lab.model import UnknownRule, load_checkpoint

    path = untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    settings = load_settings({}, dotenv=None)
    # An untrained model is unsure of everything; a rule that calls nothing unknown keeps the names and bands in
    # view (tests/test_classifier.py shows an unknown answer in the app with the bundled model).
    ck = load_checkpoint(path)
    ck.unknown = UnknownRule(min_confidence=0.0, max_entropy=1.0)
    return AmuletClassifier(ck, limits=None, cache=None)


def _upload(name: str, data: bytes) -> tuple[dict, ...]:
    """What ipywidgets 8 puts in ``FileUpload.value`` after a browser upload."""
    return ({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
             "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},)


def _images(markup: str) -> list[tuple[str, bytes]]:
    """Every ``<img>`` in ``markup`` as (mime, bytes); fails on an image without inline data (a broken icon)."""
    from PIL import Image

    out = []
    for tag in re.findall(r"<img\b[^>]*>", markup):
        m = re.search(r"src='data:(image/[a-z+]+);base64,([A-Za-z0-9+/=]+)'", tag)
        assert m, f"an <img> without inline image data would show a broken icon: {tag[:120]}"
        data = base64.b64decode(m.group(2))
        Image.open(io.BytesIO(data)).verify()  # a real image, not empty bytes
        out.append((m.group(1), data))
    return out


def _shown(app: ClassifierApp) -> str:
    """All the HTML of the Classify tab (sources, status, previews, result, chart, timings)."""
    return "".join(w.value for w in (app.front_source, app.back_source, app.status, app.front_preview,
                                     app.back_preview, app.result_html, app.chart, app.latency_html))


def _is_placeholder(widget) -> bool:
    return "amulet-placeholder" in widget.value and "<img" not in widget.value


def test_upload_front_only_shows_names_band_chart_and_timings(classifier):
    front, _ = sample_pair()
    app = ClassifierApp(classifier)
    app.front_upload.value = _upload(front.name, front.read_bytes())
    st = app.state
    assert st["status"] == "done" and st["front"] == front.name and st["back"] is None
    expected = classifier.predict(front.read_bytes())
    assert st["label"] == expected.label and st["english"] == expected.english_name and st["thai"] == expected.thai_name
    assert st["band_text"] == BAND_WORDS[expected.confidence_band]
    assert st["agree"] is None and st["agree_text"] == "only the front was given"
    assert [row[0] for row in st["top_k"]] == [row[0] for row in expected.top_k[:3]]
    assert set(st["timings"]["front"]) >= {"decode", "preprocess", "infer"}
    # What the user sees carries the same facts.
    assert expected.english_name in app.result_html.value and expected.thai_name in app.result_html.value
    assert st["band_text"] in app.result_html.value
    ((mime, _),) = _images(app.front_preview.value)
    assert mime == "image/jpeg"
    assert [m for m, _ in _images(app.chart.value)] == ["image/png"]
    assert "decode" in app.latency_html.value and "classified" in app.status.value
    assert "uploaded" in app.front_source.value and front.name in app.front_source.value


def test_upload_front_and_back_reports_agreement_and_cache_hit(classifier):
    front, back = sample_pair()
    assert back is not None
    app = ClassifierApp(classifier, top_k=2)
    app.back_upload.value = _upload(back.name, back.read_bytes())  # back alone: waits for a front
    assert app.state["status"] == "error" and app.state["error"] == "E_NO_IMAGE"
    assert "kept" in app.status.value and _is_placeholder(app.back_preview)
    app.front_upload.value = _upload(front.name, front.read_bytes())  # ... and is paired with it
    st = app.state
    assert st["back"] == back.name and isinstance(st["agree"], bool)
    assert st["agree_text"] in ("front and back agree", "front and back DISAGREE")
    assert len(st["top_k"]) == 2 and set(st["cache_hit"]) == {"front", "back"}
    assert len(_images(app.front_preview.value)) == len(_images(app.back_preview.value)) == 1
    # The same photos again: the answer comes from the cache, and the badge says so.
    app.classify_button.click()
    assert app.state["cache_hit"]["front"] is True and "cache hit" in app.latency_html.value
    assert "band: " in app.describe() and "sides: " in app.describe()


def test_the_example_leaves_no_paths_behind_and_an_upload_is_not_paired_with_its_back(classifier):
    """Fix 1: the notebook's example classifies the sample pair; the user's first upload must be classified
    alone, not with the sample back, and no box may keep showing the sample paths."""
    front, back = sample_pair()
    app = ClassifierApp(classifier)
    app.classify_paths()  # what the example cell does
    assert app.state["back"] == back.name and app.state["sources"] == {"front": "code", "back": "code"}
    assert app.front_path.value == "" and app.back_path.value == ""
    assert "given in code" in app.front_source.value and back.name in app.back_source.value
    mine = back.read_bytes()  # any photo of the user's
    app.front_upload.value = _upload("my_amulet.jpg", mine)
    st = app.state
    assert st["status"] == "done" and st["front"] == "my_amulet.jpg" and st["back"] is None
    assert st["agree_text"] == "only the front was given" and st["sources"] == {"front": "upload", "back": None}
    assert "was removed" in app.status.value and back.name in app.status.value
    assert "none" in app.back_source.value and _is_placeholder(app.back_preview)
    assert back.name not in app.back_source.value and app.front_path.value == app.back_path.value == ""


def test_one_source_per_side_the_active_one_shown(classifier):
    front, back = sample_pair()
    app = ClassifierApp(classifier)
    app.front_path.value = str(front)  # typed: Enter or leaving the box sends it
    assert "typed path" in app.front_source.value and "press Classify" in app.status.value
    app.classify_button.click()
    assert app.state["front"] == front.name and app.state["sources"]["front"] == "path"
    app.front_upload.value = _upload("up.jpg", back.read_bytes())  # an upload replaces the typed path ...
    assert app.front_path.value == "" and app.state["front"] == "up.jpg" and "uploaded" in app.front_source.value
    app.front_path.value = str(back)  # ... and a typed path replaces the upload
    app.classify_button.click()
    assert app.state["status"] == "done" and app.state["front"] == back.name and app.front_upload.value == ()
    app.back_upload.value = _upload(front.name, front.read_bytes())
    assert app.state["back"] == front.name
    app.back_path.value = str(back)
    app.classify_button.click()
    assert app.state["back"] == back.name and app.back_upload.value == () and "typed path" in app.back_source.value


def test_clear_buttons_remove_a_side(classifier):
    """Fix 2: a back can be removed, and a later front is never paired with an earlier front's back."""
    front, back = sample_pair()
    app = ClassifierApp(classifier)
    app.front_upload.value = _upload(front.name, front.read_bytes())
    app.back_upload.value = _upload(back.name, back.read_bytes())
    assert app.state["back"] == back.name
    app.back_clear.click()
    st = app.state
    assert st["status"] == "done" and st["back"] is None and st["agree_text"] == "only the front was given"
    assert app.back_upload.value == () and app.back_path.value == "" and _is_placeholder(app.back_preview)
    assert "Back removed" in app.status.value
    # A back given, then a new front: the back belonged to the old front and goes, visibly.
    app.back_upload.value = _upload(back.name, back.read_bytes())
    app.front_upload.value = _upload("other.jpg", back.read_bytes())
    assert app.state["back"] is None and "was removed" in app.status.value and app.back_upload.value == ()
    # Clear front: nothing is shown any more; a back given then waits for, and is paired with, the next front.
    app.front_clear.click()
    assert app.state["status"] == "waiting for a photo" and app.result is None and app.result_html.value == ""
    assert _is_placeholder(app.front_preview) and _is_placeholder(app.chart)
    app.back_path.value = str(back)
    app.front_path.value = str(front)  # typed in either order, then Classify: one pair
    app.classify_button.click()
    assert app.state["front"] == front.name and app.state["back"] == back.name
    with pytest.raises(ValidationError):
        app.clear("side")


def test_path_entry_and_bad_input_are_shown_not_raised(classifier, tmp_path):
    front, back = sample_pair()
    app = ClassifierApp(classifier)
    app.front_path.value = str(tmp_path / "missing.jpg")
    app.classify_button.click()
    assert app.state["error"] == "E_IMAGE_NOT_FOUND" and "not found" in app.status.value
    bad = tmp_path / "note.jpg"
    bad.write_bytes(b"not an image at all")
    app.front_path.value = str(bad)
    app.classify_button.click()
    assert app.state["status"] == "error" and app.state["error"].startswith("E_")
    pair = app.classify_paths(front, back)
    assert app.state["status"] == "done" and pair.front is not None and pair.back is not None


def test_placeholders_not_broken_images(classifier, tmp_path):
    """Fix 4: before a photo, after an error and for a front-only upload's missing back: placeholders."""
    front, _ = sample_pair()
    app = ClassifierApp(classifier)
    assert _is_placeholder(app.front_preview) and _is_placeholder(app.back_preview) and _is_placeholder(app.chart)
    app.classify_paths(front)
    assert app.state["status"] == "done" and app.result_html.value and _images(app.front_preview.value)
    assert _is_placeholder(app.back_preview) and "no back photo" in app.back_preview.value
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    app.front_path.value = str(bad)
    app.classify_button.click()
    # A failure never leaves the previous result on show, and shows no empty image either.
    assert app.state["status"] == "error" and app.result is None
    assert app.result_html.value == "" and app.latency_html.value == ""
    assert _is_placeholder(app.front_preview) and app.state["error"] in app.front_preview.value
    assert _is_placeholder(app.chart) and _is_placeholder(app.back_preview)
    _images(_shown(app))  # no <img> anywhere without real image data


def test_result_names_chart_and_thai_font(classifier):
    """Fixes 6 and 8: English names on the chart, Thai beside them in HTML with a Thai-capable font stack."""
    from PIL import Image

    front, _ = sample_pair()
    app = ClassifierApp(classifier)
    app.front_upload.value = _upload(front.name, front.read_bytes())
    st = app.state
    assert st["top_k_english"] == [english_name(k) for k, _, _ in st["top_k"]]
    assert all(not en.islower() or " " in en for en in st["top_k_english"])  # names, not keys like somdej_pratanporn
    html = app.result_html.value
    for (key, thai, _), en in zip(st["top_k"], st["top_k_english"]):
        assert en in html and thai in html and key not in html.replace(st["label"], "")
    assert html.count("lang='th'") == len(st["top_k"]) + 1
    assert f"font-family:{THAI_CSS_FONT_STACK}" in html and "Noto Sans Thai" in THAI_CSS_FONT_STACK
    ((_, png),) = _images(app.chart.value)
    assert Image.open(io.BytesIO(png)).width >= 700  # a chart to read, not a 400 px strip
    alt = re.search(r"alt='([^']*)'", app.chart.value).group(1)
    assert all(en in alt for en in st["top_k_english"])
    assert english_name("no_such_key") == "No such key"


def test_tab_titles_fit():
    app = ClassifierApp(_Fake())
    assert tuple(app.tabs.titles) == ("Classify", "Gallery", "Phone photo", "Train")
    assert all(len(t) <= 12 for t in app.tabs.titles)  # "Gallery (most uncertain first)" was cut in the tab bar


class _Fake:
    def predict_pair(self, front, back=None):  # pragma: no cover - never called
        raise AssertionError

    def predict_batch(self, images, batch_size=16):  # pragma: no cover - never called
        raise AssertionError

    def predict_scene(self, image, top_k=3):  # pragma: no cover - never called
        raise AssertionError


def _gallery_folder(tmp_path, front, back):
    from PIL import Image

    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(front.read_bytes())
    long_name = "IMG_20260101_phra_somdej_pratanporn_buddhagavak_front_view_very_long_file_name_0001.jpg"
    (folder / long_name).write_bytes(back.read_bytes())
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, format="JPEG")
    (folder / "grey.jpg").write_bytes(buf.getvalue())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder, long_name


def test_gallery_sorts_by_uncertainty(classifier, tmp_path):
    front, back = sample_pair()
    folder, long_name = _gallery_folder(tmp_path, front, back)
    app = ClassifierApp(classifier)
    items = app.gallery(folder, batch_size=2, progress=False)  # the broken photo fails its batch, not the gallery
    cards = re.split(r"(?=<div class='amulet-card')", app.gallery_html.value)[1:]
    assert len(items) == 4 and len(cards) == 4
    assert items[-1].path.name == "broken.jpg" and items[-1].error and items[-1].prediction is None
    assert "not classified" in cards[-1] and "<img" not in cards[-1]
    good = items[:3]
    assert all(it.error is None for it in good)
    assert [it.uncertainty for it in good] == sorted((it.uncertainty for it in good), reverse=True)
    assert [c.count("<img") for c in cards[:3]] == [1, 1, 1] and len(_images(app.gallery_html.value)) == 3
    for it, card in zip(good, cards):
        if it.prediction.is_unknown:  # an unknown answer shows no class name and no band
            assert "Not one of the six known types" in card and it.prediction.english_name not in card
        else:
            assert it.prediction.english_name in card and it.prediction.thai_name in card and "lang='th'" in card
    # Fix 6: a long file name wraps inside its card (no horizontal scrollbar), the card cannot grow past its column.
    long_card = next(c for c in cards if long_name in c)
    assert "overflow-wrap:anywhere" in long_card and "min-width:0" in long_card and "overflow:hidden" in long_card
    assert "most uncertain first: True" in app.describe_gallery() and "not classified: 1" in app.describe_gallery()
    (folder / "broken.jpg").unlink()
    app.gallery_path.value = str(folder)
    app.gallery_button.click()
    assert len(app.gallery_items) == 3 and "cards shown: 3" in app.describe_gallery()
    app.gallery_path.value = str(tmp_path / "nope")
    app.gallery_button.click()
    assert app.state["error"] == "E_NO_FOLDER"


def test_gallery_is_in_the_saved_widget_state(classifier, tmp_path):
    """Fix 5: what a reopened notebook has is the saved widget state (nbclient and JupyterLab store
    ``Widget.get_manager_state()``), not the kernel's objects: the Gallery tab's cards must be in it."""
    import ipywidgets as w

    front, back = sample_pair()
    folder, _ = _gallery_folder(tmp_path, front, back)
    app = ClassifierApp(classifier)
    app.gallery(folder, progress=False)
    saved = w.Widget.get_manager_state(drop_defaults=False)["state"]
    tab = saved[app.tabs.model_id]["state"]
    assert list(tab["titles"])[:2] == ["Classify", "Gallery"]
    gallery_tab = saved[tab["children"][1].removeprefix("IPY_MODEL_")]["state"]
    # Walk the Gallery tab's saved widget tree: every card, with its thumbnail inline, is there.
    markup, todo = "", [gallery_tab]
    while todo:
        st = todo.pop()
        markup += str(st.get("value", "")) if st.get("_model_name") == "HTMLModel" else ""
        todo.extend(saved[c.removeprefix("IPY_MODEL_")]["state"] for c in st.get("children", []))
    # three card thumbnails (the broken photo has a placeholder) and the review area's preview of its selected card
    assert markup.count("class='amulet-card'") == 4 and len(_images(markup)) == 3 + 1
    assert markup.count("class='amulet-review-preview'") == 1
    assert "most uncertain first" in markup


def test_helpers():
    assert band_words("verify") == "Check with an expert" and band_words("retake") == "Retake the photo"
    with pytest.raises(ValidationError):
        band_words("maybe")
    assert upload_bytes(()) is None
    assert upload_bytes(_upload("x.jpg", b"abc")) == ("x.jpg", b"abc")
    assert upload_bytes({"y.jpg": {"content": b"z"}}) == ("y.jpg", b"z")
    with pytest.raises(ValidationError):
        upload_bytes(("nope",))
    with pytest.raises(ValidationError):
        ClassifierApp(object())


def test_the_app_carries_the_bundled_thai_font(classifier):
    """The browser needs no Thai font of its own: the app's top holds a subset of the bundled one."""
    from amulet_lab.fonts import BUNDLED_THAI_FAMILY

    app = ClassifierApp(classifier)
    assert "@font-face" in app.model_html.value and BUNDLED_THAI_FAMILY in app.model_html.value


def test_a_heic_upload_is_decoded_once_for_the_model_and_the_preview(classifier):
    """libheif has no reduced decode: the app decodes a HEIC once and hands the model that decode."""
    import io

    from PIL import Image

    from amulet_lab.security import register_heif

    register_heif()
    front, _ = sample_pair()
    buf = io.BytesIO()
    Image.open(front).convert("RGB").resize((1200, 1600)).save(buf, format="HEIF", quality=80)
    app = ClassifierApp(classifier)
    before = classifier.stats()["decodes"]
    app.front_upload.value = _upload("phone.heic", buf.getvalue())
    assert app.state["status"] == "done", app.state
    assert classifier.stats()["decodes"] == before  # the model was given the app's decode, not the bytes
    assert len(_images(app.front_preview.value)) == 1
