"""``ClassifierApp`` headless: simulate uploads (ipywidgets 8 shape) and read what the app shows."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.widgets import BAND_WORDS, ClassifierApp, band_words, sample_pair, upload_bytes
from model_helpers import untrained_tiny_checkpoint


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A real (untrained, seeded) tiny model with its own image cache: the app's logic is under test."""
    from amulet_lab.cache import ImageCache
    from amulet_lab.config import load_settings
    from amulet_lab.model import AmuletClassifier

    path = untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    settings = load_settings({}, dotenv=None)
    return AmuletClassifier.from_checkpoint(path, settings=settings, cache=ImageCache(settings=settings))


def _upload(name: str, data: bytes) -> tuple[dict, ...]:
    """What ipywidgets 8 puts in ``FileUpload.value`` after a browser upload."""
    return ({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
             "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},)


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
    assert app.chart.value[:4] == b"\x89PNG" and app.front_preview.value[:2] == b"\xff\xd8"
    assert "decode" in app.latency_html.value and "classified" in app.status.value


def test_upload_front_and_back_reports_agreement_and_cache_hit(classifier):
    front, back = sample_pair()
    assert back is not None
    app = ClassifierApp(classifier, top_k=2)
    app.back_upload.value = _upload(back.name, back.read_bytes())  # back alone: waits for a front
    assert app.state["status"] == "error" and app.state["error"] == "E_NO_IMAGE"
    app.front_upload.value = _upload(front.name, front.read_bytes())
    st = app.state
    assert st["back"] == back.name and isinstance(st["agree"], bool)
    assert st["agree_text"] in ("front and back agree", "front and back DISAGREE")
    assert len(st["top_k"]) == 2 and set(st["cache_hit"]) == {"front", "back"}
    # The same photos again: the answer comes from the cache, and the badge says so.
    app.classify()
    assert app.state["cache_hit"]["front"] is True and "cache hit" in app.latency_html.value
    assert "band: " in app.describe() and "sides: " in app.describe()


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


def test_a_path_typed_after_an_upload_is_what_gets_classified(classifier):
    front, back = sample_pair()
    app = ClassifierApp(classifier)
    app.front_upload.value = _upload(front.name, front.read_bytes())
    assert app.state["front"] == front.name
    app.front_path.value = str(back)  # the user types another photo's path and presses Classify
    app.classify_button.click()
    assert app.state["status"] == "done" and app.state["front"] == back.name and app.front_upload.value == ()
    app.back_upload.value = _upload(front.name, front.read_bytes())
    assert app.state["back"] == front.name
    app.back_path.value = str(back)
    app.classify_button.click()
    assert app.state["back"] == back.name


def test_gallery_sorts_by_uncertainty(classifier, tmp_path):
    from PIL import Image

    front, back = sample_pair()
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(front.read_bytes())
    (folder / "b.jpg").write_bytes(back.read_bytes())
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, format="JPEG")
    (folder / "grey.jpg").write_bytes(buf.getvalue())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    app = ClassifierApp(classifier)
    items = app.gallery(folder, batch_size=2, progress=False)  # the broken photo fails its batch, not the gallery
    assert len(items) == 4 and len(app.gallery_box.children) == 4
    assert items[-1].path.name == "broken.jpg" and items[-1].error and items[-1].prediction is None
    assert "not classified" in app.gallery_box.children[-1].children[0].value
    good = items[:3]
    assert all(it.error is None for it in good)
    assert [it.uncertainty for it in good] == sorted((it.uncertainty for it in good), reverse=True)
    assert "most uncertain first: True" in app.describe_gallery() and "not classified: 1" in app.describe_gallery()
    (folder / "broken.jpg").unlink()
    app.gallery_path.value = str(folder)
    app.gallery_button.click()
    assert len(app.gallery_items) == 3
    app.gallery_path.value = str(tmp_path / "nope")
    app.gallery_button.click()
    assert app.state["error"] == "E_NO_FOLDER"


def test_a_failed_classify_never_shows_the_previous_result(classifier, tmp_path):
    front, _ = sample_pair()
    app = ClassifierApp(classifier)
    app.classify_paths(front)
    assert app.state["status"] == "done" and app.result_html.value and app.front_preview.value
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    app.front_path.value = str(bad)
    app.classify_button.click()
    assert app.state["status"] == "error" and app.result is None
    assert app.result_html.value == "" and app.chart.value == b"" and app.latency_html.value == ""
    assert app.front_preview.value == b""


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
