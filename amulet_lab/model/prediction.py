"""What the classifier answers: ``Prediction`` (one photo), ``PairPrediction`` (front and back), the bands.

A prediction says where it came from: ``cache`` is ``"miss"`` (inferred now), ``"local"`` (this
process's prediction cache) or ``"shared"`` (the shared tier on a Redis/Valkey server, another replica's answer). Its ``source`` holds the original's format, size and bytes when the image
came as bytes or a file.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any

import torch

__all__ = ["Prediction", "PairPrediction", "confidence_band", "combine_sides", "CACHE_ORIGINS", "UNKNOWN_BAND",
           "UNKNOWN_TEXT"]

#: Where an answer came from.
CACHE_ORIGINS = ("miss", "local", "shared")
#: The band of an unknown answer: it carries no confidence band, only this.
UNKNOWN_BAND = "unknown"
#: What an unknown answer says, everywhere it is shown.
UNKNOWN_TEXT = "not one of the six known types"


def combine_sides(probs: torch.Tensor) -> torch.Tensor:
    """One piece's class probabilities from its sides' (one row each): softmax of the mean log-probability."""
    logp = probs.double().clamp_min(1e-12).log().mean(0)
    return torch.softmax(logp, 0).float()


def confidence_band(confidence: float, reliable: float = 0.90, verify: float = 0.70) -> str:
    """"reliable" at or above ``reliable``, "verify" at or above ``verify``, else "retake"."""
    return "reliable" if confidence >= reliable else "verify" if confidence >= verify else "retake"


@dataclasses.dataclass
class Prediction:
    """The result for one image: top-k classes, confidence, band, unknown flag, stage timings (ms), cache origin.

    An unknown answer (``is_unknown``) has no confidence band: ``confidence_band`` is ``"unknown"`` and every
    view of it says "not one of the six known types" (``label`` is then only the closest class).
    """

    top_k: list[tuple[str, str, float]]
    label: str
    thai_name: str
    english_name: str
    confidence: float
    confidence_band: str
    is_unknown: bool
    entropy: float
    timings: dict[str, float]
    cache: str
    probabilities: dict[str, float]
    distance: float | None = None  # feature distance to the nearest class (unknown rule), if the model has one
    source: dict[str, Any] | None = None  # format, width, height, bytes of the original file (None: in memory)

    @property
    def cache_hit(self) -> bool:
        """Whether the answer came from a cache (``cache != "miss"``)."""
        return self.cache != "miss"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        out["top_k"] = [{"key": k, "thai": t, "probability": p} for k, t, p in self.top_k]
        out["cache_hit"] = self.cache_hit
        return out

    def __repr__(self) -> str:
        what = (f"{UNKNOWN_TEXT}, closest {self.label!r}" if self.is_unknown
                else f"{self.label!r}, {self.confidence:.3f}, {self.confidence_band}")
        return f"Prediction({what}, {self.timings.get('total', 0):.1f} ms, cache={self.cache})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(t)}</td>"
            f"<td><div style='background:#90caf9;width:{max(1, round(p * 120))}px;height:10px'></div></td>"
            f"<td style='text-align:right'>{p:.1%}</td></tr>"
            for k, t, p in self.top_k
        )
        timing = ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items())
        origin = {"miss": "", "local": " (from the prediction cache)",
                  "shared": " (from the shared prediction cache)"}.get(self.cache, f" ({html.escape(self.cache)})")
        if self.is_unknown:  # a headline of its own, with no band
            head = (f"<div style='font-size:1.2em;color:#616161'><b>{UNKNOWN_TEXT.capitalize()}</b></div>"
                    f"<div style='color:#777'>closest: {html.escape(self.english_name)}</div>")
        else:
            colour = {"reliable": "#2e7d32", "verify": "#f9a825", "retake": "#c62828"}[self.confidence_band]
            head = (f"<div style='font-size:1.2em'><b>{html.escape(self.thai_name)}</b> ({html.escape(self.label)})</div>"
                    f"<div>confidence {self.confidence:.1%} <span style='background:{colour};color:white;padding:1px 6px;"
                    f"border-radius:4px'>{self.confidence_band}</span></div>")
        return (
            f"<div style='border:1px solid #ccc;border-radius:6px;padding:8px;display:inline-block'>{head}"
            f"<table>{rows}</table><div style='color:#777;font-size:0.8em'>ms: {timing}{origin}</div></div>"
        )


@dataclasses.dataclass
class PairPrediction:
    """Front and back of one piece: each side's prediction, the combined one and whether the sides agree."""

    front: Prediction
    back: Prediction | None
    combined: Prediction
    agree: bool | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "front": self.front.to_dict(),
            "back": self.back.to_dict() if self.back else None,
            "combined": self.combined.to_dict(),
            "agree": self.agree,
        }

    def _repr_html_(self) -> str:
        agree = {True: "sides agree", False: "<b style='color:#c62828'>sides disagree</b>", None: "front only"}[self.agree]
        return f"<div><div>{agree}</div>{self.combined._repr_html_()}</div>"
