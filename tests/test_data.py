"""Labels, image-folder loading, splits that keep groups together, k-fold and fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from amulet_lab.data import (
    SAMPLES_DIR,
    DatasetSplits,
    Label,
    Sample,
    fingerprint,
    load_dataset,
    load_labels,
    stratified_kfold,
)
from amulet_lab.errors import ValidationError

KEYS = [label.key for label in load_labels()]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _flat(root: Path, per_class: int = 10, keys=KEYS) -> Path:
    """A flat dataset of fake files (load_dataset never decodes); piece n has a front and a back."""
    for key in keys:
        for n in range(per_class):
            _touch(root / key / f"{key}_{'front' if n % 2 == 0 else 'back'}_{n // 2:04d}.jpg", bytes(n + 1))
    return root


# ------------------------------------------------------------------------------------------ labels

def test_load_labels_default_file():
    labels = load_labels()
    assert [label.index for label in labels] == list(range(6))
    assert labels[0] == Label(0, "phra_sivali", "พระสีวลี", "Phra Sivali")
    assert len({label.key for label in labels}) == 6


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("not json", "E_LABELS_FORMAT"),
        ("[]", "E_LABELS_FORMAT"),
        ('[{"index": 0, "key": "a"}]', "E_LABELS_FORMAT"),
        ('[{"index": 0, "key": "a", "thai": "", "english": ""}, {"index": 2, "key": "b", "thai": "", "english": ""}]',
         "E_LABELS_INDEX"),
        ('[{"index": 0, "key": "a", "thai": "", "english": ""}, {"index": 1, "key": "a", "thai": "", "english": ""}]',
         "E_LABELS_DUPLICATE"),
        ('[{"index": 0, "key": "../x", "thai": "", "english": ""}]', "E_LABELS_FORMAT"),
    ],
)
def test_load_labels_rejects_bad_files(tmp_path, content, code):
    path = _touch(tmp_path / "labels.json", content.encode())
    with pytest.raises(ValidationError) as info:
        load_labels(path)
    assert info.value.code == code


def test_load_labels_missing_file(tmp_path):
    with pytest.raises(ValidationError) as info:
        load_labels(tmp_path / "nope.json")
    assert info.value.code == "E_LABELS_MISSING"


def test_load_labels_sorts_by_index(tmp_path):
    path = _touch(tmp_path / "labels.json", json.dumps([
        {"index": 1, "key": "b", "thai": "ข", "english": "B"},
        {"index": 0, "key": "a", "thai": "ก", "english": "A"},
    ]).encode())
    assert [label.key for label in load_labels(path)] == ["a", "b"]


# ------------------------------------------------------------------------------------------ loading

def test_flat_layout_split_is_stratified_seeded_and_complete(tmp_path):
    root = _flat(tmp_path / "ds", per_class=10)
    splits = load_dataset(root, val_fraction=0.2, seed=3)
    assert isinstance(splits, DatasetSplits)
    assert len(splits.train) + len(splits.val) == 60 and splits.test == []
    assert {s.path for s in splits.train}.isdisjoint({s.path for s in splits.val})
    assert Counter(s.key for s in splits.val) == {key: 2 for key in KEYS}
    again = load_dataset(root, val_fraction=0.2, seed=3)
    assert again.train == splits.train and again.val == splits.val
    other = load_dataset(root, val_fraction=0.2, seed=4)
    assert other.val != splits.val
    sample = splits.train[0]
    assert isinstance(sample, Sample) and sample.label == KEYS.index(sample.key)
    assert sample.side in ("front", "back") and sample.group is None


def test_test_fraction_makes_a_third_split(tmp_path):
    splits = load_dataset(_flat(tmp_path / "ds", per_class=10), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert Counter(s.key for s in splits.test) == {key: 2 for key in KEYS}
    assert Counter(s.key for s in splits.val) == {key: 2 for key in KEYS}
    assert len(splits.train) == 36
    assert len({s.path for s in splits.all}) == 60


def test_presplit_layout_is_used_as_given(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for key in KEYS:
            for i in range(n):
                _touch(root / split / key / f"{split}_{i}.png")
    splits = load_dataset(root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 12)
    assert all(s.path.parent.parent.name == "val" for s in splits.val)
    counts = splits.counts()
    assert counts["test"] == {key: 2 for key in KEYS}


def test_presplit_without_val_carves_val_from_train(tmp_path):
    root = tmp_path / "ds"
    for key in KEYS:
        for i in range(5):
            _touch(root / "train" / key / f"{i}.jpg")
    splits = load_dataset(root, val_fraction=0.2)
    assert Counter(s.key for s in splits.val) == {key: 1 for key in KEYS}
    assert len(splits.train) == 24


def test_unknown_class_folder_is_refused(tmp_path):
    root = _flat(tmp_path / "ds", per_class=2)
    _touch(root / "buddha_statue" / "a.jpg")
    with pytest.raises(ValidationError) as info:
        load_dataset(root)
    assert info.value.code == "E_DATASET_UNKNOWN_CLASS"
    assert info.value.context["value"] == "buddha_statue"


def test_underscore_hidden_and_non_image_files_are_ignored(tmp_path):
    root = _flat(tmp_path / "ds", per_class=2)
    _touch(root / "_unknown" / "noise.jpg")
    _touch(root / ".cache" / "x.jpg")
    _touch(root / KEYS[0] / "notes.txt")
    _touch(root / KEYS[0] / ".DS_Store")
    _touch(root / KEYS[0] / "IMG_1.HEIC")  # upper-case suffixes count
    splits = load_dataset(root, val_fraction=0)
    assert len(splits.train) == 13
    assert not any("_unknown" in str(s.path) or s.path.suffix == ".txt" for s in splits.train)


@pytest.mark.parametrize("make", ["missing", "empty", "empty_classes"])
def test_empty_or_missing_dataset_is_refused(tmp_path, make):
    root = tmp_path / "ds"
    if make != "missing":
        root.mkdir()
    if make == "empty_classes":
        (root / KEYS[0]).mkdir()
        _touch(root / KEYS[1] / "readme.txt")
    with pytest.raises(ValidationError) as info:
        load_dataset(root)
    assert info.value.code == ("E_DATASET_NOT_FOUND" if make == "missing" else "E_DATASET_EMPTY")


@pytest.mark.parametrize(("kwargs", "code"), [({"val_fraction": 1.0}, "E_DATASET_FRACTION"),
                                              ({"val_fraction": -0.1}, "E_DATASET_FRACTION"),
                                              ({"val_fraction": 0.5, "test_fraction": 0.5}, "E_DATASET_FRACTION"),
                                              ({"groups": 42}, "E_DATASET_GROUPS"),
                                              ({"groups": "regex:("}, "E_DATASET_GROUPS")])
def test_bad_arguments_are_refused(tmp_path, kwargs, code):
    root = _flat(tmp_path / "ds", per_class=2)
    with pytest.raises(ValidationError) as info:
        load_dataset(root, **kwargs)
    assert info.value.code == code


def test_side_is_parsed_without_confusing_the_class_key(tmp_path):
    root = tmp_path / "ds"
    _touch(root / "portrait_back" / "processed_portrait_back_front_001.jpg")
    _touch(root / "portrait_back" / "processed_portrait_back_back_002.jpg")
    _touch(root / "portrait_back" / "portrait_back_003.jpg")
    _touch(root / "waek_man" / "front" / "IMG_7.jpg")
    _touch(root / "waek_man" / "backdrop.jpg")  # "back" must be a whole token
    sides = {s.path.name: s.side for s in load_dataset(root, val_fraction=0).train}
    assert sides == {"processed_portrait_back_front_001.jpg": "front", "processed_portrait_back_back_002.jpg": "back",
                     "portrait_back_003.jpg": None, "IMG_7.jpg": "front", "backdrop.jpg": None}


# ------------------------------------------------------------------------------------------ groups

def _assert_groups_not_split(splits_or_folds):
    for a, b in splits_or_folds:
        groups_a = {s.group for s in a if s.group}
        groups_b = {s.group for s in b if s.group}
        assert groups_a.isdisjoint(groups_b)


def test_groups_json_keeps_pieces_together(tmp_path):
    root = _flat(tmp_path / "ds", per_class=10)
    mapping = {f"{p.parent.name}/{p.name}": f"{p.parent.name}-{p.stem[-4:]}" for p in root.glob("*/*.jpg")}
    _touch(root / "groups.json", json.dumps(mapping).encode())
    for seed in range(5):
        splits = load_dataset(root, val_fraction=0.3, seed=seed)
        assert all(s.group for s in splits.all)
        _assert_groups_not_split([(splits.train, splits.val)])
        sizes = Counter(s.group for s in splits.val)
        assert set(sizes.values()) == {2}


def test_groups_csv_file_and_regex_and_callable_agree(tmp_path):
    root = _flat(tmp_path / "ds", per_class=6)
    rows = ["file,group"] + [f"{p.name},{p.parent.name}:{p.stem[-4:]}" for p in sorted(root.glob("*/*.jpg"))]
    csv_path = _touch(tmp_path / "pairs.csv", "\n".join(rows).encode())
    by_csv = load_dataset(root, groups=csv_path, seed=1)
    by_regex = load_dataset(root, groups=r"regex:_(?:front|back)_(?P<group>\d{4})\.jpg$", seed=1)
    by_callable = load_dataset(root, groups=lambda p: f"{p.parent.name}:{p.stem[-4:]}", seed=1)
    for splits in (by_csv, by_regex, by_callable):
        _assert_groups_not_split([(splits.train, splits.val)])
        assert len({s.group for s in splits.all}) == 18
    assert [s.path for s in by_csv.val] == [s.path for s in by_callable.val]


def test_group_ids_from_a_regex_are_per_class(tmp_path):
    root = _flat(tmp_path / "ds", per_class=2)
    splits = load_dataset(root, groups=r"regex:_(\d{4})\.jpg$", val_fraction=0)
    assert len({s.group for s in splits.train}) == 6


def test_group_ids_from_a_file_or_mapping_are_per_class(tmp_path):
    root = tmp_path / "ds"
    for key in KEYS:  # every class has a "piece 7": the same file names and the same id in each class
        _touch(root / key / "front_7.jpg")
        _touch(root / key / "back_7.jpg")
    by_name = {"front_7.jpg": "7", "back_7.jpg": "7"}  # the file-name fallback
    by_path = {f"{key}/{side}_7.jpg": "7" for key in KEYS for side in ("front", "back")}
    _touch(tmp_path / "groups.json", json.dumps(by_path).encode())
    for spec in (by_name, by_path, tmp_path / "groups.json"):
        samples = load_dataset(root, groups=spec, val_fraction=0).train
        assert {s.group for s in samples} == {f"{key}:7" for key in KEYS}  # six pieces, not one
        assert all(s.group == f"{s.key}:7" for s in samples)


def test_test_fraction_with_presplit_folders_is_refused(tmp_path):
    root = tmp_path / "ds"
    for key in KEYS:
        _touch(root / "train" / key / "a.jpg")
    with pytest.raises(ValidationError) as info:
        load_dataset(root, test_fraction=0.2)
    assert info.value.code == "E_DATASET_FRACTION" and info.value.field == "test_fraction"


def test_groups_file_errors(tmp_path):
    root = _flat(tmp_path / "ds", per_class=2)
    for name, content in (("groups.json", b"{bad"), ("groups.json", b"[1, 2]")):
        _touch(root / name, content)
        with pytest.raises(ValidationError) as info:
            load_dataset(root)
        assert info.value.code == "E_DATASET_GROUPS"
    (root / "groups.json").unlink()
    _touch(root / "groups.csv", b"path,id\na,b\n")
    with pytest.raises(ValidationError) as info:
        load_dataset(root)
    assert info.value.code == "E_DATASET_GROUPS"
    with pytest.raises(ValidationError):
        load_dataset(root, groups=tmp_path / "absent.json")


# ------------------------------------------------------------------------------------------ k-fold

def test_stratified_kfold_covers_everything_once_and_keeps_groups(tmp_path):
    root = _flat(tmp_path / "ds", per_class=10)
    samples = load_dataset(root, groups=lambda p: f"{p.parent.name}:{p.stem[-4:]}", val_fraction=0).train
    folds = stratified_kfold(samples, 5, seed=0)
    assert len(folds) == 5
    vals = [s for _, val in folds for s in val]
    assert sorted(s.path for s in vals) == sorted(s.path for s in samples)
    for train, val in folds:
        assert len(train) + len(val) == 60
        assert Counter(s.key for s in val) == {key: 2 for key in KEYS}
    _assert_groups_not_split(folds)
    assert stratified_kfold(samples, 5, seed=0) == folds
    assert stratified_kfold(samples, 5, seed=1) != folds


def test_stratified_kfold_validates_k(tmp_path):
    samples = load_dataset(_flat(tmp_path / "ds", per_class=1, keys=KEYS[:2]), val_fraction=0).train
    for k, code in ((1, "E_KFOLD_K"), (2.5, "E_KFOLD_K"), (3, "E_KFOLD_TOO_FEW")):
        with pytest.raises(ValidationError) as info:
            stratified_kfold(samples, k, seed=0)
        assert info.value.code == code


# ------------------------------------------------------------------------------------------ fingerprint

def test_fingerprint_is_order_independent_and_content_sensitive(tmp_path):
    root = _flat(tmp_path / "ds", per_class=3)
    samples = load_dataset(root, val_fraction=0).train
    first = fingerprint(samples)
    assert len(first) == 64 and fingerprint(list(reversed(samples))) == first
    relabelled = [Sample(s.path, (s.label + 1) % 6, s.key, s.group, s.side) if i == 0 else s
                  for i, s in enumerate(samples)]
    assert fingerprint(relabelled) != first
    assert fingerprint(samples[1:]) != first
    samples[0].path.write_bytes(b"grown by a few bytes")
    assert fingerprint(samples) != first


def test_fingerprint_survives_a_move(tmp_path):
    a = _flat(tmp_path / "a" / "ds", per_class=2)
    b = _flat(tmp_path / "b" / "elsewhere", per_class=2)
    assert fingerprint(load_dataset(a, val_fraction=0).train) == fingerprint(load_dataset(b, val_fraction=0).train)


def test_fingerprint_refuses_empty_and_missing(tmp_path):
    with pytest.raises(ValidationError):
        fingerprint([])
    with pytest.raises(ValidationError) as info:
        fingerprint([Sample(tmp_path / "gone.jpg", 0, KEYS[0])])
    assert info.value.code == "E_DATASET_MISSING_FILE"


# ------------------------------------------------------------------------------------------ repr, samples, imports

def test_repr_and_html_summary(tmp_path):
    splits = load_dataset(_flat(tmp_path / "ds", per_class=5), seed=0)
    assert "train=" in repr(splits) and "val=" in repr(splits)
    page = splits._repr_html_()
    assert "<table>" in page and "phra_sivali" in page and "พระสีวลี" in page


def test_committed_samples_load_with_pairs():
    splits = load_dataset(SAMPLES_DIR, val_fraction=0)
    assert Counter(s.key for s in splits.train) == {key: 4 for key in KEYS}
    pairs = Counter(s.group for s in splits.train)
    assert set(pairs.values()) == {2} and len(pairs) == 12
    assert all({s.side for s in splits.train if s.group == g} == {"front", "back"} for g in pairs)
    assert (SAMPLES_DIR / "_unknown").is_dir() and len(list((SAMPLES_DIR / "_unknown").glob("*.jpg"))) >= 3
    assert "synthetic" in (SAMPLES_DIR / "README.md").read_text().lower()
    assert sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file()) < 600_000


def test_import_is_light():
    code = "import sys, amulet_lab.data; print(sorted(m for m in ('PIL', 'numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.realdata
def test_shared_dataset_loads_without_grouping(shared_dataset):
    splits = load_dataset(shared_dataset)
    assert (len(splits.train), len(splits.val)) == (123, 26)
    assert all(s.group is None for s in splits.all)  # its file numbers do not pair sides: no default grouping
    manifest = json.loads((shared_dataset / "MANIFEST.json").read_text())
    sides = {entry["file"]: entry["side"] for entry in manifest["files"]}
    assert all(s.side == sides[s.path.name] for s in splits.all)
