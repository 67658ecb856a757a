"""The HTTP service: KServe v2 endpoints, a raw-image classify endpoint, edge-model updates and metrics.

Request path: the security middleware (key, rate, size) -> a route -> the body
is read under a size limit -> parsing, base64 and image decoding run in a
thread pool (OpenCV releases the GIL) -> the model's batcher -> one worker
thread runs the model. The event loop itself only moves bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence, Union

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.errors import BundleError, InvalidImageError
from edge_sdk.protocol import INPUT_NAME, LABEL_OUTPUT, PROBS_OUTPUT, ClassifyResponse, ErrorBody, InferRequest

from .batching import Batcher, BatcherClosedError, QueueFullError
from .errors import ApiError, error_response, from_image_error
from .inputs import ModelInput, image_tensor, parse_infer
from .metrics import Metrics, MetricsMiddleware
from .model import CloudModel
from .security import KeyChecker, RateLimiter, SecurityMiddleware, read_body
from .settings import Settings

log = logging.getLogger("hybrid_vision.cloud")

IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/bmp", "image/x-ms-bmp", "image/webp",
                         "application/octet-stream"})
BundlesArg = Union[Mapping[str, Union[str, os.PathLike, Bundle]], Sequence[Union[str, os.PathLike, Bundle]]]
LARGE_JSON_VALUES = 20_000  # serialize responses bigger than this off the event loop


@dataclass
class EdgeArtifact:
    """The edge model and manifest, held in memory so a bundle swapped on disk cannot mismatch its ETag."""

    file: str
    data: bytes
    sha256: str
    manifest_json: bytes
    manifest_etag: str

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "EdgeArtifact | None":
        if not bundle.has("edge"):
            return None
        path = bundle.model_path("edge")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha != bundle.manifest.models["edge"].sha256:
            raise BundleError(f"{path}: sha256 changed since the bundle was verified")
        manifest = {
            "name": bundle.manifest.name, "version": bundle.manifest.version,
            "manifest": bundle.manifest.model_dump(mode="json"),
            "edge": {"file": path.name, "sha256": sha, "size": len(data)},
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        return cls(path.name, data, sha, body, hashlib.sha256(body).hexdigest())


@dataclass
class ServedModel:
    name: str
    model: CloudModel
    batcher: Batcher
    spec: ModelInput
    edge: EdgeArtifact | None

    def metadata(self) -> dict:
        m, (h, w, c) = self.model.manifest, self.spec.shape
        return {
            "name": self.name, "versions": [m.version], "platform": f"keras_{self.model.backend}",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, h, w, c]}],
            "outputs": [{"name": PROBS_OUTPUT, "datatype": "FP32", "shape": [-1, len(m.labels)]},
                        {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {
                "accepts": [f"BYTES [-1]: base64 encoded PNG/JPEG/BMP/WebP images",
                            "UINT8 [-1, H, W, 1|3|4]: RGB pixels, any size",
                            f"FP32 [-1, {h}, {w}, {c}]: preprocessed as the manifest says"],
                "labels": m.labels, "input": m.input.model_dump(), "preprocess": m.preprocess.model_dump(),
                "max_batch_size": self.batcher.max_batch_size, "max_request_images": self.spec.max_images,
                "edge_model": self.edge.sha256 if self.edge else None,
            },
        }


@dataclass
class ServiceState:
    settings: Settings
    models: dict[str, ServedModel]
    metrics: Metrics
    decode_pool: ThreadPoolExecutor | None = None
    draining: bool = False
    warmup_error: str | None = None
    warm_task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return (not self.draining and self.warmup_error is None and self.decode_pool is not None
                and all(sm.model.ready.is_set() and sm.batcher.running for sm in self.models.values()))

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        if self.warmup_error:
            return f"warm-up failed: {self.warmup_error}"
        return "warming up"

    def resolve(self, name: str | None) -> ServedModel:
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise ApiError(400, f"several models are served; pass ?model= (one of {sorted(self.models)})")
        sm = self.models.get(name)
        if sm is None:
            raise ApiError(404, f"unknown model {name!r}; served: {sorted(self.models)}")
        return sm

    async def in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)


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


def create_app(bundles: BundlesArg, settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving ``bundles`` (paths, loaded bundles, or a {name: bundle} mapping).

    Models load here (errors surface at once); warm-up runs after start-up, and
    ``/v2/health/ready`` says 200 only once it is done.
    """
    settings = settings or Settings()
    metrics = Metrics()
    served: dict[str, ServedModel] = {}
    for name, m in load_models(bundles, settings).items():
        batcher = Batcher(
            m.predict, max_batch_size=settings.max_batch_size, max_delay_ms=settings.max_delay_ms,
            queue_size=settings.queue_size, name=name,
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

    app = FastAPI(
        title="hybrid-vision cloud", version="1", lifespan=lifespan,
        description="Full-precision image classification over the KServe v2 protocol, with dynamic batching.",
        responses={c: {"model": ErrorBody} for c in (400, 401, 404, 413, 415, 422, 429, 503)},
    )
    app.state.hv = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    limiter = RateLimiter(settings.rate_limit_rps, settings.burst) if settings.rate_limit_rps > 0 else None
    app.add_middleware(SecurityMiddleware, keys=KeyChecker(settings.key_values()), limiter=limiter,
                       max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    _document_infer_body(app)
    return app


async def _warm_up(state: ServiceState) -> None:
    loop = asyncio.get_running_loop()
    try:
        for sm in state.models.values():  # in the model's own worker thread, where it will run
            await loop.run_in_executor(sm.batcher.worker, sm.model.warmup)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        state.warmup_error = f"{type(e).__name__}: {e}"
        log.error("warm-up failed: %s", state.warmup_error)
        return
    state.metrics.ready.set(1)
    log.info("ready: %s", ", ".join(f"{n} ({sm.model.backend})" for n, sm in state.models.items()))


# --- routes ----------------------------------------------------------------

_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/bmp", "image/webp",
                                                                   "application/octet-stream")}}}


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    settings = state.settings

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"model": ErrorBody}})
    async def ready():
        if state.ready:
            return {"ready": True}
        raise ApiError(503, f"not ready: {state.not_ready_reason()}", {"Retry-After": "1"})

    @app.get("/v2/models/{name}", tags=["models"])
    async def model_metadata(name: str) -> dict:
        return state.resolve(name).metadata()

    @app.get("/v2/models/{name}/ready", tags=["models"])
    async def model_ready(name: str):
        sm = state.resolve(name)
        if sm.model.ready.is_set() and not state.draining:
            return {"name": name, "ready": True}
        raise ApiError(503, f"model {name!r} is not ready: {state.not_ready_reason()}", {"Retry-After": "1"})

    @app.post("/v2/models/{name}/infer", tags=["models"], openapi_extra={"x-hv-body": "InferRequest"})
    async def infer(name: str, request: Request):
        sm = state.resolve(name)
        _check_content_type(request, ("application/json",), allow_missing=True)
        body = await read_body(request, settings.max_body_bytes)
        parsed = None

        async def prepare() -> np.ndarray:
            nonlocal parsed
            parsed = await state.in_pool(parse_infer, body, sm.spec)
            return parsed.x

        probs = await sm.batcher.infer(prepare)
        outputs = []
        if PROBS_OUTPUT in parsed.outputs:
            outputs.append({"name": PROBS_OUTPUT, "datatype": "FP32", "shape": list(probs.shape),
                            "data": probs.ravel().tolist()})
        if LABEL_OUTPUT in parsed.outputs:
            labels = sm.model.labels
            outputs.append({"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(probs)],
                            "data": [labels[i] for i in probs.argmax(1)]})
        doc = {"model_name": sm.name, "model_version": sm.model.manifest.version, "id": parsed.id, "outputs": outputs}
        if probs.size > LARGE_JSON_VALUES:
            return _json(await state.in_pool(_dumps, doc))
        return _json(_dumps(doc))

    @app.post("/v1/classify", tags=["classify"], response_model=ClassifyResponse, openapi_extra=_IMAGE_BODY)
    async def classify(request: Request, model: str | None = Query(None, description="model name; needed when several are served"),
                       top_k: int = Query(5, ge=1, le=1000, description="how many runners-up to list")):
        sm = state.resolve(model)
        _check_content_type(request, IMAGE_TYPES)
        body = await read_body(request, settings.max_body_bytes)
        probs = await sm.batcher.infer(lambda: state.in_pool(image_tensor, body, sm.spec))
        p = probs[0]
        order = np.argsort(-p)[: min(top_k, len(p))]
        labels = sm.model.labels
        top = [{"label": labels[i], "confidence": float(p[i])} for i in order]
        return _json(_dumps({"model_name": sm.name, "label": top[0]["label"], "confidence": top[0]["confidence"],
                             "top_k": top}))

    @app.get("/v1/models/{name}/edge", tags=["models"], responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}},
              "description": "the edge model bytes (ETag = its sha256), or with ?part=manifest its manifest as JSON"},
        304: {"description": "If-None-Match matched: the client already has this version"}})
    async def edge_model(name: str, request: Request,
                         part: Literal["model", "manifest"] = Query("model", description="'model' (bytes) or 'manifest'")):
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

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    if settings.bench_endpoints:
        @app.post("/v1/noop", tags=["benchmark"], openapi_extra=_IMAGE_BODY)
        async def noop(request: Request, model: str | None = Query(None)):
            """The HTTP ceiling: the same middleware, checks and body read as /v1/classify, no decode or model."""
            sm = state.resolve(model)
            _check_content_type(request, IMAGE_TYPES)
            body = await read_body(request, settings.max_body_bytes)
            return _json(_dumps({"model_name": sm.name, "label": sm.model.labels[0], "confidence": 1.0,
                                 "bytes": len(body)}))


