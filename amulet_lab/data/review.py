"""Reviewed labels: a CSV ``path,sha256,label`` of photos a person confirmed or corrected (the gallery writes it).

One row per photo. ``path`` is relative to the CSV's folder when the photo lies under it (the folder and its
review travel together), else absolute. ``sha256`` is of the photo's bytes when it was reviewed, so a photo
changed afterwards is noticed. ``label`` is a key of ``labels.json`` or ``_unknown`` (*not an amulet of these
types*: left out of the classes when training). The file is always rewritten whole and atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from amulet_lab.data.labels import Label, load_labels
from amulet_lab.errors import ValidationError

__all__ = ["ReviewLabels", "ReviewRow", "REVIEW_HEADER", "NOT_AMULET", "photo_sha256"]

#: The CSV's header, exactly.
REVIEW_HEADER = ("path", "sha256", "label")
#: The label of a photo that is not an amulet of the six types (the folder convention ``_unknown/``).
NOT_AMULET = "_unknown"
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ReviewRow:
    """One reviewed photo: its resolved path, the sha256 of its bytes when reviewed, and the label given."""

    path: Path
    sha256: str
    label: str


def photo_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a photo file's bytes; ``E_REVIEW_MISSING_FILE`` when it is not a file."""
    found = Path(path)
    if not found.is_file():
        raise ValidationError(f"photo not found: {found}", field="path", value=str(found), code="E_REVIEW_MISSING_FILE")
    digest = hashlib.sha256()
    with open(found, "rb") as handle:
        while chunk := handle.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


