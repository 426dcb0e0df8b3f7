"""Micro-benchmark ``finder``: the scene finder on held-out composites, scored against their ground truth.

``score_finder(composites, finds)`` matches found boxes to true ones one to one (greedy by IoU, at least 0.5)
and gives the box recall, the false boxes per photo and the share of matched pieces turned upright right.
``run`` scores ``find_on_reduced`` on composites of synthetic pieces (100; 8 with ``quick``) and, where the
real amulet6 crops are on this machine, on composites of those (never written anywhere): 800-1600 px photos of
1 to 6 pieces on pages, paper, wood, cloth and tables, JPEG or HEIC, seeds the finder was not tuned on.
Targets: recall at least 0.95, at most 0.2 false boxes per photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from amulet_lab.bench.micro import MicroResult, Target

__all__ = ["run", "score_finder", "box_iou"]


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def score_finder(composites: Sequence[Any], finds: Sequence[Sequence[Any]]) -> dict[str, float]:
    """Box recall (IoU >= 0.5, one to one), false boxes per photo, rotation accuracy of the matched pieces."""
    pieces = hits = false = rot = 0
    for comp, found in zip(composites, finds):
        pairs = sorted(((box_iou(g.box, f.box), i, j) for i, g in enumerate(comp.pieces)
                        for j, f in enumerate(found)), reverse=True)
        used_g: set[int] = set()
        used_f: set[int] = set()
        for v, i, j in pairs:
            if v >= 0.5 and i not in used_g and j not in used_f:
                used_g.add(i)
                used_f.add(j)
                rot += comp.pieces[i].rotation == found[j].rotation
        pieces += len(comp.pieces)
        hits += len(used_g)
        false += len(found) - len(used_f)
    return {"recall": hits / max(pieces, 1), "false_per_photo": false / max(len(composites), 1),
            "rotation": rot / max(hits, 1), "pieces": float(pieces)}


def run(quick: bool = False) -> MicroResult:
    """Score the finder on held-out composites of synthetic pieces and, where present, of the real crops."""
    from amulet_lab.data.composites import folder_sources, make_composite, synthetic_sources
    from amulet_lab.model.bundled import AMULET6_DIR
    from amulet_lab.scene import find_on_reduced

    n = 8 if quick else 100
    sets = {"synthetic": synthetic_sources(3, 41)}
    if AMULET6_DIR.is_dir():
        sets["real"] = folder_sources(AMULET6_DIR / "val")
    figures: dict[str, float] = {}
    for name, sources in sets.items():
        comps = [make_composite(sources, 4321, i, sides=(800, 1600)) for i in range(n)]
        score = score_finder(comps, [find_on_reduced(c.data).pieces for c in comps])
        figures |= {f"{name}_{k}": v for k, v in score.items()}
    ratios = {k: figures[k] for k in figures if k.endswith(("_recall", "_false_per_photo", "_rotation"))}
    targets = {f"{s}_recall": Target(">=", 0.95) for s in sets} | {f"{s}_false_per_photo": Target("<=", 0.2)
                                                                  for s in sets}
    notes = (f"{n} composites per set (800-1600 px, 1-6 pieces, seed 4321: not a tuning seed); 'ratios' are the "
             "recall, false boxes per photo and rotation accuracy; real crops only where ../shared has them")
    return MicroResult("finder", figures, ratios, targets, notes)
