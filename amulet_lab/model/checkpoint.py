"""One-file checkpoints: weights, architecture, labels, preprocessing, calibration and metadata.

The file is ``torch.save`` of a plain dict (tensors, numbers, strings, lists, dicts only), so it loads
with ``torch.load(weights_only=True)``: no pickled code runs when a checkpoint is opened. It is written
atomically (temp file + ``os.replace``), so a crash never leaves half a checkpoint behind.

Error codes of ``load_checkpoint``:
    E_CHECKPOINT_MISSING   no such file
    E_CHECKPOINT_CORRUPT   unreadable (truncated, not a torch file, unsafe content)
    E_CHECKPOINT_FORMAT    readable but not an amulet-lab checkpoint, of an unknown format version, or malformed labels
    E_CHECKPOINT_LABELS    its labels differ from the project's ``data/labels.json``
    E_CHECKPOINT_WEIGHTS   its weights do not fit its architecture
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from amulet_lab.errors import ModelError, ValidationError
from amulet_lab.files import atomic_write_bytes
from amulet_lab.images import PreprocessSpec
from amulet_lab.model.arch import AmuletNet, build_model
from amulet_lab.model.unknown import UnknownRule

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "amulet-lab-checkpoint"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and everything needed to use it."""

    model: AmuletNet
    arch: str
    arch_kwargs: dict[str, Any]
    labels: list[dict[str, Any]]
    spec: PreprocessSpec
    temperature: float
    unknown: UnknownRule
    metadata: dict[str, Any]
    path: Path | None = None

    def __repr__(self) -> str:
        acc = (self.metadata.get("metrics") or {}).get("accuracy")
        acc_text = f", accuracy={acc:.3f}" if isinstance(acc, (int, float)) else ""
        return (f"Checkpoint(arch={self.arch!r}, classes={len(self.labels)}, size={self.spec.size}, "
                f"T={self.temperature:.3f}{acc_text}, path={str(self.path) if self.path else None!r})")

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the weights and of every setting that changes an answer (prediction-cache key part).

        Weights, architecture and its arguments, labels, preprocessing, temperature and the unknown rule: a
        retrained or recalibrated model never serves an answer cached for another. Metadata (dates, metrics)
        does not count.
        """
        digest = hashlib.sha256()
        config = {"arch": self.arch, "arch_kwargs": self.arch_kwargs, "labels": self.labels,
                  "preprocess": self.spec.to_dict(), "temperature": float(self.temperature),
                  "unknown": self.unknown.to_dict(), "format_version": FORMAT_VERSION}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def to_payload(self) -> dict[str, Any]:
        """The dict stored on disk."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "state_dict": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "labels": [dict(label) for label in self.labels],
            "preprocess": self.spec.to_dict(),
            "temperature": float(self.temperature),
            "unknown": self.unknown.to_dict(),
            "metadata": _plain(self.metadata),
        }


def _plain(value: Any) -> Any:
    """Only JSON-like values (weights_only loading refuses anything else)."""
    return json.loads(json.dumps(value, default=str))


def _label_dicts(labels: Any) -> list[dict[str, Any]]:
    out = []
    for i, label in enumerate(labels):
        if isinstance(label, dict):
            d = {k: label[k] for k in ("index", "key", "thai", "english") if k in label}
        else:
            d = {"index": getattr(label, "index", i), "key": label.key, "thai": label.thai, "english": getattr(label, "english", label.key)}
        out.append(d)
    return out


