"""``AmuletClassifier``: a loaded checkpoint behind a thread-safe, cached, timed prediction API.

Pipeline of one image: decode (untrusted bytes and paths go through ``security.validate_image``),
preprocess (square resize, normalise; the result is stored in the image cache under
``cache.key_for(bytes_or_path, spec.transform_id)`` through ``get_or_compute``, so identical concurrent
requests decode once; inputs over ``settings.max_upload_bytes`` are not hashed at all; a path's key is
remembered per (path, size, mtime) so a repeated file is not re-read to hash it), infer (the model under ``torch.inference_mode``,
flip TTA inside the model), postprocess (temperature-scaled softmax, top-k, confidence band, unknown
rule). Each stage's time is in ``Prediction.timings`` (ms) and every call records into the
performance monitor (``classifier.predict``, ``classifier.predict_batch``, ``classifier.<stage>``).

Thread safety: the model is in eval mode and never mutated after loading; forward passes run under
one lock (torch already uses every core inside one forward pass, so a lock costs no throughput and
rules out surprises from concurrent use of one module).
"""

from __future__ import annotations

import dataclasses
import html
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import ModelError, ValidationError
from amulet_lab.images import decode, resize_square
from amulet_lab.model.checkpoint import Checkpoint, load_checkpoint
from amulet_lab.model.unknown import normalised_entropy

if TYPE_CHECKING:  # pragma: no cover
    from amulet_lab.config import Settings
    from amulet_lab.perf import PerformanceMonitor

__all__ = ["AmuletClassifier", "Prediction", "PairPrediction", "default_checkpoint_path", "confidence_band",
           "combine_sides"]


def combine_sides(probs: torch.Tensor) -> torch.Tensor:
    """One piece's class probabilities from its sides' (one row each): softmax of the mean log-probability."""
    logp = probs.double().clamp_min(1e-12).log().mean(0)
    return torch.softmax(logp, 0).float()

STAGES = ("decode", "preprocess", "infer", "postprocess")
#: Paths whose content key is remembered (by path, size and mtime), most recent first out last.
_PATH_KEYS_MAX = 4096


def default_checkpoint_path(settings: Settings | None = None) -> Path:
    """``settings.model_path`` if set, else the bundled ``data/models/amulet6-synth.pt``."""
    if settings is not None and settings.model_path:
        return Path(settings.model_path)
    return PROJECT_ROOT / "data" / "models" / "amulet6-synth.pt"


def confidence_band(confidence: float, reliable: float = 0.90, verify: float = 0.70) -> str:
    """"reliable" at or above ``reliable``, "verify" at or above ``verify``, else "retake"."""
    return "reliable" if confidence >= reliable else "verify" if confidence >= verify else "retake"


