"""The Gallery tab: a folder of photos classified in batches, shown most uncertain first, and reviewed.

Under the grid, ``widgets.review.ReviewPanel`` lets a person confirm or correct each card's label into a
``path,sha256,label`` CSV; the cards carry the marks (confirmed, corrected, changed since the review).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError
from amulet_lab.fonts import thai_html
from amulet_lab.widgets._html import _WRAP, _img_html, _placeholder, _thumbnail, _uncertainty, band_words
from amulet_lab.widgets.review import ReviewPanel

__all__ = ["Gallery", "GalleryItem"]

log = logging.getLogger("amulet_lab.widgets")


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One photo of the gallery: where it is, what was predicted, and how unsure (1 - confidence).

    A photo that could not be classified has no prediction, its error code in ``error`` and is listed last.
    """

    path: Path
    prediction: Any
    uncertainty: float
    error: str | None = None




class Gallery:
    """A folder classified with ``classifier.predict_batch`` and shown as cards, the least certain first."""

    def __init__(self, classifier: Any, *, thumbnail_px: int = 112) -> None:
        import ipywidgets as w

        self.classifier = classifier
        self.thumbnail_px = thumbnail_px
        self.items: list[GalleryItem] = []
        self._cards = 0
        self._thumbs: list[str] = []  # per item, its thumbnail HTML (made once per gallery)
        self._head = ""
        self.review = ReviewPanel(on_change=self._render)
        self.path = w.Text(placeholder="folder of photos (empty: the samples)", layout=w.Layout(width="360px"))
        self.button = w.Button(description="Gallery", icon="th")
        self.html = w.HTML(
            "<p><i>Press <b>Gallery</b> to classify a folder of photos (empty: the samples); "
            "the least certain answers come first.</i></p>", layout=w.Layout(width="auto"))
        self.box = w.VBox([self.html], layout=w.Layout(width="auto"))
        self.widget = w.VBox([
            w.HTML("<b>Most uncertain first</b>: the photos whose answers most need a second look lead."),
            w.HBox([self.path, self.button]),
            self.box,
            self.review.widget,
        ])

    def __repr__(self) -> str:
        return f"Gallery(photos={len(self.items)}, cards={self._cards}, reviewed={self.review.reviewed_count()})"

    def show(self, folder: str | Path | None = None, *, limit: int = 60, batch_size: int = 16,
             progress: bool = True, review_csv: str | Path | None = None) -> list[GalleryItem]:
        """Classify up to ``limit`` photos under ``folder`` (None or empty: the samples), most uncertain first.

        Photos go through the model in batches of ``batch_size`` with a progress bar; a batch that fails is
        retried photo by photo, and a photo that still fails is shown marked with its error (listed last)
        instead of ending the gallery. The cards are one HTML widget (thumbnails inline), so a saved notebook
        shows the gallery when reopened, before any cell is run again. The review area under the grid saves
        confirmed or corrected labels to ``review_csv`` (default: ``review.csv`` in the folder).
        """
        from tqdm.auto import tqdm

        from amulet_lab.bench.scenarios import image_paths

        if folder is None or not str(folder).strip():
            from amulet_lab.data import SAMPLES_DIR

            folder = SAMPLES_DIR
        root = Path(str(folder).strip()).expanduser()
        if not root.is_dir():
            raise ValidationError(f"not a folder: {folder!r}", field="folder", value=str(folder), code="E_NO_FOLDER")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValidationError("batch_size must be a whole number >= 1", field="batch_size", value=batch_size)
        paths = image_paths(root, limit=limit)
        items: list[GalleryItem] = []
        with tqdm(total=len(paths), desc="gallery", disable=not progress, leave=False) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                items.extend(self._classify_chunk(chunk))
                bar.update(len(chunk))
        items.sort(key=lambda it: (it.error is not None, -it.uncertainty, str(it.path)))
        self.items = items
        self._thumbs = [self._thumb(it) for it in items]
        self._cards = len(items)
        failed = sum(1 for it in items if it.error is not None)
        when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self._head = (f"<p style='{_WRAP}'><b>{len(items)} photo(s)</b> from <code>{html.escape(str(root))}</code>, "
                      f"most uncertain first{f', {failed} not classified' if failed else ''} · classified {when}. "
                      "<span style='color:#777'>Saved with the notebook; to classify another folder or review after "
                      "reopening it, run the notebook's cells first (the buttons need its running kernel).</span></p>")
        classified = [i for i, it in enumerate(items) if it.error is None]  # a photo the model cannot read is not reviewed
        self.review.attach([items[i] for i in classified], [self._thumbs[i] for i in classified], root, review_csv)
        self._render()
        return items

    def _render(self) -> None:
        """The heading and the grid of cards into the one HTML widget (thumbnails reused, review marks current)."""
        cards = [self._card(i, it) for i, it in enumerate(self.items)]
        grid = (f"<div style='display:grid;grid-template-columns:repeat(auto-fill, minmax({self.thumbnail_px + 40}px, 1fr));"
                f"gap:8px;width:100%;box-sizing:border-box'>{''.join(cards)}</div>") if cards else \
            "<p><i>No photos found in this folder.</i></p>"
        if self._head:
            self.html.value = self._head + grid

    def _thumb(self, it: GalleryItem) -> str:
        """A card's thumbnail as inline HTML, or a placeholder when there is none."""
        if it.error is None:
            try:
                return _img_html(_thumbnail(it.path.read_bytes(), self.thumbnail_px), "image/jpeg", alt=it.path.name,
                                 max_width=self.thumbnail_px)
            except (AmuletError, OSError) as exc:  # shown as "no preview": the answer stays on the card
                log.info("gallery: no thumbnail for %s (%s)", it.path.name, type(exc).__name__)
        return _placeholder("no preview", width=self.thumbnail_px, height=self.thumbnail_px)

    def _card(self, index: int, it: GalleryItem) -> str:
        """One gallery card as HTML: number, thumbnail, names, confidence, band, review mark, file name (wrapped)."""
        box = ("class='amulet-card' style='min-width:0;overflow:hidden;box-sizing:border-box;padding:4px;"
               "border:1px solid #e0e0e0;border-radius:6px;font-size:11px;line-height:1.25'")
        name = f"<div style='color:#777;{_WRAP}'>#{index + 1} {html.escape(it.path.name)}</div>"
        thumb = self._thumbs[index]
        if it.error is not None:
            return (f"<div {box}>{thumb}"
                    f"<div style='color:#c62828'><b>⚠ not classified</b><br><code>{html.escape(it.error)}</code></div>"
                    f"{name}</div>")
        pred = it.prediction
        mark = self.review.marker(it)
        if pred.is_unknown:  # no name above it and no band: the card says what it is
            return (f"<div {box}>{thumb}<div style='color:#616161;{_WRAP}'><b>{html.escape(band_words('unknown'))}"
                    f"</b></div>{mark}{name}</div>")
        return (f"<div {box}>{thumb}<div style='{_WRAP}'><b>{html.escape(pred.english_name)}</b></div>"
                f"{thai_html(pred.thai_name, tag='div', style=_WRAP)}"
                f"<div>{pred.confidence:.0%} · {html.escape(band_words(pred.confidence_band))}</div>{mark}{name}</div>")

    def _classify_chunk(self, paths: list[Path]) -> list[GalleryItem]:
        """One batch through the model; when it fails, photo by photo so only the bad ones are marked."""
        try:
            preds = self.classifier.predict_batch(paths, batch_size=len(paths))
            return [GalleryItem(p, pred, _uncertainty(pred)) for p, pred in zip(paths, preds)]
        except AmuletError:
            log.info("gallery batch failed; classifying its %d photos one by one", len(paths))
        items = []
        for p in paths:
            try:
                pred = self.classifier.predict_batch([p], batch_size=1)[0]
            except AmuletError as exc:
                items.append(GalleryItem(p, None, 1.0, error=exc.code))
                continue
            items.append(GalleryItem(p, pred, _uncertainty(pred)))
        return items

    def describe(self) -> str:
        """The gallery in plain text: how many photos, whether sorted most uncertain first, how many failed."""
        u = [it.uncertainty for it in self.items if it.error is None]
        ordered = all(a >= b for a, b in zip(u, u[1:]))
        failed = sum(1 for it in self.items if it.error is not None)
        return (f"gallery photos: {len(self.items)}, most uncertain first: {ordered}, "
                f"not classified: {failed}, cards shown: {self._cards}, reviewed: {self.review.reviewed_count()}")


