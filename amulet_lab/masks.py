"""Binary-mask building blocks in numpy (no scipy): components, holes, morphology, hulls, plain-background masks.

Shared by the composite generator (``amulet_lab.data.composites`` cuts pieces off their background) and the
scene finder (``amulet_lab.scene``). Connected components are labelled run by run (8-connectivity): a
union-find over the horizontal runs of each row, so the Python loop is over runs, not pixels (a few
thousand on a 400 px mask: a few milliseconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["label_components", "fill_holes", "largest_component", "plain_background_mask", "bounding_box", "dilate",
           "erode", "box_sum", "convex_hull", "row_ends", "polygon_area", "polygon_pixels"]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) of every horizontal run of True in ``mask`` (end exclusive), row-major order."""
    import numpy as np

    m = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    m[:, 1:-1] = mask
    d = np.diff(m, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (H, W) int32 of the 8-connected components of a boolean mask (0 = off, 1..n), and n."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, starts, ends = _runs(mask)
    n_runs = len(rows)
    labels = np.zeros((h, w), dtype=np.int32)
    if n_runs == 0:
        return labels, 0
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(h + 1)).tolist()
    s_list, e_list = starts.tolist(), ends.tolist()
    for y in range(1, h):
        i, i_end, j, j_end = first[y - 1], first[y], first[y], first[y + 1]
        while i < i_end and j < j_end:
            if s_list[j] <= e_list[i] and s_list[i] <= e_list[j]:  # touching, diagonals included
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if e_list[i] < e_list[j]:
                i += 1
            else:
                j += 1
    roots = np.fromiter((find(i) for i in range(n_runs)), dtype=np.int64, count=n_runs)
    _, compact = np.unique(roots, return_inverse=True)
    run_label = (compact + 1).astype(np.int32)
    lengths = ends - starts
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(rows * w + starts, lengths) + offsets
    labels.reshape(-1)[flat] = np.repeat(run_label, lengths)
    return labels, int(run_label.max())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the image border switched on."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    labels, n = label_components(~mask)
    if n == 0:
        return mask.copy()
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0])
    return ~outside


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (all False when the mask is empty)."""
    import numpy as np

    labels, n = label_components(mask)
    if n == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    sizes[0] = 0
    return labels == int(sizes.argmax())


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the True pixels of ``mask``, x1/y1 exclusive; None when empty."""
    import numpy as np

    ys = np.flatnonzero(mask.any(1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(mask.any(0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def plain_background_mask(rgb: np.ndarray) -> np.ndarray:
    """Foreground (H, W) bool of a crop on a plain background: far from the median border colour.

    The idea of ``HandFeatures.foreground`` (border median, threshold 1.5x the border's 90th-percentile
    spread clipped to 0.12..0.35 of full scale, a 5x5 majority smoothing), then its largest component with
    the holes filled: the silhouette of the one piece a training crop shows.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    b = max(2, min(h, w) // 32)
    border = np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3),
                             arr[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    spread = float(np.quantile(np.sqrt(((border - bg) ** 2).sum(1)), 0.9))
    dist = np.sqrt(((arr - bg) ** 2).sum(2))
    raw = dist > float(np.clip(spread * 1.5, 0.12, 0.35))
    smooth = Image.fromarray((raw * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(2))
    mask = np.asarray(smooth) > 127
    if mask.mean() < 0.02:
        return np.ones((h, w), dtype=bool)
    return fill_holes(largest_component(mask))


def box_sum(mask: np.ndarray, r: int) -> np.ndarray:
    """Sum of ``mask`` over the (2r+1)^2 window round each pixel (zero outside), by integral image."""
    import numpy as np

    h, w = mask.shape
    s = np.zeros((h + 2 * r + 1, w + 2 * r + 1), dtype=np.int32)
    s[r + 1:r + 1 + h, r + 1:r + 1 + w] = mask
    s = s.cumsum(0).cumsum(1)
    k = 2 * r + 1
    return s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    return box_sum(mask, r) > 0


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square (beyond the border counts as the edge pixel)."""
    import numpy as np

    inside = np.pad(mask, r, mode="edge")  # pixels beyond the border count as their edge pixel
    return box_sum(inside, r)[r:-r, r:-r] >= (2 * r + 1) ** 2


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (M, 2) of points (N, 2) x, y, counter-clockwise (Andrew's monotone chain)."""
    import numpy as np

    pts = np.unique(points, axis=0).tolist()
    if len(pts) < 3:
        return np.asarray(pts, np.float32)

    def half(seq: list[list[float]]) -> list[list[float]]:
        out: list[list[float]] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1], np.float32)


def row_ends(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The pixel corners at the left and right end of each row of a component (its hull is theirs)."""
    import numpy as np

    starts = np.r_[0, np.flatnonzero(np.diff(ys)) + 1]
    y = ys[starts].astype(np.float32)
    lo = np.minimum.reduceat(xs, starts).astype(np.float32)
    hi = np.maximum.reduceat(xs, starts).astype(np.float32) + 1
    return np.concatenate([np.stack([lo, y], 1), np.stack([hi, y], 1), np.stack([lo, y + 1], 1),
                           np.stack([hi, y + 1], 1)])


def polygon_area(poly: np.ndarray) -> float:
    """Area of a polygon (M, 2) by the shoelace formula."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs((x * (y[list(range(1, len(y))) + [0]]) - y * (x[list(range(1, len(x))) + [0]])).sum()) / 2)


def polygon_pixels(poly: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixels inside a polygon."""
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (poly - 0.5).tolist()], fill=1)
    return np.nonzero(np.asarray(canvas))
