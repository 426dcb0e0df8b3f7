"""Find the amulets in a photo: boxes, quarter turns and upright crops. Knows no model.

Why segmentation against the background (not a network): the scenes people photograph (a catalogue page,
paper, a table, cloth, wood, the plain backdrop of a tight crop) are locally plain or finely textured, and a
piece is a compact, convex blob that departs from them in colour or brightness. No pretrained detector exists
offline, and a network trained only on our composites would learn the generator's quirks; this method has no
weights, a few thresholds measured on composites, and runs in about 50-100 ms on one core. Steps:

1. reduce to ``work_side`` (384 px, BOX) and blur by 1 px, so text strokes, halftone dots, weave and grain fade;
2. background model: k-means (k=4) of a band along the border in an opponent colour space; clusters with at
   least 10 % of the band kept, each with its own spread (floored; brightness counts less than colour, and
   brighter-than-white-paper counts a third: glare). The background's light falloff (a quadratic in x, y of
   log brightness) is divided out, and the corrected background of the whole image joins the model (a
   table strip beside a page);
3. foreground = farther than ``threshold`` (3.5) spreads from every background cluster; an opening (5x5)
   removes thin lines (text, rules, frames), a closing joins a piece's parts, holes are filled;
4. components (``masks.label_components``): solid ones are pieces when compact (elongation <= 3.5), filling
   their least-area box (>= 0.45) and dense in raw foreground; a large non-convex one holding two strong
   cores is split (pieces joined by a lit fold). Hollow components of the raw mask are outlines: a pale
   piece on pale paper shows only its shaded rim, so its convex hull is the piece unless it holds a piece
   filling a fair part of it (a frame). Blobs inside a bigger piece are its relief and go;
5. per piece: the tilt (least-area box over -12..12 degrees) and the quarter turn from the straightened
   hull: amulets stand taller than wide and their narrow end (the pointed or rounded top of phra_sivali,
   the apex of prok_bodhi's triangle, somdej's arch) is up. Square, hexagonal and oval pieces give no cue:
   they keep the usual way up and a low ``rotation_score``, so a caller may try the other turns with its
   classifier and keep the most confident (on composites, rotations with ``rotation_score >= 0.5`` are
   right 96 % of the time for synthetic pieces and 88 % for the real crops; all rotations about 68 %).

A tight crop (one piece over most of the frame, as the training crops) gives one piece, rotation 0; when
its piece reaches into the border band, the classifier's own plain-background test (``_tight_crop``) finds it.

Give the finder a reduced copy: ``find_on_reduced`` decodes bytes or a path at a reduced JPEG scale
(``validate_image(draft_max_side=...)``; HEIC decodes in full, libheif has no reduced decode: pillow-heif
exposes embedded thumbnails, which phones write, through ``pillow_heif.open_heif(...).thumbnails``) and scales
the boxes to the full-resolution upright frame, from which ``FoundPiece.crop`` cuts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from amulet_lab.errors import ValidationError
from amulet_lab.masks import (convex_hull, dilate, erode, fill_holes, label_components, polygon_area, polygon_pixels,
                              row_ends)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from amulet_lab.security import ImageInput, ImageLimits

__all__ = ["FoundPiece", "ReducedFind", "find_pieces", "find_on_reduced", "crop_piece", "WORK_SIDE"]

#: Long side (px) of the copy the finder segments.
WORK_SIDE = 384
_TIGHT_SHARE = 0.3  # one piece over this share of the frame is a tight crop: rotation 0
_ANGLES = tuple(range(-12, 13))
_RING = (3.0, 0.5, 0.08)  # an outline is a piece when its hull is at most this elongated, fills this much, ...
_CORE = 7.0  # distance of a piece's core, where ``_split`` looks for two pieces in one component


@dataclasses.dataclass(frozen=True)
class FoundPiece:
    """A piece found in an upright image: box, quarter turn to stand upright (counter-clockwise), tilt, scores."""

    box: tuple[int, int, int, int]
    rotation: int
    score: float
    tilt: float = 0.0
    rotation_score: float = 0.0

    def scaled(self, fx: float, fy: float) -> FoundPiece:
        """The same piece in an image scaled by ``fx`` across and ``fy`` down."""
        x0, y0, x1, y1 = self.box
        return dataclasses.replace(self, box=(int(math.floor(x0 * fx)), int(math.floor(y0 * fy)),
                                              int(math.ceil(x1 * fx)), int(math.ceil(y1 * fy))))

    def crop(self, image: Image.Image, margin: float = 0.06, *, max_side: int | None = None) -> Image.Image:
        """The piece cut from ``image`` (the frame of ``box``), straightened and turned upright, with a margin."""
        return crop_piece(image, self, margin, max_side=max_side)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"box": list(self.box), "rotation": self.rotation, "score": round(self.score, 3),
                "tilt": round(self.tilt, 1), "rotation_score": round(self.rotation_score, 3)}


@dataclasses.dataclass(frozen=True)
class ReducedFind:
    """What ``find_on_reduced`` found: pieces in the full-resolution upright frame, that frame's size, the copy."""

    pieces: list[FoundPiece]
    size: tuple[int, int]
    reduced: Image.Image


