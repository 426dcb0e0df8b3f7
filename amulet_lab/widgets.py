"""The notebook interface of ``01_classify.ipynb``: ``ClassifierApp``, built from a classifier.

All logic lives here so it is tested headless: a test sets ``app.front_upload.value`` to the
ipywidgets 8 shape (a tuple of dicts with ``name``, ``type``, ``size``, ``content`` as memoryview)
and reads ``app.state``. The notebook only builds the app and displays it.
"""

from __future__ import annotations

import dataclasses
import html
import io
import logging
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError

__all__ = ["ClassifierApp", "GalleryItem", "BAND_WORDS", "band_words", "upload_bytes", "sample_pair"]

log = logging.getLogger("amulet_lab.widgets")

#: The confidence band in plain words, as the user reads it.
BAND_WORDS = {"reliable": "Reliable", "verify": "Check with an expert", "retake": "Retake the photo"}
_BAND_COLOURS = {"reliable": "#2e7d32", "verify": "#ef6c00", "retake": "#c62828"}


def band_words(band: str) -> str:
    """``reliable`` / ``verify`` / ``retake`` in plain words."""
    if band not in BAND_WORDS:
        raise ValidationError(f"unknown confidence band {band!r}", field="band", value=band)
    return BAND_WORDS[band]


def sample_pair(folder: str | Path | None = None) -> tuple[Path, Path | None]:
    """A front photo and its back (if any) from the first class folder of ``folder`` (default: the samples)."""
    if folder is None:
        from amulet_lab.data import SAMPLES_DIR

        folder = SAMPLES_DIR
    from amulet_lab.data.dataset import IMAGE_SUFFIXES

    root = Path(folder)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) if root.is_dir() else []
    for cls in classes:
        photos = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        fronts = [p for p in photos if "front" in p.name]
        if fronts:
            back = fronts[0].with_name(fronts[0].name.replace("front", "back"))
            return fronts[0], (back if back.is_file() else None)
    raise ValidationError(f"no class folder with a front photo in {root}", field="folder", value=str(root), code="E_NO_IMAGE")


