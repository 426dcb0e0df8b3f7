"""The gallery's review area: confirm or correct a card's label, written at once to a ``path,sha256,label`` CSV.

One area under the grid rather than controls on every card: with 60 cards that is three widgets, not 120,
and the grid stays one HTML widget (a saved notebook shows it, review marks included). Pick a card by its
number (most uncertain first), choose its label (the six classes or *not an amulet of these types*), press
**Confirm**: the row is saved atomically (a re-review replaces it), the card is marked, and the next card not
yet reviewed is selected. ``amulet-lab train --labels CSV`` (or ``load_dataset(..., review=CSV)``) trains on it.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.data.labels import load_labels
from amulet_lab.data.review import NOT_AMULET, ReviewLabels, ReviewRow
from amulet_lab.errors import AmuletError, ValidationError
from amulet_lab.widgets._html import _WRAP

__all__ = ["ReviewPanel", "NOT_AMULET_TEXT", "REVIEW_FILE"]

log = logging.getLogger("amulet_lab.widgets")

#: What the review calls a photo that is none of the six types.
NOT_AMULET_TEXT = "Not an amulet of these types"
#: The review CSV's name in the gallery's folder, unless another is typed.
REVIEW_FILE = "review.csv"


class ReviewPanel:
    """Confirm or correct the gallery's answers one card at a time; each Confirm saves the CSV atomically."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        import ipywidgets as w

        self._on_change = on_change or (lambda: None)
        self.names = {label.key: label.english for label in load_labels()}
        self.names[NOT_AMULET] = NOT_AMULET_TEXT
        self.items: list[Any] = []  # the gallery's classified items, in card order
        self.thumbs: list[str] = []
        self.review: ReviewLabels | None = None
        self.state: dict[str, Any] = {"status": "no gallery yet"}
        self._current: dict[Path, bool | None] = {}  # per reviewed photo: bytes unchanged since its review?
        self._auto_csv = ""
        self._quiet = False
        self.csv = w.Text(description="labels CSV", continuous_update=False, layout=w.Layout(width="520px"),
                          style={"description_width": "80px"})
        self.card = w.Dropdown(description="photo", options=[], layout=w.Layout(width="520px"),
                               style={"description_width": "80px"})
        self.label = w.Dropdown(description="label", options=[(name, key) for key, name in self.names.items()],
                                layout=w.Layout(width="360px"), style={"description_width": "80px"})
        self.confirm_button = w.Button(description="Confirm", icon="check", button_style="success",
                                       tooltip="save this label for the photo and go to the next one not reviewed")
        self.preview = w.HTML()
        self.status = w.HTML()
        self.card.observe(lambda _ch: None if self._quiet else self._safely(self._show_card), names="value")
        self.csv.observe(lambda _ch: None if self._quiet else self._safely(self._load), names="value")
        self.confirm_button.on_click(lambda _b: self._safely(self.confirm))
        self.widget = w.VBox([
            w.HTML("<b>Review</b>: confirm or correct the answers, the least certain first. Each <b>Confirm</b> "
                   "saves the photo's label to the CSV (<code>amulet-lab train --labels CSV</code> trains on it)."),
            self.csv,
            w.HBox([w.VBox([self.card, w.HBox([self.label, self.confirm_button])]), self.preview]),
            self.status,
        ], layout=w.Layout(display="none", border="1px solid #e0e0e0", padding="6px", margin="8px 0 0 0"))

    def __repr__(self) -> str:
        return f"ReviewPanel(cards={len(self.items)}, reviewed={self.reviewed_count()}, csv={self.csv.value!r})"

    # ---- what the gallery calls -------------------------------------------------------------------

    def attach(self, items: Sequence[Any], thumbs: Sequence[str], folder: Path, csv: str | Path | None = None) -> None:
        """Review these items (the gallery's classified cards, in order) into ``csv`` (default: folder/review.csv)."""
        if len(items) != len(thumbs):
            raise ValidationError("one thumbnail per item", field="thumbs", value=len(thumbs))
        self.items, self.thumbs = list(items), list(thumbs)
        if csv is not None and str(csv).strip():
            target = str(Path(str(csv).strip()).expanduser())
        elif not self.csv.value.strip() or self.csv.value == self._auto_csv:  # the user's own path stays
            target = self._auto_csv = str(folder / REVIEW_FILE)
        else:
            target = self.csv.value
        self._quiet = True
        try:
            self.csv.value = target
        finally:
            self._quiet = False
        self.widget.layout.display = "flex" if self.items else "none"
        self._safely(self._load)  # an unreadable CSV is said in the review area; the gallery still shows

    def marker(self, item: Any) -> str:
        """The review line of a card's HTML ('' when not reviewed): confirmed, corrected, or changed since."""
        row = self._row(item.path)
        if row is None:
            return ""
        name = html.escape(self.names.get(row.label, row.label))
        if self._current.get(row.path) is False:
            return (f"<div class='amulet-review' style='color:#c62828;{_WRAP}'>⚠ changed since it was reviewed as "
                    f"{name}: review it again</div>")
        if item.prediction is not None and _predicted_key(item.prediction) == row.label:
            return f"<div class='amulet-review' style='color:#2e7d32;{_WRAP}'>✓ confirmed: {name}</div>"
        return f"<div class='amulet-review' style='color:#1565c0;{_WRAP}'>✎ corrected: {name}</div>"

    def reviewed_count(self) -> int:
        """How many of the cards have a current review row."""
        return sum(1 for it in self.items if self._row(it.path) is not None
                   and self._current.get(it.path.resolve()) is not False)

    # ---- the user's actions -------------------------------------------------------------------

    def select(self, index: int) -> None:
        """Select card ``index`` (0-based, card order) for review."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.items):
            raise ValidationError(f"no card {index!r} (there are {len(self.items)})", field="index", value=index,
                                  code="E_REVIEW_CARD")
        self.card.value = index

    def confirm(self, index: int | None = None, label: str | None = None) -> ReviewRow:
        """Save ``label`` (default: the dropdown's) for card ``index`` (default: the selected one), then go on."""
        if self.review is None:
            raise ValidationError("no review CSV is open: type a path for it", field="csv", value=self.csv.value,
                                  code="E_REVIEW_PATH")
        if index is not None:
            self.select(index)
        if self.card.value is None:
            raise ValidationError("no card is selected", field="index", value=None, code="E_REVIEW_CARD")
        item = self.items[self.card.value]
        chosen = self.label.value if label is None else label
        row = self.review.record(item.path, chosen)
        self._current[row.path] = True
        said = _predicted_key(item.prediction)
        what = "confirmed" if said == chosen else f"corrected (the model said {self.names.get(said, said)})"
        number = self.card.value + 1
        self.state = {"status": "saved", "card": number, "path": str(item.path), "label": chosen,
                      "corrected": said != chosen, "reviewed": self.reviewed_count(), "csv": str(self.review.path)}
        self._refresh_options()
        self._on_change()
        self.status.value = (f"<span style='color:#2e7d32;{_WRAP}'>Saved #{number} {html.escape(item.path.name)} as "
                             f"<b>{html.escape(self.names[chosen])}</b>, {html.escape(what)} · "
                             f"{self.state['reviewed']} of {len(self.items)} reviewed · "
                             f"<code>{html.escape(str(self.review.path))}</code></span>")
        self._advance()
        return row

    # ---- inside -------------------------------------------------------------------

    def _row(self, path: Path) -> ReviewRow | None:
        return None if self.review is None else self.review.get(path)

    def _load(self) -> None:
        """Open the CSV the box names (a missing file is an empty review); mark the cards it already holds."""
        self.review, self._current = None, {}
        self.confirm_button.disabled = True
        try:
            self.review = ReviewLabels.load(self.csv.value)
        except AmuletError:  # the cards lose their marks and Confirm stays off until a readable CSV is named
            self._refresh_options()
            self._on_change()
            raise
        for it in self.items:
            row = self.review.get(it.path)
            if row is not None:
                self._current[row.path] = self.review.is_current(row)
        self.confirm_button.disabled = not self.items
        self._refresh_options()
        self._on_change()
        self._advance(start=-1)
        self.state = {"status": "open", "csv": str(self.review.path), "reviewed": self.reviewed_count(),
                      "rows": len(self.review)}
        changed = sum(1 for v in self._current.values() if v is False)
        self.status.value = (f"<span style='color:#555;{_WRAP}'>{self.reviewed_count()} of {len(self.items)} card(s) "
                             f"reviewed in <code>{html.escape(str(self.review.path))}</code>"
                             f"{'' if self.review.path.is_file() else ' (a new file, written at the first Confirm)'}"
                             f"{f'; {changed} changed since their review' if changed else ''}.</span>")

    def _refresh_options(self) -> None:
        """The card list: number, file name, the model's answer, and a tick when reviewed."""
        options = []
        for i, it in enumerate(self.items):
            row = self._row(it.path)
            done = row is not None and self._current.get(row.path) is not False
            pred = it.prediction
            said = "unknown" if pred.is_unknown else f"{pred.english_name} {pred.confidence:.0%}"
            options.append((f"{'✓ ' if done else ''}#{i + 1} {it.path.name} · {said}", i))
        keep = self.card.value
        self._quiet = True
        try:
            self.card.options = options
            self.card.value = keep if keep is not None and keep < len(options) else (0 if options else None)
        finally:
            self._quiet = False
        self._show_card()

    def _advance(self, start: int | None = None) -> None:
        """Select the next card (after ``start``, default the selected one) not reviewed yet; else stay."""
        if not self.items:
            return
        here = self.card.value if start is None else start
        here = -1 if here is None else here
        n = len(self.items)
        for step in range(1, n + 1):
            i = (here + step) % n
            row = self._row(self.items[i].path)
            if row is None or self._current.get(row.path) is False:
                self.card.value = i
                return

    def _show_card(self) -> None:
        """The selected card's thumbnail and answer; the label dropdown set to its review or the model's answer."""
        i = self.card.value
        if i is None or not self.items:
            self.preview.value = ""
            return
        item = self.items[i]
        row = self._row(item.path)
        choice = row.label if row is not None else _predicted_key(item.prediction)
        self.label.value = choice if choice in self.names else NOT_AMULET
        pred = item.prediction
        said = NOT_AMULET_TEXT if pred.is_unknown else f"{pred.english_name} ({pred.confidence:.0%})"
        self.preview.value = (f"<div class='amulet-review-preview' style='display:flex;gap:8px;align-items:center;"
                              f"font-size:12px;{_WRAP}'>{self.thumbs[i]}<div>#{i + 1} "
                              f"{html.escape(item.path.name)}<br>the model: {html.escape(said)}"
                              f"{self.marker(item)}</div></div>")

    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a user action; our errors are shown in the review's status line with their code."""
        try:
            action()
        except AmuletError as exc:
            self.state = {"status": "error", "error": exc.code, "message": exc.message}
            self.status.value = (f"<span style='color:#c62828;{_WRAP}'>⚠ {html.escape(exc.message)} "
                                 f"<code>{html.escape(exc.code)}</code></span>")
            log.info("review: %s", exc.code)


def _predicted_key(pred: Any) -> str:
    """The label a card's answer stands for: its class key, or ``_unknown`` when the model said unknown."""
    return NOT_AMULET if pred.is_unknown else pred.label