def crop_piece(image: Image.Image, piece: FoundPiece, margin: float = 0.06, *,
               max_side: int | None = None) -> Image.Image:
    """Upright crop of ``piece`` from ``image``: box plus ``margin`` of its long side each way, tilt undone, turned.

    The margin (default 6 %, with the tilt's rotation trimmed away) leaves the thin border of background the
    training crops have; the border beyond the photo is filled with the nearest edge pixels. With ``max_side``,
    a crop at least twice that size is first reduced by a whole factor (box filter) to no less than it, so the
    tilt is undone on the pixels the model needs rather than on a 12-MP frame's (a bicubic turn of a piece of
    a 2048 px decode took 130 ms of a 1 s scene budget).
    """
    from PIL import Image as PILImage

    x0, y0, x1, y1 = piece.box
    pad = margin * max(x1 - x0, y1 - y0) + abs(math.sin(math.radians(piece.tilt))) * max(x1 - x0, y1 - y0) * 0.5
    box = (int(x0 - pad), int(y0 - pad), int(math.ceil(x1 + pad)), int(math.ceil(y1 + pad)))
    inner = (max(0, box[0]), max(0, box[1]), min(image.width, box[2]), min(image.height, box[3]))
    out = image.crop(inner)
    factor = int(max(out.size) // max_side) if max_side else 1
    if factor >= 2:
        out = out.reduce(factor)
    if piece.tilt:
        out = out.rotate(-piece.tilt, resample=PILImage.Resampling.BICUBIC, expand=False,
                         fillcolor=out.getpixel((0, 0)))
        trim = abs(math.sin(math.radians(piece.tilt))) * max(x1 - x0, y1 - y0) * 0.5 / max(factor, 1)
        t = int(min(trim, out.width / 4, out.height / 4))
        out = out.crop((t, t, out.width - t, out.height - t))
    if piece.rotation:
        out = out.transpose(PILImage.Transpose({90: 2, 180: 3, 270: 4}[piece.rotation]))
    return out


# --------------------------------------------------------------------------------------------- segmentation

def _opponent(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32: brightness, red-green, yellow-blue (0..255 scale)."""
    import numpy as np

    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(r + g + b) / 3.0, (r - g) * 0.7071, (r + g - 2 * b) * 0.4082], axis=-1)


def _kmeans(points: np.ndarray, k: int, iters: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k, 3) and assignments of a deterministic k-means (initialised on brightness quantiles)."""
    import numpy as np

    order = np.argsort(points[:, 0], kind="stable")
    centres = points[order[((np.arange(k) + 0.5) / k * len(points)).astype(int)]].astype(np.float64)
    sq = (points ** 2).sum(1)[:, None]
    assign = np.zeros(len(points), dtype=np.intp)
    for _ in range(iters):
        assign = (sq - 2 * points @ centres.T + (centres ** 2).sum(1)[None, :]).argmin(1)
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, weights=points[:, c], minlength=k) for c in range(3)], 1)
        centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
    return centres.astype(np.float32), assign


