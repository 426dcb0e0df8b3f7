"""Image-folder datasets: samples, seeded stratified splits that keep groups together, k-fold, fingerprints.

Layouts: ``root/<class>/*.jpg`` (split here, seeded and stratified) or ``root/{train,val,test}/<class>/...``
(used as given). Class folders are keys of ``labels.json``; folders starting with ``_`` or ``.`` are not
classes (``_unknown/`` holds negatives for rejection checks). A review CSV (``review=``, ``data.review``) overrides
and extends the folders' labels. A *group* is one physical piece (its front and
back): groups come from a ``groups.json``/``groups.csv`` in the root, a mapping, a callable or a
``"regex:..."`` naming rule, and never straddle two splits or folds.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import html
import json
import logging
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from amulet_lab.data.labels import Label, load_labels
from amulet_lab.data.review import NOT_AMULET, ReviewLabels
from amulet_lab.errors import ValidationError

__all__ = [
    "Sample",
    "DatasetSplits",
    "load_dataset",
    "stratified_kfold",
    "fingerprint",
    "content_fingerprint",
    "IMAGE_SUFFIXES",
    "GroupsSpec",
]

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"})
SPLIT_NAMES = ("train", "val", "test")
GROUP_FILES = ("groups.json", "groups.csv")

#: How to say which files belong to one piece: None (a groups file in the root if there is one), a path to
#: such a file, a mapping of relative path (or file name) to group id, ``"regex:PATTERN"`` applied to the
#: path relative to the root (group ``group`` or the first group is the id), or a callable ``Path -> id``.
#: Ids from a file, a mapping or a regex are per class (stored as ``"<class key>:<id>"``); a callable's ids
#: are used as returned.
log = logging.getLogger("amulet_lab.data")

GroupsSpec = Union[None, str, os.PathLike, Mapping[str, str], Callable[[Path], Union[str, None]]]

_SIDE = re.compile(r"(?:^|[^a-z])(front|back)(?:[^a-z]|$)")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a dataset: its path, class index and key, piece group (or None) and side (or None)."""

    path: Path
    label: int
    key: str
    group: str | None = None
    side: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """The train, val and test samples of a dataset with its labels (and what a review CSV changed, if one was given)."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    labels: list[Label]
    root: Path | None = None
    review: dict[str, Any] | None = None

    @property
    def all(self) -> list[Sample]:
        """Every sample of the three splits."""
        return [*self.train, *self.val, *self.test]

    def counts(self) -> dict[str, dict[str, int]]:
        """Samples per class key, per split."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLIT_NAMES:
            tally = collections.Counter(sample.key for sample in getattr(self, name))
            out[name] = {label.key: tally.get(label.key, 0) for label in self.labels}
        return out

    def __repr__(self) -> str:
        return (f"DatasetSplits(train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"classes={len(self.labels)}, root={str(self.root) if self.root else None!r})")

    def _repr_html_(self) -> str:
        counts = self.counts()
        head = "".join(f"<th>{name}</th>" for name in SPLIT_NAMES)
        rows = []
        for label in self.labels:
            cells = "".join(f"<td style='text-align:right'>{counts[name][label.key]}</td>" for name in SPLIT_NAMES)
            rows.append(f"<tr><td>{html.escape(label.key)}</td><td>{html.escape(label.thai)}</td>{cells}</tr>")
        totals = "".join(f"<td style='text-align:right'><b>{len(getattr(self, name))}</b></td>" for name in SPLIT_NAMES)
        rows.append(f"<tr><td><b>total</b></td><td></td>{totals}</tr>")
        root = html.escape(str(self.root)) if self.root else "(in memory)"
        return (f"<div><b>DatasetSplits</b> <code>{root}</code><table><tr><th>class</th><th>thai</th>{head}</tr>"
                f"{''.join(rows)}</table></div>")


