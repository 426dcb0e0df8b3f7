"""``create_app``: the FastAPI service, with its parts passed in rather than found globally.

    POST /predict        multipart front (required) and back (optional) -> the classifier's JSON
    GET  /health         the health report (amulet_lab.health), always 200 while the process answers
    GET  /health/live    200 while the event loop runs (no rate limit, no auth)
    GET  /health/ready   200 once the classifier is loaded, else 503 (no rate limit, no auth)
    GET  /metrics        Prometheus text (the app's own registry)

The classifier is either given (tests, notebooks) or loaded from the checkpoint in the
lifespan handler, in a worker thread, so ``/health/live`` answers while it loads. ``/predict``
runs the stages of ``service.pipeline`` under the upload and pixel budgets (``service.budgets``),
with forward passes batched across concurrent requests (``service.batching``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from amulet_lab.config import Settings, get_settings
from amulet_lab.errors import CircuitBreaker, ModelError
from amulet_lab.service.batching import DynamicBatcher
from amulet_lab.service.budgets import ServiceBudgets
from amulet_lab.service.errors import ApiError, install_error_handlers
from amulet_lab.service.metrics import CONTENT_TYPE_LATEST, MetricSources, ServiceMetrics
from amulet_lab.service.middleware import ServiceMiddleware
from amulet_lab.service.openapi import PAIR_SCHEMA, PREDICT_BODY, install_openapi
from amulet_lab.service.pipeline import PredictPipeline
from amulet_lab.service.ratelimit import rate_limiter_from_settings
from amulet_lab.service.uploads import UploadLease, read_uploads

__all__ = ["create_app", "ServiceState"]

log = logging.getLogger("amulet_lab.service")

UPLOAD_FIELDS = ("front", "back")
#: A pressure check older than this is taken again when /health is asked (the background one runs every
#: ``MEMORY_SAMPLE_S``), so the report never shows a stale level.
HEALTH_MAX_AGE_S = 1.0
MEMORY_SAMPLE_S = 2.0


class ServiceState:
    """Everything one app instance holds: settings, classifier, limiter, budgets, batcher, metrics, breaker."""

    def __init__(
        self,
        settings: Settings,
        classifier: Any = None,
        *,
        timer: Callable[[], float] = time.monotonic,
        memory_monitor: Any = None,
    ) -> None:
        from amulet_lab.perf import PerformanceMonitor

        self.settings = settings
        self.classifier = classifier
        self.load_error: str | None = None
        self.loading = False
        self.timer = timer
        self.started_at = timer()
        # AMULET_RATE_LIMIT_BACKEND: buckets in this process, or one bucket per client on the Redis/Valkey server.
        self.limiter = rate_limiter_from_settings(settings, timer=timer)
        # A separate monitor per app: its counts are this service's requests, not every timed call in the process.
        self.perf = PerformanceMonitor()
        # Repeated model failures open the circuit: clients get a fast 503 instead of a queue of slow 500s.
        self.breaker = CircuitBreaker(failure_threshold=5, timeout=30.0, name="model", timer=timer)
        self._memory_monitor = memory_monitor
        # Hashing, decoding and preprocessing run in worker threads, at most thread_pool_size at once; memory is
        # bounded by the budgets (bytes of uploads and of decoded pixels in flight), not by a count of requests.
        self.workers = anyio.CapacityLimiter(settings.thread_pool_size)
        self.budgets = ServiceBudgets.from_settings(settings, len(UPLOAD_FIELDS))
        # The lambda reads self.classifier at call time: the model may load after the app is built.
        self.batcher = DynamicBatcher.from_settings(settings, lambda x: self.classifier.infer(x), breaker=self.breaker)
        self._pipeline: PredictPipeline | None = None
        self.metrics = ServiceMetrics(
            MetricSources(
                cache_stats=self.cache_stats,
                breakers=self.breakers,
                memory_rss_bytes=lambda: self.memory_monitor.get_current_usage().rss_mb * 1024 * 1024,
                model_loaded=lambda: self.classifier is not None,
                budgets=self.budgets.stats,
                batching=self.batcher.stats,
            )
        )

    @property
    def memory_monitor(self) -> Any:
        """The memory monitor given, else the process-wide one."""
        if self._memory_monitor is None:
            from amulet_lab.memory import memory_monitor

            self._memory_monitor = memory_monitor
        return self._memory_monitor

    def breakers(self) -> list[Any]:
        """The model's breaker and those of the Redis/Valkey tiers in use (shared cache, shared rate limit)."""
        out = [self.breaker]
        shared = getattr(getattr(self.classifier, "cache", None), "shared", None)
        for part in (shared, self.limiter):
            breaker = getattr(part, "breaker", None)
            if breaker is not None:
                out.append(breaker)
        return out

    def cache_stats(self) -> dict[str, Any]:
        """The classifier's prediction-cache figures (zeros while no model, or no cache, is loaded)."""
        cache = getattr(self.classifier, "cache", None)
        if cache is None:
            return {"hits": 0, "misses": 0, "hit_rate": 0.0, "items": 0, "bytes": 0, "size": 0, "total_size_bytes": 0}
        return cache.stats()

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Record one answered request (metrics and the monitor behind /health)."""
        self.metrics.observe(method, route, status, duration_s)
        self.perf.record(f"http.{route}", duration_s, error=status >= 500)

    def model_status(self) -> dict[str, Any]:
        """The classifier's status, or why there is none yet."""
        if self.classifier is not None:
            status = dict(self.classifier.model_status())
            status.setdefault("loaded", True)
            return status
        return {"loaded": False, "loading": self.loading, "error": self.load_error}

    def require_classifier(self) -> Any:
        """The classifier, or a 503 while it is loading or after it failed to load."""
        if self.classifier is None:
            why = "is still loading" if self.loading else f"could not be loaded ({self.load_error})"
            raise ApiError(503, "E_MODEL_UNAVAILABLE", f"The model {why}.", headers={"Retry-After": "5"})
        return self.classifier

    def pipeline(self) -> PredictPipeline:
        """The ``/predict`` stages for the loaded classifier (made on first use, again if the classifier changed)."""
        classifier = self.require_classifier()
        if self._pipeline is None or self._pipeline.classifier is not classifier:
            self._pipeline = PredictPipeline(classifier, self.batcher, self.budgets, workers=self.workers)
        return self._pipeline

    async def load_classifier(self) -> None:
        """Load the classifier from the configured checkpoint in a worker thread."""
        self.loading = True
        try:
            from amulet_lab.model import AmuletClassifier

            self.classifier = await anyio.to_thread.run_sync(
                lambda: AmuletClassifier.from_settings(self.settings)
            )
            log.info("model loaded: %s", self.classifier)
        except ModelError as exc:
            # Clients see the code only (the message names server paths); the log has it all.
            self.load_error = exc.code
            log.error("model could not be loaded: %s: %s", exc.code, exc.message)
        except Exception as exc:
            # Not swallowed: logged with its traceback and reported (by type) on /health and /health/ready.
            # The process keeps serving live/health so an operator can see why it is not ready.
            self.load_error = type(exc).__name__
            log.exception("model loading failed unexpectedly")
        finally:
            self.loading = False

    def fresh_pressure_check(self) -> None:
        """Check memory pressure again unless the last check is under ``HEALTH_MAX_AGE_S`` old (responders may run)."""
        monitor = self.memory_monitor
        last = getattr(monitor, "last_check", None)
        if last is None or time.time() - float(last.get("time", 0.0)) > HEALTH_MAX_AGE_S:
            monitor.check_memory_pressure()

    def service_stats(self) -> dict[str, Any]:
        """The budgets in use, the batching figures and the shared rate limit's, when there is one (for /health)."""
        out = {"budgets": self.budgets.stats(), "batching": self.batcher.stats()}
        limiter_stats = getattr(self.limiter, "stats", None)
        if limiter_stats is not None:
            out["rate_limit"] = limiter_stats()
        return out

    def health(self, *, full: bool = False) -> dict[str, Any]:
        """The health report of this service; ``full`` adds the whole model status (path cut to its name)."""
        from amulet_lab.health import build_health_report, public_model_status, redact_path
        from amulet_lab.threads import get_stats as thread_stats

        self.fresh_pressure_check()
        status = self.model_status()
        return build_health_report(
            model_status=redact_path(status) if full else public_model_status(status),
            perf_stats=self.perf.get_stats(),
            uptime_s=self.timer() - self.started_at,
            memory_monitor=self.memory_monitor,
            cache_stats=self.cache_stats,
            thread_stats=thread_stats,
            service_stats=self.service_stats(),
        )

    def __repr__(self) -> str:
        return f"<ServiceState model_loaded={self.classifier is not None} {self.limiter!r} {self.batcher!r}>"


