"""The "Why?" toggle of an answer: the heatmap of ``AmuletClassifier.explain`` over the front photo, on demand."""

from __future__ import annotations

import html
from typing import Any

from amulet_lab.errors import AmuletError
from amulet_lab.widgets._html import _PREVIEW_PX, _img_html, _placeholder

__all__ = ["WhyPanel"]


class WhyPanel:
    """A ``ToggleButton`` and an HTML widget: on, the regions that drove the answer over its front photo."""

    def __init__(self, classifier: Any) -> None:
        import ipywidgets as w

        self.classifier = classifier
        self.toggle = w.ToggleButton(value=False, description="Why?", icon="eye",
                                     tooltip="show which regions of the front photo drove this answer")
        self.html = w.HTML()
        self.widget = w.VBox([self.toggle, self.html])
        self.explanation: Any = None
        self._answer: tuple[str, bytes, str, bool] | None = None  # (photo name, bytes, class key, unknown)
        self.toggle.observe(lambda _change: self._render(), names="value")

    def __repr__(self) -> str:
        shown = self.explanation.label if self.explanation is not None else None
        return f"WhyPanel(on={self.toggle.value}, answer={self._answer[2] if self._answer else None!r}, shown={shown!r})"

    def set_answer(self, name: str, data: bytes, label: str, *, unknown: bool = False) -> None:
        """A new answer (its front photo and class): the toggle starts off; nothing is computed until it is on."""
        self._answer = (name, bytes(data), label, bool(unknown))
        self.explanation = None
        self.toggle.value = False
        self._render()

    def reset(self) -> None:
        """No answer (cleared, classifying, failed)."""
        self._answer = None
        self.explanation = None
        self._render()

    def _render(self) -> None:
        if not self.toggle.value:
            self.html.value = ""
            return
        if self._answer is None:
            self.html.value = _placeholder("nothing to explain: classify a photo first", width=_PREVIEW_PX, height=80)
            return
        name, data, label, unknown = self._answer
        if not hasattr(self.classifier, "explain"):
            self.html.value = _placeholder("this classifier cannot explain its answers", width=_PREVIEW_PX, height=80)
            return
        try:
            if self.explanation is None:
                self.explanation = self.classifier.explain(data, label=label)
        except AmuletError as exc:
            self.html.value = _placeholder(f"no explanation: {exc.message} ({exc.code})", width=_PREVIEW_PX, height=80)
            return
        e = self.explanation
        hint = " It is not one of the known types: this shows only what drew it to the closest." if unknown else ""
        self.html.value = (
            _img_html(e.overlay_png(), "image/png", alt=f"why {e.english}: {name} with the regions that drove it",
                      max_width=_PREVIEW_PX) +
            f"<div style='font-size:12px;color:#555;max-width:{_PREVIEW_PX}px'>Bright: the regions of the front "
            f"that drove <b>{html.escape(e.english)}</b> ({html.escape(e.method)}).{html.escape(hint)}</div>")