def _background_clusters(feat: np.ndarray, keep: np.ndarray | None = None
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, spread) of each background cluster: k-means (k=4) of the border band (or of ``keep`` pixels)."""
    import numpy as np

    h, w = feat.shape[:2]
    if keep is None:
        b = max(3, round(0.03 * min(h, w)))
        keep = np.zeros((h, w), dtype=bool)
        keep[:b], keep[-b:], keep[:, :b], keep[:, -b:] = True, True, True, True
    pts = feat[keep]
    pts = pts[:: max(1, len(pts) // 2500)]
    if len(pts) < 16:
        return []
    centres, assign = _kmeans(pts, 4)
    out = []
    for j in range(len(centres)):
        sel = assign == j
        if sel.mean() < 0.1:
            continue
        mu = pts[sel].mean(0)
        floor = np.array([max(5.0, 0.045 * mu[0]), 3.5, 3.5], np.float32)
        sd = np.maximum(pts[sel].std(0), floor)
        sd[0] *= 1.3  # brightness varies with light more than colour does
        out.append((mu, sd))
    return out


def _distance(feat: np.ndarray, clusters: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Distance of each pixel to the nearest cluster, in its spreads."""
    import numpy as np

    best = np.full(feat.shape[:2], 0.0 if not clusters else np.inf, np.float32)
    for mu, sd in clusters:
        z0 = (feat[..., 0] - mu[0]) / sd[0]
        if mu[0] > 190:  # brighter than white paper is glare, not a piece: count a third of it
            z0 = np.where(z0 > 0, z0 * 0.3, z0)
        d = z0 * z0 + ((feat[..., 1] - mu[1]) / sd[1]) ** 2 + ((feat[..., 2] - mu[2]) / sd[2]) ** 2
        np.minimum(best, d, out=best)
    return np.sqrt(best)


