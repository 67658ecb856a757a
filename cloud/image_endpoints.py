"""The POST endpoints that carry images, served as plain ASGI ahead of FastAPI's router.

Measured on 2 cores, FastAPI's routing, dependency solving and Request object
cost about as much event-loop time per request as everything else the service
does for a small image; here the hot endpoints (classify, infer with or without
a version in the path, the bench's noop) parse their own path, query and body
(still behind the key, rate, size and metrics middlewares) and everything else
goes on to FastAPI. Their OpenAPI description lives in ``cloud.docs``.

Infer reads JSON (``application/json``, with or without a charset) or the
binary tensor data extension (an ``Inference-Header-Content-Length`` header,
usually with ``application/octet-stream``), and answers in binary the outputs
the request asks so (``cloud.outputs``).

Each body goes to the served model's engine (``cloud.engine``) as a ``Job``,
which decodes it where the model runs: here in the decode thread pool, or in a
Ray Serve replica. An image whose header says it is tiny
(``inline_decode_max_pixels``, 64x64 by default) is decoded on the event loop
instead: that takes ~40 us, less than the hand-off to a thread and back.
"""

from __future__ import annotations

import json
import logging
import math
from urllib.parse import parse_qsl

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_sdk.binary import HEADER_LENGTH
from edge_sdk.imageinfo import read_info

from .detect_outputs import detect_body
from .errors import ApiError, describe
from .inputs import Job
from .outputs import encode_answer, infer_document
from .state import ServedModel, ServiceState

log = logging.getLogger("hybrid_vision.cloud")

IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/bmp", "image/x-ms-bmp", "image/webp",
                         "application/octet-stream"})
INFER_TYPES = frozenset({"application/json", "application/octet-stream"})
JSON_CHARSETS = frozenset({"utf-8", "utf8"})
TEMPLATES = {"classify": "/v1/classify", "infer": "/v2/models/{name}/infer",
             "infer_version": "/v2/models/{name}/versions/{version}/infer", "noop": "/v1/noop",
             "detect": "/v1/detect"}
LARGE_JSON_VALUES = 20_000  # infer responses bigger than this are serialized in the pool
_HEADER_LENGTH = HEADER_LENGTH.lower().encode("latin-1")


class ClientGone(Exception):
    """The client disconnected before its body arrived; there is no one to answer."""


