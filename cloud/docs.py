"""The OpenAPI description of the endpoints ``cloud.image_endpoints`` serves outside FastAPI's router.

The functions below are never mounted or called: they exist so FastAPI can
describe these endpoints (parameters, bodies, responses) in ``/openapi.json``
exactly as it describes the routes it serves itself.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.openapi.utils import get_openapi

from edge_sdk.binary import HEADER_LENGTH
from edge_sdk.detection import DetectResponse
from edge_sdk.protocol import ClassifyResponse, ErrorBody, InferRequest, InferResponse

ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 413, 415, 422, 429, 503)}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}}
    for t in ("image/png", "image/jpeg", "image/bmp", "image/webp", "application/octet-stream")}}}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
BINARY_ANSWER = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                 "description": "binary tensor data: the JSON InferResponse (its length in the "
                                f"{HEADER_LENGTH} response header), then the outputs' raw data"}
INFER_RESPONSES = {**ERRORS, 200: BINARY_ANSWER}
INFER_DOC = """KServe v2 inference: encoded images (BYTES) or a UINT8/FP32 NHWC tensor named `image`;
outputs `probabilities` FP32 [N, C] and `label` BYTES [N], or for a detect bundle `boxes` FP32 [N, K, 4],
`scores` FP32 [N, K], `classes` INT64 [N, K] and `count` INT32 [N].

JSON (`application/json`): BYTES elements are base64 strings. Binary tensor data (Triton's
`binary_tensor_data` extension, the tritonclient and kserve default): the body is the JSON request, its
length in `Inference-Header-Content-Length`, then each input's raw data (`parameters.binary_data_size`
bytes: little-endian numbers, or BYTES elements each after its 4-byte little-endian length). Outputs with
`parameters.binary_data` (or all, with the request's `parameters.binary_data_output`) come back the same way.
Unknown top-level fields (`model_name`, ...) are ignored."""
REPOSITORY_INDEX_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"ready": {"type": "boolean"}}, "additionalProperties": False}}}}}


def hot_routes(bench: bool) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/classify", tags=["classify"], response_model=ClassifyResponse, responses=ERRORS,
                 openapi_extra=IMAGE_BODY)
    async def classify(model: str | None = Query(None, description="model name; needed when several are served"),
                       top_k: int = Query(5, ge=1, le=1000, description="how many labels to list")):
        """Classify one image sent as the raw body: `curl --data-binary @img.png -H 'Content-Type: image/png'`."""

    @router.post("/v1/detect", tags=["detect"], response_model=DetectResponse, responses=ERRORS,
                 openapi_extra=IMAGE_BODY)
    async def detect(model: str | None = Query(None, description="model name; needed when several are served"),
                     min_score: float | None = Query(None, ge=0, le=1, description="lowest score listed "
                                                     "[the bundle's report_score]")):
        """Detect the objects in one image sent as the raw body (a detect bundle); boxes in its pixels."""

    @router.post("/v2/models/{name}/infer", tags=["models"], response_model=InferResponse,
                 responses=INFER_RESPONSES, openapi_extra=INFER_BODY, description=INFER_DOC)
    async def infer(name: str, length: int | None = Header(None, alias=HEADER_LENGTH, ge=1)):
        """KServe v2 inference."""

    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["models"], response_model=InferResponse,
                 responses=INFER_RESPONSES, openapi_extra=INFER_BODY, description=INFER_DOC)
    async def infer_version(name: str, version: str,
                            length: int | None = Header(None, alias=HEADER_LENGTH, ge=1)):
        """KServe v2 inference on a named version (the one the model's metadata lists)."""

    if bench:
        @router.post("/v1/noop", tags=["benchmark"], responses=ERRORS, openapi_extra=IMAGE_BODY)
        async def noop(model: str | None = Query(None), top_k: int = Query(5, ge=1, le=1000)):
            """The HTTP ceiling: /v1/classify's checks and body read, without decoding or the model."""

    return router


def install(app: FastAPI, bench: bool, model_names: list[str]) -> None:
    """Make ``app.openapi()`` describe the hot endpoints too, and list the served model names."""
    extra = hot_routes(bench).routes

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=[*app.routes, *extra])
        defs = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["InferRequest"] = defs
        for item in schema.get("paths", {}).values():  # {name} can only be a served model
            for op in item.values():
                for param in op.get("parameters", []):
                    if param.get("in") == "path" and param.get("name") == "name":
                        param["schema"] = {**param.get("schema", {}), "enum": model_names}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