def _illumination(feat: np.ndarray, dist: np.ndarray, clusters: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A smooth brightness gain (H, W) of the background: a quadratic in x, y fitted to log(L / cluster L)."""
    import numpy as np

    h, w = dist.shape
    ys, xs = np.nonzero(dist < 3.0)
    if len(ys) < 50 or not clusters:
        return np.ones((h, w), np.float32)
    step = max(1, len(ys) // 5000)
    ys, xs = ys[::step], xs[::step]
    px = feat[ys, xs]
    mus = np.stack([mu for mu, _ in clusters])
    nearest = ((px[:, None, :] - mus[None]) ** 2).sum(2).argmin(1)
    target = np.log(np.maximum(px[:, 0], 1.0) / np.maximum(mus[nearest, 0], 1.0))
    u, v = xs / w - 0.5, ys / h - 0.5
    design = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], 1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    gu = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    gv = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    field = coef[0] + coef[1] * gu + coef[2] * gv + coef[3] * gu * gu + coef[4] * gv * gv + coef[5] * gu * gv
    return np.exp(np.clip(field, -0.7, 0.7)).astype(np.float32)


def _distance_map(feat: np.ndarray) -> np.ndarray:
    """Per pixel: distance (in background spreads) to the nearest background cluster, light falloff undone.

    Pass 1 models the border band (on every other pixel); the brightness field of the pixels it calls
    background is fitted and divided out; pass 2 models the corrected border band plus the corrected
    background of the whole image (a table strip beside a page is background too).
    """
    coarse = feat[::2, ::2]
    clusters = _background_clusters(coarse)
    gain = _illumination(coarse, _distance(coarse, clusters), clusters)
    from PIL import Image

    import numpy as np

    h, w = feat.shape[:2]
    gain = np.asarray(Image.fromarray(gain).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    flat = feat / gain[:, :, None]
    border = _background_clusters(flat)
    coarse = flat[::2, ::2]
    return _distance(flat, border + _background_clusters(coarse, _distance(coarse, border) < 2.5))


def _straighten(ys: np.ndarray, xs: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The piece's tilt (degrees counter-clockwise) from the box of least area, and its points straightened."""
    import numpy as np

    rad = np.radians(np.array(_ANGLES, np.float32))
    c, s = np.cos(rad), np.sin(rad)
    yc, xc = ys - ys.mean(), xs - xs.mean()
    u = xc[:, None] * c[None, :] + yc[:, None] * s[None, :]
    v = -xc[:, None] * s[None, :] + yc[:, None] * c[None, :]
    area = (u.max(0) - u.min(0) + 1) * (v.max(0) - v.min(0) + 1)
    i = int(np.argmin(area + 1e-3 * np.abs(rad)))  # ties go to the smallest tilt
    return -float(_ANGLES[i]), v[:, i], u[:, i]


def _orientation(vs: np.ndarray, us: np.ndarray) -> tuple[int, float]:
    """Quarter turn (CCW, to stand upright) and its confidence 0..1 from straightened silhouette points.

    ``vs`` down, ``us`` across. Cues: taller than wide, and the narrow end at the top.
    """
    import numpy as np

    height = vs.max() - vs.min() + 1
    width = us.max() - us.min() + 1
    aspect = math.log(height / width)

    def taper(along: np.ndarray, across: np.ndarray) -> float:
        """How much wider the high end of ``along`` is than its low end (positive: the low end is narrow)."""
        lo, hi = along.min(), along.max()
        span = hi - lo + 1
        bins = np.clip(((along - lo) / span * 10).astype(int), 0, 9)
        counts = np.bincount(bins, minlength=10).astype(np.float32)
        widths = counts / max(counts.max(), 1)
        return float(widths[7:9].mean() - widths[1:3].mean())

    t_v = taper(vs, us)   # positive: top narrow (upright)
    t_u = taper(us, vs)   # positive: left narrow
    # Score each quarter turn of the piece as it lies: 0 = upright, 180 = upside down, 90/270 = lying.
    scores = {0: 1.5 * aspect + t_v, 180: 1.5 * aspect - t_v, 270: -1.5 * aspect + t_u, 90: -1.5 * aspect - t_u}
    top = max(scores.values())
    best = next(k for k in (0, 90, 270, 180) if scores[k] >= top - 0.05)  # near ties: the usual way up
    ranked = sorted(scores.values(), reverse=True)
    return best, float(min(1.0, (ranked[0] - ranked[1]) / 0.3))


def _candidates(mask: np.ndarray, raw: np.ndarray, dist: np.ndarray) -> list[dict[str, Any]]:
    """Components big enough to be pieces, each with its hull, straightened box and fill figures."""
    import numpy as np

    s = min(mask.shape)
    labels, n = label_components(mask)
    areas = np.bincount(labels.reshape(-1), minlength=n + 1)
    out = []
    for i in np.flatnonzero(areas >= 0.0008 * s * s).tolist():
        if i == 0:
            continue
        ys, xs = np.nonzero(labels == i)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if min(box[2] - box[0], box[3] - box[1]) < 0.03 * s:
            continue
        hull = convex_hull(row_ends(ys, xs))
        density = float(raw[ys, xs].mean())
        out.append({"hull": hull, "box": box, "area": float(len(ys)), "hull_area": max(polygon_area(hull), 1.0),
                    "density": density, "strength": float(np.median(dist[ys, xs]))})
    return out


def _shape(hull: np.ndarray) -> tuple[float, float, float]:
    """(tilt, elongation, fill of the hull in its least-area box) of a hull."""
    tilt, vs, us = _straighten(hull[:, 1], hull[:, 0])
    height, width = float(vs.max() - vs.min()), float(us.max() - us.min())
    return tilt, max(height, width) / max(min(height, width), 1.0), polygon_area(hull) / max(height * width, 1.0)


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(small, 1)


def _split(c: dict[str, Any], mask: np.ndarray, raw: np.ndarray, dist: np.ndarray) -> list[dict[str, Any]]:
    """A large component that holds two or more strong cores (pieces joined by a lit fold or a shadow), split."""
    import numpy as np

    x0, y0, x1, y1 = c["box"]
    if c["area"] < 0.02 * min(mask.shape) ** 2 or c["area"] > 0.9 * c["hull_area"]:
        return [c]  # small, or convex as one piece is
    region = mask[y0:y1, x0:x1]
    core = dilate(erode(region & (dist[y0:y1, x0:x1] > _CORE), 2), 2)
    parts = [p for p in _candidates(np.pad(core, ((y0, mask.shape[0] - y1), (x0, mask.shape[1] - x1))), raw, dist)
             if p["area"] >= 0.08 * c["area"]]
    if len(parts) < 2 or sum(p["area"] for p in parts) < 0.5 * c["area"]:
        return [c]
    return parts


def _components(mask: np.ndarray, outlines: np.ndarray, raw: np.ndarray, dist: np.ndarray, max_pieces: int
                ) -> list[tuple[float, tuple[int, int, int, int], float, int, float]]:
    """Accepted pieces: (score, box, tilt, rotation, rotation_score) in work pixels.

    Solid components of ``mask`` (most of their hull covered) are pieces when compact and dense in raw
    foreground. Hollow components of ``outlines`` (the raw mask only closed, so thin rims survive) are
    outlines: a pale piece on pale paper shows only its shaded rim. Overlapping outlines are
    joined; an outline holding a solid piece that fills a fair part of it is a frame round that piece and
    goes; an outline holding only small blobs (the piece's own relief) is the piece.
    """
    import numpy as np

    h, w = mask.shape
    s = min(h, w)
    solids = []
    for c in _candidates(mask, raw, dist):
        if c["area"] >= 0.7 * c["hull_area"]:
            solids.extend(_split(c, mask, raw, dist))
    rings = [c for c in _candidates(outlines, raw, dist) if c["area"] < 0.7 * c["hull_area"]]
    merged: list[dict[str, Any]] = []
    for c in sorted(rings, key=lambda c: -c["hull_area"]):
        for m in merged:
            if _overlap(c["box"], m["box"]) > 0.2:
                m["hull"] = convex_hull(np.concatenate([m["hull"], c["hull"]]))
                m["box"] = (min(m["box"][0], c["box"][0]), min(m["box"][1], c["box"][1]),
                            max(m["box"][2], c["box"][2]), max(m["box"][3], c["box"][3]))
                m["area"] += c["area"]
                m["hull_area"] = max(polygon_area(m["hull"]), 1.0)
                break
        else:
            merged.append(dict(c))
    pieces = []
    for c in solids:
        tilt, elong, fill = _shape(c["hull"])
        if elong <= 3.5 and fill >= 0.45 and c["density"] >= 0.6:
            pieces.append((c, tilt, 1.0))
    for ring in merged:
        tilt, elong, fill = _shape(ring["hull"])
        if (elong > _RING[0] or fill < _RING[1] or ring["area"] < _RING[2] * ring["hull_area"]
                or min(ring["box"][2] - ring["box"][0], ring["box"][3] - ring["box"][1]) < 0.05 * s):
            continue
        held = [p for p in pieces if _inside(p[0]["box"], ring["box"])]
        if any(p[0]["area"] >= 0.3 * ring["hull_area"] for p in held):
            continue  # a frame round a piece
        pieces = [p for p in pieces if not any(p is q for q in held)]
        pieces.append((ring, tilt, 0.6))
    nested = [p for p in pieces if any(q is not p and q[0]["area"] > 2 * p[0]["area"] and _inside(p[0]["box"], q[0]["box"])
                                       for q in pieces)]
    out = []
    for c, tilt, weight in (p for p in pieces if not any(p is q for q in nested)):  # relief inside a piece goes
        ys, xs = polygon_pixels(c["hull"], h, w)
        if len(ys) < 3:
            continue
        _, vs, us = _straighten(ys.astype(np.float32), xs.astype(np.float32))
        rotation, rot_score = _orientation(vs, us)
        score = float(weight * min(1.0, c["strength"] / 8.0) * min(1.0, c["density"] / 0.8))
        out.append((score, c["box"], tilt, rotation, rot_score))
    out.sort(key=lambda t: -t[0])
    return out[:max_pieces]


def find_pieces(image: Image.Image, *, max_pieces: int = 6, threshold: float = 3.5,
                work_side: int = WORK_SIDE) -> list[FoundPiece]:
    """The amulets in an upright RGB image (ideally a copy about 400-1000 px long): boxes in its pixels.

    Empty when nothing stands out from the background; one piece with rotation 0 for a tight crop.
    """
    import numpy as np
    from PIL import Image as PILImage, ImageFilter


    if not isinstance(image, PILImage.Image):
        raise ValidationError(f"find_pieces needs a PIL image, got {type(image).__name__}", field="image",
                              value=type(image).__name__, code="E_SCENE_INPUT")
    if isinstance(max_pieces, bool) or not isinstance(max_pieces, int) or max_pieces < 1:
        raise ValidationError(f"max_pieces must be an integer >= 1, got {max_pieces!r}", field="max_pieces",
                              value=max_pieces, code="E_SCENE_ARGUMENT")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    f = min(1.0, work_side / max(width, height))
    small = rgb.resize((max(8, round(width * f)), max(8, round(height * f))), PILImage.Resampling.BOX) if f < 1 else rgb
    small = small.filter(ImageFilter.GaussianBlur(1.0))
    feat = _opponent(np.asarray(small, dtype=np.float32))
    dist = _distance_map(feat)
    raw = dist > threshold
    mask = dilate(erode(raw, 2), 2)  # opening: thin lines go
    mask = erode(dilate(mask, 2), 2)  # closing: a piece's parts join
    mask = fill_holes(mask)
    found = _components(mask, erode(dilate(raw, 1), 1), raw, dist, max_pieces)
    sx, sy = width / small.width, height / small.height
    pieces = [FoundPiece(box, rotation, score, tilt, rot_score).scaled(sx, sy)
              for score, box, tilt, rotation, rot_score in found]
    pieces = [dataclasses.replace(p, box=(max(0, p.box[0]), max(0, p.box[1]), min(width, p.box[2]),
                                          min(height, p.box[3]))) for p in pieces]
    if len(pieces) == 1:
        x0, y0, x1, y1 = pieces[0].box
        if (x1 - x0) * (y1 - y0) >= _TIGHT_SHARE * width * height:
            return [dataclasses.replace(pieces[0], rotation=0, rotation_score=1.0)]
    tight = _tight_crop(np.asarray(small))
    if tight is not None:  # a tight crop the scene model broke up (its piece reaches into the border band)
        tight_piece = FoundPiece(tight, 0, 1.0, 0.0, 1.0).scaled(sx, sy)
        tx0, ty0, tx1, ty1 = tight_piece.box
        inside = all(tx0 <= (p.box[0] + p.box[2]) / 2 <= tx1 and ty0 <= (p.box[1] + p.box[3]) / 2 <= ty1
                     for p in pieces)
        found_area = sum((p.box[2] - p.box[0]) * (p.box[3] - p.box[1]) for p in pieces)
        if inside and found_area < 0.5 * (tx1 - tx0) * (ty1 - ty0):
            return [tight_piece]
    return pieces


def _tight_crop(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box of the one piece when the image is a tight crop on a plain backdrop (as the training crops), else None.

    The crop's own test (``masks.plain_background_mask``, the classifier's idea of foreground): the piece must
    cover 40-97 % of the frame, fill at least 80 % of its box, and leave most of a thin border band plain.
    """
    import numpy as np

    from amulet_lab.masks import bounding_box, plain_background_mask

    h, w = rgb.shape[:2]
    mask = plain_background_mask(rgb)
    box = bounding_box(mask)
    if box is None:
        return None
    area = (box[2] - box[0]) * (box[3] - box[1])
    b = max(2, min(h, w) // 64)
    band = np.concatenate([mask[:b].ravel(), mask[-b:].ravel(), mask[:, :b].ravel(), mask[:, -b:].ravel()])
    if 0.4 * h * w <= area <= 0.97 * h * w and mask.sum() >= 0.8 * area and band.mean() <= 0.4:
        return box
    return None


def find_on_reduced(source: ImageInput | Image.Image, *, max_side: int = 800, limits: ImageLimits | None = None,
                    **options: Any) -> ReducedFind:
    """Find pieces on a reduced decode of ``source`` (bytes, path or PIL image); boxes in its full upright frame.

    Bytes and paths go through ``validate_image`` with ``draft_max_side=max_side`` (a JPEG decodes at the libjpeg
    scale 1/2..1/8 that keeps the long side >= ``max_side``; HEIC/PNG/WebP decode in full), then the copy is
    reduced to at most ``max_side``. ``options`` go to ``find_pieces``.
    """
    from PIL import Image as PILImage

    from amulet_lab.security import validate_image

    if isinstance(source, PILImage.Image):
        full, image = source.size, source
    else:
        checked = validate_image(source, limits=limits, draft_max_side=max_side)
        full, image = (checked.width, checked.height), checked.image
    if max(image.size) > max_side:
        f = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * f)), max(1, round(image.height * f))),
                             PILImage.Resampling.BOX)
    pieces = find_pieces(image, **options)
    fx, fy = full[0] / image.width, full[1] / image.height
    scaled = [p.scaled(fx, fy) for p in pieces]
    scaled = [dataclasses.replace(p, box=(max(0, p.box[0]), max(0, p.box[1]), min(full[0], p.box[2]),
                                          min(full[1], p.box[3]))) for p in scaled]
    return ReducedFind(scaled, full, image)