def upload_bytes(value: Any) -> tuple[str, bytes] | None:
    """``(name, bytes)`` of the last file in an ipywidgets 8 ``FileUpload.value``; None when empty."""
    if not value:
        return None
    if isinstance(value, dict):  # ipywidgets 7 shape: {name: {"content": ...}}; tolerated for old kernels
        name, item = list(value.items())[-1]
        item = dict(item, name=name)
    else:
        item = value[-1]
    if not isinstance(item, dict) or "content" not in item:
        raise ValidationError("unexpected FileUpload value: expected dicts with 'content'", field="upload", value=type(item).__name__)
    return str(item.get("name", "upload")), bytes(item["content"])


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One photo of the gallery: where it is, what was predicted, and how unsure (1 - confidence).

    A photo that could not be classified has no prediction, its error code in ``error`` and is listed last.
    """

    path: Path
    prediction: Any
    uncertainty: float
    error: str | None = None


def _thumbnail(data: bytes, side: int = 112) -> bytes:
    from amulet_lab.images import decode

    img = decode(data, target_size=side)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class ClassifierApp:
    """Upload a front photo (and optionally the back) or give paths; see names, band, agreement, timings.

    ``app.state`` holds what is shown (label, names, band words, agree, timings, cache hit, error);
    ``app.gallery(folder)`` classifies a folder and shows it sorted by uncertainty.
    """

    def __init__(self, classifier: Any, *, top_k: int = 3, thumbnail_px: int = 112) -> None:
        import ipywidgets as w

        if not hasattr(classifier, "predict_pair") or not hasattr(classifier, "predict_batch"):
            raise ValidationError("ClassifierApp needs a classifier with predict_pair and predict_batch",
                                  field="classifier", value=type(classifier).__name__)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValidationError("top_k must be a whole number >= 1", field="top_k", value=top_k)
        self.classifier = classifier
        self.top_k = top_k
        self.thumbnail_px = thumbnail_px
        self.result: Any = None
        self.gallery_items: list[GalleryItem] = []
        self.state: dict[str, Any] = {"status": "waiting for a photo"}

        self.front_upload = w.FileUpload(accept="image/*", multiple=False, description="Front photo")
        self.back_upload = w.FileUpload(accept="image/*", multiple=False, description="Back (optional)")
        self.front_path = w.Text(placeholder="…or a path to the front photo", layout=w.Layout(width="360px"))
        self.back_path = w.Text(placeholder="…and optionally the back", layout=w.Layout(width="360px"))
        self.classify_button = w.Button(description="Classify", button_style="primary", icon="search")
        self.front_preview = w.Image(format="jpeg", layout=w.Layout(max_width="220px"))
        self.back_preview = w.Image(format="jpeg", layout=w.Layout(max_width="220px"))
        self.result_html = w.HTML()
        self.chart = w.Image(format="png")
        self.latency_html = w.HTML()
        self.status = w.HTML("<i>Upload a front photo, or type a path and press Classify.</i>")
        self.gallery_path = w.Text(placeholder="folder of photos (empty: the samples)", layout=w.Layout(width="360px"))
        self.gallery_button = w.Button(description="Gallery", icon="th")
        self.gallery_box = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat(auto-fill, {thumbnail_px + 40}px)"))

        self.front_upload.observe(self._on_upload, names="value")
        self.back_upload.observe(self._on_upload, names="value")
        # A path typed after an upload replaces that upload (a browser cannot clear a FileUpload; without this
        # the old upload would win and be shown under the new path).
        self.front_path.observe(lambda ch: self._forget_upload(self.front_upload, ch), names="value")
        self.back_path.observe(lambda ch: self._forget_upload(self.back_upload, ch), names="value")
        self.classify_button.on_click(lambda _b: self._safely(self.classify))
        self.gallery_button.on_click(lambda _b: self._safely(lambda: self.gallery(self.gallery_path.value)))

        inputs = w.VBox([
            w.HBox([self.front_upload, self.front_path]),
            w.HBox([self.back_upload, self.back_path]),
            self.classify_button,
        ])
        single = w.HBox([w.VBox([self.front_preview, self.back_preview]),
                         w.VBox([self.result_html, self.chart, self.latency_html])])
        gallery = w.VBox([w.HBox([self.gallery_path, self.gallery_button]), self.gallery_box])
        self.tabs = w.Tab(children=[w.VBox([inputs, self.status, single]), gallery])
        self.tabs.set_title(0, "Classify")
        self.tabs.set_title(1, "Gallery (most uncertain first)")
        self.widget = self.tabs

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, settings: Any = None, **kwargs: Any) -> ClassifierApp:
        """An app over ``AmuletClassifier.from_checkpoint(path)`` (None: the default checkpoint)."""
        from amulet_lab.model import AmuletClassifier

        return cls(AmuletClassifier.from_checkpoint(path, settings=settings), **kwargs)

    # ---- display -------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"ClassifierApp(status={self.state.get('status')!r}, label={self.state.get('label')!r})"

    # ---- actions -------------------------------------------------------------------------
    def _on_upload(self, change: dict[str, Any]) -> None:
        if change.get("new"):
            self._safely(self.classify)

    @staticmethod
    def _forget_upload(upload: Any, change: dict[str, Any]) -> None:
        if str(change.get("new") or "").strip() and upload.value:
            upload.value = ()

    def _safely(self, action: Any) -> None:
        """Run a button/upload action; our own errors are shown to the user, anything else propagates."""
        try:
            action()
        except AmuletError as exc:
            self.state = {"status": "error", "error": exc.code, "message": exc.message}
            self.status.value = f"<span style='color:#c62828'>⚠ {html.escape(exc.message)} <code>{exc.code}</code></span>"
            log.info("classify app: %s", exc.code)

    def _inputs(self) -> tuple[tuple[str, bytes] | None, tuple[str, bytes] | None]:
        front = upload_bytes(self.front_upload.value)
        back = upload_bytes(self.back_upload.value)
        if front is None and self.front_path.value.strip():
            p = Path(self.front_path.value.strip()).expanduser()
            front = (p.name, _read(p))
        if back is None and self.back_path.value.strip():
            p = Path(self.back_path.value.strip()).expanduser()
            back = (p.name, _read(p))
        return front, back

    def classify(self) -> Any:
        """Classify the current front (and back) input, update every widget and ``state``; returns the pair."""
        self._clear()  # a failure below must never leave the previous photo's result on show
        front, back = self._inputs()
        if front is None:
            raise ValidationError("no front photo: upload one or give its path", field="front", code="E_NO_IMAGE")
        self.status.value = "<i>classifying…</i>"
        pair = self.classifier.predict_pair(front[1], back[1] if back else None)
        self.result = pair
        self.front_preview.value = _thumbnail(front[1], 220)
        self.back_preview.value = _thumbnail(back[1], 220) if back else b""
        self._show(pair, front[0], back[0] if back else None)
        return pair

    def _clear(self) -> None:
        """Forget and blank the last result (previews, names, chart, timings)."""
        self.result = None
        self.state = {"status": "classifying"}
        self.front_preview.value = b""
        self.back_preview.value = b""
        self.result_html.value = ""
        self.chart.value = b""
        self.latency_html.value = ""

    def _show(self, pair: Any, front_name: str, back_name: str | None) -> None:
        from amulet_lab.bench.plots import figure_to_png, topk_figure

        main = pair.combined if getattr(pair, "combined", None) is not None else pair.front
        band = main.confidence_band
        agree = pair.agree
        agree_text = "only the front was given" if agree is None else ("front and back agree" if agree else "front and back DISAGREE")
        timings = {side: dict(p.timings) for side, p in (("front", pair.front), ("back", pair.back)) if p is not None}
        cache_hit = {side: bool(p.cache_hit) for side, p in (("front", pair.front), ("back", pair.back)) if p is not None}
        top = [tuple(row) for row in main.top_k[: self.top_k]]
        self.state = {
            "status": "done",
            "front": front_name,
            "back": back_name,
            "label": main.label,
            "english": main.english_name,
            "thai": main.thai_name,
            "confidence": float(main.confidence),
            "band": band,
            "band_text": band_words(band),
            "is_unknown": bool(main.is_unknown),
            "agree": agree,
            "agree_text": agree_text,
            "top_k": top,
            "timings": timings,
            "cache_hit": cache_hit,
        }
        colour = _BAND_COLOURS[band]
        unknown = "<p><b>Not one of the six known types.</b></p>" if main.is_unknown else ""
        self.result_html.value = (
            f"<h3 style='margin:0'>{html.escape(main.english_name)}</h3>"
            f"<div style='font-size:1.3em'>{html.escape(main.thai_name)}</div>{unknown}"
            f"<p><span style='background:{colour};color:white;padding:2px 8px;border-radius:8px'>"
            f"{html.escape(band_words(band))}</span> confidence {main.confidence:.0%}</p>"
            f"<p>{html.escape(agree_text)}</p>"
        )
        self.chart.value = figure_to_png(topk_figure(top, title="top-k probabilities"))
        from amulet_lab.display import html_table

        self.latency_html.value = "".join(
            html_table(
                [(f"{stage} ms", f"{t[stage]:.1f}") for stage in ("decode", "preprocess", "infer", "postprocess", "total")
                 if stage in t] + [("answer", "⚡ cache hit" if cache_hit[side] else "computed")],
                caption=f"{side} photo",
            )
            for side, t in timings.items()
        )
        self.status.value = f"<i>classified {html.escape(front_name)}" + (f" + {html.escape(back_name)}" if back_name else "") + "</i>"

    def classify_paths(self, front: str | Path | None = None, back: str | Path | None = None) -> Any:
        """Classify photos by path, as if typed into the path boxes (None, None: a sample front and back)."""
        if front is None:
            front, default_back = sample_pair()
            back = default_back if back is None else back
        self.front_upload.value = ()
        self.back_upload.value = ()
        self.front_path.value = str(front)
        self.back_path.value = "" if back is None else str(back)
        return self.classify()

    def describe(self) -> str:
        """What the app shows now, in plain text (for notebooks and logs)."""
        st = self.state
        if st.get("status") != "done":
            return f"status: {st.get('status')}" + (f" ({st.get('error')}: {st.get('message')})" if st.get("error") else "")
        stages = [k for k in ("decode", "preprocess", "infer", "postprocess") if k in st["timings"]["front"]]
        return "\n".join([
            f"photos: {st['front']}" + (f" + {st['back']}" if st["back"] else ""),
            f"prediction: {st['english']} ({st['thai']}), key {st['label']}",
            f"band: {st['band_text']}",
            f"sides: {st['agree_text']}",
            f"top-k shown: {len(st['top_k'])}",
            f"stages timed: {', '.join(stages)}",
        ])

    def gallery(self, folder: str | Path | None = None, *, limit: int = 60, batch_size: int = 16,
                progress: bool = True) -> list[GalleryItem]:
        """Classify up to ``limit`` photos under ``folder`` (None or empty: the samples), most uncertain first.

        Photos go through the model in batches of ``batch_size`` with a progress bar; a batch that fails is
        retried photo by photo, and a photo that still fails is shown marked with its error (listed last)
        instead of ending the gallery.
        """
        import ipywidgets as w
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
        self.gallery_items = items
        cards = []
        for it in items:
            if it.error is not None:
                caption = (f"<div style='font-size:11px;line-height:1.2;color:#c62828'><b>⚠ not classified</b><br>"
                           f"<code>{html.escape(it.error)}</code><br>{html.escape(it.path.name)}</div>")
                cards.append(w.VBox([w.HTML(caption)]))
                continue
            caption = (
                f"<div style='font-size:11px;line-height:1.2'><b>{html.escape(it.prediction.english_name)}</b><br>"
                f"{it.prediction.confidence:.0%} · {html.escape(band_words(it.prediction.confidence_band))}<br>"
                f"<span style='color:#777'>{html.escape(it.path.name)}</span></div>"
            )
            cards.append(w.VBox([w.Image(value=_thumbnail(it.path.read_bytes(), self.thumbnail_px), format="jpeg"),
                                 w.HTML(caption)]))
        self.gallery_box.children = tuple(cards)
        return items

    def _classify_chunk(self, paths: list[Path]) -> list[GalleryItem]:
        """One batch through the model; when it fails, photo by photo so only the bad ones are marked."""
        try:
            preds = self.classifier.predict_batch(paths, batch_size=len(paths))
            return [GalleryItem(p, pred, 1.0 - float(pred.confidence)) for p, pred in zip(paths, preds)]
        except AmuletError:
            log.info("gallery batch failed; classifying its %d photos one by one", len(paths))
        items = []
        for p in paths:
            try:
                pred = self.classifier.predict_batch([p], batch_size=1)[0]
            except AmuletError as exc:
                items.append(GalleryItem(p, None, 1.0, error=exc.code))
                continue
            items.append(GalleryItem(p, pred, 1.0 - float(pred.confidence)))
        return items

    def describe_gallery(self) -> str:
        """The gallery in plain text: how many photos, whether sorted most uncertain first, how many failed."""
        u = [it.uncertainty for it in self.gallery_items if it.error is None]
        ordered = all(a >= b for a, b in zip(u, u[1:]))
        failed = sum(1 for it in self.gallery_items if it.error is not None)
        return (f"gallery photos: {len(self.gallery_items)}, most uncertain first: {ordered}, "
                f"not classified: {failed}, cards shown: {len(self.gallery_box.children)}")


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ValidationError(f"photo not found: {path}", field="path", value=str(path), code="E_IMAGE_NOT_FOUND")
    return path.read_bytes()

