"""AmuletClassifier: every input type, batch == single, threads, cache, monitor, pairs, bands, errors."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from amulet_lab.errors import ModelError, ValidationError
from amulet_lab.model import AmuletClassifier, PredictionCache, confidence_band, default_checkpoint_path
from amulet_lab.security import ImageLimits
from amulet_lab.perf import PerformanceMonitor
from model_helpers import tiny_checkpoint, tiny_dataset

STAGES = {"lookup", "decode", "preprocess", "infer", "postprocess", "total"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    data = tiny_dataset(root / "data")
    return tiny_checkpoint(data, root / "m.pt"), sorted(data.glob("*/*.jpg"))


@pytest.fixture
def clf(trained):
    return AmuletClassifier.from_checkpoint(trained[0], cache=PredictionCache(), monitor=PerformanceMonitor())


def _inputs(path):
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    return {"path": path, "str": str(path), "bytes": data, "pil": pil, "array": np.asarray(pil)}


def test_predict_on_every_input_type_agrees(clf, trained):
    inputs = _inputs(trained[1][0])
    preds = {name: clf.predict(value) for name, value in inputs.items()}
    ref = preds["bytes"]
    for name, pred in preds.items():
        # Encoded inputs decode at reduced JPEG scale (draft), decoded ones are resized from full size: the
        # pixels differ by resampling only.
        same_path = name in ("path", "str", "bytes")
        assert pred.confidence == pytest.approx(ref.confidence, abs=1e-6 if same_path else 0.02), name
        assert set(pred.timings) == STAGES and pred.timings["total"] >= pred.timings["infer"] >= 0
    assert preds["pil"].probabilities == pytest.approx(preds["array"].probabilities, abs=1e-6)
    assert len(ref.top_k) == 3 and ref.top_k[0][0] == ref.label and ref.top_k[0][2] == ref.confidence
    assert abs(sum(ref.probabilities.values()) - 1) < 1e-5
    assert ref.confidence_band in {"reliable", "verify", "retake", "unknown"}
    assert (ref.confidence_band == "unknown") == ref.is_unknown  # an unknown answer has no band
    d = ref.to_dict()
    assert d["top_k"][0]["key"] == ref.label and set(d["timings"]) == STAGES
    assert "<table>" in ref._repr_html_() and ref.thai_name in ref._repr_html_()


def test_batch_equals_single(clf, trained):
    paths = trained[1][:7]
    batch = clf.predict_batch(paths, batch_size=3)
    single = [clf.predict(p) for p in paths]
    assert [b.label for b in batch] == [s.label for s in single]
    for b, s in zip(batch, single):
        for key, value in s.probabilities.items():
            assert b.probabilities[key] == pytest.approx(value, abs=1e-5)
    assert clf.predict_batch([]) == []
    with pytest.raises(ValidationError):
        clf.predict_batch(paths, batch_size=0)


def test_eight_threads_give_the_same_results_as_one(trained):
    clf = AmuletClassifier.from_checkpoint(trained[0], cache=False, monitor=PerformanceMonitor())
    paths = trained[1][:6]
    expected = [clf.predict(p).probabilities for p in paths]
    barrier = threading.Barrier(8)

    def work(offset):
        barrier.wait()
        return [clf.predict(paths[(i + offset) % len(paths)]).probabilities for i in range(len(paths))]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for offset, got in enumerate(results):
        for i, probs in enumerate(got):
            assert probs == expected[(i + offset) % len(paths)]


def test_repeated_image_comes_from_the_cache(clf, trained):
    path = trained[1][2]
    first = clf.predict(path)
    second = clf.predict(path)
    assert (first.cache, second.cache) == ("miss", "local")
    assert not first.cache_hit and second.cache_hit
    assert second.probabilities == first.probabilities and second.is_unknown == first.is_unknown
    # a hit skips decoding and inference: the answer, not the input, is cached
    assert second.timings["decode"] == second.timings["preprocess"] == second.timings["infer"] == 0.0
    assert clf.predict(path, top_k=5).top_k[:3] == first.top_k  # any top_k is served from the one answer
    assert second.source == first.source and first.source["format"] == "JPEG"
    assert clf.predict(np.asarray(Image.open(path).convert("RGB"))).cache_hit is False
    assert clf.cache.stats()["hits"] >= 2


def test_every_call_records_into_the_monitor(clf, trained):
    clf.predict(trained[1][0])
    clf.predict_batch(trained[1][:2])
    with pytest.raises(ValidationError):
        clf.predict(b"not an image")
    stats = clf.monitor.get_stats()
    assert stats["classifier.predict"]["count"] == 2 and stats["classifier.predict"]["errors"] == 1
    assert stats["classifier.predict_batch"]["count"] == 1
    for stage in ("decode", "preprocess", "infer", "postprocess"):
        assert stats[f"classifier.{stage}"]["count"] >= 1
    assert clf.model_status()["errors"] == 1


def test_pair_combines_sides(clf, trained):
    front, back = trained[1][0], trained[1][1]
    pair = clf.predict_pair(front, back)  # tiny model: agreement is checked on known pieces below
    f, b = pair.front.probabilities, pair.back.probabilities
    logp = torch.tensor([np.log(f[k]) + np.log(b[k]) for k in f]) / 2
    expected = torch.softmax(logp.double(), 0)
    assert pair.combined.confidence == pytest.approx(float(expected.max()), abs=1e-5)
    assert pair.agree == (pair.front.label == pair.back.label)
    solo = clf.predict_pair(front)
    assert solo.back is None and solo.agree is None and solo.combined.label == solo.front.label
    assert set(pair.to_dict()) == {"front", "back", "combined", "agree"}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The committed amulet6-synth model (read only), which knows the committed sample photos."""
    from amulet_lab.config import load_settings

    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    quiet = load_settings(environ={}, dotenv=None)
    return AmuletClassifier.from_settings(quiet, SYNTHETIC_CHECKPOINT, cache=False, monitor=PerformanceMonitor())


