"""Every amulet in a photo: ``predict_scene`` finds the pieces (``amulet_lab.scene``), turns each upright and
classifies it; the photo's answer is the class the confident pieces agree on, else unknown.

The way of a photo: the finder runs on a reduced decode (JPEG draft, about 800 px); the crops are cut from a
second decode at up to ``CROP_SIDE`` px (the model needs 224 px a piece, so a 12-MP frame is never held in
full); each crop is classified in one batch, by ``classifier.pieces`` where it has one (the bundled
``amulet6-scene.pt``, trained also on its photos re-composited on pages, wood and cloth: a piece cut from a
phone photo stands on those, not on red), else by the classifier itself. A piece whose quarter turn the finder could not read from its
shape (``rotation_score`` below 0.5: square, hexagonal, oval pieces) and whose answer at the finder's turn is
not reliable is classified at the other three turns too, and the most confident kept. A HEIC photo is
decoded once (libheif has no reduced decode): the finder and the crops share that decode. A photo that is already a tight crop (one piece over most of the frame, upright) is
classified whole, exactly as ``predict`` does, so a tight crop gets the same answer either way.
Two known pieces of the same class and a similar size are taken for the front and back of one piece and
paired (``combine``); the finder cannot tell more than that.
"""

from __future__ import annotations

import dataclasses
import html
import time
from typing import Any

from amulet_lab.errors import ValidationError
from amulet_lab.model.prediction import UNKNOWN_TEXT, PairPrediction, Prediction

__all__ = ["ScenePiece", "ScenePrediction", "predict_scene", "CROP_SIDE", "FIND_SIDE"]

#: Long side of the decode the finder works on, and of the one the crops are cut from.
FIND_SIDE, CROP_SIDE = 800, 2048
_TIGHT = 0.5  # one upright piece over this share of the frame: the photo is a tight crop
_TURN_SURE = 0.5  # below this rotation_score, the four turns are tried


@dataclasses.dataclass
class ScenePiece:
    """One piece: its box (x0, y0, x1, y1) in the upright photo, the degrees its crop was turned counter-clockwise
    to stand upright, and its prediction."""

    box: tuple[int, int, int, int]
    rotation: int
    prediction: Prediction

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"box": list(self.box), "rotation": self.rotation, **self.prediction.to_dict()}