def load_dataset(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    groups: GroupsSpec = None,
    test_fraction: float = 0.0,
    labels: Sequence[Label] | str | os.PathLike | None = None,
    review: ReviewLabels | str | os.PathLike | None = None,
) -> DatasetSplits:
    """Load an image-folder dataset and split it (stratified, seeded, groups kept together) unless it is pre-split.

    ``review`` (a ``path,sha256,label`` CSV or a ``ReviewLabels``) overrides the folders' labels: a listed photo
    is that label (``_unknown``: left out), a listed photo outside the class folders is added (to train/ when
    the folder is pre-split). A listed photo whose bytes changed since the review is refused
    (``E_REVIEW_STALE``); one that is gone is skipped with a warning. ``.review`` of the result counts them.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValidationError(f"dataset folder not found: {base}", field="root", value=str(base),
                              code="E_DATASET_NOT_FOUND")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValidationError(f"{name} must be in [0, 1), got {fraction!r}", field=name, value=fraction,
                                  code="E_DATASET_FRACTION")
    if val_fraction + test_fraction >= 1.0:
        raise ValidationError("val_fraction + test_fraction must be below 1", field="val_fraction",
                              value=val_fraction + test_fraction, code="E_DATASET_FRACTION")
    label_list = list(labels) if isinstance(labels, Sequence) and not isinstance(labels, str) else load_labels(labels)
    by_key = {label.key: label for label in label_list}
    group_of = _group_resolver(base, groups)
    reviewed = _review_of(review, label_list)

    split_dirs = {name: base / name for name in SPLIT_NAMES if (base / name).is_dir()}
    if split_dirs and test_fraction > 0:
        raise ValidationError(f"{base} is already split into {', '.join(split_dirs)}/ folders; test_fraction="
                              f"{test_fraction} would be ignored - put the test images in test/ and pass "
                              "test_fraction=0", field="test_fraction", value=test_fraction,
                              code="E_DATASET_FRACTION")
    if split_dirs:
        found = {name: _scan_classes(folder, base, by_key, group_of) for name, folder in split_dirs.items()}
        train = found.get("train", [])
        val, test = found.get("val", []), found.get("test", [])
        summary = None
        if reviewed is not None:
            (train, val, test), summary = _apply_review([train, val, test], reviewed, by_key)
        if not train and not val and not test:
            raise ValidationError(f"no images under {base} (train/, val/, test/ are empty)", field="root",
                                  value=str(base), code="E_DATASET_EMPTY")
        if "val" not in split_dirs and val_fraction > 0:  # only train/ (and test/) given: carve val out of train
            train, val = _split(train, val_fraction, seed)
        return DatasetSplits(train, val, test, label_list, base, summary)

    samples = _scan_classes(base, base, by_key, group_of)
    summary = None
    if reviewed is not None:
        (samples,), summary = _apply_review([samples], reviewed, by_key)
    if not samples:
        raise ValidationError(f"no images under {base}: expected {base}/<class>/*.jpg or train/ val/ test/ folders",
                              field="root", value=str(base), code="E_DATASET_EMPTY")
    rest, test = _split(samples, test_fraction, seed + 1) if test_fraction > 0 else (samples, [])
    train, val = _split(rest, val_fraction / (1.0 - test_fraction), seed) if val_fraction > 0 else (rest, [])
    return DatasetSplits(train, val, test, label_list, base, summary)


def _review_of(review: ReviewLabels | str | os.PathLike | None, labels: Sequence[Label]) -> ReviewLabels | None:
    """The review to apply (a CSV is read; it must exist), its labels checked against the dataset's."""
    if review is None:
        return None
    if isinstance(review, ReviewLabels):
        keys = {label.key for label in labels} | {NOT_AMULET}
        for row in review:
            if row.label not in keys:
                raise ValidationError(f"review label {row.label!r} of {row.path} is not a class of this dataset",
                                      field="label", value=row.label, code="E_REVIEW_LABEL")
        return review
    if not isinstance(review, (str, os.PathLike)):
        raise ValidationError(f"review must be a CSV path or a ReviewLabels, got {type(review).__name__}",
                              field="review", value=type(review).__name__, code="E_REVIEW_PATH")
    return ReviewLabels.load(review, labels, must_exist=True)


