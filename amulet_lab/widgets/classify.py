"""The notebook app of ``01_classify.ipynb``: ``ClassifierApp``, built from a classifier (Classify, Gallery,
Phone photo and Train tabs).

All logic lives here so it is tested headless: a test sets ``app.front_upload.value`` to the
ipywidgets 8 shape (a tuple of dicts with ``name``, ``type``, ``size``, ``content`` as memoryview),
presses the buttons (``app.classify_button.click()``) and reads ``app.state`` and the HTML the widgets
hold. The notebook only builds the app and displays it.

Each side (front, back) has one source at a time: an upload, a typed path, or photos given in code
(``classify_paths``); the active one is named under the inputs, and a Clear button removes it. A new
front replaces the previous photo: the back given with that photo is removed (and the app says so), so
a new front is never silently paired with an old back. Images (previews, the chart, the gallery) are
``<img>`` tags inside HTML widgets, with a placeholder where there is nothing to show, so the saved
notebook holds them in its widget state and shows them when reopened, and never a broken image.
"""

from __future__ import annotations

import dataclasses
import html
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError
from amulet_lab.fonts import thai_html
from amulet_lab.widgets._explain import WhyPanel
from amulet_lab.widgets._html import (_BAND_COLOURS, _CHART_PX, _PREVIEW_PX, _SIDES, _WRAP, _img_html, _placeholder,
                                      _read, _thumbnail, band_words, decoded_once, english_name, sample_pair, thai_face_for,
                                      upload_bytes)
from amulet_lab.widgets.gallery import Gallery, GalleryItem
from amulet_lab.widgets.scene import ScenePanel
from amulet_lab.widgets.train import TrainPanel

__all__ = ["ClassifierApp"]

log = logging.getLogger("amulet_lab.widgets")


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where one side's photo comes from: ``upload`` (bytes kept), ``path`` (typed) or ``code`` (classify_paths)."""

    kind: str
    name: str
    data: bytes | None = None

    def read(self) -> tuple[str, bytes]:
        if self.data is not None:
            return self.name, self.data
        path = Path(self.name).expanduser()
        return path.name, _read(path)

    def describe(self) -> str:
        how = {"upload": "uploaded", "path": "typed path", "code": "given in code"}[self.kind]
        return f"{how} <code style='{_WRAP}'>{html.escape(self.name)}</code>"




