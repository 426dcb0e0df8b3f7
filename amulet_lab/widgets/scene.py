"""The Phone photo tab: ``ScenePanel`` finds every amulet in a phone photo, draws the boxes and lists the pieces.

Driven headless as the browser drives it: a test sets ``panel.upload.value`` to the ipywidgets 8 shape (or
types a path and presses ``panel.run_button``) and reads ``panel.state`` and the HTML the widgets hold.

One decode for the eyes, the model's own for the answer: a JPEG is decoded at a reduced libjpeg scale for
the picture (cheap) and its bytes go to ``predict_scene`` as they are, so the answer is the one
``amulet-lab predict --scene`` and the service give; a HEIC, PNG or WebP has no reduced decode, so its one
full decode is handed to ``predict_scene`` and serves the picture too (the pixels are those the model
would decode itself). The boxes are drawn on a copy at most ``max_side`` px a side, each numbered with
its English name (or "unknown") in its band's colour; unknown is grey and has no band.
"""

from __future__ import annotations

import html
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError
from amulet_lab.fonts import thai_html
from amulet_lab.widgets._html import (_BAND_COLOURS, _WRAP, _img_html, _placeholder, _read, band_words,
                                      thai_face_for, upload_bytes)

__all__ = ["ScenePanel", "draw_boxes"]

log = logging.getLogger("amulet_lab.widgets")

_PHOTO_PX = 900
_UNKNOWN_WORD = "unknown"
_WAITING = "Upload a phone photo (JPEG, PNG or HEIC), or type its path and press Find pieces."