def _apply_review(parts: list[list[Sample]], review: ReviewLabels,
                  by_key: Mapping[str, Label]) -> tuple[list[list[Sample]], dict[str, Any]]:
    """The samples of each part with the review's labels; photos only the review lists join the first part.

    Refused (``E_REVIEW_STALE``) when a listed photo's bytes changed: its label was given to other bytes, and
    falling back to the folder's label would quietly train the very label the person corrected. A photo that is
    gone is skipped with a warning: nothing is trained from it either way.
    """
    stale = review.stale()
    if stale:
        shown = ", ".join(str(row.path) for row in stale[:5]) + (" ..." if len(stale) > 5 else "")
        raise ValidationError(f"{len(stale)} photo(s) changed since they were reviewed in {review.path}: {shown}; "
                              "review them again (the gallery marks them) or remove their rows",
                              field="review", value=[str(row.path) for row in stale], code="E_REVIEW_STALE",
                              context={"csv": str(review.path), "stale": len(stale)})
    rows = {row.path: row for row in review}
    seen: set[Path] = set()
    counts = collections.Counter()
    out: list[list[Sample]] = []
    for part in parts:
        kept = []
        for sample in part:
            row = rows.get(sample.path.resolve())
            if row is None:
                kept.append(sample)
                continue
            seen.add(row.path)
            if row.label == NOT_AMULET:
                counts["left_out"] += 1
            elif row.label == sample.key:
                counts["confirmed"] += 1
                kept.append(sample)
            else:
                label = by_key[row.label]
                counts["relabelled"] += 1
                kept.append(dataclasses.replace(sample, label=label.index, key=label.key,
                                                side=_side_of(Path(sample.path.name), label.key)))
        out.append(kept)
    for path, row in rows.items():
        if path in seen or row.label == NOT_AMULET:
            continue
        if not path.is_file():
            counts["missing"] += 1
            log.warning("reviewed photo %s is gone; its row in %s is skipped", path, review.path)
            continue
        label = by_key[row.label]
        out[0].append(Sample(path, label.index, label.key, None, _side_of(Path(path.name), label.key)))
        counts["added"] += 1
    out[0].sort(key=lambda s: s.path.as_posix())
    summary = {"csv": str(review.path), "csv_sha256": hashlib.sha256(review.to_csv().encode("utf-8")).hexdigest(),
               "rows": len(review), **{k: counts.get(k, 0) for k in ("confirmed", "relabelled", "added", "left_out",
                                                                     "missing")}}
    return out, summary


def _scan_classes(folder: Path, root: Path, by_key: Mapping[str, Label],
                  group_of: Callable[[Path, str], str | None]) -> list[Sample]:
    """Samples of every ``folder/<class>/`` (recursively), sorted by path; unknown class folders are an error."""
    samples: list[Sample] = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith(("_", ".")):
            continue
        label = by_key.get(child.name)
        if label is None:
            raise ValidationError(
                f"folder {child} is not a class of labels.json (known: {', '.join(sorted(by_key))}); "
                "rename it or prefix it with '_' to leave it out",
                field="class", value=child.name, code="E_DATASET_UNKNOWN_CLASS")
        for path in sorted(child.rglob("*")):
            relative_parts = path.relative_to(child).parts
            if (path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file()
                    or any(part.startswith(".") for part in relative_parts)):
                continue
            samples.append(Sample(path, label.index, label.key, group_of(path, label.key),
                                  _side_of(path.relative_to(child), label.key)))
    return samples


def _side_of(relative: Path, key: str) -> str | None:
    """``front`` or ``back`` from the file name (or a sub-folder), with the class key removed first.

    The key is removed because ``portrait_back`` itself contains ``back``.
    """
    for part in reversed(relative.with_suffix("").parts):
        matches = _SIDE.findall(part.lower().replace(key, "_"))
        if matches:
            return matches[-1]
    return None


