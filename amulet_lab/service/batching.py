"""Dynamic batching: model inputs of concurrent requests gathered into one forward pass.

Each request decodes and preprocesses its photos itself (in worker threads, so decoding of many requests
overlaps); ``DynamicBatcher.submit(x)`` then queues the (1, 3, H, W) input and awaits its answer. One
collector task per event loop takes what is queued, up to ``max_size`` rows: when fewer are there it
waits at most ``max_wait_s`` for more, then runs one forward pass in the batcher's own inference thread
and hands each request its row. While a pass runs, the next batch fills, so under load batches are
full without any waiting, and at low load a photo waits at most ``max_wait_s``. ``max_size=1`` turns
batching off (one forward pass per photo, no waiting).

The forward pass goes through ``breaker`` (one call per batch): repeated model failures open the circuit
and every queued request gets the ``CircuitOpenError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["DynamicBatcher", "BatchResult"]

log = logging.getLogger("amulet_lab.service")


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One row's answer, the size of the batch it was in, its wait in the queue and the pass's time per row."""

    answer: Any
    batch_size: int
    queue_ms: float
    infer_ms: float


@dataclasses.dataclass
class _Item:
    x: Any
    future: asyncio.Future[BatchResult]
    queued_at: float


class _LoopState:
    """The queue and collector task of one event loop (TestClient runs a loop per request)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: list[_Item] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class DynamicBatcher:
    """Gathers model inputs of concurrent requests into batched calls of ``infer`` (see the module doc)."""

    def __init__(
        self,
        infer: Callable[[Any], Sequence[Any]],
        *,
        max_size: int = 8,
        max_wait_s: float = 0.005,
        breaker: Any = None,
        concat: Callable[[list[Any]], Any] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        from amulet_lab.errors import ValidationError

        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValidationError("max_size must be an int >= 1", field="max_size", value=max_size)
        if not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 1:
            raise ValidationError("max_wait_s must be within 0..1 s", field="max_wait_s", value=max_wait_s)
        self.infer = infer
        self.max_size = max_size
        self.max_wait_s = float(max_wait_s)
        self.breaker = breaker
        self._concat = concat
        self._timer = timer
        self._executor: ThreadPoolExecutor | None = None  # made on first use, again after close()
        self._states: dict[int, _LoopState] = {}
        self._lock = threading.Lock()
        self.batches = 0
        self.items = 0
        self.failed_batches = 0
        self.largest = 0
        self._sizes: dict[int, int] = {}

    @classmethod
    def from_settings(cls, settings: Any, infer: Callable[[Any], Sequence[Any]], **kwargs: Any) -> DynamicBatcher:
        """AMULET_BATCH_MAX_SIZE rows at most, AMULET_BATCH_MAX_WAIT_MS of waiting for more."""
        return cls(infer, max_size=settings.batch_max_size, max_wait_s=settings.batch_max_wait_ms / 1000.0, **kwargs)

    # -- submitting ----------------------------------------------------------------------------------
    async def submit(self, x: Any) -> BatchResult:
        """Queue one model-input row and await its answer (errors of the forward pass are raised here)."""
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        item = _Item(x, loop.create_future(), self._timer())
        state.queue.append(item)
        state.wakeup.set()
        if state.task is None or state.task.done():
            state.task = loop.create_task(self._collect(state), name="amulet-batcher")
        return await item.future

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        with self._lock:
            state = self._states.get(id(loop))
            if state is None or state.loop is not loop:
                # Loops that are gone (a TestClient's per-request loop) leave nothing pending behind.
                self._states = {k: s for k, s in self._states.items() if not s.loop.is_closed()}
                state = self._states[id(loop)] = _LoopState(loop)
            return state

    # -- collecting ----------------------------------------------------------------------------------
    async def _collect(self, state: _LoopState) -> None:
        loop = state.loop
        while True:
            if not state.queue:
                state.wakeup.clear()
                try:
                    await asyncio.wait_for(state.wakeup.wait(), timeout=30.0)
                except TimeoutError:
                    if not state.queue:
                        return  # idle: the next submit starts a new collector
                continue
            if len(state.queue) < self.max_size and self.max_wait_s > 0:
                deadline = state.queue[0].queued_at + self.max_wait_s
                while len(state.queue) < self.max_size:
                    left = deadline - self._timer()
                    if left <= 0:
                        break
                    state.wakeup.clear()
                    try:
                        await asyncio.wait_for(state.wakeup.wait(), timeout=left)
                    except TimeoutError:
                        break
            batch = state.queue[: self.max_size]
            del state.queue[: self.max_size]
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if not batch:
                continue
            started = self._timer()
            try:
                answers = await loop.run_in_executor(self._inference_thread(), self._forward, [item.x for item in batch])
            except BaseException as exc:  # handed to every request of the batch, never lost
                self._record(len(batch), failed=True)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            per_row = (self._timer() - started) * 1000.0 / len(batch)
            self._record(len(batch))
            for item, answer in zip(batch, answers):
                if not item.future.done():
                    item.future.set_result(
                        BatchResult(answer, len(batch), (started - item.queued_at) * 1000.0, per_row))

    def _inference_thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amulet-infer")
            return self._executor

    def _forward(self, rows: list[Any]) -> Sequence[Any]:
        x = rows[0] if len(rows) == 1 else self._cat(rows)
        call = (lambda: self.infer(x)) if self.breaker is None else (lambda: self.breaker.call(self.infer, x))
        answers = call()
        if len(answers) != len(rows):
            from amulet_lab.errors import ProcessingError

            raise ProcessingError(f"infer returned {len(answers)} answers for {len(rows)} rows", stage="infer",
                                  code="E_BATCH_SHAPE")
        return answers

    def _cat(self, rows: list[Any]) -> Any:
        if self._concat is not None:
            return self._concat(rows)
        import torch

        return torch.cat(rows)

    def _record(self, size: int, *, failed: bool = False) -> None:
        with self._lock:
            self.batches += 1
            self.items += size
            self.largest = max(self.largest, size)
            self._sizes[size] = self._sizes.get(size, 0) + 1
            if failed:
                self.failed_batches += 1

    # -- reports -------------------------------------------------------------------------------------
    @property
    def mean_batch_size(self) -> float:
        """Rows per forward pass so far (0.0 before the first)."""
        return self.items / self.batches if self.batches else 0.0

    def stats(self) -> dict[str, Any]:
        """Settings, batches, rows, mean and largest batch size, failed batches, and the count per size."""
        with self._lock:
            queued = sum(len(s.queue) for s in self._states.values())
            return {"max_size": self.max_size, "max_wait_ms": round(self.max_wait_s * 1000.0, 3),
                    "batches": self.batches, "items": self.items,
                    "mean_batch_size": round(self.items / self.batches, 4) if self.batches else 0.0,
                    "largest": self.largest, "failed_batches": self.failed_batches, "queued": queued,
                    "sizes": {str(k): v for k, v in sorted(self._sizes.items())}}

    def close(self) -> None:
        """Stop the inference thread once the pass under way (if any) is done; a later submit starts a new one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"<DynamicBatcher max_size={self.max_size} batches={self.batches} mean={self.mean_batch_size:.2f}>"
