"""Reviewing the gallery (issue 14 part 4): confirm or correct a card's label as the browser does (choose in the
dropdowns, press Confirm), the ``path,sha256,label`` CSV it writes atomically, and ``amulet-lab train --labels``."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil

import pytest

from amulet_lab.data import NOT_AMULET, SAMPLES_DIR, ReviewLabels, fingerprint, load_dataset, load_labels
from amulet_lab.errors import ValidationError
from amulet_lab.widgets import ClassifierApp

ENGLISH = {label.key: label.english for label in load_labels()}


@pytest.fixture(scope="module")
def synth():
    """The committed amulet6-synth model, which knows the sample photos (no prediction cache)."""
    from amulet_lab.config import load_settings
    from amulet_lab.model import AmuletClassifier
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    return AmuletClassifier.from_settings(load_settings(environ={}, dotenv=None), SYNTHETIC_CHECKPOINT, cache=False)


def _copy(folder, names):
    """Copy sample photos (paths relative to data/samples) into ``folder``, keeping their class folders."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES_DIR / name, folder / name)
    return folder


@pytest.fixture
def gallery_folder(tmp_path):
    return _copy(tmp_path / "photos", ["phra_sivali/phra_sivali_front_0000.jpg", "phra_sivali/phra_sivali_back_0000.jpg",
                                       "waek_man/waek_man_front_0000.jpg", "_unknown/coin_0001.jpg"])


def _rows(path):
    text = path.read_text(encoding="utf-8")
    return text.splitlines()[0], list(csv.DictReader(io.StringIO(text)))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cards(app):
    import re

    return re.split(r"(?=<div class='amulet-card')", app.gallery_html.value)[1:]


def test_correct_one_card_confirm_another_and_rereview(synth, gallery_folder):
    app = ClassifierApp(synth)
    items = app.gallery(gallery_folder, progress=False)
    panel = app.gallery_panel.review
    target = gallery_folder / "review.csv"
    assert panel.csv.value == str(target) and not target.exists()  # written at the first Confirm, not before
    assert panel.widget.layout.display != "none" and len(panel.card.options) == len(items) == 4
    assert panel.card.value == 0  # the most uncertain card comes up first

    # Correct card #1: pick another class than the model's answer and press Confirm.
    first = items[0]
    said = NOT_AMULET if first.prediction.is_unknown else first.prediction.label
    assert panel.label.value == said  # the dropdown starts at the model's answer
    other = next(key for key in ENGLISH if key != said)
    panel.label.value = other
    panel.confirm_button.click()
    assert panel.state["status"] == "saved" and panel.state["corrected"] is True and panel.state["label"] == other
    assert panel.card.value == 1  # on to the next card not reviewed

    # Confirm card #2 as the model answered.
    second = items[1]
    said2 = NOT_AMULET if second.prediction.is_unknown else second.prediction.label
    panel.confirm_button.click()
    assert panel.state["corrected"] is False and panel.state["label"] == said2

    header, rows = _rows(target)
    assert header == "path,sha256,label" and len(rows) == 2
    by_path = {row["path"]: row for row in rows}
    for item, label in ((first, other), (second, said2)):
        rel = item.path.relative_to(gallery_folder).as_posix()  # relative: the folder and its review travel together
        assert by_path[rel]["label"] == label and by_path[rel]["sha256"] == _sha(item.path)

    cards = _cards(app)
    assert f"✎ corrected: {ENGLISH[other]}" in cards[0]
    assert "✓ confirmed" in cards[1] and "amulet-review" not in cards[2] + cards[3]
    assert "reviewed: 2" in app.describe_gallery()

    # Re-review card #1: its row is replaced, not added.
    third = next(key for key in ENGLISH if key not in (said, other))
    panel.card.value = 0
    assert panel.label.value == other  # the dropdown shows the saved review
    panel.label.value = third
    panel.confirm_button.click()
    _, rows = _rows(target)
    assert len(rows) == 2
    assert {r["path"]: r["label"] for r in rows}[first.path.relative_to(gallery_folder).as_posix()] == third

    # Reopened (a new app on the same folder): the marks come from the CSV and the first unreviewed card is up.
    again = ClassifierApp(synth)
    again.gallery(gallery_folder, progress=False)
    assert again.gallery_panel.review.reviewed_count() == 2 and again.gallery_panel.review.card.value == 2
    assert f"✎ corrected: {ENGLISH[third]}" in _cards(again)[0]
    assert again.gallery_panel.review.card.options[0][0].startswith("✓ #1 ")


