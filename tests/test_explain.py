"""``AmuletClassifier.explain``: heatmaps over the model input for the bundled models, the exact cells of the feature
head, blanking the relief the heatmap points at, refusals with codes, the PNG, the lock, and the app's "Why?" toggle
driven as the browser drives it."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from amulet_lab.data import SAMPLES_DIR
from amulet_lab.errors import AmuletError, ModelError, ValidationError
from amulet_lab.model import AmuletClassifier, Explanation, load_checkpoint
from amulet_lab.model.bundled import REAL_CHECKPOINT, SYNTHETIC_CHECKPOINT
from amulet_lab.perf import PerformanceMonitor

FRONTS = sorted(SAMPLES_DIR.glob("*/*_front_0000.jpg"))  # the first front of each of the six classes


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread here: on the shared 2-core machine two threads waiting on each other are 10x slower."""
    from amulet_lab.bench.micro import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def synth():
    return AmuletClassifier.from_checkpoint(SYNTHETIC_CHECKPOINT, cache=False, monitor=PerformanceMonitor())


@pytest.fixture(scope="module")
def real():
    return AmuletClassifier.from_checkpoint(REAL_CHECKPOINT, cache=False, monitor=PerformanceMonitor())


def _flat(path, box: tuple[int, int, int, int]) -> bytes:
    """The photo with ``box`` (top, bottom, left, right in photo pixels) painted flat with its own mean colour."""
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    t, b, left, r = box
    pixels[t:b, left:r] = pixels[t:b, left:r].reshape(-1, 3).mean(0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("which", ["synth", "real"])
def test_the_heatmap_lies_over_the_model_input_in_0_1_and_explains_the_top_class(which, request):
    clf = request.getfixturevalue(which)
    photo = FRONTS[0]
    e = clf.explain(photo)
    size = clf.spec.size
    assert isinstance(e, Explanation) and e.heatmap.shape == (size, size) and e.heatmap.dtype == np.float32
    assert 0.0 <= float(e.heatmap.min()) and float(e.heatmap.max()) == 1.0  # something drove it, scaled to 1
    assert float(e.heatmap.mean()) < 0.8  # not a flat sheet: some regions more than others
    assert e.image.shape == (size, size, 3) and e.image.dtype == np.uint8
    pred = clf.predict(photo)
    assert e.label == pred.label and e.probability == pytest.approx(pred.confidence, abs=1e-5)
    assert e.photo_size == Image.open(photo).size
    other = next(k for k in pred.probabilities if k != pred.label)
    forced = clf.explain(photo, label=other)  # the explanation of a named class, not the top one
    assert forced.label == other and forced.probability == pytest.approx(pred.probabilities[other], abs=1e-5)
    assert not np.array_equal(forced.heatmap, e.heatmap)
    assert clf.monitor.get_stats("classifier.explain")["count"] >= 2


def test_the_feature_head_cells_add_up_to_its_logit_exactly(synth):
    """The synthetic model's feature head is linear: its cells plus the unplaced features and bias are its logit."""
    photo = FRONTS[1]
    e = synth.explain(photo)
    x = synth.preprocess([synth.decode(photo)])
    with torch.no_grad():
        logit = float(synth.model.head(x)[0, [lab.key for lab in synth.labels].index(e.label)])
    assert set(e.cells) == {"hog", "lbp_grid", "thumbnail"}
    assert [g.shape for g in e.cells.values()] == [(4, 4), (3, 3), (8, 8)]
    assert e.logit == pytest.approx(logit, abs=1e-4)
    assert sum(float(g.sum()) for g in e.cells.values()) + e.unplaced == pytest.approx(logit, abs=1e-4)
    assert set(e.parts) == {"grad-cam", "cells"} and "Grad-CAM" in e.method and "cells" in e.method


def test_the_default_model_explained_with_one_forward_gives_the_same_answer(real):
    """explain runs FusedNet's views itself (to keep the maps): its probability and hand-cell logit are the model's."""
    photo = FRONTS[2]
    e = real.explain(photo)
    model = real.model
    x = real.preprocess([real.decode(photo)])
    with torch.no_grad():
        c = [lab.key for lab in real.labels].index(e.label)
        logit = float(np.mean([float(model.fc(model.joined(a, h))[0, c]) for a, h in model.view_features(x)]))
    assert e.probability == pytest.approx(real.predict(photo).probabilities[e.label], abs=1e-5)
    assert e.logit == pytest.approx(logit, abs=1e-4) and e.method.startswith("Grad-CAM")
    assert sum(float(g.sum()) for g in e.cells.values()) + e.unplaced == pytest.approx(logit, abs=1e-4)


def test_blanking_the_relief_the_heatmap_points_at_takes_the_heat_away(real):
    """Paint the hottest region (a third of the side, around the peak) flat with its own mean colour: with the relief
    gone, the share of the heat in that region drops, for each class's first sample front (default model)."""
    ratios = []
    for photo in FRONTS:
        e = real.explain(photo)
        side = e.heatmap.shape[0]
        row, col = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
        half = side // 6
        t, b, left, r = max(0, row - half), min(side, row + half), max(0, col - half), min(side, col + half)
        w, h = e.photo_size
        blanked = real.explain(_flat(photo, (t * h // side, b * h // side, left * w // side, r * w // side)),
                               label=e.label)
        before = e.heatmap[t:b, left:r].sum() / e.heatmap.sum()
        after = blanked.heatmap[t:b, left:r].sum() / max(float(blanked.heatmap.sum()), 1e-9)
        assert after < before, (photo.name, before, after)
        ratios.append(after / before)
    assert float(np.mean(ratios)) < 0.6, ratios


def test_bad_input_and_other_models_are_refused_with_codes(synth):
    with pytest.raises(ValidationError) as err:
        synth.explain(None)
    assert err.value.code == "E_IMAGE_TYPE"
    with pytest.raises(AmuletError) as err:
        synth.explain(b"this is not a photo at all")
    assert err.value.code.startswith("E_IMAGE")
    with pytest.raises(ValidationError) as err:
        synth.explain(FRONTS[0], label="not_a_class")
    assert err.value.code == "E_LABEL"

    class Wrapped(torch.nn.Module):  # another architecture: the same answers from a module explain does not know
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward_with_distance(self, x):
            return self.inner.forward_with_distance(x)

    ck = load_checkpoint(SYNTHETIC_CHECKPOINT)
    ck.model = Wrapped(ck.model)
    other = AmuletClassifier(ck, cache=False)
    assert other.predict(FRONTS[0]).label  # it classifies ...
    with pytest.raises(ModelError) as err:
        other.explain(FRONTS[0])  # ... but cannot be explained
    assert err.value.code == "E_EXPLAIN_ARCH" and err.value.context["arch"] == "ensemble"


def test_png_figure_and_repr(synth):
    e = synth.explain(FRONTS[3])
    png = e._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(png)).size[0] > 200
    assert len(e.figure().axes) == 3  # the input, the overlay and its colour bar
    overlay = Image.open(io.BytesIO(e.overlay_png()))
    assert overlay.mode == "RGB" and overlay.size == (synth.spec.size, synth.spec.size)  # the sample is square
    assert re.fullmatch(r"Explanation\(label='\w+', p=[\d.]+, method='[^']+', heatmap=128x128, peak=\(row \d+, col \d+\)\)",
                        repr(e))


def test_explain_waits_for_the_models_forward_lock(synth):
    from amulet_lab.threads import named_lock

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with named_lock(synth._forward_lock):
            held.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(5)
    done: list[float] = []
    runner = threading.Thread(target=lambda: done.append(synth.explain(FRONTS[0]).probability))
    runner.start()
    time.sleep(0.4)
    assert not done  # the forward pass is waiting for the lock
    release.set()
    runner.join(10)
    worker.join(5)
    assert done and 0 <= done[0] <= 1


# -------------------------------------------------------------------------------- the app's "Why?" toggle
def _upload(name: str, data: bytes) -> tuple[dict, ...]:
    return ({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
             "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},)


def _pngs(markup: str) -> list[Image.Image]:
    found = re.findall(r"<img\b[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", markup)
    assert len(found) == len(re.findall(r"<img\b", markup)), "every <img> carries its image inline"
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in found]


def test_the_why_toggle_shows_the_heatmap_over_the_front_photo(synth):
    from amulet_lab.widgets import ClassifierApp

    app = ClassifierApp(synth)
    why = app.why
    why.toggle.value = True  # before any photo: a placeholder, never an empty image
    assert "amulet-placeholder" in why.html.value and "classify a photo first" in why.html.value
    why.toggle.value = False
    assert why.html.value == ""

    wide = FRONTS[4]
    pixels = Image.open(wide).convert("RGB").resize((300, 200))  # not square: the overlay keeps its proportions
    buf = io.BytesIO()
    pixels.save(buf, format="JPEG", quality=92)
    app.front_upload.value = _upload("wide.jpg", buf.getvalue())
    assert app.state["status"] == "done" and not why.toggle.value and why.html.value == ""  # off for a new answer
    assert why.explanation is None  # nothing computed until asked

    why.toggle.value = True
    (img,) = _pngs(why.html.value)
    assert img.size == (synth.spec.size, round(synth.spec.size * 200 / 300))
    assert why.explanation.label == app.state["label"]
    assert f"drove <b>{app.state['english']}</b>" in why.html.value
    overlaid = np.asarray(img, dtype=float)
    plain = np.asarray(Image.fromarray(why.explanation.image).resize(img.size), dtype=float)
    assert np.abs(overlaid - plain).mean() > 5  # the heat is drawn over the photo, not the photo alone
    first = why.explanation
    why.toggle.value = False
    why.toggle.value = True
    assert why.explanation is first  # computed once per answer

    app.classify_paths(FRONTS[5])  # a new answer: the toggle starts off again
    assert not why.toggle.value and why.explanation is None
    app.clear("front")
    why.toggle.value = True
    assert "classify a photo first" in why.html.value and "<img" not in why.html.value