class ClassifierApp:
    """Upload a front photo (and optionally the back) or give paths; see names, band, agreement, timings.

    ``app.state`` holds what is shown (label, names, band words, agree, timings, cache hit, error, sources);
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
        self.state: dict[str, Any] = {"status": "waiting for a photo"}
        self._sources: dict[str, _Source | None] = {"front": None, "back": None}
        self._back_is_new = False  # a back was given since the last classification (it waits for its front)
        self._notice = ""  # a one-off remark shown with the next status (e.g. that a back was removed)
        self._quiet = False  # set while the app itself changes an input widget: not the user's doing

        self.front_upload = w.FileUpload(accept="image/*", multiple=False, description="Front photo")
        self.back_upload = w.FileUpload(accept="image/*", multiple=False, description="Back photo",
                                        tooltip="optional: the back of the same piece")
        self.front_path = w.Text(placeholder="…or a path to the front photo", continuous_update=False,
                                 layout=w.Layout(width="360px"))
        self.back_path = w.Text(placeholder="…or a path to the back", continuous_update=False,
                                layout=w.Layout(width="360px"))
        self.front_clear = w.Button(description="Clear front", icon="times", tooltip="remove the front photo")
        self.back_clear = w.Button(description="Clear back", icon="times", tooltip="remove the back photo")
        self.front_source = w.HTML()
        self.back_source = w.HTML()
        self.classify_button = w.Button(description="Classify", button_style="primary", icon="search")
        self.front_preview = w.HTML(layout=w.Layout(width=f"{_PREVIEW_PX + 10}px"))
        self.back_preview = w.HTML(layout=w.Layout(width=f"{_PREVIEW_PX + 10}px"))
        self.result_html = w.HTML()
        self.chart = w.HTML(layout=w.Layout(width="100%", max_width=f"{_CHART_PX + 10}px"))
        self.latency_html = w.HTML()
        self.why = WhyPanel(classifier)  # the answer's "Why?" toggle: its heatmap over the front photo
        self.status = w.HTML("<i>Upload a front photo, or type a path and press Classify.</i>")
        self.gallery_panel = Gallery(classifier, thumbnail_px=thumbnail_px)
        self.gallery_path, self.gallery_button = self.gallery_panel.path, self.gallery_panel.button
        self.gallery_html, self.gallery_box = self.gallery_panel.html, self.gallery_panel.box

        for side in _SIDES:
            self._upload(side).observe(lambda ch, side=side: self._safely(lambda: self._on_upload(side, ch)), names="value")
            self._path(side).observe(lambda ch, side=side: self._safely(lambda: self._on_path(side, ch)), names="value")
        self.front_clear.on_click(lambda _b: self._safely(lambda: self.clear("front")))
        self.back_clear.on_click(lambda _b: self._safely(lambda: self.clear("back")))
        self.classify_button.on_click(lambda _b: self._safely(self.classify))
        self.gallery_button.on_click(lambda _b: self._safely(lambda: self.gallery(self.gallery_path.value)))

        inputs = w.VBox([
            w.HBox([self.front_upload, self.front_path, self.front_clear]),
            w.HBox([self.back_upload, self.back_path, self.back_clear]),
            w.VBox([self.front_source, self.back_source]),
            self.classify_button,
        ])
        # The preview column is as wide as its previews (ui-check saw a 200 px column holding 230 px widgets
        # scroll sideways); the result column takes the rest and never widens the tab.
        single = w.HBox([w.VBox([self.front_preview, self.back_preview],
                                layout=w.Layout(width=f"{_PREVIEW_PX + 14}px", flex="0 0 auto")),
                         w.VBox([self.result_html, self.why.widget, self.chart, self.latency_html],
                                layout=w.Layout(flex="1 1 auto", min_width="0", overflow="hidden"))],
                        layout=w.Layout(width="100%", overflow="hidden"))
        self.scene_panel = ScenePanel(classifier)  # the Phone photo tab: every piece of a photo (widgets.scene)
        self.train_panel = TrainPanel(on_use=self.use_classifier, template=classifier)
        self.tabs = w.Tab(children=[w.VBox([inputs, self.status, single]), self.gallery_panel.widget,
                                    self.scene_panel.widget, self.train_panel.widget])
        self.tabs.titles = ("Classify", "Gallery", "Phone photo", "Train")
        for child in self.tabs.children:  # a tab never scrolls sideways (ui-check: 4 px too wide on every tab)
            child.layout.overflow = "hidden"
            child.layout.max_width = "100%"
        self.model_html = w.HTML(self._model_headline())
        self.widget = w.VBox([self.model_html, self.tabs])
        self._show_sources()
        self._show_placeholders()

    def _model_headline(self) -> str:
        """What the model was trained on and how well it does (its model card), at the top of the app."""
        card = getattr(self.classifier, "card", None)
        face = thai_face_for(self.classifier)  # the bundled Thai font, once for the whole app
        if card is None:
            return face + "<div style='color:#777'><i>This model has no model card: what it was trained on is not known.</i></div>"
        warn = "" if card.real_photos else (" <b style='color:#c62828'>It has never seen a real amulet: do not trust "
                                             "its answers on real photos.</b>")
        return face + (f"<div style='border-left:4px solid #90caf9;padding:2px 8px;margin-bottom:4px'>Model: "
                f"{html.escape(card.headline())}.{warn}</div>")

    def use_classifier(self, classifier: Any) -> None:
        """Classify with ``classifier`` from now on (Classify, Gallery and Phone photo tabs, Why?); the headline
        shows its model card."""
        if not hasattr(classifier, "predict_pair") or not hasattr(classifier, "predict_batch"):
            raise ValidationError("use_classifier needs a classifier with predict_pair and predict_batch",
                                  field="classifier", value=type(classifier).__name__)
        self.classifier = self.gallery_panel.classifier = classifier
        self.why.classifier = classifier  # the heatmap explains the new model's answers
        self.scene_panel.classifier = classifier  # and the Phone photo tab classifies with it
        self.model_html.value = self._model_headline()
        self._clear_result()  # the answer on show came from the previous model
        self.state = {"status": "waiting for a photo", "sources": self._source_state()}
        self.status.value = "<i>Model switched: upload a photo or press Classify.</i>"
        self.tabs.selected_index = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, settings: Any = None, **kwargs: Any) -> ClassifierApp:
        """An app over the classifier of ``settings`` (read here, at the edge; None: the environment's) and ``path``
        (None: AMULET_MODEL_PATH or the bundled checkpoint)."""
        from amulet_lab.model import AmuletClassifier

        if settings is None:
            from amulet_lab.config import get_settings

            settings = get_settings()
        from amulet_lab.runtime import apply_settings

        apply_settings(settings)
        return cls(AmuletClassifier.from_settings(settings, path), **kwargs)

    # ---- display -------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"ClassifierApp(status={self.state.get('status')!r}, label={self.state.get('label')!r})"

    # ---- inputs: one source per side -------------------------------------------------------
    def _upload(self, side: str) -> Any:
        return self.front_upload if side == "front" else self.back_upload

    def _path(self, side: str) -> Any:
        return self.front_path if side == "front" else self.back_path

    def _preview(self, side: str) -> Any:
        return self.front_preview if side == "front" else self.back_preview

    @contextmanager
    def _by_app(self) -> Iterator[None]:
        """Input widgets changed inside this block are the app's doing: their observers do nothing."""
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet

    def _blank_inputs(self, side: str) -> None:
        with self._by_app():
            self._upload(side).value = ()
            self._path(side).value = ""

    def _set_source(self, side: str, source: _Source | None) -> None:
        """Make ``source`` the one source of ``side``; a new front removes a back given with the previous front."""
        if side == "front" and source is not None and self._sources["front"] is not None \
                and self._sources["back"] is not None and not self._back_is_new:
            dropped = self._sources["back"]
            self._sources["back"] = None
            self._blank_inputs("back")
            self._notice = (f"The back {Path(dropped.name).name} was removed: it belonged to the previous front. "
                            "Add this photo's back if you have one.")
        if side == "back":
            self._back_is_new = source is not None
        self._sources[side] = source
        self._show_sources()

    def _show_sources(self) -> None:
        for side in _SIDES:
            src = self._sources[side]
            text = src.describe() if src else "<span style='color:#777'>none</span>"
            widget = self.front_source if side == "front" else self.back_source
            widget.value = f"<div style='{_WRAP}'><b>{side.capitalize()}:</b> {text}</div>"

    def _on_upload(self, side: str, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        got = upload_bytes(change.get("new"))
        if got is None:
            return
        with self._by_app():
            self._path(side).value = ""  # the upload replaces a typed path: only the active source is shown
        self._set_source(side, _Source("upload", got[0], got[1]))
        self.classify()

    def _on_path(self, side: str, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        text = str(change.get("new") or "").strip()
        if text:
            with self._by_app():
                self._upload(side).value = ()  # the typed path replaces an upload of this side
            self._set_source(side, _Source("path", text))
            self.status.value = f"<i>{side} photo: {html.escape(text)}; press Classify.</i>"
        elif self._sources[side] is not None and self._sources[side].kind == "path":
            self._set_source(side, None)

    def clear(self, side: str) -> None:
        """Remove the photo of ``side`` (``front`` or ``back``): its upload, typed path and preview."""
        if side not in _SIDES:
            raise ValidationError("side must be 'front' or 'back'", field="side", value=side)
        self._blank_inputs(side)
        self._set_source(side, None)
        if side == "back" and self._sources["front"] is not None:
            self._notice = "Back removed: the front alone is classified."
            self.classify()
            return
        self._clear_result()
        self.state = {"status": "waiting for a photo", "sources": self._source_state()}
        back = self._sources["back"]
        if back is not None:
            self.back_preview.value = _placeholder(f"back {Path(back.name).name} kept: it will be paired with the "
                                                   "next front", width=_PREVIEW_PX, height=120)
        self.status.value = ("<i>Front removed. Upload a front photo" +
                             (" (the back is kept and will be paired with it)." if back else ".") + "</i>"
                             if side == "front" else "<i>Back removed.</i>")

    def _source_state(self) -> dict[str, str | None]:
        return {side: (src.kind if src else None) for side, src in self._sources.items()}

    # ---- actions -------------------------------------------------------------------------
    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a button/upload action; our own errors are shown to the user, anything else propagates."""
        try:
            action()
        except AmuletError as exc:
            self.state = {"status": "error", "error": exc.code, "message": exc.message, "sources": self._source_state()}
            notice, self._notice = self._notice, ""
            self.status.value = (f"<span style='color:#c62828;{_WRAP}'>⚠ {html.escape(exc.message)} "
                                 f"<code>{exc.code}</code></span>" +
                                 (f"<br><span style='color:#ef6c00'>{html.escape(notice)}</span>" if notice else ""))
            log.info("classify app: %s", exc.code)

    def classify(self) -> Any:
        """Classify the current front (and back), update every widget and ``state``; returns the pair."""
        self._clear_result()  # a failure below must never leave the previous photo's result on show
        front_src, back_src = self._sources["front"], self._sources["back"]
        if front_src is None:
            waiting = (f" The back {Path(back_src.name).name} is kept and will be paired with it." if back_src else "")
            self.back_preview.value = (_placeholder("back kept: waiting for its front", width=_PREVIEW_PX, height=120)
                                       if back_src else self.back_preview.value)
            raise ValidationError("no front photo: upload one or give its path." + waiting, field="front",
                                  code="E_NO_IMAGE")
        try:
            front = front_src.read()
            back = back_src.read() if back_src else None
            self.status.value = "<i>classifying…</i>"
            photos = {"front": decoded_once(front[1], self.classifier),
                      "back": decoded_once(back[1], self.classifier) if back else None}
            pair = self.classifier.predict_pair(photos["front"], photos["back"])
            previews = {side: _thumbnail(photo, _PREVIEW_PX) if photo is not None else None
                        for side, photo in photos.items()}
        except AmuletError as exc:
            for side in _SIDES:
                self._preview(side).value = _placeholder(f"not shown: {exc.code}" if self._sources[side] else
                                                         f"no {side} photo", width=_PREVIEW_PX, height=120)
            self.chart.value = _placeholder("no chart: the photo was not classified", width=_CHART_PX, height=80)
            raise
        self.result = pair
        self._back_is_new = False
        names = {"front": front[0], "back": back[0] if back else None}
        for side in _SIDES:
            data = previews[side]
            self._preview(side).value = (
                _img_html(data, "image/jpeg", alt=f"{side}: {names[side]}", max_width=_PREVIEW_PX) if data else
                _placeholder("no back photo (optional: upload one to compare the sides)", width=_PREVIEW_PX, height=120))
        self._show(pair, front[0], back[0] if back else None)
        main = pair.combined if getattr(pair, "combined", None) is not None else pair.front
        self.why.set_answer(front[0], front[1], main.label, unknown=bool(main.is_unknown))
        return pair

    def _show_placeholders(self) -> None:
        self.front_preview.value = _placeholder("no front photo yet", width=_PREVIEW_PX, height=120)
        self.back_preview.value = _placeholder("no back photo (optional)", width=_PREVIEW_PX, height=120)
        self.chart.value = _placeholder("the top-k chart appears here", width=_CHART_PX, height=80)

    def _clear_result(self) -> None:
        """Forget and blank the last result (previews, names, chart, timings): placeholders, never empty images."""
        self.result = None
        self.state = {"status": "classifying", "sources": self._source_state()}
        self._show_placeholders()
        self.result_html.value = ""
        self.latency_html.value = ""
        self.why.reset()

    def _show(self, pair: Any, front_name: str, back_name: str | None) -> None:
        from amulet_lab.bench.plots import figure_to_png, topk_figure
        from amulet_lab.display import html_table

        main = pair.combined if getattr(pair, "combined", None) is not None else pair.front
        band = main.confidence_band
        agree = pair.agree
        agree_text = "only the front was given" if agree is None else ("front and back agree" if agree else "front and back DISAGREE")
        timings = {side: dict(p.timings) for side, p in (("front", pair.front), ("back", pair.back)) if p is not None}
        cache_hit = {side: bool(p.cache_hit) for side, p in (("front", pair.front), ("back", pair.back)) if p is not None}
        top = [tuple(row) for row in main.top_k[: self.top_k]]
        english = [main.english_name if row[0] == main.label else english_name(row[0]) for row in top]
        self.state = {
            "status": "done",
            "front": front_name,
            "back": back_name,
            "sources": self._source_state(),
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
            "top_k_english": english,
            "timings": timings,
            "cache_hit": cache_hit,
        }
        colour = _BAND_COLOURS[band]
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(en)}</td>"
            f"<td style='text-align:left'>{thai_html(row[1])}</td>"
            f"<td style='text-align:right'>{float(row[-1]):.0%}</td></tr>"
            for en, row in zip(english, top))
        if main.is_unknown:  # a headline of its own, with no band and no class name above it
            headline = (f"<h3 style='margin:0;color:{colour}'>{html.escape(band_words(band))}</h3>"
                        f"<p style='color:#616161'>The photo does not look like any of the six types this model "
                        f"knows; the closest, {html.escape(main.english_name)}, is only a hint.</p>")
        else:
            headline = (f"<h3 style='margin:0'>{html.escape(main.english_name)}</h3>"
                        f"{thai_html(main.thai_name, tag='div', style='font-size:1.3em')}"
                        f"<p><span style='background:{colour};color:white;padding:2px 8px;border-radius:8px'>"
                        f"{html.escape(band_words(band))}</span> confidence {main.confidence:.0%}</p>")
        self.result_html.value = (
            headline +
            f"<p>{html.escape(agree_text)}</p>"
            f"<table><thead><tr><th style='text-align:left'>{'closest known type (a hint)' if main.is_unknown else 'class'}"
            f"</th><th style='text-align:left'>Thai name</th>"
            f"<th>probability</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        chart_rows = [(row[0], en, row[-1]) for en, row in zip(english, top)]
        title = "closest known types (hints: not one of them)" if main.is_unknown else "top-k probabilities"
        png = figure_to_png(topk_figure(chart_rows, title=title, width=_CHART_PX / 96), dpi=96)
        alt = "top-k probabilities: " + ", ".join(f"{en} {float(row[-1]):.0%}" for en, row in zip(english, top))
        self.chart.value = _img_html(png, "image/png", alt=alt, max_width=_CHART_PX)
        self.latency_html.value = "".join(
            html_table(
                [(f"{stage} ms", f"{t[stage]:.1f}") for stage in ("lookup", "decode", "preprocess", "infer", "postprocess", "total")
                 if stage in t] + [("answer", "⚡ cache hit" if cache_hit[side] else "computed")],
                caption=f"{side} photo",
            )
            for side, t in timings.items()
        )
        notice, self._notice = self._notice, ""
        self.status.value = (f"<i style='{_WRAP}'>classified {html.escape(front_name)}" +
                             (f" + {html.escape(back_name)}" if back_name else "") + "</i>" +
                             (f"<br><span style='color:#ef6c00'>{html.escape(notice)}</span>" if notice else ""))

    def classify_paths(self, front: str | Path | None = None, back: str | Path | None = None) -> Any:
        """Classify photos by path from code (None, None: a sample front and back).

        The photos become the sides' sources ("given in code"); the path boxes are left empty for the user's
        own photos, and a front uploaded next replaces this pair (its back included).
        """
        if front is None:
            front, default_back = sample_pair()
            back = default_back if back is None else back
        for side in _SIDES:
            self._blank_inputs(side)
        self._sources = {"front": _Source("code", str(front)), "back": _Source("code", str(back)) if back else None}
        self._back_is_new = False
        self._show_sources()
        return self.classify()

    def describe(self) -> str:
        """What the app shows now, in plain text (for notebooks and logs)."""
        st = self.state
        if st.get("status") != "done":
            return f"status: {st.get('status')}" + (f" ({st.get('error')}: {st.get('message')})" if st.get("error") else "")
        stages = [k for k in ("lookup", "decode", "preprocess", "infer", "postprocess") if k in st["timings"]["front"]]
        return "\n".join([
            f"photos: {st['front']}" + (f" + {st['back']}" if st["back"] else ""),
            (f"prediction: not one of the six known types (closest: {st['english']}, key {st['label']})"
             if st["is_unknown"] else f"prediction: {st['english']} ({st['thai']}), key {st['label']}"),
            f"band: {st['band_text']}",
            f"sides: {st['agree_text']}",
            f"top-k shown: {len(st['top_k'])}",
            f"stages timed: {', '.join(stages)}",
        ])

    # ---- gallery (the Gallery tab: widgets.gallery) ------------------------------------------
    @property
    def gallery_items(self) -> list[GalleryItem]:
        """The photos of the last gallery, most uncertain first."""
        return self.gallery_panel.items

    def gallery(self, folder: str | Path | None = None, *, limit: int = 60, batch_size: int = 16,
                progress: bool = True, review_csv: str | Path | None = None) -> list[GalleryItem]:
        """Classify up to ``limit`` photos under ``folder`` (None or empty: the samples) into the Gallery tab.

        Its review area saves confirmed or corrected labels to ``review_csv`` (default: the folder's review.csv).
        """
        return self.gallery_panel.show(folder, limit=limit, batch_size=batch_size, progress=progress,
                                       review_csv=review_csv)

    def describe_gallery(self) -> str:
        """The gallery in plain text (see ``Gallery.describe``)."""
        return self.gallery_panel.describe()