def test_not_an_amulet_and_a_changed_photo(synth, gallery_folder):
    app = ClassifierApp(synth)
    items = app.gallery(gallery_folder, progress=False)
    panel = app.gallery_panel.review
    coin = next(i for i, it in enumerate(items) if it.path.name == "coin_0001.jpg")
    row = panel.confirm(coin, NOT_AMULET)  # the programmatic form of choosing and pressing Confirm
    assert row.label == NOT_AMULET and "Not an amulet of these types" in _cards(app)[coin]
    # The photo changes after its review: the next gallery says so and does not count it as reviewed.
    data = items[coin].path.read_bytes()
    items[coin].path.write_bytes(data + b"\x00")  # one byte more: still a photo, no longer the one reviewed
    app.gallery(gallery_folder, progress=False)
    again = next(i for i, it in enumerate(app.gallery_items) if it.path.name == "coin_0001.jpg")
    assert "changed since it was reviewed" in _cards(app)[again] and panel.reviewed_count() == 0


def test_a_bad_csv_is_shown_with_its_code_and_confirm_is_off(synth, gallery_folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.jpg,phra_sivali\n", encoding="utf-8")
    app = ClassifierApp(synth)
    app.gallery(gallery_folder, progress=False, review_csv=bad)
    panel = app.gallery_panel.review
    assert panel.state["error"] == "E_REVIEW_HEADER" and "E_REVIEW_HEADER" in panel.status.value
    assert panel.confirm_button.disabled
    panel.confirm_button.click()
    assert panel.state["error"] == "E_REVIEW_PATH" and not (gallery_folder / "review.csv").exists()
    panel.csv.value = str(tmp_path / "good.csv")  # typing another path opens that one
    assert panel.state["status"] == "open" and not panel.confirm_button.disabled
    panel.confirm_button.click()
    assert panel.state["status"] == "saved" and (tmp_path / "good.csv").is_file()
    # A typed path stays when another folder is shown; the default follows the folder only while untouched.
    app.gallery(gallery_folder, progress=False)
    assert panel.csv.value == str(tmp_path / "good.csv")


def test_coded_errors(tmp_path, gallery_folder):
    photo = gallery_folder / "waek_man" / "waek_man_front_0000.jpg"
    sha = _sha(photo)
    cases = {
        "E_REVIEW_HEADER": "path,label,sha256\n",
        "E_REVIEW_LABEL": f"path,sha256,label\n{photo},{sha},phra_somdej\n",
        "E_REVIEW_DUPLICATE": f"path,sha256,label\n{photo},{sha},waek_man\n{photo},{sha},phra_sivali\n",
        "E_REVIEW_ROW": f"path,sha256,label\n{photo},{sha[:10]},waek_man\n",
    }
    for code, text in cases.items():
        target = tmp_path / f"{code}.csv"
        target.write_text(text, encoding="utf-8")
        with pytest.raises(ValidationError) as err:
            ReviewLabels.load(target)
        assert err.value.code == code, code
    review = ReviewLabels(tmp_path / "r.csv")
    with pytest.raises(ValidationError) as err:
        review.set(photo, "not_a_class")
    assert err.value.code == "E_REVIEW_LABEL"
    with pytest.raises(ValidationError) as err:
        review.set(tmp_path / "nope.jpg", "waek_man")
    assert err.value.code == "E_REVIEW_MISSING_FILE"
    with pytest.raises(ValidationError) as err:
        ReviewLabels.load(tmp_path / "absent.csv", must_exist=True)
    assert err.value.code == "E_REVIEW_NOT_FOUND"
    with pytest.raises(ValidationError) as err:
        load_dataset(gallery_folder, review=tmp_path / "absent.csv")
    assert err.value.code == "E_REVIEW_NOT_FOUND"
    assert len(ReviewLabels.load(tmp_path / "absent.csv")) == 0  # not required: an empty review
    with pytest.raises(ValidationError) as err:
        ReviewLabels("")
    assert err.value.code == "E_REVIEW_PATH"
    # A spreadsheet's BOM and blank lines are fine; a path outside the CSV's folder is kept absolute.
    ok = tmp_path / "elsewhere" / "ok.csv"
    ok.parent.mkdir()
    ok.write_text(f"\ufeffpath,sha256,label\n\n{photo},{sha},waek_man\n", encoding="utf-8")
    loaded = ReviewLabels.load(ok)
    assert loaded.get(photo).label == "waek_man" and str(photo) in loaded.to_csv()
    assert repr(loaded) == f"ReviewLabels(path={str(ok)!r}, rows=1)"


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_leaves_the_old_csv_whole(tmp_path, gallery_folder, monkeypatch, failing):
    target = gallery_folder / "review.csv"
    a, b = gallery_folder / "waek_man" / "waek_man_front_0000.jpg", gallery_folder / "_unknown" / "coin_0001.jpg"
    review = ReviewLabels(target)
    review.record(a, "waek_man")
    before = target.read_bytes()

    def fail(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(ValidationError) as err:
        review.record(b, NOT_AMULET)
    with pytest.raises(ValidationError):
        review.record(a, "phra_sivali")  # a re-review that cannot be written leaves the old row in place
    monkeypatch.undo()
    assert err.value.code == "E_REVIEW_WRITE"
    assert target.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in gallery_folder.iterdir() if p.is_file()) == ["review.csv"]  # no temp file left
    assert b not in review and review.get(a).label == "waek_man"  # the review in memory matches the file
    assert ReviewLabels.load(target).get(a).label == "waek_man"


def test_dataset_review_overrides_extends_and_leaves_out(tmp_path):
    root = _copy(tmp_path / "split", ["phra_sivali/phra_sivali_front_0000.jpg", "waek_man/waek_man_front_0000.jpg",
                                      "waek_man/waek_man_back_0000.jpg", "_unknown/coin_0001.jpg"])
    (root / "train").mkdir()
    for cls in ("phra_sivali", "waek_man"):
        shutil.move(root / cls, root / "train" / cls)
    (root / "val" / "waek_man").mkdir(parents=True)
    shutil.move(root / "train" / "waek_man" / "waek_man_back_0000.jpg", root / "val" / "waek_man")
    review = ReviewLabels(root / "review.csv")
    review.set(root / "val" / "waek_man" / "waek_man_back_0000.jpg", "phra_sivali")  # relabelled, stays in val
    review.set(root / "_unknown" / "coin_0001.jpg", "wat_nong_e_duk")  # added, to train/
    review.set(root / "train" / "phra_sivali" / "phra_sivali_front_0000.jpg", NOT_AMULET)  # left out
    review.set(root / "train" / "waek_man" / "waek_man_front_0000.jpg", "waek_man")  # confirmed
    review.save()
    splits = load_dataset(root, val_fraction=0.0, review=root / "review.csv")
    assert [(s.path.name, s.key) for s in splits.train] == [("coin_0001.jpg", "wat_nong_e_duk"),
                                                            ("waek_man_front_0000.jpg", "waek_man")]
    assert [(s.path.name, s.key, s.side) for s in splits.val] == [("waek_man_back_0000.jpg", "phra_sivali", "back")]
    assert splits.review["relabelled"] == 1 and splits.review["added"] == 1 and splits.review["left_out"] == 1
    assert splits.review["confirmed"] == 1 and splits.review["missing"] == 0 and splits.review["rows"] == 4
    # A reviewed photo that is gone is skipped (nothing is trained from it either way); one that changed is refused.
    (root / "_unknown" / "coin_0001.jpg").unlink()
    assert load_dataset(root, val_fraction=0.0, review=review).review["missing"] == 1
    photo = root / "train" / "waek_man" / "waek_man_front_0000.jpg"
    photo.write_bytes(photo.read_bytes() + b"\x00")
    with pytest.raises(ValidationError) as err:
        load_dataset(root, val_fraction=0.0, review=review)
    assert err.value.code == "E_REVIEW_STALE" and str(photo) in err.value.message


def test_cli_train_with_labels_trains_the_corrected_labels(tmp_path, capsys):
    from amulet_lab.cli import main
    from amulet_lab.model import TrainConfig, load_checkpoint, train

    root = tmp_path / "data"
    shutil.copytree(SAMPLES_DIR, root)
    moved = root / "phra_sivali" / "phra_sivali_front_0000.jpg"
    review = ReviewLabels(tmp_path / "review.csv")  # outside the folder: its paths are absolute
    review.record(moved, "waek_man")
    review.record(root / "_unknown" / "texture_0000.jpg", "portrait_back")
    ck = tmp_path / "m.pt"

    def args(out):
        return ["train", str(root), "--out", str(out), "--arch", "tiny", "--epochs", "1", "--img-size", "32",
                "--batch-size", "16", "--quiet", "--labels", str(review.path)]

    capsys.readouterr()
    assert main(args(ck)) == 0
    assert "1 relabelled" in capsys.readouterr().out
    meta = load_checkpoint(ck).metadata
    assert meta["review"]["relabelled"] == 1 and meta["review"]["added"] == 1 and meta["review"]["csv"] == str(review.path)
    assert meta["n_train"] + meta["n_val"] == 25  # the 24 sample photos and the added one
    # The checkpoint's data fingerprint (path, size, label of every photo trained) is that of the reviewed dataset.
    splits = load_dataset(root, val_fraction=0.2, seed=0, review=review.path)
    assert next(s for s in splits.all if s.path == moved).key == "waek_man"
    assert meta["data_fingerprint"] == fingerprint(splits.train + splits.val)
    assert meta["data_fingerprint"] != fingerprint(load_dataset(root, val_fraction=0.2, seed=0).all)
    # A photo changed since its review: the command refuses with the code, and writes nothing.
    moved.write_bytes(moved.read_bytes() + b"\x00")
    assert main(args(tmp_path / "stale.pt")) == 1
    assert "E_REVIEW_STALE" in capsys.readouterr().err and not (tmp_path / "stale.pt").exists()
    with pytest.raises(ValidationError) as err:
        train(splits, config=TrainConfig(arch="tiny", img_size=32, epochs=1), review=review.path, progress=False)
    assert err.value.code == "E_REVIEW_SPLITS"
