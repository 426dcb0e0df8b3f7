"""Figures of a model's evaluation: the confusion matrix and the reliability diagram (``matplotlib.figure.Figure``).

Built without pyplot, as ``bench.plots`` builds its own, so tests read their axes and notebooks show them inline.
Both take plain values (a confusion matrix as nested lists, confidences and right/wrong flags), such as
``cross_validate`` returns out of fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from amulet_lab.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["confusion_figure", "reliability_bins", "reliability_figure"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def confusion_figure(matrix: Sequence[Sequence[int]], names: Sequence[str], *,
                     title: str = "confusion matrix (out of fold)") -> Figure:
    """Counts per (true class, predicted class) as a shaded grid with the count in each cell; rows are the truth.

    ``names`` label both axes (English names: a Thai name would need a Thai font). Each cell's shade is its share of
    its row, so a small class's errors show as plainly as a large one's.
    """
    rows = [list(map(int, r)) for r in matrix]
    k = len(rows)
    if k == 0 or any(len(r) != k for r in rows) or len(names) != k:
        raise ValidationError(f"confusion_figure needs a square matrix with one name per class, got {k} rows and "
                              f"{len(names)} names", field="matrix", value=k, code="E_FIGURE_INPUT")
    if any(v < 0 for r in rows for v in r):
        raise ValidationError("confusion counts must be >= 0", field="matrix", code="E_FIGURE_INPUT")
    shares = [[v / max(1, sum(r)) for v in r] for r in rows]
    side = 2.2 + 0.75 * k
    fig = _figure(side + 0.6, side)
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center", fontsize="small",
                    color="white" if shares[i][j] > 0.6 else ("#c62828" if v and i != j else "black"))
    ticks = list(range(k))
    ax.set_xticks(ticks, [str(n) for n in names], rotation=35, ha="right", fontsize="small")
    ax.set_yticks(ticks, [str(n) for n in names], fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    total = sum(map(sum, rows))
    right = sum(rows[i][i] for i in range(k))
    ax.set_title(f"{title}: {right} of {total} right")
    return fig


def reliability_bins(confidence: Sequence[float], correct: Sequence[bool], *, bins: int = 15) -> list[dict[str, Any]]:
    """Equal-width confidence bins: each bin's ``lo``, ``hi``, ``n``, ``accuracy`` and mean ``confidence``
    (None for an empty bin)."""
    conf = [float(c) for c in confidence]
    right = [bool(c) for c in correct]
    if len(conf) != len(right):
        raise ValidationError(f"{len(conf)} confidences but {len(right)} right/wrong flags", field="correct",
                              value=len(right), code="E_FIGURE_INPUT")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValidationError("bins must be a whole number >= 1", field="bins", value=bins, code="E_FIGURE_INPUT")
    if any(not 0.0 <= c <= 1.0 for c in conf):
        raise ValidationError("confidences must lie in [0, 1]", field="confidence", code="E_FIGURE_INPUT")
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        out.append({"lo": lo, "hi": hi, "n": len(inside),
                    "accuracy": sum(right[i] for i in inside) / len(inside) if inside else None,
                    "confidence": sum(conf[i] for i in inside) / len(inside) if inside else None})
    return out


def reliability_figure(confidence: Sequence[float], correct: Sequence[bool], *, bins: int = 15,
                       title: str = "reliability (out of fold)") -> Figure:
    """Accuracy against confidence per bin beside the diagonal of a perfectly calibrated model, with the photos
    per bin underneath and the expected calibration error (ECE) over these bins in the title (15 bins: the ECE of
    ``model.metrics``)."""
    table = reliability_bins(confidence, correct, bins=bins)
    n = sum(b["n"] for b in table)
    if n == 0:
        raise ValidationError("reliability_figure needs at least one answer", field="confidence", value=0,
                              code="E_FIGURE_INPUT")
    ece = sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in table if b["n"])
    fig = _figure(5.0, 5.0)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = 1.0 / bins
    filled = [b for b in table if b["n"]]
    ax.bar([b["lo"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy in the bin")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", linestyle="none",
            color="#dd8452", label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {ece:.3f} over {n} photos")
    ax.legend(fontsize="x-small", loc="upper left")
    ax_n.bar([b["lo"] for b in table], [b["n"] for b in table], width=width, align="edge", color="#8c8c8c",
             edgecolor="white")
    ax_n.set_xlabel("confidence (top probability)")
    ax_n.set_ylabel("photos")
    return fig