@dataclasses.dataclass
class Prediction:
    """The result for one image: top-k classes, confidence, band, unknown flag, stage timings (ms)."""

    top_k: list[tuple[str, str, float]]
    label: str
    thai_name: str
    english_name: str
    confidence: float
    confidence_band: str
    is_unknown: bool
    entropy: float
    timings: dict[str, float]
    cache_hit: bool
    probabilities: dict[str, float]
    distance: float | None = None  # feature distance to the nearest class (unknown rule), if the model has one

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        out["top_k"] = [{"key": k, "thai": t, "probability": p} for k, t, p in self.top_k]
        return out

    def __repr__(self) -> str:
        flag = ", unknown" if self.is_unknown else ""
        return f"Prediction({self.label!r}, {self.confidence:.3f}, {self.confidence_band}{flag}, {self.timings.get('total', 0):.1f} ms)"

    def _repr_html_(self) -> str:
        colour = {"reliable": "#2e7d32", "verify": "#f9a825", "retake": "#c62828"}[self.confidence_band]
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(t)}</td>"
            f"<td><div style='background:#90caf9;width:{max(1, round(p * 120))}px;height:10px'></div></td>"
            f"<td style='text-align:right'>{p:.1%}</td></tr>"
            for k, t, p in self.top_k
        )
        unknown = "<div style='color:#c62828'><b>unknown</b>: probably not one of the six amulets</div>" if self.is_unknown else ""
        timing = ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items())
        return (
            f"<div style='border:1px solid #ccc;border-radius:6px;padding:8px;display:inline-block'>"
            f"<div style='font-size:1.2em'><b>{html.escape(self.thai_name)}</b> ({html.escape(self.label)})</div>"
            f"<div>confidence {self.confidence:.1%} <span style='background:{colour};color:white;padding:1px 6px;"
            f"border-radius:4px'>{self.confidence_band}</span></div>{unknown}"
            f"<table>{rows}</table><div style='color:#777;font-size:0.8em'>ms: {timing}"
            f"{' (cache hit)' if self.cache_hit else ''}</div></div>"
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


class AmuletClassifier:
    """Predicts the amulet class of photos with a loaded checkpoint (see the module doc)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        settings: Settings | None = None,
        cache: Any = None,
        monitor: PerformanceMonitor | None = None,
    ) -> None:
        if settings is None:
            from amulet_lab.config import get_settings

            settings = get_settings()
        if not isinstance(checkpoint, Checkpoint):
            raise ValidationError("AmuletClassifier needs a Checkpoint (use from_checkpoint)", field="checkpoint")
        self.settings = settings
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.spec = checkpoint.spec
        self.temperature = checkpoint.temperature
        self.unknown_rule = checkpoint.unknown
        from amulet_lab.data import Label

        self.labels = [Label(int(d.get("index", i)), d["key"], d.get("thai", d["key"]), d.get("english", d["key"])) for i, d in enumerate(checkpoint.labels)]
        if cache is None:
            from amulet_lab.cache import get_image_cache

            cache = get_image_cache(settings)
        self.cache = None if cache is False else cache  # False disables caching (an empty cache is falsy: len 0)
        if monitor is None:
            from amulet_lab.perf import performance_monitor

            monitor = performance_monitor
        self.monitor = monitor
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()
        self._path_keys: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        from amulet_lab.threads import AtomicCounter

        # Locked counters: ``+=`` on a dict item is a read-modify-write that loses counts across threads.
        self._predictions = AtomicCounter()
        self._errors = AtomicCounter()
        self._loaded_at = time.time()
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        *,
        settings: Settings | None = None,
        cache: Any = None,
        monitor: PerformanceMonitor | None = None,
    ) -> AmuletClassifier:
        """Load a checkpoint (default: ``default_checkpoint_path(settings)``) into a classifier."""
        if settings is None:
            from amulet_lab.config import get_settings

            settings = get_settings()
        target = Path(path) if path is not None else default_checkpoint_path(settings)
        if path is None and not target.is_file():
            raise ModelError(
                f"the default checkpoint {target} is missing; run `make train-default` (amulet-lab train-default)",
                code="E_CHECKPOINT_MISSING", context={"path": str(target)},
            )
        return cls(load_checkpoint(target), settings=settings, cache=cache, monitor=monitor)

    # -- stages -------------------------------------------------------------------------------------
    def _decode(self, image: Any) -> Any:
        """Untrusted bytes and paths are validated (format, size, pixel limits, full decode)."""
        if isinstance(image, (bytes, bytearray, memoryview, str, Path)):
            from amulet_lab.security import validate_image

            data = bytes(image) if isinstance(image, memoryview) else image
            return validate_image(data, settings=self.settings, draft_size=self.spec.size).image
        return decode(image, target_size=self.spec.size, settings=self.settings)

    def _tensor(self, img: Any) -> torch.Tensor:
        if self.settings.test_preprocess_delay_ms > 0:  # test-only: seeds a known regression for benchmarks
            time.sleep(self.settings.test_preprocess_delay_ms / 1000.0)
        arr = np.asarray(resize_square(img, self.spec.size))
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        return self.spec.normalise(x)

    def _cache_key(self, image: Any) -> str | None:
        if self.cache is None:
            return None
        if isinstance(image, (str, Path)):
            return self._path_key(Path(image))
        if isinstance(image, (bytes, bytearray, memoryview)):
            if _nbytes(image) > self.settings.max_upload_bytes:
                return None  # not worth hashing: validate_image refuses it without reading it all
            return self.cache.key_for(image, self.spec.transform_id)
        if isinstance(image, np.ndarray):
            arr = np.ascontiguousarray(image)
            if arr.dtype.hasobject or arr.nbytes > self.settings.max_upload_bytes:
                return None  # object arrays have no stable bytes; huge ones cost more to hash than to refuse
            # A byte view of the (contiguous) array: hashed without copying its pixels.
            view = memoryview(arr).cast("B")
            return self.cache.key_for(view, f"{self.spec.transform_id}:nd{arr.shape}{arr.dtype}")
        return None  # PIL images: hashing their pixels would cost about as much as preprocessing them

    def _path_key(self, path: Path) -> str | None:
        """The content key of a file, hashed once per (path, size, mtime): a repeated path skips re-reading it."""
        try:
            st = path.stat()
        except OSError:
            return None  # validate_image reports the missing file with its own code
        if not path.is_file() or st.st_size > self.settings.max_upload_bytes:
            return None  # validate_image refuses it (with its own code) without hashing it first
        ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._keys_lock:
            key = self._path_keys.get(ident)
            if key is not None:
                self._path_keys.move_to_end(ident)
                return key
        key = self.cache.key_for(path, self.spec.transform_id)
        with self._keys_lock:
            self._path_keys[ident] = key
            while len(self._path_keys) > _PATH_KEYS_MAX:
                self._path_keys.popitem(last=False)
        return key

    def _prepare(self, image: Any) -> tuple[torch.Tensor, dict[str, float], bool]:
        """(1, 3, S, S) input, stage timings in ms, whether it came from the cache."""
        if image is None:
            raise ValidationError("image is None", field="image", code="E_IMAGE_TYPE")
        t0 = time.perf_counter()
        key = self._cache_key(image)
        if key is None:
            return self._compute(image, t0)
        computed: list[tuple[torch.Tensor, dict[str, float]]] = []

        def compute() -> torch.Tensor:
            x, timings = self._compute(image, t0)[:2]
            computed.append((x, timings))
            return x

        # get_or_compute: concurrent identical requests decode once; only the thread that ran compute()
        # reports a miss, the others (cached or waiting on it) got the tensor without decoding.
        x = self.cache.get_or_compute(key, compute)
        if computed:
            return computed[0][0], computed[0][1], False
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"image cache holds a {type(x).__name__} under a tensor key", code="E_CACHE_VALUE",
                             context={"key": key})
        return x, {"decode": (time.perf_counter() - t0) * 1000, "preprocess": 0.0}, True

    def _compute(self, image: Any, t0: float) -> tuple[torch.Tensor, dict[str, float], bool]:
        """Decode and preprocess one image (no cache)."""
        img = self._decode(image)
        t1 = time.perf_counter()
        x = self._tensor(img)
        t2 = time.perf_counter()
        return x, {"decode": (t1 - t0) * 1000, "preprocess": (t2 - t1) * 1000}, False

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Calibrated probabilities and feature distances (None for CNN-only models)."""
        with self._lock, torch.inference_mode():
            logits, distance = self.model.forward_with_distance(x)
            return torch.softmax(logits / self.temperature, dim=1), distance

    def _result(self, probs: torch.Tensor, top_k: int, timings: dict[str, float], cache_hit: bool,
                distance: torch.Tensor | None = None) -> Prediction:
        p = probs.double()
        k = max(1, min(int(top_k), len(self.labels)))
        values, idx = torch.topk(p, k)
        top = [(self.labels[i].key, self.labels[i].thai, float(v)) for v, i in zip(values.tolist(), idx.tolist())]
        best = self.labels[int(idx[0])]
        conf = float(values[0])
        unknown = bool(self.unknown_rule(probs.unsqueeze(0), None if distance is None else distance.reshape(1))[0])
        return Prediction(
            top_k=top, label=best.key, thai_name=best.thai, english_name=best.english, confidence=conf,
            confidence_band=confidence_band(conf, self.settings.band_reliable, self.settings.band_verify),
            is_unknown=unknown, entropy=float(normalised_entropy(probs.unsqueeze(0))[0]), timings=timings,
            cache_hit=cache_hit, probabilities={lab.key: float(v) for lab, v in zip(self.labels, p.tolist())},
            distance=None if distance is None else float(distance),
        )

    def _record(self, name: str, seconds: float, error: bool = False) -> None:
        self.monitor.record(name, seconds, error=error)

    # -- public API ---------------------------------------------------------------------------------
    def predict(self, image: Any, *, top_k: int = 3) -> Prediction:
        """Classify one image: a path, bytes, a PIL image or an HxWx3 array."""
        _check_top_k(top_k)
        start = time.perf_counter()
        try:
            x, timings, hit = self._prepare(image)
            t0 = time.perf_counter()
            probs, distance = self._infer(x)
            t1 = time.perf_counter()
            timings["infer"] = (t1 - t0) * 1000
            pred = self._result(probs[0], top_k, timings, hit, None if distance is None else distance[0])
            timings["postprocess"] = (time.perf_counter() - t1) * 1000
            timings["total"] = (time.perf_counter() - start) * 1000
        except Exception:
            self._errors.increment()
            self._record("classifier.predict", time.perf_counter() - start, error=True)
            raise
        self._predictions.increment()
        self._record("classifier.predict", timings["total"] / 1000)
        for stage in STAGES:
            self._record(f"classifier.{stage}", timings[stage] / 1000)
        return pred

    def predict_batch(self, images: Sequence[Any], batch_size: int = 16, *, top_k: int = 3) -> list[Prediction]:
        """Classify many images: decoding in a thread pool, forward passes in batches of ``batch_size``."""
        _check_top_k(top_k)
        if isinstance(images, (str, bytes, Path)) or not isinstance(images, Sequence):
            raise ValidationError("predict_batch takes a list of images", field="images", value=type(images).__name__)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError("batch_size must be an int >= 1", field="batch_size", value=batch_size)
        if len(images) == 0:
            return []
        start = time.perf_counter()
        try:
            from amulet_lab.threads import get_thread_pool_manager

            prepared = get_thread_pool_manager(self.settings).map("decode", self._prepare, list(images))
            out: list[Prediction] = []
            for i in range(0, len(prepared), batch_size):
                chunk = prepared[i:i + batch_size]
                t0 = time.perf_counter()
                probs, distance = self._infer(torch.cat([x for x, _, _ in chunk]))
                infer_ms = (time.perf_counter() - t0) * 1000 / len(chunk)
                for j, (row, (_, timings, hit)) in enumerate(zip(probs, chunk)):
                    t1 = time.perf_counter()
                    timings = {**timings, "infer": infer_ms}
                    pred = self._result(row, top_k, timings, hit, None if distance is None else distance[j])
                    timings["postprocess"] = (time.perf_counter() - t1) * 1000
                    timings["total"] = sum(timings[s] for s in STAGES)
                    out.append(pred)
        except Exception:
            self._errors.increment()
            self._record("classifier.predict_batch", time.perf_counter() - start, error=True)
            raise
        self._predictions.add(len(out))
        self._record("classifier.predict_batch", time.perf_counter() - start)
        return out

    def predict_pair(self, front: Any, back: Any = None, *, top_k: int = 3) -> PairPrediction:
        """Classify the front and (optionally) back of one piece; combined = mean of the sides' log-probabilities."""
        f = self.predict(front, top_k=top_k)
        if back is None:
            return PairPrediction(front=f, back=None, combined=f, agree=None)
        b = self.predict(back, top_k=top_k)
        keys = [lab.key for lab in self.labels]
        probs = combine_sides(torch.tensor([[side.probabilities[k] for k in keys] for side in (f, b)]))
        timings = {s: f.timings[s] + b.timings[s] for s in (*STAGES, "total")}
        distances = [d for d in (f.distance, b.distance) if d is not None]
        distance = torch.tensor(min(distances)) if len(distances) == 2 else None  # one side near the data is enough
        combined = self._result(probs, top_k, timings, f.cache_hit and b.cache_hit, distance)
        return PairPrediction(front=f, back=b, combined=combined, agree=f.label == b.label)

    def model_status(self) -> dict[str, Any]:
        """For the health report: checkpoint, architecture, labels, calibration, counts, parameters."""
        ck = self.checkpoint
        meta = ck.metadata
        return {
            "loaded": True,
            "path": str(ck.path) if ck.path else None,
            "arch": ck.arch,
            "num_classes": len(self.labels),
            "labels": [lab.key for lab in self.labels],
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "input_size": self.spec.size,
            "transform_id": self.spec.transform_id,
            "temperature": round(self.temperature, 4),
            "unknown_rule": self.unknown_rule.to_dict(),
            "trained_on": meta.get("dataset"),
            "metrics": meta.get("metrics", {}),
            "amulet_lab_version": meta.get("amulet_lab_version"),
            "torch_threads": torch.get_num_threads(),
            "predictions": self._predictions.get(),
            "errors": self._errors.get(),
            "loaded_at": self._loaded_at,
            "cache": self.cache.get_stats() if self.cache is not None else None,
        }

    def __repr__(self) -> str:
        name = self.checkpoint.path.name if self.checkpoint.path else "(in memory)"
        return f"AmuletClassifier({name}, arch={self.checkpoint.arch}, classes={len(self.labels)}, size={self.spec.size})"

    def _repr_html_(self) -> str:
        st = self.model_status()
        acc = st["metrics"].get("accuracy") if isinstance(st["metrics"], dict) else None
        acc_text = f"{acc:.1%}" if isinstance(acc, (int, float)) else "n/a"
        labels = ", ".join(f"{html.escape(lab.thai)} ({html.escape(lab.key)})" for lab in self.labels)
        return (
            "<div style='border:1px solid #ccc;border-radius:6px;padding:8px;display:inline-block'>"
            f"<b>AmuletClassifier</b> <code>{html.escape(str(st['path']))}</code><br>"
            f"arch {html.escape(st['arch'])}, {st['parameters']:,} parameters, input {st['input_size']} px, "
            f"T={st['temperature']}, held-out accuracy {acc_text}<br>"
            f"<span style='font-size:0.85em'>{labels}</span><br>"
            f"<span style='color:#777;font-size:0.8em'>predictions {st['predictions']}, errors {st['errors']}</span></div>"
        )


def _nbytes(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValidationError("top_k must be an int >= 1", field="top_k", value=top_k)
