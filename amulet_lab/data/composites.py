"""Composite scene photos with ground truth: amulet crops cut off their background and laid on pages, wood, cloth.

A composite imitates a phone photo of several amulets: 1 to 6 crops (the real amulet6 crops or the synthetic
pieces of ``amulet_lab.data.synth``) are cut off their plain background (``masks.plain_background_mask``: the
idea of ``HandFeatures.foreground``), scaled, turned by a quarter turn plus a small tilt, and laid without
overlap on a generated background (``composite_scenes``: catalogue page, paper, wood, cloth, table) with
soft shadows, then given a print look (page and paper), mild perspective, a phone look (light falloff,
glare, colour cast, saturation, blur, noise), optionally a turn of the whole scene and an EXIF orientation
tag, and encoded as JPEG or HEIC.

Ground truth per piece (``CompositePiece``), in the pixels of the upright image (EXIF orientation applied):
``box`` (x0, y0, x1, y1, x1/y1 exclusive), ``turned`` = degrees (0/90/180/270) the piece was turned
counter-clockwise from upright in that image, and ``rotation`` = the degrees it must be turned
counter-clockwise to stand upright again, ``(360 - turned) % 360``: the meaning of ``scene.FoundPiece.rotation``.

One ``(seed, index)`` gives one composite, byte for byte (JPEG; HEIC is checked by its decoded pixels).
Composites of real photos may be written only outside the project (``write_composites`` refuses them inside
it): only composites of synthetic pieces may be committed.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from amulet_lab.data.composite_scenes import BACKGROUNDS, draw_background, phone_look, print_look
from amulet_lab.errors import ValidationError
from amulet_lab.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["SourcePiece", "CompositePiece", "Composite", "cut_out", "synthetic_sources", "folder_sources",
           "make_composite", "write_composites", "read_manifest", "COMPOSITES_VERSION"]

#: Bumped whenever the generator's output changes.
COMPOSITES_VERSION = 1
_RENDER_SIDE = 1600  # scenes are drawn at most this long, then scaled up (the crops are 224 px anyway)
_SIZE_RANGE = {1: (0.3, 0.7), 2: (0.25, 0.5), 3: (0.2, 0.4), 4: (0.18, 0.36), 5: (0.15, 0.3), 6: (0.14, 0.28)}
_RED = ((170, 0, 0), (235, 30, 25))
_EXIF_STORE = {3: 3, 6: 2, 8: 4}  # orientation -> Image.Transpose that stores the upright picture under it


@dataclasses.dataclass(frozen=True)
class SourcePiece:
    """One crop to lay into scenes: RGB image, class label, where it came from and whether it is synthetic."""

    image: Image.Image
    label: str
    source: str
    synthetic: bool

    @functools.cached_property
    def cutout(self) -> Image.Image:
        """The piece cut off its background (``cut_out``), computed once."""
        return cut_out(self.image)


@dataclasses.dataclass(frozen=True)
class CompositePiece:
    """Ground truth of one laid piece: box in the upright image, quarter turn, tilt, label, source."""

    box: tuple[int, int, int, int]
    turned: int
    tilt: float
    label: str
    source: str

    @property
    def rotation(self) -> int:
        """Degrees to turn the piece counter-clockwise to stand upright (as ``scene.FoundPiece.rotation``)."""
        return (360 - self.turned) % 360

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``rotation`` included)."""
        return {"box": list(self.box), "turned": self.turned, "rotation": self.rotation,
                "tilt": round(self.tilt, 2), "label": self.label, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Composite:
    """One composite: encoded bytes, the upright picture before encoding, and its ground truth."""

    data: bytes
    format: str
    upright: Image.Image
    exif_orientation: int
    scene_turned: int
    background: str
    pieces: tuple[CompositePiece, ...]
    synthetic: bool
    seed: int
    index: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return self.upright.size

    @property
    def suffix(self) -> str:
        """File suffix of the encoding: .jpg or .heic."""
        return ".heic" if self.format == "HEIF" else ".jpg"

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the ground truth (no pixels)."""
        return {"format": self.format, "width": self.size[0], "height": self.size[1],
                "exif_orientation": self.exif_orientation, "scene_turned": self.scene_turned,
                "background": self.background, "synthetic": self.synthetic, "seed": self.seed, "index": self.index,
                "pieces": [p.to_dict() for p in self.pieces]}


def cut_out(image: Image.Image) -> Image.Image:
    """An RGBA image of the piece in a crop: masked off its plain (border-coloured) background, cut to its box."""
    import numpy as np
    from PIL import Image, ImageFilter

    from amulet_lab.masks import bounding_box, plain_background_mask

    rgb = image.convert("RGB")
    mask = plain_background_mask(np.asarray(rgb))
    box = bounding_box(mask) or (0, 0, rgb.width, rgb.height)
    alpha = Image.fromarray((mask * 255).astype(np.uint8))
    rim = max(1, round(min(rgb.size) / 110))  # the mask's edge still holds a line of background colour
    alpha = alpha.filter(ImageFilter.MinFilter(2 * rim + 1)).filter(ImageFilter.GaussianBlur(0.7))
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out.crop(box)


def synthetic_sources(per_class: int, seed: int, size: int = 224) -> list[SourcePiece]:
    """``per_class`` synthetic pieces of each class (front and back in turn) from ``synth_render.render_amulet``."""
    import numpy as np

    from amulet_lab.data.labels import load_labels
    from amulet_lab.data.synth_render import SIDES, piece_params, render_amulet

    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValidationError(f"per_class must be an integer >= 1, got {per_class!r}", field="per_class",
                              value=per_class, code="E_COMPOSITE_ARGUMENT")
    out = []
    for label in load_labels():
        for n in range(per_class):
            side, piece_id = SIDES[n % 2], n // 2
            params = piece_params(label.key, np.random.default_rng([seed, 7, label.index, piece_id]))
            params["background"] = _RED  # like the real crops: a plain red the piece can be cut off
            for attempt in range(8):  # a photo drawn on another backdrop may not cut cleanly: draw again
                rng = np.random.default_rng([seed, 7, label.index, piece_id, 1 + SIDES.index(side), attempt])
                source = SourcePiece(render_amulet(label.key, side, size, rng, params), label.key,
                                     f"synth:{seed}:{label.key}_{side}_{piece_id:04d}", True)
                if _clean_cut(source.cutout, size):
                    break
            out.append(source)
    return out


def _clean_cut(cut: Image.Image, size: int) -> bool:
    """Whether a cut-out looks like one whole piece: a fair share of the crop, mostly opaque in its box."""
    import numpy as np

    alpha = np.asarray(cut.getchannel("A"), dtype=np.float32) / 255.0
    return 0.3 * size <= max(cut.size) < 0.98 * size and float(alpha.mean()) >= 0.35  # a triangle fills half


def folder_sources(root: str | Path) -> list[SourcePiece]:
    """Every crop of a dataset folder (``<class>/*.jpg`` or ``<split>/<class>/*.jpg``), labelled by its folder."""
    from amulet_lab.data.dataset import load_dataset
    from amulet_lab.security import validate_image

    base = Path(root)
    splits = load_dataset(base)
    synthetic = False
    meta = base / "synth.json"
    if meta.is_file():
        synthetic = bool(json.loads(meta.read_text(encoding="utf-8")).get("synthetic", False))
    out = []
    for sample in [*splits.train, *splits.val, *splits.test]:
        image = validate_image(sample.path).image
        out.append(SourcePiece(image, sample.key, str(Path(sample.path).relative_to(base)), synthetic))
    return out


def _perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """PIL PERSPECTIVE data mapping output points ``dst`` to input points ``src`` (four each)."""
    import numpy as np

    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def _place(rng: np.random.Generator, pieces: list[Image.Image], w: int, h: int) -> list[tuple[int, int]] | None:
    """Top-left corners laying ``pieces`` inside (w, h) without overlap (with a gap), or None."""
    s = min(w, h)
    margin, gap = int(0.05 * s), 0.04 * s
    placed: list[tuple[float, float, float, float]] = []
    corners = []
    for piece in pieces:
        pw, ph = piece.size
        if pw > w - 2 * margin or ph > h - 2 * margin:
            return None
        for _ in range(300):
            x = int(rng.integers(margin, w - margin - pw + 1))
            y = int(rng.integers(margin, h - margin - ph + 1))
            if all(x + pw + gap <= a or c + gap <= x or y + ph + gap <= b or d + gap <= y
                   for a, b, c, d in placed):
                placed.append((x, y, x + pw, y + ph))
                corners.append((x, y))
                break
        else:
            return None
    return corners


def _pieces_for(rng: np.random.Generator, chosen: list[SourcePiece], w: int, h: int
                ) -> tuple[list[Image.Image], list[tuple[int, float]], list[tuple[int, int]]]:
    """Turned, tilted, scaled cut-outs and where they lie; shrinks them until they fit."""
    from PIL import Image

    lo, hi = _SIZE_RANGE[max(1, len(chosen))]
    longs = [rng.uniform(lo, hi) * min(w, h) for _ in chosen]
    turns = [(int(rng.integers(0, 4)) * 90, float(rng.uniform(-10, 10)) if rng.random() < 0.8 else 0.0)
             for _ in chosen]
    for attempt in range(12):
        shrink = 0.88 ** attempt
        images = []
        for src, long_side, (turn, tilt) in zip(chosen, longs, turns):
            cut = src.cutout
            f = long_side * shrink / max(cut.size)
            scaled = cut.resize((max(4, round(cut.width * f)), max(4, round(cut.height * f))),
                                Image.Resampling.BICUBIC)
            images.append(scaled.rotate(turn + tilt, resample=Image.Resampling.BICUBIC, expand=True))
        corners = _place(rng, images, w, h)
        if corners is not None:
            return images, turns, corners
    raise ValidationError("could not lay the pieces into the scene", field="n_pieces", value=len(chosen),
                          code="E_COMPOSITE_LAYOUT")


def _scene_size(rng: np.random.Generator, sides: tuple[int, int]) -> tuple[int, int]:
    long_side = int(rng.integers(sides[0], sides[1] + 1))
    ratio = (0.75, 0.75, 0.5625, 1.0)[int(rng.integers(0, 4))]
    short = int(round(long_side * ratio))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def _encode(image: Image.Image, fmt: str, quality: int, orientation: int) -> bytes:
    from PIL import Image as PILImage

    stored = image if orientation == 1 else image.transpose(PILImage.Transpose(_EXIF_STORE[orientation]))
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality}
    if orientation != 1:
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    if fmt == "HEIF":
        from amulet_lab.security import register_heif

        register_heif()
        stored.save(buffer, format="HEIF", enc_params={"preset": "ultrafast"}, **kwargs)  # x265's default: ~10x slower
    else:
        stored.save(buffer, format="JPEG", optimize=False, **kwargs)
    return buffer.getvalue()


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value is not None and value not in allowed:
        raise ValidationError(f"{name} must be one of {list(allowed)}, got {value!r}", field=name, value=value,
                              code="E_COMPOSITE_ARGUMENT")


def make_composite(sources: Sequence[SourcePiece], seed: int, index: int = 0, *, size: tuple[int, int] | None = None,
                   sides: tuple[int, int] = (800, 1600), n_pieces: int | None = None, background: str | None = None,
                   fmt: str | None = None, scene_turn: int | None = None, exif_orientation: int | None = None,
                   quality: int | None = None) -> Composite:
    """One composite scene (see the module doc); any option left None is drawn from ``(seed, index)``.

    ``n_pieces`` is 1..6 (drawn when None), or 0 for a scene with no piece at all (a photo with no amulet).
    """
    import numpy as np
    from PIL import Image

    if not sources:
        raise ValidationError("no source pieces given", field="sources", code="E_COMPOSITE_ARGUMENT")
    _check_choice("n_pieces", n_pieces, range(0, 7))
    _check_choice("background", background, BACKGROUNDS)
    _check_choice("fmt", fmt, ("JPEG", "HEIF"))
    _check_choice("scene_turn", scene_turn, (0, 90, 180, 270))
    _check_choice("exif_orientation", exif_orientation, (1, 3, 6, 8))
    rng = np.random.default_rng([seed, 31, index])
    out_w, out_h = size if size is not None else _scene_size(rng, sides)
    scale = min(1.0, _RENDER_SIDE / max(out_w, out_h))
    w, h = max(8, round(out_w * scale)), max(8, round(out_h * scale))
    n = n_pieces if n_pieces is not None else int(rng.integers(1, 7))
    kind = background or BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=(0.4, 0.15, 0.15, 0.15, 0.15)))]
    picks = rng.choice(len(sources), size=n, replace=len(sources) < n)
    chosen = [sources[int(i)] for i in picks]
    images, turns, corners = _pieces_for(rng, chosen, w, h) if n else ([], [], [])
    keep_out = [(x, y, x + im.width, y + im.height) for im, (x, y) in zip(images, corners)]

    arr = draw_background(kind, rng, w, h, keep_out)
    unit = min(w, h) / 600.0  # effects are sized for a 600 px picture
    shadow = Image.new("L", (w, h), 0)
    angle = rng.uniform(0, 2 * math.pi)
    reach = rng.uniform(0.01, 0.04) * min(w, h) * (max(n, 1) ** -0.3)
    for im, (x, y) in zip(images, corners):
        shadow.paste(im.getchannel("A"), (int(x + reach * math.cos(angle)), int(y + reach * math.sin(angle))),
                     im.getchannel("A"))
    from PIL import ImageFilter

    shade = np.asarray(shadow.filter(ImageFilter.GaussianBlur(max(1.0, reach * 0.8))), np.float32) / 255.0
    arr *= (1.0 - rng.uniform(0.2, 0.5) * shade)[:, :, None]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    labels = Image.new("L", (w, h), 0)
    for i, (im, (x, y)) in enumerate(zip(images, corners), start=1):
        layer.alpha_composite(im, (x, y))
        labels.paste(i, (x, y, x + im.width, y + im.height), im.getchannel("A").point(lambda v: 255 if v > 127 else 0))
    rgba = np.asarray(layer, np.float32)
    alpha = rgba[:, :, 3:] / 255.0
    arr = arr * (1 - alpha) + rgba[:, :, :3] * alpha
    if (kind == "page" and rng.random() < 0.8) or (kind == "paper" and rng.random() < 0.3):
        arr = print_look(arr, rng, unit)
    if rng.random() < 0.5:  # mild perspective: the output samples an inner quadrilateral of the scene
        d = 0.035 * min(w, h)
        quad = [(rng.uniform(0, d), rng.uniform(0, d)), (w - rng.uniform(0, d), rng.uniform(0, d)),
                (w - rng.uniform(0, d), h - rng.uniform(0, d)), (rng.uniform(0, d), h - rng.uniform(0, d))]
        coeffs = _perspective_coeffs([(0, 0), (w, 0), (w, h), (0, h)], quad)
        flat = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        arr = np.asarray(flat.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR),
                         np.float32)
        labels = labels.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.NEAREST)
    image = phone_look(arr, rng, unit)
    turn = scene_turn if scene_turn is not None else (0 if rng.random() < 0.7 else int(rng.integers(1, 4)) * 90)
    if turn:
        how = Image.Transpose({90: 2, 180: 3, 270: 4}[turn])  # ROTATE_90/180/270: counter-clockwise
        image, labels = image.transpose(how), labels.transpose(how)
        out_w, out_h = (out_h, out_w) if turn in (90, 270) else (out_w, out_h)
    lab = np.asarray(labels)
    sx, sy = out_w / image.width, out_h / image.height
    found = []
    from amulet_lab.masks import bounding_box

    for i, (src, (q, tilt)) in enumerate(zip(chosen, turns), start=1):
        box = bounding_box(lab == i)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        found.append(CompositePiece((int(math.floor(x0 * sx)), int(math.floor(y0 * sy)), int(math.ceil(x1 * sx)),
                                     int(math.ceil(y1 * sy))), (q + turn) % 360, tilt, src.label, src.source))
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), Image.Resampling.BICUBIC)
    form = fmt or ("JPEG" if rng.random() < 0.7 else "HEIF")
    orient = exif_orientation or (1 if rng.random() < 0.8 else int(rng.choice([3, 6, 8])))
    q_enc = quality or int(rng.integers(70, 96) if form == "JPEG" else rng.integers(60, 91))
    data = _encode(image, form, q_enc, orient)
    return Composite(data, form, image, orient, turn, kind, tuple(found), all(s.synthetic for s in chosen), seed,
                     index)


def _inside_project(path: Path) -> bool:
    from amulet_lab.config import PROJECT_ROOT

    try:
        path.resolve().relative_to(PROJECT_ROOT.resolve())
    except ValueError:
        return False
    return True


def write_composites(out_dir: str | Path, sources: Sequence[SourcePiece], n: int, seed: int, *,
                     overwrite: bool = False, **options: Any) -> Path:
    """Write ``n`` composites (``scene_NNNN.jpg|.heic``) and ``manifest.json`` of their ground truth, atomically.

    ``options`` go to ``make_composite``. Composites of real (non-synthetic) sources are refused inside the
    project (E_COMPOSITE_REAL_IN_PROJECT); a folder already holding a manifest needs ``overwrite``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError(f"n must be an integer >= 1, got {n!r}", field="n", value=n, code="E_COMPOSITE_ARGUMENT")
    out = Path(out_dir)
    if not all(s.synthetic for s in sources) and _inside_project(out):
        raise ValidationError(f"composites of real photos may not be written inside the project ({out}); use a "
                              "temporary folder", field="out_dir", value=str(out), code="E_COMPOSITE_REAL_IN_PROJECT")
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder", field="out_dir", value=str(out),
                              code="E_COMPOSITE_OUT_DIR")
    manifest = out / "manifest.json"
    if manifest.exists():
        if not overwrite:
            raise ValidationError(f"{out} already holds composites; pass overwrite=True", field="out_dir",
                                  value=str(out), code="E_COMPOSITE_NOT_EMPTY")
        for old in json.loads(manifest.read_text(encoding="utf-8")).get("composites", []):
            (out / Path(old["file"]).name).unlink(missing_ok=True)
    records = []
    for i in range(n):
        comp = make_composite(sources, seed, i, **options)
        name = f"scene_{i:04d}{comp.suffix}"
        atomic_write_bytes(out / name, comp.data)
        records.append({"file": name, **comp.to_dict()})
    atomic_write_text(manifest, json.dumps({
        "generator": "amulet_lab.data.composites", "version": COMPOSITES_VERSION, "seed": seed, "n": n,
        "synthetic": all(s.synthetic for s in sources), "box_frame": "upright (EXIF orientation applied), x1/y1 "
        "exclusive", "rotation": "degrees to turn counter-clockwise to stand upright; turned = (360 - rotation) % 360",
        "composites": records}, indent=1) + "\n")
    return out


def read_manifest(folder: str | Path) -> list[dict[str, Any]]:
    """The composite records of ``folder/manifest.json`` (each with its ``path``)."""
    base = Path(folder)
    data = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    return [{**rec, "path": str(base / rec["file"])} for rec in data["composites"]]