def match(path: str, bench: bool) -> tuple[str, str | None, str | None] | None:
    """(kind, model name, model version) for a hot endpoint, else None; kind is a key of TEMPLATES."""
    if path == "/v1/classify":
        return "classify", None, None
    if path == "/v1/detect":
        return "detect", None, None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[len("/v2/models/"):-len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return "infer", parts[0], None
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            return "infer_version", parts[0], parts[2]
    if bench and path == "/v1/noop":
        return "noop", None, None
    return None


def label(scope: Scope, bench: bool) -> str | None:
    hit = match(scope["path"], bench)
    return TEMPLATES[hit[0]] if hit else None


class ImageEndpoints:
    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state
        self.bench = state.settings.bench_endpoints
        self.limit = state.settings.max_body_bytes
        self.inline_pixels = state.settings.inline_decode_max_pixels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = match(scope["path"], self.bench) if scope["type"] == "http" else None
        if hit is None:
            await self.app(scope, receive, send)
            return
        kind, name, version = hit
        if scope["method"] != "POST":
            await _send(send, 405, _error(f"method {scope['method']} is not allowed on {scope['path']}"),
                        {"Allow": "POST"})
            return
        headers: dict[str, str] = {}
        try:
            if name is not None:
                body, headers = await self.infer(scope, receive, name, version)
            elif kind == "classify":
                body = await self.classify(scope, receive)
            elif kind == "detect":
                body = await self.detect(scope, receive)
            else:
                body = await self.noop(scope, receive)
        except ClientGone:
            return
        except Exception as e:  # noqa: BLE001 - typed errors become their status; anything else is a bug
            known = describe(e)
            if known is None:  # served ahead of FastAPI, so its last-resort handler's work is done here
                self.state.metrics.internal_errors.inc()
                log.error("internal error on %s %s: %s: %s", scope["method"], scope["path"], type(e).__name__, e,
                          exc_info=e)
                await _send(send, 500, _error("internal server error"))
                return
            status, message, err_headers = known
            await _send(send, status, _error(message), err_headers)
            return
        await _send(send, 200, body, headers)

    # --- endpoints -------------------------------------------------------

    async def classify(self, scope: Scope, receive: Receive) -> bytes:
        q = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        sm = self.state.resolve(q.get("model"))
        if sm.is_detector:
            raise ApiError(400, f"model {sm.name!r} is a detector; send the image to /v1/detect")
        top_k = _int_param(q, "top_k", 5, 1, 1000)
        _check_content_type(scope, IMAGE_TYPES)
        data = await read_body(receive, self.limit)
        probs, _ = await sm.engine.run(Job(data, inline=self._tiny(data)))
        return classify_body(sm, probs[0], top_k)

    async def infer(self, scope: Scope, receive: Receive, name: str,
                    version: str | None) -> tuple[bytes, dict[str, str]]:
        sm = self.state.resolve(name, version)
        _check_infer_type(scope)
        header_length = _header(scope, _HEADER_LENGTH)
        data = await read_body(receive, self.limit)
        job = Job(data, infer=True, header_length=header_length)
        probs, ask = await sm.engine.run(job)
        assert ask is not None  # an infer job always says what it asked for
        self.state.collect(scope, sm, job, probs)
        doc, blobs = infer_document(sm, ask, probs)
        if not blobs and probs.size > LARGE_JSON_VALUES:
            return await self.state.in_pool(encode_answer, doc, blobs)
        return encode_answer(doc, blobs)

    async def detect(self, scope: Scope, receive: Receive) -> bytes:
        """One raw image -> JSON boxes in its pixels (a detect bundle's model)."""
        q = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        sm = self.state.resolve(q.get("model"))
        if not sm.is_detector:
            raise ApiError(400, f"model {sm.name!r} classifies; /v1/detect needs a detect bundle (use /v1/classify)")
        min_score = _float_param(q, "min_score", sm.bundle.manifest.detection.report_score, 0.0, 1.0)
        _check_content_type(scope, IMAGE_TYPES)
        data = await read_body(receive, self.limit)
        info = read_info(data)
        rows, _ = await sm.engine.run(Job(data, inline=self._tiny(data)))
        size = (int(info.height or 0), int(info.width or 0))
        return _dumps(detect_body(sm.name, sm.bundle, rows[0], size, min_score))

    async def noop(self, scope: Scope, receive: Receive) -> bytes:
        """The HTTP ceiling: what /v1/classify does before and after decoding and the model."""
        q = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        sm = self.state.resolve(q.get("model"))
        _int_param(q, "top_k", 5, 1, 1000)
        _check_content_type(scope, IMAGE_TYPES)
        data = await read_body(receive, self.limit)
        return _dumps({"model_name": sm.name, "label": sm.labels[0], "confidence": 1.0,
                       "top_k": [{"label": sm.labels[0], "confidence": 1.0}], "bytes": len(data)})

    def _tiny(self, data: bytes) -> bool:
        """Whether the image's header says it is small enough to decode on the event loop."""
        info = read_info(data)
        return info.width is not None and info.height is not None and info.width * info.height <= self.inline_pixels


def classify_body(sm: ServedModel, p: np.ndarray, top_k: int) -> bytes:
    """The /v1/classify answer, written directly from labels encoded once per model (a tenth of a dict + dumps)."""
    order = (-p).argsort(kind="stable")[:top_k].tolist()
    conf = p[order].tolist()
    if not all(map(math.isfinite, conf)):
        raise RuntimeError(f"{sm.name}: the model gave a non-finite probability")
    labels = sm.labels_json
    top = ",".join(f'{{"label":{labels[i]},"confidence":{c!r}}}' for i, c in zip(order, conf, strict=True))
    return (f'{{"model_name":{sm.name_json},"label":{labels[order[0]]},"confidence":{conf[0]!r},'
            f'"top_k":[{top}]}}').encode()


# --- ASGI plumbing ---------------------------------------------------------------


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it grows past ``limit``, Content-Length or not."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def _check_content_type(scope: Scope, allowed: frozenset) -> None:
    raw = _header(scope, b"content-type")
    ctype = (raw or "").split(";")[0].strip().lower()
    if ctype not in allowed:
        raise ApiError(415, f"Content-Type {raw or '(none)'!r} is not accepted here; send one of {sorted(allowed)}")


def _check_infer_type(scope: Scope) -> None:
    """JSON (any utf-8 charset, or none), octet-stream (binary tensor data, or JSON from clients that label
    every body so), or no Content-Type at all; no compressed bodies."""
    encoding = _header(scope, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not accepted here; send the body uncompressed")
    raw = _header(scope, b"content-type")
    if raw is None:
        return
    ctype, *params = (p.strip().lower() for p in raw.split(";"))
    if ctype not in INFER_TYPES:
        raise ApiError(415, f"Content-Type {raw!r} is not accepted here; send one of {sorted(INFER_TYPES)}")
    for p in params:
        key, _, value = p.partition("=")
        if key.strip() == "charset" and value.strip().strip('"') not in JSON_CHARSETS:
            raise ApiError(415, f"Content-Type {raw!r}: JSON must be UTF-8")


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _num_param(q, name, default, lo, hi, int, "an integer")


def _float_param(q: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    return _num_param(q, name, default, lo, hi, float, "a number")


def _num_param(q: dict[str, str], name: str, default, lo, hi, cast, what: str):
    raw = q.get(name)
    if raw is None:
        return default
    try:
        v = cast(raw)
    except ValueError:
        raise ApiError(400, f"invalid query.{name}: {raw!r} is not {what}") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"invalid query.{name}: must be between {lo:g} and {hi:g}")
    return v


def _dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _error(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """The response; JSON unless ``headers`` give another content-type."""
    extra = {k.lower(): v for k, v in (headers or {}).items()}
    raw = [(b"content-type", extra.pop("content-type", "application/json").encode("latin-1")),
           (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