def _group_resolver(root: Path, spec: GroupsSpec) -> Callable[[Path, str], str | None]:
    """A function ``(path, key) -> group id or None`` built from ``spec`` (see ``GroupsSpec``)."""
    if spec is None:
        for name in GROUP_FILES:
            if (root / name).is_file():
                return _mapping_resolver(root, _read_groups_file(root / name))
        return lambda path, key: None
    if isinstance(spec, str) and spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as exc:
            raise ValidationError(f"invalid groups regex: {exc}", field="groups", value=spec,
                                  code="E_DATASET_GROUPS") from exc

        def by_regex(path: Path, key: str) -> str | None:
            match = pattern.search(path.relative_to(root).as_posix())
            if match is None:
                return None
            value = match.groupdict().get("group") or (match.group(1) if pattern.groups else match.group(0))
            return f"{key}:{value}" if value else None  # ids are per class: a rule never joins two classes

        return by_regex
    if isinstance(spec, (str, os.PathLike)):
        return _mapping_resolver(root, _read_groups_file(Path(spec)))
    if isinstance(spec, Mapping):
        return _mapping_resolver(root, {str(k): str(v) for k, v in spec.items()})
    if callable(spec):
        def by_callable(path: Path, key: str) -> str | None:
            value = spec(path)
            return None if value is None else str(value)

        return by_callable
    raise ValidationError(f"groups must be None, a file, a mapping, 'regex:...' or a callable, "
                          f"got {type(spec).__name__}", field="groups", value=repr(spec), code="E_DATASET_GROUPS")


def _mapping_resolver(root: Path, mapping: Mapping[str, str]) -> Callable[[Path, str], str | None]:
    def by_mapping(path: Path, key: str) -> str | None:
        relative = path.relative_to(root).as_posix()
        found = mapping.get(relative)
        if found is None and relative.split("/", 1)[0] in SPLIT_NAMES:  # a file may list paths without the split
            found = mapping.get(relative.split("/", 1)[1])
        if found is None:
            found = mapping.get(path.name)
        # Ids are per class, as for a regex: "1" in two class folders is two pieces, never one group.
        return None if found is None else f"{key}:{found}"

    return by_mapping


def _read_groups_file(path: Path) -> dict[str, str]:
    """``groups.json`` (``{"class/file.jpg": "piece-id"}``) or ``groups.csv`` (columns ``file,group``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"groups file not found: {path}", field="groups", value=str(path),
                              code="E_DATASET_GROUPS") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"groups file {path} is not valid JSON: {exc}", field="groups", value=str(path),
                                  code="E_DATASET_GROUPS") from exc
        if not isinstance(raw, dict) or not all(isinstance(v, (str, int)) for v in raw.values()):
            raise ValidationError(f"groups file {path} must map file paths to group ids", field="groups",
                                  value=str(path), code="E_DATASET_GROUPS")
        return {str(k): str(v) for k, v in raw.items()}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
            raise ValidationError(f"groups file {path} needs the columns file,group", field="groups",
                                  value=str(path), code="E_DATASET_GROUPS")
        return {row["file"]: row["group"] for row in reader if row["file"] and row["group"]}
    raise ValidationError(f"groups file {path} must be .json or .csv", field="groups", value=str(path),
                          code="E_DATASET_GROUPS")


def _units(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples bundled into units that must stay together: one per group, one per ungrouped sample; sorted."""
    by_group: dict[str, list[Sample]] = {}
    units: list[list[Sample]] = []
    for sample in sorted(samples, key=lambda s: s.path.as_posix()):
        if sample.group is None:
            units.append([sample])
        else:
            by_group.setdefault(sample.group, []).append(sample)
    units.extend(by_group.values())
    units.sort(key=lambda unit: unit[0].path.as_posix())
    return units


def _unit_label(unit: Sequence[Sample]) -> int:
    """The class a unit is stratified under: the most common label of its members (lowest index on ties)."""
    tally = collections.Counter(sample.label for sample in unit)
    return min(tally, key=lambda label: (-tally[label], label))