def _dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _check_content_type(request: Request, allowed, allow_missing: bool = False) -> None:
    raw = request.headers.get("content-type")
    if raw is None and allow_missing:
        return
    ctype = (raw or "").split(";")[0].strip().lower()
    if ctype not in allowed:
        raise ApiError(415, f"Content-Type {raw or '(none)'!r} is not accepted here; send one of {sorted(allowed)}")


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.strip('"')
    return any(t.strip().removeprefix("W/").strip('"') == bare for t in header.split(","))


# --- errors ----------------------------------------------------------------


def _add_error_handlers(app: FastAPI, state: ServiceState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(InvalidImageError)
    async def image_error(request, exc: InvalidImageError):
        e = from_image_error(exc)
        return error_response(e.status, e.message)

    @app.exception_handler(QueueFullError)
    async def queue_full(request, exc: QueueFullError):
        return error_response(503, str(exc), {"Retry-After": str(max(1, round(exc.retry_after)))})

    @app.exception_handler(BatcherClosedError)
    async def closing(request, exc: BatcherClosedError):
        return error_response(503, str(exc), {"Retry-After": "1", "Connection": "close"})

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


def _document_infer_body(app: FastAPI) -> None:
    """The infer route reads its body itself (to parse it off the event loop); describe it in the OpenAPI doc."""
    base = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        defs = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["InferRequest"] = defs
        for path in schema.get("paths", {}).values():
            op = path.get("post")
            if op and op.pop("x-hv-body", None) == "InferRequest":
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