def _rgb(colour: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    return ImageColor.getrgb(colour)[:3]


def draw_boxes(image: Any, boxes: list[tuple[int, int, int, int]], labels: list[str],
               colours: list[tuple[int, int, int]], *, width: int | None = None) -> Any:
    """A copy of ``image`` with each box outlined in its colour and its label on a tag of that colour.

    The tag sits above the box's top-left corner, or inside the box when there is no room above; the
    outline is ``width`` px (default: about 1/250 of the long side, at least 3).
    """
    from PIL import ImageDraw, ImageFont

    if not (len(boxes) == len(labels) == len(colours)):
        raise ValidationError("boxes, labels and colours must be as many", field="boxes",
                              value=(len(boxes), len(labels), len(colours)))
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    line = width if width is not None else max(3, round(max(out.size) / 250))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 55)))
    for (x0, y0, x1, y1), text, colour in zip(boxes, labels, colours):
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 8, bottom - top + 6
        ty = y0 - th if y0 - th >= 0 else y0 + line
        tx = min(max(0, x0), max(0, out.width - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
        draw.text((tx + 4 - left, ty + 3 - top), text, fill=(255, 255, 255), font=font)
    return out


def _jpeg(image: Any, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _piece_word(pred: Any) -> str:
    return _UNKNOWN_WORD if pred.is_unknown else pred.english_name


class ScenePanel:
    """Upload a phone photo or give a path: every amulet found, boxed and numbered on the photo, and listed.

    ``panel.state`` holds what is shown (status, pieces with their fields, boxes drawn, the overall answer,
    pairs, timings, or the error code); ``panel.result`` the ``ScenePrediction``.
    """

    def __init__(self, classifier: Any, *, max_side: int = _PHOTO_PX, thumbnail_px: int = 96, top_k: int = 3) -> None:
        import ipywidgets as w

        if not hasattr(classifier, "predict_scene"):
            raise ValidationError("ScenePanel needs a classifier with predict_scene", field="classifier",
                                  value=type(classifier).__name__)
        for name, value, low in (("max_side", max_side, 64), ("thumbnail_px", thumbnail_px, 16), ("top_k", top_k, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValidationError(f"{name} must be a whole number >= {low}", field=name, value=value)
        self.classifier = classifier
        self.max_side = max_side
        self.thumbnail_px = thumbnail_px
        self.top_k = top_k
        self.result: Any = None
        self.state: dict[str, Any] = {"status": "waiting for a photo"}
        self._source: tuple[str, str, bytes | None] | None = None  # (kind, name, bytes of an upload)
        self._quiet = False
        self._shown_error: AmuletError | None = None

        self.upload = w.FileUpload(accept="image/*,.heic,.heif", multiple=False, description="Phone photo")
        self.path = w.Text(placeholder="…or a path to the photo", continuous_update=False, layout=w.Layout(width="360px"))
        self.run_button = w.Button(description="Find pieces", button_style="primary", icon="search")
        self.clear_button = w.Button(description="Clear", icon="times", tooltip="remove the photo")
        self.status = w.HTML(f"<i>{html.escape(_WAITING)}</i>")
        self.headline = w.HTML()
        self.photo = w.HTML(layout=w.Layout(width="100%", max_width=f"{max_side + 10}px"))
        self.table = w.HTML(layout=w.Layout(width="100%"))
        self.timings = w.HTML()
        self.upload.observe(lambda ch: self._safely(lambda: self._on_upload(ch)), names="value")
        self.path.observe(lambda ch: self._safely(lambda: self._on_path(ch)), names="value")
        self.run_button.on_click(lambda _b: self._safely(self.run))
        self.clear_button.on_click(lambda _b: self._safely(self.clear))
        self.widget = w.VBox([
            w.HTML(thai_face_for(classifier) + "<b>Every amulet in a phone photo</b>: one or several pieces on a "
                   "page, table or cloth, any way up. Each is boxed, numbered and listed."),
            w.HBox([self.upload, self.path, self.run_button, self.clear_button]),
            self.status, self.headline, self.photo, self.table, self.timings,
        ])
        self._blank("the photo with its boxes appears here")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        pieces = self.state.get("pieces")
        return (f"ScenePanel(status={self.state.get('status')!r}, pieces={len(pieces) if pieces is not None else None}, "
                f"answer={self.state.get('answer')!r})")

    # ---- inputs ------------------------------------------------------------------------------
    def _on_upload(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        got = upload_bytes(change.get("new"))
        if got is None:
            return
        self._set_inputs(path="")
        self._source = ("upload", got[0], got[1])
        self.run()

    def _on_path(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        text = str(change.get("new") or "").strip()
        if text:
            self._set_inputs(upload=())
            self._source = ("path", text, None)
            self.status.value = f"<i style='{_WRAP}'>photo: {html.escape(text)}; press Find pieces.</i>"
        elif self._source is not None and self._source[0] == "path":
            self._source = None

    def _set_inputs(self, **values: Any) -> None:
        """Change input widgets as the panel's own doing (their observers do nothing)."""
        quiet, self._quiet = self._quiet, True
        try:
            for name, value in values.items():
                getattr(self, name).value = value
        finally:
            self._quiet = quiet

    def clear(self) -> None:
        """Remove the photo (upload or path) and everything shown about it."""
        self._set_inputs(upload=(), path="")
        self._source = None
        self._blank("the photo with its boxes appears here")
        self.status.value = f"<i>Photo removed. {html.escape(_WAITING)}</i>"

    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a button/upload action; our own errors are shown in the panel (``_show_error``), not raised."""
        try:
            action()
        except AmuletError as exc:
            if exc is not self._shown_error:  # analyse shows its own errors with the photo's name
                self._show_error(exc, self._source[1] if self._source else None)

    def _show_error(self, exc: AmuletError, name: str | None) -> None:
        """The coded error in the panel, and nothing left of the previous photo."""
        self._blank(f"not shown: {exc.code}")
        self._shown_error = exc
        self.state = {"status": "error", "error": exc.code, "message": exc.message, "name": name}
        self.status.value = (f"<span style='color:#c62828;{_WRAP}'>⚠ {html.escape(exc.message)} "
                             f"<code>{html.escape(exc.code)}</code></span>")
        log.info("scene panel: %s", exc.code)

    def _blank(self, photo_text: str) -> None:
        """Forget the last photo and blank what was shown of it (a placeholder where the photo was)."""
        self.result = None
        self.state = {"status": "waiting for a photo"}
        self.headline.value = self.table.value = self.timings.value = ""
        self.photo.value = _placeholder(photo_text, width=min(self.max_side, 480), height=160)

    # ---- actions -----------------------------------------------------------------------------
    def run(self) -> Any:
        """Find and classify the pieces of the current photo (upload or typed path); returns the ScenePrediction."""
        if self._source is None:
            self._blank("the photo with its boxes appears here")
            raise ValidationError("no photo: upload one or give its path.", field="photo", code="E_NO_IMAGE")
        _kind, name, data = self._source
        if data is None:
            path = Path(name).expanduser()
            name, data = path.name, _read(path)
        return self.analyse(data, name=name)

    def analyse_path(self, path: str | Path) -> Any:
        """Make ``path`` the photo (as if typed) and analyse it."""
        self._set_inputs(upload=(), path=str(path))
        self._source = ("path", str(path), None)
        return self.run()

    def analyse(self, data: bytes, *, name: str = "photo") -> Any:
        """Find, draw and list the pieces of the photo ``data`` (bytes); every widget and ``state`` updated.

        A refused or undecodable photo is shown with its error code (nothing of the previous photo left) and raised.
        """
        try:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValidationError("photo must be bytes", field="data", value=type(data).__name__,
                                      code="E_IMAGE_TYPE")
            return self._analyse(bytes(data), name)
        except AmuletError as exc:
            self._show_error(exc, name)
            raise

    def _analyse(self, data: bytes, name: str) -> Any:
        from amulet_lab.security import validate_image

        self._blank(f"finding the pieces of {name}…")
        self.state = {"status": "finding pieces", "name": name}
        start = time.perf_counter()
        checked = validate_image(data, filename=name, limits=getattr(self.classifier, "limits", None),
                                 draft_max_side=self.max_side)
        t_decode = time.perf_counter()
        # A JPEG's bytes go to the model as they are; another format's one full decode serves both.
        scene = self.classifier.predict_scene(data if checked.format == "JPEG" else checked, top_k=self.top_k)
        t_scene = time.perf_counter()
        shown = checked.image.copy()
        shown.thumbnail((self.max_side, self.max_side))
        drawn = self._show(scene, shown, name, checked.format)
        end = time.perf_counter()
        shared = "decode for display" if checked.format == "JPEG" else "decode (display and model)"
        self.timings.value = self._timings_html({
            shared: (t_decode - start) * 1000,
            **{f"scene {k}": v for k, v in scene.timings.items()},
            "draw and list": (end - t_scene) * 1000, "total": (end - start) * 1000})
        self.state["timings"] = {"panel_decode": (t_decode - start) * 1000, **scene.timings,
                                 "draw": (end - t_scene) * 1000, "panel_total": (end - start) * 1000}
        self.state["boxes_drawn"] = drawn
        self.result = scene
        return scene

    # ---- showing -----------------------------------------------------------------------------
    def _colour(self, pred: Any) -> str:
        return _BAND_COLOURS["unknown" if pred.is_unknown else pred.confidence_band]

    def _show(self, scene: Any, shown: Any, name: str, fmt: str) -> int:
        """Headline, the photo with its boxes, the table; ``state`` filled. Returns the number of boxes drawn."""
        fx, fy = shown.width / scene.size[0], shown.height / scene.size[1]
        rows, boxes, words, colours, thumbs = [], [], [], [], []
        for i, piece in enumerate(scene.pieces, start=1):
            pred = piece.prediction
            x0, y0, x1, y1 = piece.box
            sbox = (int(x0 * fx), int(y0 * fy), max(int(x0 * fx) + 1, int(round(x1 * fx)) - 1),
                    max(int(y0 * fy) + 1, int(round(y1 * fy)) - 1))
            colour = self._colour(pred)
            band = "unknown" if pred.is_unknown else pred.confidence_band
            rows.append({"number": i, "label": pred.label, "english": pred.english_name, "thai": pred.thai_name,
                         "word": _piece_word(pred), "confidence": float(pred.confidence), "band": band,
                         "band_text": band_words(band), "is_unknown": bool(pred.is_unknown),
                         "rotation": int(piece.rotation), "box": tuple(piece.box), "shown_box": sbox, "colour": colour})
            boxes.append(sbox)
            words.append(f"{i} {_piece_word(pred)}")
            colours.append(_rgb(colour))
            thumbs.append(self._thumb(shown, sbox, piece.rotation))
        picture = draw_boxes(shown, boxes, words, colours) if boxes else shown
        alt = f"{name}: " + (", ".join(words) if words else "no amulet found")
        self.photo.value = _img_html(_jpeg(picture), "image/jpeg", alt=alt, max_width=self.max_side)
        pairs = [{"pieces": (a + 1, b + 1), "label": pair.combined.label, "word": _piece_word(pair.combined),
                  "agree": pair.agree, "band": "unknown" if pair.combined.is_unknown else pair.combined.confidence_band}
                 for a, b, pair in scene.pairs]
        self.state = {"status": "done", "name": name, "format": fmt, "size": tuple(scene.size),
                      "shown_size": shown.size, "pieces": rows, "pairs": pairs, "answer": scene.answer,
                      "label": scene.label, "is_unknown": bool(scene.is_unknown)}
        self.state.update(self._overall(scene, rows, pairs))
        self.headline.value = self._headline_html(rows, pairs)
        self.table.value = self._table_html(rows, thumbs)
        self.status.value = (f"<i style='{_WRAP}'>{html.escape(name)} ({html.escape(fmt)} {scene.size[0]}x"
                             f"{scene.size[1]}): {len(rows)} piece(s) found</i>")
        return len(boxes)

    def _thumb(self, shown: Any, box: tuple[int, int, int, int], rotation: int) -> bytes:
        """The piece cut from the shown copy and turned upright (``rotation`` degrees counter-clockwise)."""
        crop = shown.crop(box)
        if rotation:
            crop = crop.rotate(rotation, expand=True)
        crop.thumbnail((self.thumbnail_px, self.thumbnail_px))
        return _jpeg(crop, quality=85)

    @staticmethod
    def _overall(scene: Any, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> dict[str, Any]:
        """The overall answer's names and band: a pair of that class gives its band, else its most confident piece."""
        if not rows:
            return {"english": None, "thai": None, "band": None, "band_text": "no amulet found in the photo"}
        if scene.is_unknown:
            return {"english": None, "thai": None, "band": "unknown", "band_text": band_words("unknown")}
        mine = [r for r in rows if r["label"] == scene.label and not r["is_unknown"]]
        best = max(mine, key=lambda r: r["confidence"])
        pair = next((p for p in pairs if p["label"] == scene.label and p["band"] != "unknown"), None)
        band = pair["band"] if pair else best["band"]
        return {"english": best["english"], "thai": best["thai"], "band": band, "band_text": band_words(band),
                "agreeing": [r["number"] for r in mine]}

    def _headline_html(self, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
        st = self.state
        if not rows:
            return ("<h3 style='margin:0'>No amulet found in the photo</h3><p style='color:#616161'>Nothing in it "
                    "stands out from the background as an amulet. Photograph the pieces whole, apart from each "
                    "other, on a plain page, table or cloth.</p>")
        if st["is_unknown"]:  # a headline of its own: no band, no class name above it
            known = {r["label"] for r in rows if not r["is_unknown"] and r["band"] != "retake"}
            why = ("the confident pieces do not agree on one type" if len(known) > 1 else
                   "no piece is confidently one of the six types")
            body = (f"<h3 style='margin:0;color:{_BAND_COLOURS['unknown']}'>{html.escape(band_words('unknown'))}</h3>"
                    f"<p style='color:#616161'>{len(rows)} piece(s) found; {why}. Each piece's answer is listed below.</p>")
        else:
            n = len(st["agreeing"])
            body = (f"<h3 style='margin:0'>{html.escape(st['english'])}</h3>"
                    f"{thai_html(st['thai'], tag='div', style='font-size:1.3em')}"
                    f"<p><span style='background:{_BAND_COLOURS[st['band']]};color:white;padding:2px 8px;"
                    f"border-radius:8px'>{html.escape(st['band_text'])}</span> "
                    f"{n} of {len(rows)} piece(s) say so (piece {', '.join(str(i) for i in st['agreeing'])})</p>")
        for p in pairs:
            agree = {True: "the sides agree", False: "the sides disagree", None: "one side only"}[p["agree"]]
            body += (f"<p>Pieces {p['pieces'][0]} and {p['pieces'][1]} look like the front and back of one piece: "
                     f"together {html.escape(p['word'])}, {agree}.</p>")
        return body

    def _table_html(self, rows: list[dict[str, Any]], thumbs: list[bytes]) -> str:
        if not rows:
            return ""
        head = "".join(f"<th style='text-align:left;padding:2px 6px;white-space:nowrap;word-break:normal'>{h}</th>" for h in (
            "#", "piece", "English name", "Thai name", "confidence", "band", "turned", "box (x0, y0, x1, y1)"))
        body = []
        for r, thumb in zip(rows, thumbs):
            img = _img_html(thumb, "image/jpeg", alt=f"piece {r['number']}", max_width=self.thumbnail_px)
            name = (f"<span style='color:#616161'>unknown</span> <span style='color:#999'>(closest: "
                    f"{html.escape(r['english'])})</span>" if r["is_unknown"] else html.escape(r["english"]))
            thai = "" if r["is_unknown"] else thai_html(r["thai"])
            conf = "" if r["is_unknown"] else f"{r['confidence']:.0%}"
            band = (f"<span style='color:{r['colour']}'>{html.escape(r['band_text'])}</span>")
            cells = (f"<b style='color:{r['colour']}'>{r['number']}</b>", img, name, thai, conf, band,
                     f"{r['rotation']}°", html.escape(str(r["box"])))
            body.append("<tr class='amulet-piece'>" + "".join(
                f"<td style='text-align:left;padding:2px 6px;vertical-align:middle'>{c}</td>" for c in cells) + "</tr>")
        return (f"<table style='border-collapse:collapse;{_WRAP}'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")

    @staticmethod
    def _timings_html(timings: dict[str, float]) -> str:
        from amulet_lab.display import html_table

        return html_table([(f"{k} ms", f"{v:.1f}") for k, v in timings.items()], caption="timings")

    def describe(self) -> str:
        """What the panel shows now, in plain text."""
        st = self.state
        if st.get("status") != "done":
            return f"status: {st.get('status')}" + (f" ({st.get('error')}: {st.get('message')})" if st.get("error") else "")
        lines = [f"photo: {st['name']} ({st['format']} {st['size'][0]}x{st['size'][1]}), {len(st['pieces'])} piece(s)"]
        if not st["pieces"]:
            lines.append("answer: no amulet found in the photo")
        elif st["is_unknown"]:
            lines.append("answer: not one of the six known types")
        else:
            lines.append(f"answer: {st['english']} ({st['thai']}), key {st['label']}, band: {st['band_text']}")
        for r in st["pieces"]:
            what = "unknown" if r["is_unknown"] else f"{r['english']} {r['confidence']:.0%} {r['band_text']}"
            lines.append(f"piece {r['number']}: {what}, turned {r['rotation']}°, box {r['box']}")
        lines += [f"pieces {p['pieces'][0]} and {p['pieces'][1]}: front and back, together {p['word']}"
                  for p in st["pairs"]]
        lines.append("timed: " + ", ".join(f"{k} {v:.0f} ms" for k, v in st.get("timings", {}).items()))
        return "\n".join(lines)