def _units_by_class(samples: Sequence[Sample], seed: int) -> dict[int, list[list[Sample]]]:
    """Units per class, each class shuffled by its own seeded generator (so classes do not disturb each other)."""
    per_class: dict[int, list[list[Sample]]] = collections.defaultdict(list)
    for unit in _units(samples):
        per_class[_unit_label(unit)].append(unit)
    for label, units in per_class.items():
        random.Random(f"{seed}:{label}").shuffle(units)
    return dict(sorted(per_class.items()))


def _split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified, seeded, group-preserving split into (kept, held out ~ ``fraction`` of each class's units)."""
    kept: list[Sample] = []
    held: list[Sample] = []
    for units in _units_by_class(samples, seed).values():
        # At least one unit of each class stays in training; a class of one unit is not held out at all.
        n_held = min(len(units) - 1, max(1, round(len(units) * fraction))) if len(units) > 1 else 0
        for position, unit in enumerate(units):
            (held if position < n_held else kept).extend(unit)
    order = lambda s: s.path.as_posix()  # noqa: E731 - stable output order, independent of the shuffle
    return sorted(kept, key=order), sorted(held, key=order)


def stratified_kfold(samples: Sequence[Sample], k: int, seed: int = 0) -> list[tuple[list[Sample], list[Sample]]]:
    """``k`` (train, val) folds: stratified by class, seeded, and a group never in two folds."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValidationError(f"k must be an integer >= 2, got {k!r}", field="k", value=k, code="E_KFOLD_K")
    per_class = _units_by_class(samples, seed)
    n_units = sum(len(units) for units in per_class.values())
    if n_units < k:
        raise ValidationError(f"{n_units} samples/groups cannot fill {k} folds", field="k", value=k,
                              code="E_KFOLD_TOO_FEW")
    folds: list[list[Sample]] = [[] for _ in range(k)]
    class_counts = [collections.Counter() for _ in range(k)]
    for label, units in per_class.items():
        # Largest units first, each into the fold with the fewest of this class, then the fewest overall:
        # folds stay balanced per class and in size.
        for unit in sorted(units, key=len, reverse=True):
            target = min(range(k), key=lambda f: (class_counts[f][label], len(folds[f]), f))
            folds[target].extend(unit)
            class_counts[target][label] += len(unit)
    order = lambda s: s.path.as_posix()  # noqa: E731
    out = []
    for f in range(k):
        train = [s for g, fold in enumerate(folds) if g != f for s in fold]
        out.append((sorted(train, key=order), sorted(folds[f], key=order)))
    return out


def fingerprint(samples: Sequence[Sample], root: str | os.PathLike | None = None) -> str:
    """A sha256 over (path relative to ``root``, size, label) of every sample; order does not matter.

    ``root`` defaults to the samples' common folder, so a copied dataset keeps its fingerprint.
    """
    return _fingerprint(samples, root, lambda path: str(path.stat().st_size))


def content_fingerprint(samples: Sequence[Sample], root: str | os.PathLike | None = None) -> str:
    """A sha256 over (path relative to ``root``, sha256 of the file's bytes, label) of every sample, in any order.

    Unlike ``fingerprint`` (path, size, label), an edited photo of the same size changes it (model cards).
    """
    return _fingerprint(samples, root, lambda path: hashlib.sha256(path.read_bytes()).hexdigest())


def _fingerprint(samples: Sequence[Sample], root: str | os.PathLike | None, fact: Any) -> str:
    """sha256 over sorted lines (relative path, ``fact(path)``, label)."""
    if not samples:
        raise ValidationError("cannot fingerprint an empty sample list", field="samples", value=0,
                              code="E_DATASET_EMPTY")
    paths = [Path(sample.path).resolve() for sample in samples]
    base = Path(root).resolve() if root is not None else Path(os.path.commonpath([p.parent for p in paths]))
    lines = []
    for sample, path in zip(samples, paths):
        try:
            value = fact(path)
        except FileNotFoundError:
            raise ValidationError(f"sample file is missing: {path}", field="path", value=str(path),
                                  code="E_DATASET_MISSING_FILE") from None
        lines.append(f"{path.relative_to(base).as_posix()}\t{value}\t{sample.label}")
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()
