"""The HTTP service: KServe v2 endpoints, a raw-image classify endpoint, edge-model updates and metrics.

Request path: metrics -> keys, rate and size limits (plain ASGI layers in front
of FastAPI, see :class:`ServiceApp`) -> the image-carrying POST endpoints
(``cloud.image_endpoints``), or FastAPI's own stack and router for the rest. Bodies are
read under a size limit; JSON parsing, base64 and image decoding run in a thread
pool (OpenCV releases the GIL); each model's batcher feeds its instances' worker
threads. The event loop itself only moves bytes.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_sdk import binary
from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.errors import BundleError, InvalidImageError
from edge_sdk.preprocess import cv2
from edge_sdk.protocol import RepositoryModel, ServerMetadata

from . import docs, image_endpoints
from .batching import Batcher, BatcherClosedError, QueueFullError
from .errors import ApiError, describe, error_response
from .image_endpoints import ImageEndpoints
from .inputs import ModelInput
from .metrics import Metrics, MetricsMiddleware
from .model import CloudModel, configure_threads, plan_instances, select_backend
from .security import KeyChecker, RateLimiter, SecurityMiddleware
from .settings import Settings
from .state import EdgeArtifact, ServedModel, ServiceState

log = logging.getLogger("hybrid_vision.cloud")

SERVER_NAME = "hybrid-vision"
EXTENSIONS = (binary.EXTENSION,)  # what GET /v2 lists; the SDK sends binary tensors only where this is listed

BundlesArg = Mapping[str, str | os.PathLike | Bundle] | Sequence[str | os.PathLike | Bundle]


def load_models(bundles: BundlesArg, settings: Settings) -> dict[str, CloudModel]:
    """Verify each bundle (sha256) and load its cloud model; names come from the manifest or the mapping."""
    items = list(bundles.items()) if isinstance(bundles, Mapping) else [(None, b) for b in bundles]
    if not items:
        raise BundleError("no bundle to serve")
    out: dict[str, CloudModel] = {}
    for name, b in items:
        bundle = b if isinstance(b, Bundle) else load_bundle(Path(b), verify=True)
        m = CloudModel(bundle, name=name, max_batch_size=settings.max_batch_size, backend=settings.backend)
        if m.name in out:
            raise BundleError(f"two bundles are named {m.name!r}; give one another name (NAME=BUNDLE)")
        out[m.name] = m
    return out


class ServiceApp(FastAPI):
    """FastAPI with the service's plain ASGI layers in front of it rather than inside its middleware stack.

    HTTP requests go through ``front`` (metrics, keys and limits, the image endpoints) first; only what the image
    path does not serve reaches FastAPI's own stack (its error and telemetry middlewares, the router).
    Measured on 2 cores at full load, that stack cost a fifth of the event loop's time per image request.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def fastapi_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(bundles: BundlesArg, settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving ``bundles`` (paths, loaded bundles, or a {name: bundle} mapping).

    Models load here (errors surface at once); warm-up runs after start-up, and
    ``/v2/health/ready`` says 200 only once it is done.
    """
    settings = settings or Settings()
    # Decoding is parallel across the decode pool's threads; OpenCV's own pool inside each call would
    # only add threads that spin and steal the CPUs the model needs (measured: MobileNetV2 ran 40% slower).
    cv2.setNumThreads(1)
    metrics = Metrics()
    backend = select_backend(settings.backend)
    instances, threads = plan_instances(backend, settings.model_instances, settings.model_threads)
    configure_threads(backend, threads)  # before any model loads: TensorFlow fixes it once its runtime starts
    served: dict[str, ServedModel] = {}
    for name, m in load_models(bundles, settings).items():
        batcher = Batcher(
            m.predict, max_batch_size=settings.max_batch_size, max_delay_ms=settings.max_delay_ms,
            queue_size=settings.queue_size, instances=instances, name=name,
            on_batch=lambda n, s, _name=name: metrics.observe_batch(_name, n, s),
        )
        metrics.queue_depth.labels(name).set_function(lambda b=batcher: b.depth)
        spec = ModelInput(m.manifest.input, m.manifest.preprocess, settings.image_limits, settings.max_request_images)
        served[name] = ServedModel(name, m, batcher, spec, EdgeArtifact.from_bundle(m.bundle))
    state = ServiceState(settings, served, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        for sm in served.values():
            await sm.batcher.start()
        state.warm_task = asyncio.get_running_loop().create_task(_warm_up(state))
        try:
            yield
        finally:
            state.begin_drain()
            if not state.warm_task.done():
                state.warm_task.cancel()
            for sm in served.values():
                await sm.batcher.close()
            state.decode_pool.shutdown(wait=True)
            log.info("drained: all queued requests answered")

    app = ServiceApp(
        title="hybrid-vision cloud", version="1", lifespan=lifespan, responses=docs.ERRORS,
        description="Full-precision image classification over the KServe v2 protocol, with dynamic batching.",
        # FastAPI's OpenTelemetry hooks check for a provider on every request (~9% of the event loop's
        # time at full load); /metrics is the service's telemetry unless HV_OPENTELEMETRY=true.
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.hv = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    # built innermost first: metrics -> security -> image endpoints -> FastAPI's own stack and router
    front: ASGIApp = ImageEndpoints(app.fastapi_stack, state=state)
    limiter = RateLimiter(settings.rate_limit_rps, settings.burst) if settings.rate_limit_rps > 0 else None
    front = SecurityMiddleware(front, keys=KeyChecker(settings.key_values()), limiter=limiter,
                               max_body_bytes=settings.max_body_bytes)
    app.front = MetricsMiddleware(front, metrics=metrics, routes=app.router.routes,
                                  hot_label=lambda scope: image_endpoints.label(scope, settings.bench_endpoints))
    docs.install(app, settings.bench_endpoints, sorted(served))
    return app


async def _warm_up(state: ServiceState) -> None:
    loop = asyncio.get_running_loop()
    try:
        for sm in state.models.values():  # off the event loop, which keeps answering health probes
            await loop.run_in_executor(None, sm.model.warmup)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        state.warmup_error = f"{type(e).__name__}: {e}"
        log.error("warm-up failed: %s", state.warmup_error)
        return
    # Keras/TF leave ~10^6 long-lived objects; moving them out of the collector's view keeps each
    # full GC pass (triggered by per-request allocations) from rescanning them all (~0.2 s a pass).
    gc.collect()
    gc.freeze()
    state.metrics.ready.set(1)
    log.info("ready: %s", ", ".join(f"{n} ({sm.model.backend})" for n, sm in state.models.items()))


# --- routes (the image-carrying POSTs are in image_endpoints.py) ---------------------


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    _add_server_routes(app, state)
    _add_model_routes(app, state)
    _add_operations_routes(app, state)


def _add_server_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/v2", tags=["health"], response_model=ServerMetadata)
    async def server_metadata() -> dict:
        """The server and the protocol extensions it speaks (`binary_tensor_data`: Inference-Header-Content-Length)."""
        return {"name": SERVER_NAME, "version": _server_version(), "extensions": list(EXTENSIONS)}

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"model": docs.ErrorBody}})
    async def ready():
        if state.ready:
            return {"ready": True}
        raise ApiError(503, f"not ready: {state.not_ready_reason()}", {"Retry-After": "1"})

    @app.post("/v2/repository/index", tags=["models"], response_model=list[RepositoryModel],
              openapi_extra=docs.REPOSITORY_INDEX_BODY)
    async def repository_index(request: Request) -> list[dict]:
        """The served models and whether each is ready; body `{"ready": true}` lists only the ready ones."""
        only_ready = _ready_filter(await request.body())
        entries = [_index_entry(state, sm) for sm in state.models.values()]
        return [e for e in entries if e["state"] == "READY" or not only_ready]


def _add_model_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/v2/models/{name}", tags=["models"])
    async def model_metadata(name: str) -> dict:
        return state.resolve(name).metadata()

    @app.get("/v2/models/{name}/versions/{version}", tags=["models"])
    async def model_version_metadata(name: str, version: str) -> dict:
        return state.resolve(name, version).metadata()

    @app.get("/v2/models/{name}/ready", tags=["models"])
    async def model_ready(name: str):
        return _model_ready(state, state.resolve(name))

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["models"])
    async def model_version_ready(name: str, version: str):
        return _model_ready(state, state.resolve(name, version))

    @app.get("/v1/models/{name}/edge", tags=["models"], responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}},
              "description": "the edge model bytes (ETag = its sha256), or with ?part=manifest its manifest as JSON"},
        304: {"description": "If-None-Match matched: the client already has this version"}})
    async def edge_model(name: str, request: Request,
                         part: Literal["model", "manifest"] = Query(
                             "model", description="'model' (bytes) or 'manifest'")):
        sm = state.resolve(name)
        if sm.edge is None:
            raise ApiError(404, f"model {name!r} has no edge model in its bundle (run `hybrid-vision quantize` on it)")
        e = sm.edge
        etag = f'"{e.sha256}"' if part == "model" else f'"{e.manifest_etag}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Edge-Model-Sha256": e.sha256,
                   "X-Model-Version": sm.model.manifest.version}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        if part == "manifest":
            return Response(e.manifest_json, media_type="application/json", headers=headers)
        headers["Content-Disposition"] = f'attachment; filename="{e.file}"'
        return Response(e.data, media_type="application/octet-stream", headers=headers)



def _add_operations_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)


def _model_ready(state: ServiceState, sm: ServedModel) -> dict:
    if sm.model.ready.is_set() and not state.draining:
        return {"name": sm.name, "ready": True}
    raise ApiError(503, f"model {sm.name!r} is not ready: {state.not_ready_reason()}", {"Retry-After": "1"})


def _index_entry(state: ServiceState, sm: ServedModel) -> dict:
    ready = sm.model.ready.is_set() and not state.draining
    return {"name": sm.name, "version": sm.version, "state": "READY" if ready else "UNAVAILABLE",
            "reason": "" if ready else state.not_ready_reason()}


def _ready_filter(body: bytes) -> bool:
    """The index request's ``ready`` flag: an empty body (as tritonclient sends) or ``{}`` means all models."""
    if not body.strip():
        return False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "repository index body is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"ready"} or not isinstance(doc.get("ready", False), bool):
        raise ApiError(400, 'repository index body must be {"ready": true|false}, {} or empty')
    return doc.get("ready", False)


def _server_version() -> str:
    try:
        return importlib.metadata.version("hybrid-vision")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.strip('"')
    return any(t.strip().removeprefix("W/").strip('"') == bare for t in header.split(","))


# --- errors ----------------------------------------------------------------


def _add_error_handlers(app: FastAPI, state: ServiceState) -> None:
    async def known_error(request, exc: Exception):
        status, message, headers = describe(exc)
        return error_response(status, message, headers)

    for cls in (ApiError, InvalidImageError, QueueFullError, BatcherClosedError):
        app.add_exception_handler(cls, known_error)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return error_response(400, f"invalid {where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            msg = f"not found: no endpoint {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        state.metrics.internal_errors.inc()
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                  exc_info=exc)
        return error_response(500, "internal server error")