def _require_scope(request: Request, state: ServiceState, scope: str) -> None:
    claims = request.state.claims
    if claims is None:
        if state.settings.require_auth:
            raise ApiError(
                401,
                "E_AUTH_REQUIRED",
                "This endpoint needs a bearer token (Authorization: Bearer <token>).",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    if not claims.allows(scope):
        raise ApiError(403, "E_AUTH_SCOPE", f"The token does not grant {scope!r}.", details={"required_scope": scope})


def create_app(
    settings: Settings | None = None,
    classifier: Any = None,
    *,
    timer: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    memory_monitor: Any = None,
) -> FastAPI:
    """The service app; refuses to build without a proper secret key unless ``settings.debug``."""
    settings = settings or get_settings()
    from amulet_lab.runtime import apply_settings

    apply_settings(settings)
    settings.require_secret_key()
    state = ServiceState(settings, classifier, timer=timer, memory_monitor=memory_monitor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if state.classifier is None:
            state.loading = True  # ready stays 503 from the first request on, until the task finishes
            task = asyncio.create_task(state.load_classifier())
        monitor = state.memory_monitor
        sampling = not monitor.running
        if sampling:  # pressure is sampled in the background, so responders act without anyone asking /health
            monitor.start(interval_s=MEMORY_SAMPLE_S)
        responder = monitor.register_responder(_prediction_cache_responder(state))
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            monitor.unregister_responder(responder)
            if sampling:
                monitor.stop(timeout=5.0)
            state.batcher.close()

    show_openapi = settings.debug or settings.openapi
    app = FastAPI(
        title="amulet-lab",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if show_openapi else None,
        redoc_url=None,
        openapi_url="/openapi.json" if show_openapi else None,
    )
    app.state.service = state
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(ServiceMiddleware, state=state, wall=wall)

    @app.post(
        "/predict",
        openapi_extra={"requestBody": PREDICT_BODY},
        responses={200: {"description": "The prediction of each side and the combined one",
                         "content": {"application/json": {"schema": PAIR_SCHEMA}}}},
    )
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=20, description="How many classes to list per side"),
        scene: bool = Query(False, description="Find every amulet in the front photo: pieces with box, rotation "
                                               "and prediction (a back is then refused)"),
    ) -> JSONResponse:
        """Classify the uploaded front (and optional back) photo."""
        _require_scope(request, state, "predict")
        lease = UploadLease(state.budgets.uploads)
        try:
            parts = await read_uploads(
                request.stream(),
                request.headers,
                fields=UPLOAD_FIELDS,
                required=("front",),
                max_upload_bytes=settings.max_upload_bytes,
                idle_timeout_s=settings.upload_idle_timeout_s,
                deadline_s=settings.upload_timeout_s,
                lease=lease,
            )
            pipeline = state.pipeline()
            if scene:
                if "back" in parts:
                    raise ApiError(400, "E_SCENE_BACK", "scene=true classifies the pieces of one photo: send only "
                                   "the front.", details={"upload": "back"})
                found = await pipeline.scene(parts["front"].data, top_k=top_k)
                return JSONResponse({**found.to_dict(), "request_id": request.state.request_id})
            pair, batches = await pipeline.predict({name: part.data for name, part in parts.items()}, top_k=top_k)
        finally:
            lease.release()
        body = pair.to_dict()
        body["request_id"] = request.state.request_id
        body["cache"] = pair.combined.cache
        body["uploads"] = {name: side.source for name, side in (("front", pair.front), ("back", pair.back))
                           if side is not None}
        body["batch"] = batches
        return JSONResponse(body)

    @app.get("/health", responses={200: {"description": "The health report (amulet_lab.health.HEALTH_SCHEMA)"}})
    async def health(request: Request) -> JSONResponse:
        """The health report (status inside; 200 whenever the process can answer).

        Anyone sees the public model status; a token with the ``metrics`` scope sees all of it.
        """
        claims = request.state.claims
        full = claims is not None and claims.allows("metrics")
        return JSONResponse(await anyio.to_thread.run_sync(lambda: state.health(full=full)))

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """Liveness: the event loop answers (no rate limit, no auth)."""
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded (no rate limit, no auth)."""
        if state.classifier is None:
            status = state.model_status()
            raise ApiError(
                503,
                "E_NOT_READY",
                "The model is not loaded yet." if state.loading else "The model could not be loaded.",
                details={"loading": status["loading"], "error": status["error"]},
                headers={"Retry-After": "5"},
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this app."""
        _require_scope(request, state, "metrics")
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


class _LoadedCache:
    """The classifier's prediction cache as it is when pressure rises (the model may load after the app starts)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def shrink(self, fraction: float) -> int:
        """Drop ``fraction`` of the prediction cache's answers (0 while no model or no cache)."""
        cache = getattr(self.state.classifier, "cache", None)
        return int(cache.shrink(fraction)) if cache is not None else 0


def _prediction_cache_responder(state: ServiceState) -> Any:
    """Under memory pressure the prediction cache shrinks too (the process monitor knows only the image cache)."""
    from amulet_lab.memory import shrink_caches_responder

    return shrink_caches_responder([_LoadedCache(state)], state.settings.cache_shrink_fraction)


def _version() -> str:
    from amulet_lab import __version__

    return __version__