class ReviewLabels:
    """The reviewed labels of one CSV: ``load`` it, ``set`` a photo's label (a re-review replaces its row), ``save``."""

    def __init__(self, path: str | os.PathLike[str], labels: Sequence[Label] | None = None) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValidationError(f"expected a CSV path, got {path!r}", field="path", value=repr(path),
                                  code="E_REVIEW_PATH")
        self.path = Path(path).expanduser()
        self.labels = list(labels) if labels is not None else load_labels()
        self.keys = tuple(label.key for label in self.labels) + (NOT_AMULET,)
        self._rows: dict[Path, ReviewRow] = {}

    def __repr__(self) -> str:
        return f"ReviewLabels(path={str(self.path)!r}, rows={len(self._rows)})"

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ReviewRow]:
        return iter(sorted(self._rows.values(), key=lambda row: row.path.as_posix()))

    def __contains__(self, photo: object) -> bool:
        return isinstance(photo, (str, os.PathLike)) and self._key(photo) in self._rows

    @classmethod
    def load(cls, path: str | os.PathLike[str], labels: Sequence[Label] | None = None, *,
             must_exist: bool = False) -> ReviewLabels:
        """Read and validate a review CSV (a missing file is an empty review unless ``must_exist``)."""
        review = cls(path, labels)
        if not review.path.is_file():
            if must_exist:
                raise ValidationError(f"review CSV not found: {review.path}", field="labels", value=str(review.path),
                                      code="E_REVIEW_NOT_FOUND")
            return review
        try:
            text = review.path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is tolerated
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"cannot read review CSV {review.path}: {exc}", field="labels",
                                  value=str(review.path), code="E_REVIEW_READ") from exc
        review._parse(text)
        return review

    def _parse(self, text: str) -> None:
        """Fill the rows from CSV text: header, columns, sha256 form, label keys and duplicates checked."""
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or tuple(cell.strip() for cell in header) != REVIEW_HEADER:
            raise ValidationError(f"review CSV {self.path} must start with the header {','.join(REVIEW_HEADER)}, "
                                  f"got {','.join(header or []) or 'nothing'}", field="header",
                                  value=header, code="E_REVIEW_HEADER")
        for line, cells in enumerate(reader, start=2):
            if not cells or not any(cell.strip() for cell in cells):
                continue  # a blank line
            context = {"csv": str(self.path), "line": line}
            if len(cells) != 3 or not cells[0].strip():
                raise ValidationError(f"{self.path} line {line}: expected path,sha256,label, got {cells!r}",
                                      field="row", value=cells, code="E_REVIEW_ROW", context=context)
            raw_path, sha, label = (cell.strip() for cell in cells)
            if not _SHA.match(sha):
                raise ValidationError(f"{self.path} line {line}: {sha!r} is not a sha256 (64 lower-case hex digits)",
                                      field="sha256", value=sha, code="E_REVIEW_ROW", context=context)
            self._check_label(label, context)
            key = self._key(raw_path)
            if key in self._rows:
                raise ValidationError(f"{self.path} line {line}: {raw_path} is listed twice (one row per photo)",
                                      field="path", value=raw_path, code="E_REVIEW_DUPLICATE", context=context)
            self._rows[key] = ReviewRow(key, sha, label)

    def _check_label(self, label: object, context: dict | None = None) -> str:
        if not isinstance(label, str) or label not in self.keys:
            raise ValidationError(f"unknown label {label!r}: expected one of {', '.join(self.keys)}", field="label",
                                  value=label, code="E_REVIEW_LABEL", context=context)
        return label

    def _key(self, photo: str | os.PathLike[str]) -> Path:
        """A photo's path as the review keys it: relative paths are under the CSV's folder; resolved."""
        path = Path(photo).expanduser()
        return (path if path.is_absolute() else self.path.parent / path).resolve()

    def get(self, photo: str | os.PathLike[str]) -> ReviewRow | None:
        """The row of a photo, or None when it was not reviewed."""
        return self._rows.get(self._key(photo))

    def set(self, photo: str | os.PathLike[str], label: str) -> ReviewRow:
        """Record ``label`` for a photo (its sha256 read now); replaces the photo's earlier row. Not saved yet."""
        self._check_label(label)
        key = self._key(photo)
        row = ReviewRow(key, photo_sha256(key), label)
        self._rows[key] = row
        return row

    def record(self, photo: str | os.PathLike[str], label: str) -> ReviewRow:
        """``set`` then ``save``; when the save fails the review in memory is put back as the file still has it."""
        key = self._key(photo)
        previous = self._rows.get(key)
        row = self.set(key, label)
        try:
            self.save()
        except BaseException:
            if previous is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = previous
            raise
        return row

    def remove(self, photo: str | os.PathLike[str]) -> bool:
        """Forget a photo's review; True when it had one. Not saved yet."""
        return self._rows.pop(self._key(photo), None) is not None

    def is_current(self, row: ReviewRow) -> bool | None:
        """True when the photo's bytes still have the reviewed sha256, False when they changed, None when it is gone."""
        return None if not row.path.is_file() else photo_sha256(row.path) == row.sha256

    def stale(self) -> list[ReviewRow]:
        """Rows whose photo exists but whose bytes changed since the review."""
        return [row for row in self if self.is_current(row) is False]

    def missing(self) -> list[ReviewRow]:
        """Rows whose photo is no longer there."""
        return [row for row in self if not row.path.is_file()]

    def to_csv(self) -> str:
        """The CSV text: the header, then one row per photo in path order."""
        base = self.path.parent.resolve()
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(REVIEW_HEADER)
        for row in self:
            shown = row.path.relative_to(base).as_posix() if row.path.is_relative_to(base) else str(row.path)
            writer.writerow((shown, row.sha256, row.label))
        return out.getvalue()

    def save(self) -> Path:
        """Write the CSV atomically (the old file or the new one, never part of either); returns its path."""
        from amulet_lab.files import atomic_write_text

        try:
            return atomic_write_text(self.path, self.to_csv())
        except OSError as exc:
            raise ValidationError(f"cannot write review CSV {self.path}: {exc}", field="labels", value=str(self.path),
                                  code="E_REVIEW_WRITE") from exc
