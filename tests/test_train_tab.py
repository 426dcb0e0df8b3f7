"""The Train tab (``widgets.TrainPanel`` inside ``ClassifierApp``), driven as the browser drives it: type the folder,
press Train, read the HTML the widgets hold; then one click makes the Classify tab use the new model."""

from __future__ import annotations

import base64
import io
import re
import shutil

import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.widgets import ClassifierApp, TrainPanel

PER_CLASS = 4


def _images(markup: str) -> list[bytes]:
    """Every ``<img>`` of ``markup`` as bytes, each checked to be a real image (never a broken icon)."""
    from PIL import Image

    out = []
    for tag in re.findall(r"<img\b[^>]*>", markup):
        m = re.search(r"src='data:(image/[a-z+]+);base64,([A-Za-z0-9+/=]+)'", tag)
        assert m, f"an <img> without inline data: {tag[:120]}"
        data = base64.b64decode(m.group(2))
        Image.open(io.BytesIO(data)).verify()
        out.append(data)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A small seeded synthetic folder: <class>/*.jpg, 4 photos (2 pieces, front and back) per class."""
    from amulet_lab.data import synthesize

    return synthesize(tmp_path_factory.mktemp("train-tab") / "photos", PER_CLASS, 7, size=96, progress=False)


@pytest.fixture(scope="module")
def classifier():
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    return AmuletClassifier.from_checkpoint(SYNTHETIC_CHECKPOINT)


@pytest.fixture(scope="module")
def trained(photos, classifier, tmp_path_factory):
    """The app's Train tab after a user typed the folder, chose 2 folds and the output, and pressed Train."""
    app = ClassifierApp(classifier)
    panel = app.train_panel
    panel.recipe = {"img_size": 64}  # the hand features see 64 px: a quicker run, the same steps
    out = tmp_path_factory.mktemp("train-out") / "mine.pt"
    panel.folder.value = str(photos)  # the browser sends the text on Enter: the folder is shown
    shown = panel.folder_html.value
    panel.cv.value = 2
    panel.out.value = str(out)
    panel.train_button.click()
    return app, panel, out, shown


def test_the_app_has_a_train_tab_whose_models_are_the_clis():
    from amulet_lab.cli import build_parser
    from amulet_lab.model import ARCHITECTURES
    from amulet_lab.widgets.train import ARCH_CHOICES, DEFAULT_ARCH

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "arch")
    assert set(ARCH_CHOICES) == set(train.choices) == set(ARCHITECTURES)
    panel = TrainPanel()
    assert panel.arch.value == DEFAULT_ARCH == "features" and panel.cv.value == 5
    assert panel.use_button.layout.display == "none"  # no app to hand a model to: no button
    assert repr(panel) == "TrainPanel(status='waiting for a folder', photos=0, checkpoint=None)"


@pytest.mark.slow
def test_folder_counts_and_thumbnail_strips_then_progress_and_elapsed_time(trained, photos):
    _, panel, _, shown = trained
    from amulet_lab.widgets import english_name

    keys = sorted(p.name for p in photos.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert panel.state["counts"] == {k: PER_CLASS for k in keys} and panel.state["layout"] == "class folders"
    assert f"{PER_CLASS * len(keys)} photos</b> of {len(keys)} classes" in shown
    for key in keys:
        assert f"<b>{english_name(key)}</b> <span style='color:#777'>({key})</span>: {PER_CLASS} photo(s)" in shown
    assert len(_images(shown)) == PER_CLASS * len(keys)  # one thumbnail per photo (strips hold up to 8)
    assert panel.progress.value == panel.progress.max == 3 and panel.progress.bar_style == "success"  # 2 folds + final
    assert re.fullmatch(r"final model done · [\d.]+ s elapsed", panel.elapsed.value)
    assert not panel.train_button.disabled


@pytest.mark.slow
def test_out_of_fold_metrics_confusion_reliability_and_the_misclassified(trained):
    _, panel, _, _ = trained
    run = panel.run
    cv = run.cv
    assert panel.state["status"] == "trained" and panel.state["metrics"]["accuracy"] == cv["accuracy"]
    metrics = panel.metrics_html.value
    assert "2-fold cross-validation, 24 photos" in metrics
    assert f"{cv['accuracy']:.3f} ± {cv['accuracy_std']:.3f}" in metrics and f"{cv['pooled']['ece']:.3f}" in metrics
    assert "training time" in metrics and "final model" in metrics
    # Every photo scored once, out of fold; the misclassified are exactly the matrix's off-diagonal.
    preds = run.predictions
    assert sorted(p["path"] for p in preds) == sorted(str(s) for s in run.root.glob("*/*.jpg"))
    matrix = cv["pooled"]["confusion_matrix"]
    wrong = sum(map(sum, matrix)) - sum(matrix[i][i] for i in range(len(matrix)))
    assert len(run.misclassified) == wrong == panel.state["misclassified"]
    assert f"Misclassified out of fold: {wrong} of 24" in panel.misclassified_html.value
    assert len(_images(panel.misclassified_html.value)) == min(wrong, 24)
    for p in run.misclassified:
        assert p["path"].rsplit("/", 1)[-1] in panel.misclassified_html.value
    # The plots are real PNGs, with what they show in their alt text.
    (confusion,) = _images(panel.confusion_html.value)
    (reliability,) = _images(panel.reliability_html.value)
    assert confusion[:8] == reliability[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{24 - wrong} of 24 right" in panel.confusion_html.value
    # The diagram's ECE is the one the metrics state (the same 15 bins over the same out-of-fold answers).
    assert f"ECE {cv['pooled']['ece']:.3f} over 24 photos" in panel.reliability_html.value
    fig = panel.confusion_figure()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][0] == "Phra Sivali"  # English names


