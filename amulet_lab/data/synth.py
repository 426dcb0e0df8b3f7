"""A synthetic stand-in for amulet photos: six classes rendered with Pillow and numpy only.

It exists so the toolkit (training, evaluation, the service, the notebooks) runs offline on a fresh
machine. It is NOT real data: it imitates the *kind* of variation in the real photos (silhouette, relief,
material, background, lighting, pose, blur, noise, JPEG), not their look. Each class keeps its own
silhouette and relief motif, so a small CNN can learn it; the rest varies per piece and per photo.

Every image is drawn from its own seeded generator (seed, class, piece, side), so a run is byte-for-byte
reproducible and a larger ``per_class`` only adds pieces.

This module writes the datasets; ``synth_designs`` holds what each class looks like and ``synth_render``
turns a design into a photo.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amulet_lab.data.labels import load_labels
from amulet_lab.data.synth_designs import CLASS_DESIGNS
from amulet_lab.data.synth_render import SIDES, UNKNOWN_KINDS, piece_params, render_amulet, render_unknown
from amulet_lab.errors import ValidationError
from amulet_lab.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # Pillow and numpy load only when something is rendered
    from PIL import Image

__all__ = ["synthesize", "synthesize_unknowns", "render_amulet", "SYNTH_VERSION", "UNKNOWN_KINDS"]

#: Bumped whenever the rendering changes, so a dataset records which generator made it.
SYNTH_VERSION = 1
_UNKNOWN_RE = re.compile(r"^(?:" + "|".join(UNKNOWN_KINDS) + r")_\d{4}\.jpg$")
_FILE_RE = re.compile(r"^(?P<key>[a-z0-9_]+)_(?:front|back)_\d{4}\.jpg$")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """``image`` encoded as JPEG at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new synthetic set into an old one unless ``overwrite`` (then old synthetic files go)."""
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder", field="out_dir", value=str(out),
                              code="E_SYNTH_OUT_DIR")
    old = [p for key in CLASS_DESIGNS for p in (out / key).glob("*.jpg") if _FILE_RE.match(p.name)] if out.is_dir() else []
    if old and not overwrite:
        raise ValidationError(f"{out} already holds {len(old)} synthetic images; pass overwrite=True (--overwrite) "
                              "or choose an empty folder", field="out_dir", value=str(out), code="E_SYNTH_NOT_EMPTY")
    for path in old:  # stale pieces of a larger earlier run would otherwise linger
        path.unlink()


def _check_counts(count: tuple[str, Any], size: Any, seed: Any) -> None:
    """Refuse a count below 1, a size outside 32..1024 or a negative seed (E_SYNTH_ARGUMENT)."""
    for name, value, low in (count + (1,), ("size", size, 32), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValidationError(f"{name} must be an integer >= {low}, got {value!r}", field=name, value=value,
                                  code="E_SYNTH_ARGUMENT")
    if size > 1024:
        raise ValidationError(f"size must be <= 1024, got {size}", field="size", value=size, code="E_SYNTH_ARGUMENT")


def synthesize(out_dir: str | Path, per_class: int, seed: int, size: int = 224, *, progress: bool = True,
               overwrite: bool = False) -> Path:
    """Render ``per_class`` synthetic photos of each class into ``out_dir/<key>/`` plus ``groups.json``.

    Pieces are numbered; piece ``n`` of a class has ``<key>_front_<n>.jpg`` and (when ``per_class`` allows)
    ``<key>_back_<n>.jpg``, and ``groups.json`` maps both to the same piece id. Same arguments, same bytes.
    """
    from tqdm.auto import tqdm

    _check_counts(("per_class", per_class), size, seed)
    import numpy as np

    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    labels = load_labels()
    missing = [label.key for label in labels if label.key not in CLASS_DESIGNS]
    if missing:
        raise ValidationError(f"the generator has no design for classes {missing}", field="labels", value=missing,
                              code="E_SYNTH_CLASS")
    groups: dict[str, str] = {}
    jobs = [(label, n, SIDES[n % 2]) for label in labels for n in range(per_class)]
    for label, n, side in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        piece_id = n // 2
        piece = piece_params(label.key, np.random.default_rng([seed, label.index, piece_id]))
        rng = np.random.default_rng([seed, label.index, piece_id, 1 + SIDES.index(side)])
        image = render_amulet(label.key, side, size, rng, piece)
        relative = f"{label.key}/{label.key}_{side}_{piece_id:04d}.jpg"
        atomic_write_bytes(out / relative, _jpeg(image, int(rng.integers(60, 96))))
        groups[relative] = f"{label.key}_{piece_id:04d}"
    atomic_write_text(out / "groups.json", json.dumps(groups, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out / "synth.json", json.dumps(
        {"generator": "amulet_lab.data.synth", "version": SYNTH_VERSION, "per_class": per_class, "seed": seed,
         "size": size, "classes": [label.key for label in labels], "synthetic": True}, indent=1) + "\n")
    return out


def synthesize_unknowns(out_dir: str | Path, n: int, seed: int, size: int = 224, *,
                        overwrite: bool = False) -> list[Path]:
    """Write ``n`` 'not an amulet' images (texture, coin, noise in turn) into ``out_dir`` for rejection checks.

    Like ``synthesize``: ``size`` is 32..1024, and a folder already holding unknowns from an earlier run is
    refused unless ``overwrite`` (then those files go first, so a smaller run leaves no stale ones).
    """
    import numpy as np

    _check_counts(("n", n), size, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder", field="out_dir", value=str(out),
                              code="E_SYNTH_OUT_DIR")
    old = sorted(p for p in out.glob("*.jpg") if _UNKNOWN_RE.match(p.name)) if out.is_dir() else []
    if old and not overwrite:
        raise ValidationError(f"{out} already holds {len(old)} synthetic unknowns; pass overwrite=True "
                              "(--overwrite) or choose an empty folder", field="out_dir", value=str(out),
                              code="E_SYNTH_NOT_EMPTY")
    for path in old:
        path.unlink()
    paths = []
    for i in range(n):
        kind = UNKNOWN_KINDS[i % len(UNKNOWN_KINDS)]
        rng = np.random.default_rng([seed, 1000, i])
        path = out / f"{kind}_{i:04d}.jpg"
        atomic_write_bytes(path, _jpeg(render_unknown(kind, size, rng), 90))
        paths.append(path)
    return paths

