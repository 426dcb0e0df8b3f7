"""``AmuletClassifier``: a loaded checkpoint behind a thread-safe, cached, timed prediction API.

The way of one photo, each stage a public method (benchmarks and the profiler call them, not copies):

    bytes / path -> content_key (SHA-256 of the bytes; a path's digest is remembered per (path, size, mtime))
                 -> prediction cache (key: model fingerprint + content hash; local tier, then the shared one
                    when AMULET_REDIS_URL is set; a hit skips everything below)
                 -> decode      (``security.validate_image``, the one decoder; reduced-scale JPEG decode; once)
                 -> preprocess  (``PreprocessSpec.to_input``, the one preprocessing step)
                 -> infer       (calibrated probabilities, feature distance, unknown decision; under the forward lock)
                 -> postprocess (top-k, names, band) -> ``Prediction`` -> performance monitor

Each stage's time is in ``Prediction.timings`` (ms, with ``lookup`` for hashing and the cache) and is
recorded into the performance monitor (``classifier.predict``, ``classifier.predict_batch``,
``classifier.<stage>``); failures are logged once with their stage by ``errors.error_context``.

``predict_batch`` overlaps work: a bounded pool decodes and preprocesses the next photos while the
calling thread runs the forward pass of the current batch (Pillow and torch release the GIL), at most
``2 * batch_size`` photos ahead, so memory stays bounded however long the list is.

Thread safety: the model is in eval mode and never mutated after loading; forward passes run under one
named lock (``threads.named_lock``): torch already uses every core inside one forward pass.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import ModelError, ValidationError, error_context
from amulet_lab.images import decode as decode_image
from amulet_lab.model.answers import Answer, PredictionCache
from amulet_lab.model.checkpoint import Checkpoint, load_checkpoint
from amulet_lab.model.keys import ContentKeys
from amulet_lab.model.prediction import UNKNOWN_BAND, PairPrediction, Prediction, combine_sides, confidence_band
from amulet_lab.security import ImageLimits, ValidatedImage, validate_image

if TYPE_CHECKING:  # pragma: no cover
    from amulet_lab.config import Settings
    from amulet_lab.perf import PerformanceMonitor

__all__ = ["AmuletClassifier", "default_checkpoint_path", "STAGES"]

#: The timed stages of one prediction, in order.
STAGES = ("lookup", "decode", "preprocess", "infer", "postprocess")
#: (reliable, verify) confidence thresholds when neither the caller nor the checkpoint gives them.
DEFAULT_BANDS = (0.90, 0.70)
_BYTES = (bytes, bytearray, memoryview)


def default_checkpoint_path(model_path: str | os.PathLike[str] | None = None) -> Path:
    """``model_path`` if given (AMULET_MODEL_PATH at the edges), else the bundled ``data/models/amulet6.pt`` (trained
    on the real photos; the synthetic stand-in is ``model.bundled.SYNTHETIC_CHECKPOINT``)."""
    if model_path:
        return Path(model_path)
    return PROJECT_ROOT / "data" / "models" / "amulet6.pt"


class AmuletClassifier:
    """Predicts the amulet class of photos with a loaded checkpoint (see the module doc)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        limits: ImageLimits | None = None,
        bands: tuple[float | None, float | None] | None = None,
        cache: PredictionCache | None | bool = None,
        monitor: PerformanceMonitor | None = None,
        torch_threads: int = 0,
        decode_workers: int = 2,
        pieces: AmuletClassifier | None = None,
    ) -> None:
        if not isinstance(checkpoint, Checkpoint):
            raise ValidationError("AmuletClassifier needs a Checkpoint (use from_checkpoint)", field="checkpoint")
        # The bands: those given (either may be None), else the checkpoint's (chosen out of fold), else 0.9 / 0.7.
        stored = checkpoint.metadata.get("bands") or {}
        given = bands or (None, None)
        reliable = float(given[0] if given[0] is not None else stored.get("reliable", DEFAULT_BANDS[0]))
        verify = float(given[1] if given[1] is not None else stored.get("verify", DEFAULT_BANDS[1]))
        if not 0 <= verify < reliable <= 1:
            raise ValidationError(f"bands must be (reliable, verify) with 0 <= verify < reliable <= 1, got {bands!r}",
                                  field="bands", value=bands, code="E_BANDS")
        if isinstance(decode_workers, bool) or not isinstance(decode_workers, int) or decode_workers < 1:
            raise ValidationError("decode_workers must be an int >= 1", field="decode_workers", value=decode_workers)
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.spec = checkpoint.spec
        self.temperature = checkpoint.temperature
        self.unknown_rule = checkpoint.unknown
        self.fingerprint = checkpoint.fingerprint
        self.limits = limits if limits is not None else ImageLimits()
        self.bands = (float(reliable), float(verify))
        self.decode_workers = decode_workers
        if pieces is not None and not isinstance(pieces, AmuletClassifier):
            raise ValidationError("pieces must be an AmuletClassifier", field="pieces", value=type(pieces).__name__)
        if pieces is not None and [d["key"] for d in pieces.checkpoint.labels] != [d["key"] for d in checkpoint.labels]:
            raise ModelError("the pieces' model has other classes than the main one: retrain it on the same labels",
                             code="E_PIECES_LABELS", context={"pieces": pieces.fingerprint})
        #: The model ``predict_scene`` classifies pieces cut from a photo with (None: this one); see ``from_checkpoint``.
        self.pieces = pieces
        from amulet_lab.data import Label

        self.labels = [Label(int(d.get("index", i)), d["key"], d.get("thai", d["key"]), d.get("english", d["key"]))
                       for i, d in enumerate(checkpoint.labels)]
        # None: a cache of its own; False: none; or one given (shared between classifiers: keys hold the model).
        if cache is None or cache is True:
            cache = PredictionCache()
        self.cache: PredictionCache | None = None if cache is False else cache  # an empty cache is falsy (len 0)
        if monitor is None:
            from amulet_lab.perf import performance_monitor

            monitor = performance_monitor
        self.monitor = monitor
        from amulet_lab.threads import AtomicCounter

        # One named lock per model (not per instance: the lock manager keeps every name it was asked for).
        self._forward_lock = f"classifier.forward.{self.fingerprint}"
        self._keys = ContentKeys(self.limits.max_upload_bytes)
        self._predictions = AtomicCounter()
        self._errors = AtomicCounter()
        self._decodes = AtomicCounter()
        self._loaded_at = time.time()
        self._contexts = {stage: error_context(f"classifier.{stage}", model=self.fingerprint) for stage in STAGES}
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **kwargs: Any) -> AmuletClassifier:
        """Load a checkpoint (default: the bundled one) into a classifier; ``kwargs`` go to the constructor.

        A ``<name>-scene.pt`` beside ``<name>.pt`` (the bundled ``amulet6-scene.pt``) becomes ``pieces``, the
        model of the pieces ``predict_scene`` cuts from photos, with the same options (and cache).
        """
        target = Path(path) if path is not None else default_checkpoint_path()
        if path is None and not target.is_file():
            raise ModelError(
                f"the default checkpoint {target} is missing; run `make train-default` (amulet-lab train-default)",
                code="E_CHECKPOINT_MISSING", context={"path": str(target)},
            )
        scene = target.with_name(f"{target.stem}-scene{target.suffix}")
        if "pieces" not in kwargs and scene.is_file():
            kwargs["pieces"] = cls(load_checkpoint(scene), **kwargs)
        return cls(load_checkpoint(target), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, path: str | Path | None = None, **kwargs: Any) -> AmuletClassifier:
        """The classifier the settings describe (called at the edges: service, CLI, widgets, benchmarks).

        Checkpoint ``path`` or AMULET_MODEL_PATH or the bundled one; image limits, torch threads, a prediction
        cache bounded by AMULET_CACHE_MAX_SIZE with AMULET_CACHE_DEFAULT_TTL (with the shared tier on AMULET_REDIS_URL
        when that is set: ``answers.SharedAnswers``), and AMULET_BAND_* only where set (else the checkpoint's
        bands); ``kwargs`` override.
        """
        options: dict[str, Any] = {
            "limits": ImageLimits.from_settings(settings),
            "bands": (settings.band_reliable, settings.band_verify),
            "cache": PredictionCache.from_settings(settings) if settings.cache_max_size > 0 else False,
            "torch_threads": settings.torch_threads,
            "decode_workers": settings.thread_pool_size,
        }
        options.update(kwargs)
        return cls.from_checkpoint(path if path is not None else settings.model_path, **options)

    # -- stages ---------------------------------------------------------------------------------------
    def content_key(self, image: Any) -> str | None:
        """The content hash that keys ``image``'s answer, or None when it is not cached (a PIL image, a refusal).

        Bytes are hashed with SHA-256 (refused sizes are not hashed at all); a file's digest is remembered per
        (path, size, mtime), so a repeated path costs a ``stat``; a ``ValidatedImage`` brings its own.
        """
        return self._keys(image)

    def decode(self, image: Any, content_key: str | None = None) -> Any:
        """Bytes and paths through ``validate_image`` (reduced-scale decode); images in memory to RGB."""
        if image is None:
            raise ValidationError("image is None", field="image", code="E_IMAGE_TYPE")
        if isinstance(image, ValidatedImage):
            return image
        self._decodes.increment()
        if isinstance(image, (*_BYTES, str, os.PathLike)):
            # Bytes are hashed once (the content key is the SHA-256 validate_image would compute). A file is hashed
            # again as it is read: its remembered digest is checked against what was decoded (see _compute).
            sha = content_key if isinstance(image, _BYTES) else None
            return validate_image(image, limits=self.limits, draft_size=self.spec.size, sha256=sha)
        return decode_image(image, target_size=self.spec.size, limits=self.limits)

    def preprocess(self, decoded: Sequence[Any]) -> torch.Tensor:
        """Decoded images (or ``ValidatedImage``) -> the normalised model input (``PreprocessSpec.to_input``)."""
        return self.spec.to_input(decoded)

    def infer(self, x: torch.Tensor) -> list[Answer]:
        """One answer per row of the model input: calibrated probabilities, distance, unknown decision."""
        from amulet_lab.threads import named_lock

        with named_lock(self._forward_lock), torch.inference_mode():
            logits, distance = self.model.forward_with_distance(x)
            probs = torch.softmax(logits / self.temperature, dim=1)
            unknown = self.unknown_rule(probs, distance)
        dist = [None] * len(probs) if distance is None else distance.tolist()
        return [Answer(tuple(row), d, bool(u)) for row, d, u in zip(probs.tolist(), dist, unknown.tolist())]

    def postprocess(self, answer: Answer, *, top_k: int = 3, timings: dict[str, float] | None = None,
                    cache: str = "miss") -> Prediction:
        """The ``Prediction`` of an answer: top-k classes with names, confidence, band, entropy."""
        probs = answer.probs
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:max(1, min(top_k, len(probs)))]
        best = self.labels[order[0]]
        conf = float(probs[order[0]])
        entropy = -sum(p * math.log(p) for p in probs if p > 1e-12) / math.log(len(probs))
        return Prediction(
            top_k=[(self.labels[i].key, self.labels[i].thai, float(probs[i])) for i in order],
            label=best.key, thai_name=best.thai, english_name=best.english, confidence=conf,
            confidence_band=UNKNOWN_BAND if answer.unknown else confidence_band(conf, *self.bands),
            is_unknown=answer.unknown,
            entropy=min(1.0, max(0.0, entropy)), timings=timings if timings is not None else {}, cache=cache,
            probabilities={lab.key: float(p) for lab, p in zip(self.labels, probs)},
            distance=answer.distance, source=answer.facts(),
        )

    # -- one image ------------------------------------------------------------------------------------
    def _compute(self, image: Any, key: str | None, timings: dict[str, float]) -> Answer:
        """Decode, preprocess and infer one image (no cache); fills ``timings``."""
        t0 = time.perf_counter()
        with self._contexts["decode"]:
            decoded = self.decode(image, key)
            self._keys.check_unchanged(image, key, decoded)
        t1 = time.perf_counter()
        with self._contexts["preprocess"]:
            x = self.preprocess([decoded])
        t2 = time.perf_counter()
        with self._contexts["infer"]:
            answer = self.infer(x)[0]
        timings.update(decode=(t1 - t0) * 1000, preprocess=(t2 - t1) * 1000, infer=(time.perf_counter() - t2) * 1000)
        return _with_source(answer, decoded)

    def predict(self, image: Any, *, top_k: int = 3) -> Prediction:
        """Classify one image: bytes, a path, a ``ValidatedImage``, a PIL image or an HxWx3 array."""
        _check_top_k(top_k)
        start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        try:
            with self._contexts["lookup"]:
                key = self.content_key(image)
            timings["lookup"] = (time.perf_counter() - start) * 1000
            if key is None or self.cache is None:
                answer, origin = self._compute(image, key, timings), "miss"
            else:
                answer, origin = self.cache.get_or_compute_origin(
                    PredictionCache.key(self.fingerprint, key), lambda: self._compute(image, key, timings))
            t3 = time.perf_counter()
            pred = self.postprocess(answer, top_k=top_k, timings=timings, cache=origin)
            timings["postprocess"] = (time.perf_counter() - t3) * 1000
            timings["total"] = (time.perf_counter() - start) * 1000
        except Exception:
            self._errors.increment()
            self.monitor.record("classifier.predict", time.perf_counter() - start, error=True)
            raise
        self._predictions.increment()
        self.monitor.record("classifier.predict", timings["total"] / 1000)
        for stage in STAGES:
            self.monitor.record(f"classifier.{stage}", timings[stage] / 1000)
        return pred

    # -- many images ----------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence[Any], batch_size: int = 16, *, top_k: int = 3) -> list[Prediction]:
        """Classify many images: cached answers first, then decoding overlapped with batched forward passes."""
        _check_top_k(top_k)
        if isinstance(images, (str, bytes, Path)) or not isinstance(images, Sequence):
            raise ValidationError("predict_batch takes a list of images", field="images", value=type(images).__name__)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError("batch_size must be an int >= 1", field="batch_size", value=batch_size)
        items = list(images)
        if not items:
            return []
        start = time.perf_counter()
        try:
            out = self._predict_many(items, batch_size, top_k)
        except Exception:
            self._errors.increment()
            self.monitor.record("classifier.predict_batch", time.perf_counter() - start, error=True)
            raise
        self._predictions.add(len(out))
        self.monitor.record("classifier.predict_batch", time.perf_counter() - start)
        for pred in out:  # the stages of every photo, as predict records them
            for stage in STAGES:
                self.monitor.record(f"classifier.{stage}", pred.timings[stage] / 1000)
        return out

    def _predict_many(self, items: list[Any], batch_size: int, top_k: int) -> list[Prediction]:
        n = len(items)
        timings = [dict.fromkeys(STAGES, 0.0) for _ in range(n)]
        answers: list[Answer | None] = [None] * n
        origins = ["miss"] * n
        keys: list[str | None] = []
        first: dict[str, int] = {}  # content key -> the index that computes it
        todo: list[int] = []
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            with self._contexts["lookup"]:
                key = self.content_key(item)
                keys.append(key)
                if key is not None and self.cache is not None:
                    answers[i], origins[i] = self.cache.lookup(PredictionCache.key(self.fingerprint, key))
            timings[i]["lookup"] = (time.perf_counter() - t0) * 1000
            if answers[i] is not None:
                continue  # origins[i] says "local" or "shared"
            if key is not None and key in first:
                origins[i] = "local"  # the same photo twice in one batch: inferred once
            else:
                if key is not None:
                    first[key] = i
                todo.append(i)
        self._run_overlapped(items, keys, todo, answers, timings, batch_size)
        for i, key in enumerate(keys):
            if answers[i] is None and key is not None:
                answers[i] = answers[first[key]]
        preds = []
        for i in range(n):
            t1 = time.perf_counter()
            answer = answers[i]
            assert answer is not None  # every index is answered above, or an error was raised
            pred = self.postprocess(answer, top_k=top_k, timings=timings[i], cache=origins[i])
            timings[i]["postprocess"] = (time.perf_counter() - t1) * 1000
            timings[i]["total"] = sum(timings[i][s] for s in STAGES)
            preds.append(pred)
        return preds

    def _load(self, item: Any, key: str | None) -> tuple[torch.Tensor, Any, float, float]:
        """In a pool worker: (model input row, decoded image, decode ms, preprocess ms)."""
        t0 = time.perf_counter()
        with self._contexts["decode"]:
            decoded = self.decode(item, key)
            self._keys.check_unchanged(item, key, decoded)
        t1 = time.perf_counter()
        with self._contexts["preprocess"]:
            x = self.preprocess([decoded])
        return x, decoded, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    def _run_overlapped(self, items: list[Any], keys: list[str | None], todo: list[int],
                        answers: list[Answer | None], timings: list[dict[str, float]], batch_size: int) -> None:
        """Decode ``todo`` in a bounded pool while the calling thread infers; fill ``answers``.

        The forward pass never waits for a full batch: it takes the next photo (waiting for it if need be) and
        every photo after it that is already decoded, up to ``batch_size``, so the model is busy from the first
        decoded photo on while the pool decodes ahead (at most ``2 * batch_size`` photos).
        """
        if not todo:
            return
        from amulet_lab.threads import get_thread_pool_manager

        manager = get_thread_pool_manager()
        manager.get_pool("decode", self.decode_workers)  # sized on first use; submit() counts what it ran
        ahead = 2 * batch_size
        queue: collections.deque[tuple[int, Any]] = collections.deque()
        feed = iter(todo)

        def refill() -> None:
            while len(queue) < ahead:
                i = next(feed, None)
                if i is None:
                    return
                queue.append((i, manager.submit("decode", self._load, items[i], keys[i])))

        try:
            refill()
            while queue:
                batch: list[tuple[int, torch.Tensor, Any]] = []
                while queue and len(batch) < batch_size and (not batch or queue[0][1].done()):
                    i, future = queue.popleft()
                    x, decoded, decode_ms, prep_ms = future.result()  # the first one may wait; the rest are done
                    timings[i].update(decode=decode_ms, preprocess=prep_ms)
                    batch.append((i, x, decoded))
                refill()
                self._infer_batch(batch, keys, answers, timings)
        finally:
            for _, future in queue:
                future.cancel()

    def _infer_batch(self, batch: list[tuple[int, torch.Tensor, Any]], keys: list[str | None],
                     answers: list[Answer | None], timings: list[dict[str, float]]) -> None:
        t0 = time.perf_counter()
        with self._contexts["infer"]:
            rows = self.infer(torch.cat([x for _, x, _ in batch]))
        per_image = (time.perf_counter() - t0) * 1000 / len(batch)
        for (i, _, decoded), answer in zip(batch, rows):
            answers[i] = _with_source(answer, decoded)
            timings[i]["infer"] = per_image
            if keys[i] is not None and self.cache is not None:
                self.cache.put(PredictionCache.key(self.fingerprint, keys[i]), answers[i])

    # -- pairs ----------------------------------------------------------------------------------------
    def combine(self, front: Prediction, back: Prediction | None, *, top_k: int = 3) -> PairPrediction:
        """Front and back of one piece combined: mean of the sides' log-probabilities, one unknown rule."""
        if back is None:
            return PairPrediction(front=front, back=None, combined=front, agree=None)
        keys = [lab.key for lab in self.labels]
        probs = combine_sides(torch.tensor([[side.probabilities[k] for k in keys] for side in (front, back)]))
        distances = [d for d in (front.distance, back.distance) if d is not None]
        distance = torch.tensor([min(distances)]) if len(distances) == 2 else None  # one side near the data is enough
        unknown = bool(self.unknown_rule(probs.unsqueeze(0), distance)[0])
        answer = Answer(tuple(probs.tolist()), None if distance is None else float(distance[0]), unknown)
        timings = {s: front.timings.get(s, 0.0) + back.timings.get(s, 0.0) for s in (*STAGES, "total")}
        origin = "miss" if "miss" in (front.cache, back.cache) else front.cache
        combined = self.postprocess(answer, top_k=top_k, timings=timings, cache=origin)
        return PairPrediction(front=front, back=back, combined=combined, agree=front.label == back.label)

    def predict_pair(self, front: Any, back: Any = None, *, top_k: int = 3) -> PairPrediction:
        """Classify the front and (optionally) back of one piece; combined = mean of the sides' log-probabilities."""
        f = self.predict(front, top_k=top_k)
        return self.combine(f, None if back is None else self.predict(back, top_k=top_k), top_k=top_k)

    def predict_scene(self, image: Any, *, top_k: int = 3) -> Any:
        """Every amulet in a photo found, turned upright and classified: a ``model.scenes.ScenePrediction``."""
        from amulet_lab.model.scenes import predict_scene

        return predict_scene(self, image, top_k=top_k)

    def explain(self, image: Any, *, label: str | None = None) -> Any:
        """Which regions of ``image`` drove ``label`` (default: its top class): a ``model.explain.Explanation``."""
        from amulet_lab.model.explain import explain

        return explain(self, image, label=label)

    # -- status ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Predictions, errors and decodes so far, and the prediction cache's figures."""
        return {"predictions": self._predictions.get(), "errors": self._errors.get(), "decodes": self._decodes.get(),
                "cache": self.cache.stats() if self.cache is not None else None}

    @property
    def card(self) -> Any:
        """The checkpoint's ``ModelCard`` (None for a checkpoint trained before cards)."""
        from amulet_lab.model.card import model_card

        return model_card(self.checkpoint.metadata)

    def model_status(self) -> dict[str, Any]:
        """For the health report: checkpoint, architecture, labels, calibration, model card, counts, parameters."""
        ck = self.checkpoint
        meta = ck.metadata
        card = self.card
        return {
            "headline": card.headline() if card is not None else None,
            "model_card": card.to_dict() if card is not None else None,
            "bands": {"reliable": self.bands[0], "verify": self.bands[1]},
            "loaded": True,
            "path": str(ck.path) if ck.path else None,
            "arch": ck.arch,
            "fingerprint": self.fingerprint,
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
            "loaded_at": self._loaded_at,
            **self.stats(),
        }

    def __repr__(self) -> str:
        name = self.checkpoint.path.name if self.checkpoint.path else "(in memory)"
        return (f"AmuletClassifier({name}, arch={self.checkpoint.arch}, classes={len(self.labels)}, "
                f"size={self.spec.size}, model={self.fingerprint})")

    def _repr_html_(self) -> str:
        import html

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
            f"<span style='color:#777;font-size:0.8em'>predictions {st['predictions']}, errors {st['errors']}, "
            f"decodes {st['decodes']}</span></div>"
        )


def _with_source(answer: Answer, decoded: Any) -> Answer:
    """The answer with the source facts of a validated image (format, original size, bytes)."""
    if isinstance(decoded, ValidatedImage):
        return Answer(answer.probs, answer.distance, answer.unknown,
                      (decoded.format, decoded.width, decoded.height, decoded.nbytes))
    return answer


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValidationError("top_k must be an int >= 1", field="top_k", value=top_k)