@pytest.mark.slow
def test_the_results_are_in_the_saved_widget_state(trained):
    """A reopened notebook has the saved widget state: the Train tab's figures and cards are in it, inline."""
    import ipywidgets as w

    app, panel, _, _ = trained
    saved = w.Widget.get_manager_state(drop_defaults=False)["state"]
    tab = saved[app.tabs.model_id]["state"]
    train = list(tab["titles"]).index("Train")
    markup, todo = "", [saved[tab["children"][train].removeprefix("IPY_MODEL_")]["state"]]
    while todo:
        st = todo.pop()
        markup += str(st.get("value", "")) if st.get("_model_name") == "HTMLModel" else ""
        todo.extend(saved[c.removeprefix("IPY_MODEL_")]["state"] for c in st.get("children", []))
    for part in (panel.confusion_html, panel.reliability_html, panel.misclassified_html, panel.metrics_html):
        assert part.value and part.value in markup


@pytest.mark.slow
def test_the_checkpoint_is_saved_atomically_with_its_model_card(trained, photos):
    from amulet_lab.model import load_checkpoint
    from amulet_lab.model.card import model_card

    _, panel, out, _ = trained
    assert panel.state["checkpoint"] == str(out.resolve()) and sorted(out.parent.iterdir()) == [out]  # no temp file
    card = model_card(load_checkpoint(out).metadata)
    assert card == panel.run.card and card.n_images == 24 and not card.real_photos  # synth.json marks the stand-ins
    assert card.figures["accuracy"] == round(panel.run.cv["accuracy"], 4)
    assert "2-fold cross-validation over all 24 photos" in card.evaluation and card.recipe["arch"] == "features"
    assert card.headline() in panel.saved_html.value and str(out.resolve()) in panel.saved_html.value
    assert "cross-validated accuracy" in card.headline()


@pytest.mark.slow
def test_one_click_switches_the_classify_tab_to_the_new_model(trained, classifier):
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.widgets import sample_pair

    app, panel, out, _ = trained
    train = list(app.tabs.titles).index("Train")
    assert app.tabs.titles[-1] == "Train" and app.tabs.children[train] is panel.widget
    old_headline = classifier.card.headline()
    assert old_headline in app.model_html.value and not panel.use_button.disabled
    app.classify_paths()
    app.tabs.selected_index = train
    panel.use_button.click()
    assert panel.state["status"] == "in use" and panel.state["used"] is True
    assert app.classifier is not classifier and app.gallery_panel.classifier is app.classifier
    assert app.classifier.checkpoint.path == out.resolve() and app.classifier.limits == classifier.limits
    new_headline = panel.run.card.headline()
    assert new_headline in app.model_html.value and old_headline not in app.model_html.value
    assert app.tabs.selected_index == 0 and app.state["status"] == "waiting for a photo" and app.result is None
    front, back = sample_pair()
    app.classify_paths(front, back)
    expected = AmuletClassifier.from_checkpoint(out, cache=False).predict_pair(front, back)
    main = expected.combined if expected.combined is not None else expected.front
    assert app.state["status"] == "done" and app.state["label"] == main.label
    assert app.state["confidence"] == pytest.approx(float(main.confidence))


