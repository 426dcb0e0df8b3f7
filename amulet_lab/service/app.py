"""``create_app``: the FastAPI service, with its parts passed in rather than found globally.

    POST /predict        multipart front (required) and back (optional) -> the classifier's JSON
    GET  /health         the health report (amulet_lab.health), always 200 while the process answers
    GET  /health/live    200 while the event loop runs
    GET  /health/ready   200 once the classifier is loaded, else 503
    GET  /metrics        Prometheus text (the app's own registry)

The classifier is either given (tests, notebooks) or loaded from the checkpoint in the
lifespan handler, in a worker thread, so ``/health/live`` answers while it loads.
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
from fastapi.responses import JSONResponse, Response

from amulet_lab.config import Settings, get_settings
from amulet_lab.errors import CircuitBreaker, ModelError, ProcessingError, SecurityError, ValidationError
from amulet_lab.service.errors import ApiError, install_error_handlers
from amulet_lab.service.metrics import CONTENT_TYPE_LATEST, MetricSources, ServiceMetrics
from amulet_lab.service.middleware import ServiceMiddleware
from amulet_lab.service.ratelimit import RateLimiter
from amulet_lab.service.uploads import read_uploads

__all__ = ["create_app", "ServiceState"]

log = logging.getLogger("amulet_lab.service")

UPLOAD_FIELDS = ("front", "back")


class ServiceState:
    """Everything one app instance holds: settings, classifier, limiter, metrics, monitors, breaker."""

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
        self.limiter = RateLimiter.from_settings(settings, timer=timer)
        # A separate monitor per app: its counts are this service's requests, not every timed call in the process.
        self.perf = PerformanceMonitor()
        # Repeated model failures open the circuit: clients get a fast 503 instead of a queue of slow 500s.
        self.breaker = CircuitBreaker(failure_threshold=5, timeout=30.0, name="model", timer=timer)
        self._memory_monitor = memory_monitor
        # Inference is CPU-bound: at most thread_pool_size requests run the model at once, the rest wait.
        self.inference_limiter = anyio.CapacityLimiter(settings.thread_pool_size)
        # Uploads being read are held in memory (up to max_upload_bytes per file): at most twice the inference
        # slots read at once, so the next requests are ready when a slot frees while memory stays bounded at
        # about 2 * thread_pool_size * len(UPLOAD_FIELDS) * max_upload_bytes; the rest wait before reading.
        self.upload_limiter = anyio.CapacityLimiter(settings.thread_pool_size * 2)
        self.metrics = ServiceMetrics(
            MetricSources(
                cache_stats=self.cache_stats,
                breakers=lambda: [self.breaker],
                memory_rss_bytes=lambda: self.memory_monitor.get_current_usage().rss_mb * 1024 * 1024,
                model_loaded=lambda: self.classifier is not None,
            )
        )

    @property
    def memory_monitor(self) -> Any:
        """The memory monitor given, else the process-wide one."""
        if self._memory_monitor is None:
            from amulet_lab.memory import memory_monitor

            self._memory_monitor = memory_monitor
        return self._memory_monitor

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

    def health(self, *, full: bool = False) -> dict[str, Any]:
        """The health report of this service; ``full`` adds the whole model status (path cut to its name)."""
        from amulet_lab.health import build_health_report, public_model_status, redact_path
        from amulet_lab.threads import get_stats as thread_stats

        status = self.model_status()
        return build_health_report(
            model_status=redact_path(status) if full else public_model_status(status),
            perf_stats=self.perf.get_stats(),
            uptime_s=self.timer() - self.started_at,
            memory_monitor=self.memory_monitor,
            cache_stats=self.cache_stats,
            thread_stats=thread_stats,
        )

    def __repr__(self) -> str:
        return f"<ServiceState model_loaded={self.classifier is not None} {self.limiter!r}>"


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
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()

    app = FastAPI(
        title="amulet-lab",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if settings.debug else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.debug else None,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, state=state, wall=wall)

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(3, ge=1, le=20)) -> JSONResponse:
        """Classify the uploaded front (and optional back) photo."""
        _require_scope(request, state, "predict")
        async with state.upload_limiter:
            parts = await read_uploads(
                request.stream(),
                request.headers,
                fields=UPLOAD_FIELDS,
                required=("front",),
                max_upload_bytes=settings.max_upload_bytes,
            )
        classifier = state.require_classifier()

        def guarded() -> tuple[Any, Exception | None]:
            # One decode per new photo: the classifier hashes the bytes, answers a repeated photo from its
            # prediction cache without decoding, and validates + decodes a new one once (the upload size limit
            # came first, in read_uploads). A bad photo is the client's fault, not the model's: it is handed
            # out as a value, so the breaker sees a success and bad uploads cannot open the circuit.
            try:
                sides = {}
                for name, upload in parts.items():
                    try:
                        sides[name] = classifier.predict(upload.data, top_k=top_k)
                    except (ValidationError, SecurityError, ProcessingError) as exc:
                        exc.context.setdefault("upload", name)  # which of the two files was refused
                        raise
                return classifier.combine(sides["front"], sides.get("back"), top_k=top_k), None
            except (ValidationError, SecurityError) as exc:
                return None, exc
            except ProcessingError as exc:
                if exc.stage == "decode":
                    return None, exc
                raise

        def infer() -> tuple[Any, Exception | None]:
            return state.breaker.call(guarded)

        pair, client_error = await anyio.to_thread.run_sync(infer, limiter=state.inference_limiter)
        if client_error is not None:
            raise client_error
        body = pair.to_dict()
        body["request_id"] = request.state.request_id
        body["cache"] = pair.combined.cache
        body["uploads"] = {name: side.source for name, side in (("front", pair.front), ("back", pair.back))
                           if side is not None}
        return JSONResponse(body)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """The health report (status inside; 200 whenever the process can answer).

        Anyone sees the public model status; a token with the ``metrics`` scope sees all of it.
        """
        claims = request.state.claims
        full = claims is not None and claims.allows("metrics")
        return JSONResponse(await anyio.to_thread.run_sync(lambda: state.health(full=full)))

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """Liveness: the event loop answers."""
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded."""
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

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this app."""
        _require_scope(request, state, "metrics")
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _version() -> str:
    from amulet_lab import __version__

    return __version__
