"""What ``POST /predict`` does with the uploaded photos, stage by stage, through the classifier's public methods.

Per side (front, and back when sent):

1. ``content_key`` (SHA-256) and a prediction-cache lookup, in a worker thread: the local tier, then the
   shared one (AMULET_REDIS_URL; a server that is down or slow is skipped); a repeated photo is answered here
   and never decoded (``cache: "local"``, or ``"shared"`` when another replica inferred it); the same new photo
   already being computed for another request is awaited, not computed twice;
2. the pixel budget: what the decode will hold is read from the header (``budgets.decoded_bytes``) and
   reserved, waiting up to AMULET_PIXEL_WAIT_S (then 503);
3. ``decode`` (``validate_image``, once) and ``preprocess`` in a worker thread; the reservation is given
   back as soon as the model input exists;
4. ``infer`` in a batched forward pass shared with concurrent requests (``batching.DynamicBatcher``);
   the answer goes into the prediction cache (both tiers);
5. ``postprocess`` with the request's ``top_k``; the two sides are joined with ``combine``.

A photo the decoder refuses is the client's fault (400/413/415) and never reaches the breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import anyio
import anyio.to_thread

from amulet_lab.errors import LockTimeoutError, ProcessingError, SecurityError, ValidationError
from amulet_lab.service.batching import DynamicBatcher
from amulet_lab.service.budgets import ServiceBudgets, decoded_bytes
from amulet_lab.service.errors import ApiError

__all__ = ["PredictPipeline", "SideAnswer"]


@dataclasses.dataclass
class SideAnswer:
    """One side's prediction and how it was made: origin (miss/local/shared) and its batch's size (0: from a cache)."""

    prediction: Any
    batch_size: int


class PredictPipeline:
    """The stages of ``/predict`` for one classifier (see the module doc)."""

    def __init__(self, classifier: Any, batcher: DynamicBatcher, budgets: ServiceBudgets, *,
                 workers: anyio.CapacityLimiter) -> None:
        self.classifier = classifier
        self.batcher = batcher
        self.budgets = budgets
        self.workers = workers
        self._inflight: dict[tuple[int, str], asyncio.Future[Any]] = {}

    async def predict(self, uploads: dict[str, bytes | bytearray], *, top_k: int) -> tuple[Any, dict[str, int]]:
        """(the ``PairPrediction`` of front and back, the batch size per side)."""
        names = [n for n in ("front", "back") if n in uploads]
        sides = await asyncio.gather(*(self._side(name, uploads[name], top_k) for name in names))
        by_name = dict(zip(names, sides))
        front, back = by_name["front"], by_name.get("back")
        pair = self.classifier.combine(front.prediction, back.prediction if back else None, top_k=top_k)
        return pair, {name: side.batch_size for name, side in by_name.items()}

    async def scene(self, data: bytes | bytearray, *, top_k: int) -> Any:
        """Every amulet in one photo (``classifier.predict_scene``), in a worker, within the pixel budget.

        What is reserved: the header's pixels at the finder's and the crops' reduced scales counted as a full
        decode at the crops' scale (an upper bound: the finder's copy is smaller).
        """
        from amulet_lab.model.scenes import CROP_SIDE

        limits = self.classifier.limits
        weight = decoded_bytes(data, draft_size=CROP_SIDE, max_side=limits.max_image_side,
                               max_pixels=limits.max_image_pixels)
        await self._reserve("front", weight)
        try:
            return await anyio.to_thread.run_sync(lambda: self.classifier.predict_scene(data, top_k=top_k),
                                                  limiter=self.workers)
        finally:
            if weight:
                self.budgets.pixels.release(weight)

    async def _reserve(self, name: str, weight: int) -> None:
        """Reserve ``weight`` bytes of the pixel budget, waiting up to AMULET_PIXEL_WAIT_S, else a 503 that says
        whether to retry (a photo that can never fit is told so). Nothing to reserve (0: the decoder refuses the
        photo first) returns at once, so a bad file gets its own error, not a wait."""
        if not weight:
            return
        pixels = self.budgets.pixels
        try:
            await pixels.aacquire(weight, timeout=self.budgets.pixel_wait_s)
        except LockTimeoutError as exc:
            never = exc.code == "E_BUDGET_EXCEEDED"
            raise ApiError(
                503, "E_PIXEL_BUDGET",
                "The photo needs more decoded memory than this service allows." if never else
                "The service is decoding too many photos at once; try again shortly.",
                details={"upload": name, "needed_bytes": weight, "budget_bytes": pixels.capacity, "never_fits": never},
                headers={} if never else {"Retry-After": "2"},
            ) from None

    # -- one side --------------------------------------------------------------------------------------
    async def _side(self, name: str, data: bytes | bytearray, top_k: int) -> SideAnswer:
        clf = self.classifier
        start = time.perf_counter()
        timings: dict[str, float] = dict.fromkeys(("lookup", "decode", "preprocess", "queue", "infer", "postprocess"),
                                                  0.0)
        key, cache_key, cached, weight, found_in = await anyio.to_thread.run_sync(self._lookup, data,
                                                                                  limiter=self.workers)
        timings["lookup"] = (time.perf_counter() - start) * 1000.0
        batch_size = 0
        if cached is not None:
            answer, origin = cached, found_in
        else:
            inflight_key = (id(asyncio.get_running_loop()), cache_key) if cache_key else None
            waiting = self._inflight.get(inflight_key) if inflight_key else None
            if waiting is not None:
                # The same new photo, computed once. asyncio.wait, not shield: a leader that was cancelled (its
                # client went away) hands this request no CancelledError; it computes the photo itself instead.
                await asyncio.wait({waiting})
                if waiting.cancelled():
                    waiting = None
                else:
                    answer, origin = waiting.result(), "local"
            if waiting is None:
                future: asyncio.Future[Any] | None = None
                if inflight_key is not None:
                    future = asyncio.get_running_loop().create_future()
                    self._inflight[inflight_key] = future
                try:
                    answer, batch_size = await self._compute(name, data, key, weight, timings)
                except asyncio.CancelledError:
                    if future is not None and not future.done():
                        future.cancel()  # waiters compute it themselves
                    raise
                except BaseException as exc:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: a photo nobody else awaited logs no warning
                    raise
                finally:
                    if inflight_key is not None:
                        self._inflight.pop(inflight_key, None)
                if future is not None and not future.done():
                    future.set_result(answer)
                if cache_key is not None and clf.cache is not None:
                    await self._store(cache_key, answer)
                origin = "miss"
        t0 = time.perf_counter()
        prediction = clf.postprocess(answer, top_k=top_k, timings=timings, cache=origin)
        timings["postprocess"] = (time.perf_counter() - t0) * 1000.0
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return SideAnswer(prediction, batch_size)

    async def _store(self, cache_key: str, answer: Any) -> None:
        """The new answer into the prediction cache: the local tier now, the shared one in a worker (a network
        call) when there is one."""
        cache = self.classifier.cache
        if getattr(cache, "shared", None) is None:
            cache.put(cache_key, answer)
            return
        await anyio.to_thread.run_sync(cache.put, cache_key, answer, limiter=self.workers)

    def _lookup(self, data: bytes | bytearray) -> tuple[str | None, str | None, Any, int, str]:
        """In a worker: (content key, cache key, the cached answer or None, bytes the decode will hold, origin).

        The local tier first, then the shared one (an answer found there is put in the local one too)."""
        from amulet_lab.model import PredictionCache

        clf = self.classifier
        key = clf.content_key(data)
        cache_key = PredictionCache.key(clf.fingerprint, key) if key is not None else None
        if cache_key is not None and clf.cache is not None:
            cached, origin = clf.cache.lookup(cache_key)
            if cached is not None:
                return key, cache_key, cached, 0, origin
        limits = clf.limits
        weight = decoded_bytes(data, draft_size=clf.spec.size, max_side=limits.max_image_side,
                               max_pixels=limits.max_image_pixels)
        return key, cache_key, None, weight, "miss"

    async def _compute(self, name: str, data: bytes | bytearray, key: str | None, weight: int,
                       timings: dict[str, float]) -> tuple[Any, int]:
        pixels = self.budgets.pixels
        await self._reserve(name, weight)
        reserved = [weight]
        lock = threading.Lock()

        def give_back() -> None:  # called by the decoding worker, and again (a no-op then) by this coroutine
            with lock:
                held, reserved[0] = reserved[0], 0
            if held:
                pixels.release(held)

        try:
            x, facts = await anyio.to_thread.run_sync(self._decode, name, data, key, timings, give_back,
                                                      limiter=self.workers)
        finally:
            give_back()  # also when the decode failed or the request was cancelled
        result = await self.batcher.submit(x)
        timings["queue"], timings["infer"] = result.queue_ms, result.infer_ms
        answer = result.answer
        if facts is not None:
            answer = dataclasses.replace(answer, source=facts)
        return answer, result.batch_size

    def _decode(self, name: str, data: bytes | bytearray, key: str | None, timings: dict[str, float],
                give_back: Any) -> tuple[Any, tuple[str, int, int, int] | None]:
        """In a worker: the model input row and the source's facts; the pixel reservation is given back here."""
        clf = self.classifier
        t0 = time.perf_counter()
        try:
            decoded = clf.decode(data, key)
        except (ValidationError, SecurityError) as exc:
            exc.context.setdefault("upload", name)  # which of the two files was refused
            raise
        except ProcessingError as exc:
            if exc.stage == "decode":
                exc.context.setdefault("upload", name)
            raise
        t1 = time.perf_counter()
        x = clf.preprocess([decoded])
        facts = None
        if all(hasattr(decoded, a) for a in ("format", "width", "height", "nbytes")):
            facts = (decoded.format, decoded.width, decoded.height, decoded.nbytes)
        del decoded  # the pixels go now, before the budget is given back
        give_back()
        timings["decode"], timings["preprocess"] = (t1 - t0) * 1000.0, (time.perf_counter() - t1) * 1000.0
        return x, facts