def test_pair_agreement_on_known_pieces(bundled):
    import json

    from amulet_lab.data import SAMPLES_DIR

    groups = json.loads((SAMPLES_DIR / "groups.json").read_text(encoding="utf-8"))
    front, back = "phra_sivali/phra_sivali_front_0000.jpg", "phra_sivali/phra_sivali_back_0000.jpg"
    assert groups[front] == groups[back]  # one physical piece, both sides
    same = bundled.predict_pair(SAMPLES_DIR / front, SAMPLES_DIR / back)
    assert same.agree is True and same.combined.label == "phra_sivali"
    other = SAMPLES_DIR / "prok_bodhi_9_leaves/prok_bodhi_9_leaves_front_0000.jpg"
    mixed = bundled.predict_pair(SAMPLES_DIR / front, other)
    assert mixed.front.label == "phra_sivali" and mixed.back.label == "prok_bodhi_9_leaves"
    assert mixed.agree is False


@pytest.mark.slow
def test_bundled_model_is_learnable_on_a_fresh_synthetic_split(bundled, tmp_path):
    """The stand-in must be learnable: >= 95 % on pieces rendered with a seed the recipe never used."""
    from amulet_lab.model.bundled import SYNTHETIC_RECIPE as DEFAULT_RECIPE
    from amulet_lab.data import load_dataset, synthesize
    from amulet_lab.model import evaluate

    seed = 777
    assert seed not in (DEFAULT_RECIPE["data_seed"], DEFAULT_RECIPE["heldout_seed"])
    heldout = synthesize(tmp_path / "heldout", 12, seed, DEFAULT_RECIPE["size"], progress=False)
    result = evaluate(bundled, load_dataset(heldout, val_fraction=0.0), split="all")
    assert result["n"] == 72 and result["accuracy"] >= 0.95, result["accuracy"]


def test_cached_counts_are_exact_under_eight_threads(clf, trained):
    paths = trained[1][:4]
    before = clf.model_status()["predictions"]
    barrier = threading.Barrier(8)
    calls = 25

    def work(offset):
        barrier.wait()
        hits = 0
        for i in range(calls):
            hits += clf.predict(paths[(i + offset) % len(paths)]).cache_hit
        return hits

    with ThreadPoolExecutor(8) as pool:
        hits = sum(pool.map(work, range(8)))
    assert clf.model_status()["predictions"] - before == 8 * calls
    # get_or_compute: each distinct image is decoded and inferred once however many threads asked at once.
    assert hits == 8 * calls - len(paths)
    assert clf.stats()["decodes"] == len(paths)


def test_oversized_input_is_not_hashed(trained):
    clf = AmuletClassifier.from_checkpoint(trained[0], limits=ImageLimits(max_upload_bytes=100),
                                           monitor=PerformanceMonitor())
    data = trained[1][0].read_bytes()
    assert clf.content_key(data) is None and clf.content_key(trained[1][0]) is None
    assert clf.content_key(np.zeros((20, 20, 3), np.uint8)) is None
    with pytest.raises(ValidationError):
        clf.predict(data)
    arr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert clf.content_key(arr) is not None  # 12 bytes: hashed through a byte view
    assert clf.content_key(arr) == clf.content_key(arr.copy()) != clf.content_key(arr + 1)