def project_labels() -> list[dict[str, Any]]:
    """The project's labels (``data/labels.json``) as dicts."""
    from amulet_lab.data import load_labels

    return _label_dicts(load_labels())


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path."""
    if not isinstance(checkpoint, Checkpoint):
        raise ValidationError("save_checkpoint needs a Checkpoint", field="checkpoint", value=type(checkpoint).__name__)
    buffer = io.BytesIO()
    torch.save(checkpoint.to_payload(), buffer)
    out = atomic_write_bytes(path, buffer.getvalue())
    checkpoint.path = Path(path)
    return out


def make_checkpoint(
    model: AmuletNet, *, arch: str, arch_kwargs: dict[str, Any], labels: Any, spec: PreprocessSpec,
    temperature: float = 1.0, unknown: UnknownRule | None = None, metadata: dict[str, Any] | None = None,
) -> Checkpoint:
    """A Checkpoint for a trained model (adds the package version and creation time to the metadata)."""
    from amulet_lab import __version__

    meta = {"amulet_lab_version": __version__, "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta.update(metadata or {})
    model.eval()
    return Checkpoint(
        model=model, arch=arch, arch_kwargs=dict(arch_kwargs), labels=_label_dicts(labels), spec=spec,
        temperature=float(temperature), unknown=unknown or UnknownRule(), metadata=meta,
    )


def load_checkpoint(path: str | Path, *, expected_labels: Any = "project") -> Checkpoint:
    """Load and validate a checkpoint; ``expected_labels=None`` skips the label check (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}", code="E_CHECKPOINT_MISSING", context={"path": str(path)})
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        try:
            size: int | None = path.stat().st_size
        except OSError:  # removed or unreadable meanwhile: report the load error, not this one
            size = None
        raise ModelError(
            f"checkpoint {path} is unreadable (truncated, corrupt or not a torch file): {type(exc).__name__}: {exc}"[:500],
            code="E_CHECKPOINT_CORRUPT",
            context={"path": str(path), "bytes": size},
        ) from exc
    ctx = {"path": str(path)}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not an amulet-lab checkpoint (no format marker {FORMAT!r})", code="E_CHECKPOINT_FORMAT", context=ctx)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path} has checkpoint format version {payload.get('format_version')!r}; this amulet_lab reads version {FORMAT_VERSION}",
            code="E_CHECKPOINT_FORMAT", context=ctx,
        )
    missing = [k for k in ("arch", "arch_kwargs", "state_dict", "labels", "preprocess", "temperature", "unknown") if k not in payload]
    if missing:
        raise ModelError(f"{path} lacks {missing}", code="E_CHECKPOINT_FORMAT", context={**ctx, "missing": missing})
    labels = payload["labels"]
    if not isinstance(labels, list) or not labels or not all(
        isinstance(d, dict) and all(isinstance(k, str) for k in d) and isinstance(d.get("key"), str) for d in labels
    ):
        raise ModelError(f"{path} has malformed labels (want a non-empty list of dicts with str keys and a 'key')",
                         code="E_CHECKPOINT_FORMAT", context=ctx)
    if expected_labels is not None:
        want = project_labels() if isinstance(expected_labels, str) and expected_labels == "project" else _label_dicts(expected_labels)
        if [d.get("key") for d in labels] != [d["key"] for d in want]:
            raise ModelError(
                f"checkpoint {path} was trained for labels {[d.get('key') for d in labels]}, "
                f"but this project has {[d['key'] for d in want]}; retrain it or use the matching labels.json",
                code="E_CHECKPOINT_LABELS", context=ctx,
            )
    try:
        spec = PreprocessSpec.from_dict(payload["preprocess"])
        model = build_model(payload["arch"], len(labels), **payload["arch_kwargs"])
        model.load_state_dict(payload["state_dict"], strict=True)
        unknown = UnknownRule.from_dict(payload["unknown"])
        temperature = float(payload["temperature"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        # The message leads with the fix: the error text itself (torch's size list) can be long.
        hint = "it was probably saved by another amulet_lab version; retrain it (the default one: make train-default)"
        raise ModelError(f"checkpoint {path} does not fit its architecture ({hint}): {exc}"[:600], code="E_CHECKPOINT_WEIGHTS",
                         context=ctx) from exc
    if not temperature > 0:
        raise ModelError(f"checkpoint {path} has a non-positive temperature {temperature}", code="E_CHECKPOINT_FORMAT", context=ctx)
    model.eval()
    return Checkpoint(
        model=model, arch=payload["arch"], arch_kwargs=payload["arch_kwargs"], labels=labels, spec=spec,
        temperature=temperature, unknown=unknown, metadata=payload.get("metadata", {}), path=path,
    )
