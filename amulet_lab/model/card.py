"""The model card a checkpoint carries: what it was trained on, where the data came from, how well it does.

Stored in the checkpoint's metadata (``metadata["model_card"]``, plain JSON), printed by
``amulet-lab model-card [CKPT]``, its one-line ``headline`` shown at the top of the notebook app and on
``/health``. The figures are cross-validated (out of fold) where the recipe was cross-validated, else
on held-out data, and the card says which.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any

from amulet_lab.errors import ModelError

__all__ = ["ModelCard", "model_card", "AMULET6_SOURCE", "AMULET6_LICENCE"]

#: Where the real photos come from, and their licence (the data set's README).
AMULET6_SOURCE = ("the processed images of the public repository Suphakrit038/Amulet-Ai "
                  "(organized_dataset/processed), re-split without the augmented copies that leaked across its splits")
AMULET6_LICENCE = "MIT (as the repository's README states)"

#: Figures a card may carry, in the order they are shown, with their plain names.
_FIGURES = {
    "accuracy": "accuracy", "accuracy_std": "accuracy, std over folds", "macro_f1": "macro-F1",
    "top2_accuracy": "top-2 accuracy", "ece": "ECE (expected calibration error)",
    "reliable_accuracy": "accuracy in the 'reliable' band", "reliable_coverage": "share in the 'reliable' band",
    "false_unknown_rate": "real photos wrongly called unknown", "probe_caught_rate": "generated non-amulets caught",
    "recomposed_accuracy": "accuracy, photos re-composited on page/wood/cloth",
    "recomposed_false_unknown_rate": "re-composited photos wrongly called unknown",
    "unseen_class_unknown_rate": "a class left out of training called unknown",
}


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a model was trained on, the data's source and licence, the recipe, its figures, date and version."""

    dataset: str
    real_photos: bool
    files_per_class: dict[str, int]
    data_fingerprint: str
    source: str
    licence: str
    recipe: dict[str, Any]
    evaluation: str  # how the figures were obtained, e.g. "5-fold cross-validation, out of fold"
    figures: dict[str, float]
    created: str
    amulet_lab_version: str

    @property
    def n_images(self) -> int:
        """Images trained on."""
        return sum(self.files_per_class.values())

    def headline(self) -> str:
        """One line: what it was trained on and its (cross-validated) accuracy."""
        what = "real photos" if self.real_photos else "synthetic stand-ins (no real photo)"
        acc = self.figures.get("accuracy")
        kind = "cross-validated" if "cross-validation" in self.evaluation else "held-out"
        tail = f" · {kind} accuracy {acc:.2f}" if isinstance(acc, (int, float)) else ""
        return f"trained on {self.n_images} {what} of {len(self.files_per_class)} classes{tail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of ``to_dict``; a ``ModelError`` (E_MODEL_CARD) names what is missing."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ModelError(f"the model card lacks {missing}", code="E_MODEL_CARD", context={"missing": missing})
        return cls(**{n: data[n] for n in names})

    def to_text(self) -> str:
        """The card as plain text (``amulet-lab model-card``)."""
        lines = [self.headline(), "",
                 f"data set      {self.dataset} ({'real photos' if self.real_photos else 'synthetic'}), "
                 f"{self.n_images} images, fingerprint {self.data_fingerprint[:16]}",
                 "per class     " + ", ".join(f"{k} {v}" for k, v in self.files_per_class.items()),
                 f"source        {self.source}", f"licence       {self.licence}",
                 "recipe        " + ", ".join(f"{k}={v}" for k, v in self.recipe.items()),
                 f"figures       {self.evaluation}"]
        for key, name in _FIGURES.items():
            if key in self.figures:
                lines.append(f"  {name:<40} {self.figures[key]:.3f}")
        lines.append(f"created       {self.created}, amulet_lab {self.amulet_lab_version}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td style='text-align:right'>{self.figures[k]:.3f}</td></tr>"
                       for k, name in _FIGURES.items() if k in self.figures)
        return (f"<div><b>{html.escape(self.headline())}</b><br><span style='font-size:0.85em'>"
                f"{html.escape(self.source)}; licence {html.escape(self.licence)}</span>"
                f"<table><caption>{html.escape(self.evaluation)}</caption>{rows}</table></div>")


def model_card(metadata: dict[str, Any]) -> ModelCard | None:
    """The card in a checkpoint's metadata, or None for a checkpoint that has none (trained before cards)."""
    data = metadata.get("model_card")
    return None if data is None else ModelCard.from_dict(data)