@dataclasses.dataclass
class ScenePrediction:
    """The pieces of one photo, the photo's overall answer, the pairs taken for front and back, stage timings."""

    pieces: list[ScenePiece]
    size: tuple[int, int]
    label: str | None
    is_unknown: bool
    pairs: list[tuple[int, int, PairPrediction]]
    timings: dict[str, float]

    @property
    def answer(self) -> str:
        """The overall answer in words."""
        if not self.pieces:
            return "no amulet found in the photo"
        return UNKNOWN_TEXT if self.is_unknown else str(self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``pieces`` (box, rotation, prediction), ``label``, ``is_unknown``, ``pairs``."""
        return {"pieces": [p.to_dict() for p in self.pieces], "size": list(self.size), "label": self.label,
                "is_unknown": self.is_unknown, "answer": self.answer,
                "pairs": [{"pieces": [a, b], "combined": pair.combined.to_dict(), "agree": pair.agree}
                          for a, b, pair in self.pairs], "timings": self.timings}

    def __repr__(self) -> str:
        return (f"ScenePrediction({len(self.pieces)} piece(s), {self.answer!r}, "
                f"{self.timings.get('total', 0):.0f} ms)")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i + 1}</td><td>{html.escape(str(p.box))}</td><td>{p.rotation}°</td>"
            f"<td>{html.escape(UNKNOWN_TEXT if p.prediction.is_unknown else p.prediction.english_name)}</td>"
            f"<td>{'' if p.prediction.is_unknown else f'{p.prediction.confidence:.0%}'}</td></tr>"
            for i, p in enumerate(self.pieces))
        return (f"<div><b>{html.escape(self.answer.capitalize())}</b> ({len(self.pieces)} piece(s))"
                f"<table><tr><th>#</th><th>box</th><th>turned</th><th>answer</th><th>confidence</th></tr>{rows}"
                "</table></div>")


def _decode_for_crops(image: Any, limits: Any) -> Any:
    """The upright photo at up to ``CROP_SIDE`` px (JPEG draft), or the PIL image given."""
    from PIL import Image

    from amulet_lab.security import ValidatedImage, validate_image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, ValidatedImage):
        return image.image
    return validate_image(image, limits=limits, draft_max_side=CROP_SIDE).image


def predict_scene(classifier: Any, image: Any, *, top_k: int = 3) -> ScenePrediction:
    """Find, turn upright and classify every amulet in ``image`` (bytes, a path, a ``ValidatedImage`` or PIL)."""
    from amulet_lab.scene import find_on_reduced
    from amulet_lab.security import ValidatedImage

    if image is None:
        raise ValidationError("image is None", field="image", code="E_IMAGE_TYPE")
    _check_top_k(top_k)
    start = time.perf_counter()
    source = image.image if isinstance(image, ValidatedImage) else image
    full = None
    if _is_heif(source):  # one full decode serves the finder and the crops
        full = _decode_for_crops(source, classifier.limits)
        source = full
    found = find_on_reduced(source, max_side=FIND_SIDE, limits=classifier.limits)
    t_find = time.perf_counter()
    width, height = found.size
    pieces: list[ScenePiece] = []
    if len(found.pieces) == 1 and found.pieces[0].rotation == 0 and _share(found.pieces[0].box, found.size) >= _TIGHT:
        # A tight crop: the photo as it is, exactly as predict classifies it (and through its cache).
        pieces.append(ScenePiece(found.pieces[0].box, 0, classifier.predict(image, top_k=top_k)))
        t_decode = t_find
    elif found.pieces:
        full = full if full is not None else _decode_for_crops(image, classifier.limits)
        fx, fy = full.width / width, full.height / height
        t_decode = time.perf_counter()
        # Each crop reduced to no less than twice the model's input before its tilt is undone (``crop_piece``).
        model = classifier.pieces or classifier  # the pieces' model: trained on crops off their red background
        crops = [piece.scaled(fx, fy).crop(full, max_side=2 * model.spec.size) for piece in found.pieces]
        first = model.predict_batch(crops, batch_size=4, top_k=top_k)
        best = {i: (pred, found.pieces[i].rotation) for i, pred in enumerate(first)}
        unsure = [i for i, piece in enumerate(found.pieces)
                  if piece.rotation_score < _TURN_SURE and best[i][0].confidence_band != "reliable"]
        tries = [(i, extra) for i in unsure for extra in (90, 180, 270)]
        more = model.predict_batch([crops[i].rotate(extra, expand=True) for i, extra in tries], batch_size=4,
                                        top_k=top_k) if tries else []
        for (i, extra), pred in zip(tries, more):
            if (not pred.is_unknown, pred.confidence) > (not best[i][0].is_unknown, best[i][0].confidence):
                best[i] = (pred, (found.pieces[i].rotation + extra) % 360)
        pieces = [ScenePiece(found.pieces[i].box, best[i][1], best[i][0]) for i in sorted(best)]
    else:
        t_decode = t_find
    t_classify = time.perf_counter()
    label, unknown = _overall(pieces)
    pairs = _pairs(classifier, pieces, top_k)
    end = time.perf_counter()
    timings = {"find": (t_find - start) * 1000, "decode": (t_decode - t_find) * 1000,
               "classify": (t_classify - t_decode) * 1000, "total": (end - start) * 1000}
    return ScenePrediction(pieces, (width, height), label, unknown, pairs, timings)


def _is_heif(source: Any) -> bool:
    """Whether ``source`` (bytes or a path) holds a HEIC/HEIF image, by its leading bytes."""
    import os

    from amulet_lab.security import sniff_format

    if isinstance(source, (bytes, bytearray, memoryview)):
        return sniff_format(bytes(source[:64])) == "HEIF"
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                return sniff_format(handle.read(64)) == "HEIF"
        except OSError:
            return False  # the decoder reports the missing file with its own code
    return False


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValidationError("top_k must be an int >= 1", field="top_k", value=top_k)


def _share(box: tuple[int, int, int, int], size: tuple[int, int]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1]) / max(1, size[0] * size[1])


def _overall(pieces: list[ScenePiece]) -> tuple[str | None, bool]:
    """The class the confident pieces (known, not 'retake') agree on; else unknown (no piece: unknown too)."""
    confident = {p.prediction.label for p in pieces
                 if not p.prediction.is_unknown and p.prediction.confidence_band != "retake"}
    return (confident.pop(), False) if len(confident) == 1 else (None, True)


def _pairs(classifier: Any, pieces: list[ScenePiece], top_k: int) -> list[tuple[int, int, PairPrediction]]:
    """Front and back of one piece: exactly two known pieces of a class, of similar size (areas within 1.5x)."""
    by_label: dict[str, list[int]] = {}
    for i, p in enumerate(pieces):
        if not p.prediction.is_unknown:
            by_label.setdefault(p.prediction.label, []).append(i)
    out = []
    for members in by_label.values():
        if len(members) == 2:
            a, b = members
            area = [(pieces[i].box[2] - pieces[i].box[0]) * (pieces[i].box[3] - pieces[i].box[1]) for i in (a, b)]
            if max(area) <= 1.5 * max(1, min(area)):
                out.append((a, b, (classifier.pieces or classifier).combine(pieces[a].prediction, pieces[b].prediction,
                                                                            top_k=top_k)))
    return out