def test_bytes_and_their_file_share_one_answer_and_one_hash(clf, trained):
    import hashlib

    path = trained[1][3]
    data = path.read_bytes()
    assert clf.content_key(data) == clf.content_key(path) == hashlib.sha256(data).hexdigest()
    assert clf.predict(path).cache == "miss" and clf.predict(data).cache == "local"


def test_a_new_model_never_serves_an_old_answer(trained):
    from amulet_lab.model import load_checkpoint

    shared = PredictionCache()
    one = AmuletClassifier.from_checkpoint(trained[0], cache=shared, monitor=PerformanceMonitor())
    ck = load_checkpoint(trained[0])
    ck.temperature *= 2  # recalibrated: another model as far as answers go
    two = AmuletClassifier(ck, cache=shared, monitor=PerformanceMonitor())
    assert one.fingerprint != two.fingerprint
    path = trained[1][0]
    assert one.predict(path).cache == "miss" and two.predict(path).cache == "miss"
    assert one.predict(path).cache == two.predict(path).cache == "local" and len(shared) == 2


def test_batch_answers_repeats_from_the_cache_and_duplicates_once(clf, trained):
    paths = trained[1][:4]
    clf.predict(paths[0])
    before = clf.stats()["decodes"]
    preds = clf.predict_batch([paths[0], paths[1], paths[1], paths[2]], batch_size=2)
    assert [p.cache for p in preds] == ["local", "miss", "local", "miss"]
    assert clf.stats()["decodes"] - before == 2  # paths[1] once, paths[2] once, paths[0] not at all
    assert preds[1].probabilities == preds[2].probabilities
    again = clf.predict_batch(paths[:3])
    assert [p.cache for p in again] == ["local"] * 3


def test_bad_inputs_raise_coded_errors(clf, tmp_path):
    for bad, code in ((b"", "E_IMAGE_EMPTY"), (b"plain text", "E_IMAGE_SIGNATURE"),
                      (tmp_path / "missing.jpg", "E_IMAGE_NOT_FOUND"), (123, "E_IMAGE_TYPE")):
        with pytest.raises(ValidationError) as err:
            clf.predict(bad)
        assert err.value.code == code, bad
    with pytest.raises(ValidationError):
        clf.predict(np.zeros((4, 4, 5)))
    with pytest.raises(ValidationError):
        clf.predict(Image.new("RGB", (8, 8)), top_k=0)
    with pytest.raises(ValidationError):
        clf.predict(None)


def test_bands_follow_settings(trained, settings):
    assert confidence_band(0.95) == "reliable" and confidence_band(0.8) == "verify" and confidence_band(0.5) == "retake"
    assert confidence_band(0.5, reliable=0.6, verify=0.4) == "verify"
    from amulet_lab.model import UnknownRule, load_checkpoint

    loose = settings.replace(band_reliable=0.15, band_verify=0.1)
    clf = AmuletClassifier.from_settings(loose, trained[0], cache=False, monitor=PerformanceMonitor())
    clf.unknown_rule = UnknownRule(min_confidence=0.0, max_entropy=1.0)  # nothing unknown: the bands are under test
    assert clf.predict(trained[1][0]).confidence_band == "reliable"  # any max prob of 6 classes is >= 1/6
    assert AmuletClassifier.from_settings(settings, trained[0]).cache is not None
    off = AmuletClassifier.from_settings(settings.replace(cache_max_size=0), trained[0])  # 0: no prediction cache
    assert off.cache is None and off.predict(trained[1][0]).cache == off.predict(trained[1][0]).cache == "miss"


def test_status_repr_and_missing_default(clf, settings, tmp_path):
    st = clf.model_status()
    assert st["loaded"] and st["arch"] == "tiny" and st["num_classes"] == 6 and st["parameters"] > 0
    assert "AmuletClassifier" in repr(clf) and "<b>AmuletClassifier</b>" in clf._repr_html_()
    missing = settings.replace(model_path=str(tmp_path / "none.pt"))
    assert default_checkpoint_path(missing.model_path) == tmp_path / "none.pt"
    with pytest.raises(ModelError) as err:
        AmuletClassifier.from_settings(missing)
    assert err.value.code == "E_CHECKPOINT_MISSING"