def test_a_bad_folder_gives_a_coded_error_in_the_panel(tmp_path, photos):
    panel = TrainPanel(out_dir=tmp_path / "models")
    panel.train_button.click()
    assert panel.state["error"] == "E_NO_FOLDER" and "E_NO_FOLDER" in panel.status.value
    panel.folder.value = str(tmp_path / "nowhere")
    assert panel.state["status"] == "error" and panel.state["error"] == "E_DATASET_NOT_FOUND"
    assert "⚠" in panel.status.value and "<code>E_DATASET_NOT_FOUND</code>" in panel.status.value
    assert panel.folder_html.value == "" and "counts" not in panel.state

    odd = tmp_path / "odd"
    shutil.copytree(photos / "waek_man", odd / "dogs")
    panel.folder.value = str(odd)
    assert panel.state["error"] == "E_DATASET_UNKNOWN_CLASS" and "dogs" in panel.status.value

    one = tmp_path / "one"
    shutil.copytree(photos / "waek_man", one / "waek_man")
    panel.folder.value = str(one)
    assert panel.state["status"] == "folder shown" and panel.state["counts"] == {"waek_man": PER_CLASS}
    assert "No photos of:" in panel.folder_html.value
    panel.train_button.click()  # refused before any training
    assert panel.state["error"] == "E_TRAIN_CLASSES" and "E_TRAIN_CLASSES" in panel.status.value
    assert panel.progress.bar_style == "danger" and not panel.train_button.disabled and panel.run is None

    from amulet_lab.model.bundled import REAL_CHECKPOINT, SCENE_CHECKPOINT

    panel.folder.value = str(photos)
    for bundled in (REAL_CHECKPOINT, SCENE_CHECKPOINT):
        panel.out.value = str(bundled)
        panel.train_button.click()
        assert panel.state["error"] == "E_TRAIN_OUT_BUNDLED" and not (tmp_path / "models").exists()
    panel.use_button.click()  # hidden without an app; pressed from code it still answers with a code
    assert panel.state["error"] == "E_NOT_TRAINED"
    with pytest.raises(ValidationError) as err:
        panel.train(cv=1)
    assert err.value.code == "E_KFOLD_K"
    with pytest.raises(ValidationError) as err:
        panel.train(arch="resnet")
    assert err.value.code == "E_ARCH"


def test_confusion_and_reliability_figures_show_their_inputs():
    from amulet_lab.model.figures import confusion_figure, reliability_bins, reliability_figure

    fig = confusion_figure([[3, 1], [0, 2]], ["Phra Sivali", "Waek Man"])
    ax = fig.axes[0]
    assert ax.get_title() == "confusion matrix (out of fold): 5 of 6 right"
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Phra Sivali", "Waek Man"]
    bins = reliability_bins([0.95, 0.92, 0.55, 0.0], [True, False, True, False], bins=2)
    assert [(b["n"], b["accuracy"]) for b in bins] == [(1, 0.0), (3, 2 / 3)]
    assert bins[1]["confidence"] == pytest.approx((0.95 + 0.92 + 0.55) / 3)
    rel = reliability_figure([0.95, 0.92, 0.55, 0.0], [True, False, True, False], bins=2)
    ece = 1 / 4 * 0.0 + 3 / 4 * abs(2 / 3 - (0.95 + 0.92 + 0.55) / 3)
    assert rel.axes[0].get_title() == f"reliability (out of fold): ECE {ece:.3f} over 4 photos"
    assert [p.get_height() for p in rel.axes[1].patches] == [1, 3]
    for bad in (lambda: confusion_figure([[1, 2]], ["a"]), lambda: reliability_bins([0.5], [True, False]),
                lambda: reliability_bins([1.5], [True]), lambda: reliability_figure([], [])):
        with pytest.raises(ValidationError) as err:
            bad()
        assert err.value.code == "E_FIGURE_INPUT"


def test_the_folder_review_csv_relabels_what_the_tab_trains(tmp_path, photos):
    """A review.csv in the folder (what the gallery's review writes) is taken: a relabelled photo counts as its
    reviewed class, and the panel says the labels came from the review; a typed CSV wins."""
    from amulet_lab.data.review import ReviewLabels

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    panel = TrainPanel()
    panel.folder.value = str(folder)
    before = dict(panel.state["counts"])
    classes = sorted(before)
    moved = sorted((folder / classes[0]).glob("*.jpg"))[0]
    review = ReviewLabels(folder / "review.csv")
    review.set(moved, classes[1])
    review.save()
    panel.folder.value = ""
    panel.folder.value = str(folder)
    after = panel.state["counts"]
    assert after[classes[0]] == before[classes[0]] - 1 and after[classes[1]] == before[classes[1]] + 1
    assert panel.state["review"]["relabelled"] == 1 and "Labels from the review" in panel.folder_html.value
    panel.labels.value = str(tmp_path / "nope.csv")
    panel.show_button.click()
    assert panel.state.get("error", "").startswith("E_REVIEW")