def test_the_classifier_reads_no_settings(trained, monkeypatch):
    """Settings are read at the edges: the environment changes nothing a classifier built from values does."""
    monkeypatch.setenv("AMULET_BAND_RELIABLE", "0.15")
    monkeypatch.setenv("AMULET_BAND_VERIFY", "0.1")
    monkeypatch.setenv("AMULET_MAX_UPLOAD_BYTES", "10")
    clf = AmuletClassifier.from_checkpoint(trained[0], cache=False, monitor=PerformanceMonitor())
    assert clf.bands == (0.9, 0.7) and clf.limits == ImageLimits()
    assert clf.predict(trained[1][0]).label


def test_truncated_upload_is_refused_even_with_draft_decoding(clf, trained):
    data = trained[1][0].read_bytes()
    with pytest.raises(ValidationError) as err:
        clf.predict(data[: len(data) // 2])
    assert err.value.code in {"E_IMAGE_TRUNCATED", "E_IMAGE_DECODE"}


def test_pipeline_micro_benchmark_quick_has_its_figures():
    from amulet_lab.bench.micro import MicroResult
    from amulet_lab.bench.micro.pipeline import run

    result = run(quick=True)
    assert isinstance(result, MicroResult) and result.name == "pipeline"
    assert set(result.targets) == {"batched_vs_naive", "draft_vs_full_decode", "repeated_vs_new_bytes",
                                   "repeated_vs_new_path"}
    assert all(value > 0 for value in result.ratios.values())
    assert {"batched_images_per_s", "draft_decode_resize_ms", "repeated_bytes_ms", "input_cache_would_cost_ms"} <= set(
        result.figures)
    assert set(result.verdicts()) == set(result.targets)


@pytest.mark.slow
def test_non_amulets_come_out_unknown(trained, settings, tmp_path):
    """A feature-head model rejects a plain texture, a coin and noise (the data engineer's generated negatives)."""
    from amulet_lab.data import synthesize_unknowns
    from amulet_lab.model import TrainConfig, train

    data = trained[1][0].parent.parent
    ck = tmp_path / "features.pt"
    train(data, out=ck, config=TrainConfig(arch="features", img_size=48, feature_views=3), val_fraction=0.25,
          progress=False)
    clf = AmuletClassifier.from_checkpoint(ck, cache=False, monitor=PerformanceMonitor())
    negatives = synthesize_unknowns(tmp_path / "neg", 6, seed=11, size=64)
    preds = clf.predict_batch(negatives)
    assert all(p.is_unknown for p in preds), [(n.name, p.confidence, p.distance) for n, p in zip(negatives, preds)]
    assert all(p.distance is not None for p in preds)
    amulets = clf.predict_batch(trained[1])
    assert sum(p.is_unknown for p in amulets) <= len(amulets) // 4


def test_a_changed_file_is_not_served_stale_from_the_cache(clf, trained, tmp_path):
    import os

    target = tmp_path / "img.jpg"
    target.write_bytes(trained[1][0].read_bytes())
    first = clf.predict(target)
    assert clf.predict(target).cache_hit
    target.write_bytes(trained[1][-1].read_bytes())  # other content, same path
    os.utime(target, ns=(1, 1))  # force a different mtime even on coarse clocks
    changed = clf.predict(target)
    assert not changed.cache_hit
    assert changed.probabilities == clf.predict(trained[1][-1].read_bytes()).probabilities
    assert first.probabilities != changed.probabilities


def test_an_unknown_answer_carries_no_band_in_any_form(bundled, capsys):
    """repr, HTML, to_dict/JSON, the CLI's text, the service's JSON and the widget all say 'not one of the six
    known types' and show no confidence band for an unknown answer (a generated coin among the samples)."""
    import json

    from fastapi.testclient import TestClient

    from amulet_lab.cli import main
    from amulet_lab.data import SAMPLES_DIR
    from amulet_lab.service import create_app
    from amulet_lab.widgets import ClassifierApp

    coin = SAMPLES_DIR / "_unknown" / "coin_0001.jpg"
    pred = bundled.predict(coin)
    assert pred.is_unknown and pred.confidence_band == "unknown"
    bands = ("reliable", "verify", "retake", "Reliable", "Check with an expert", "Retake the photo")
    assert "not one of the six known types" in repr(pred) and not any(b in repr(pred) for b in bands)
    page = pred._repr_html_()
    assert "Not one of the six known types" in page and not any(b in page for b in bands)
    assert pred.to_dict()["confidence_band"] == "unknown" and json.loads(json.dumps(pred.to_dict()))["is_unknown"]
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    assert main(["predict", str(coin), "--checkpoint", str(SYNTHETIC_CHECKPOINT)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "not one of the six known types" in line and not any(f"[{b}]" in line for b in bands[:3])
    from amulet_lab.config import load_settings

    service = TestClient(create_app(load_settings({}, dotenv=None).replace(debug=True), bundled))
    body = service.post("/predict", files={"front": ("coin.jpg", coin.read_bytes(), "image/jpeg")}).json()
    assert body["combined"]["is_unknown"] and body["combined"]["confidence_band"] == "unknown"
    app = ClassifierApp(bundled)
    app.classify_paths(coin)
    assert app.state["band"] == "unknown" and app.state["band_text"] == "Not one of the six known types"
    headline = app.result_html.value
    assert "Not one of the six known types" in headline and not any(b in headline for b in bands)
    assert f"<h3 style='margin:0'>{pred.english_name}</h3>" not in headline  # no class name as the headline
    items = app.gallery(SAMPLES_DIR / "_unknown", progress=False)
    assert items and all(it.prediction.is_unknown for it in items)
    assert items[0].uncertainty == 1.0  # unknown answers lead the "most uncertain first" gallery
    cards = app.gallery_html.value
    assert cards.count("Not one of the six known types") == len(items) and "Reliable" not in cards


def test_bands_come_from_the_checkpoint_and_settings_override_only_when_set(trained, settings):
    from amulet_lab.model import load_checkpoint

    ck = load_checkpoint(trained[0])
    assert AmuletClassifier(ck, cache=False).bands == (0.9, 0.7)  # no bands stored: the documented defaults
    ck.metadata["bands"] = {"reliable": 0.83, "verify": 0.55}  # chosen out of fold by training
    assert AmuletClassifier(ck, cache=False).bands == (0.83, 0.55)
    from amulet_lab.model import save_checkpoint

    path = save_checkpoint(ck, trained[0].parent / "banded.pt")
    assert AmuletClassifier.from_settings(settings, path).bands == (0.83, 0.55)  # AMULET_BAND_* unset
    assert AmuletClassifier.from_settings(settings.replace(band_reliable=0.95), path).bands == (0.95, 0.55)
    with pytest.raises(ValidationError):
        AmuletClassifier.from_settings(settings.replace(band_verify=0.9), path)  # verify above the stored reliable


def test_the_bundled_real_model_loads_and_classifies_without_the_photos():
    """The committed default checkpoint (trained on the real photos, which CI does not have) loads from the repo
    and the pip-installed backbone, and classifies the committed sample photos."""
    from amulet_lab.data import SAMPLES_DIR
    from amulet_lab.model.bundled import REAL_CHECKPOINT

    clf = AmuletClassifier.from_checkpoint(cache=False, monitor=PerformanceMonitor())  # no path: the default
    assert clf.checkpoint.path == REAL_CHECKPOINT and clf.checkpoint.arch == "fused"
    assert clf.card.real_photos and clf.card.headline().startswith("trained on 149 real photos of 6 classes")
    assert set(clf.checkpoint.metadata["bands"]) == {"reliable", "verify"} and clf.bands[1] < clf.bands[0]
    photos = sorted(SAMPLES_DIR.glob("*/*.jpg"))
    preds = clf.predict_batch(photos, batch_size=8)
    assert len(preds) == len(photos)
    for p in preds:
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4 and p.distance is not None
        assert (p.confidence_band == "unknown") == p.is_unknown
    assert any(p.is_unknown for p in preds[:3])  # the generated coin, noise and texture are not amulets


def test_a_file_rewritten_behind_its_stat_is_refused_not_misread(trained, tmp_path):
    """Same size and mtime, other bytes: the remembered digest no longer matches what is decoded."""
    import os

    from amulet_lab.errors import ProcessingError

    def png(colour) -> bytes:  # uncompressed: two colours, the same number of bytes
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buf, "PNG", compress_level=0)
        return buf.getvalue()

    first, other = png((200, 30, 30)), png((30, 30, 200))
    assert len(first) == len(other) and first != other
    clf = AmuletClassifier.from_checkpoint(trained[0], cache=False, monitor=PerformanceMonitor())
    target = tmp_path / "img.png"
    target.write_bytes(first)
    os.utime(target, ns=(10**18, 10**18))
    assert clf.predict(target).label
    target.write_bytes(other)  # same size ...
    os.utime(target, ns=(10**18, 10**18))  # ... and the same mtime: the stat cannot tell
    with pytest.raises(ProcessingError) as err:
        clf.predict(target)
    assert err.value.code == "E_FILE_CHANGED"
    assert clf.predict(target).probabilities == clf.predict(other).probabilities  # forgotten: hashed anew
