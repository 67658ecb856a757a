"""KServe v2 / Open Inference Protocol messages, shared by the service and the SDK.

Images travel as BYTES tensors whose elements are the encoded files (base64
strings in JSON, the raw bytes in binary); pixel tensors travel as UINT8 (raw
RGB pixels, any size) or FP32 (already preprocessed, exactly the model's input
shape), NHWC, data row-major. Either can go as JSON or with the binary tensor
data extension (``edge_sdk.binary``): :class:`InferPayload` is a request before
that choice, ``encode(binary=...)`` makes it.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import binary
from .binary import HEADER_LENGTH, binary_size, join_body, numeric_bytes, pack_bytes, slice_data, split_body

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "BF16", "FP32", "FP64", "BYTES"]

INPUT_NAME = "image"
PROBS_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"


class Tensor(BaseModel):
    """A tensor in a request or response; ``data`` is absent when ``parameters.binary_data_size`` carries it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An infer request. Unknown top-level fields (``model_name``, ``model_version``, ...) are ignored, as the
    protocol lets clients add them; the tensors themselves are strict."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Tensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    """``GET /v2``: who the server is and which protocol extensions it speaks."""

    name: str
    version: str
    extensions: list[str]


class RepositoryModel(BaseModel):
    """One entry of ``POST /v2/repository/index``."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class ErrorBody(BaseModel):
    error: str


class ClassifyResponse(BaseModel):
    """`POST /v1/classify`: the top answer and the runners-up."""

    model_name: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]


@dataclass(frozen=True)
class Encoded:
    """A request ready for the wire: the body and the headers that say how to read it."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class InferInput:
    """One input tensor before it is put on the wire: a numeric array, or BYTES elements (encoded images)."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    values: np.ndarray | tuple[bytes, ...]

    def json_tensor(self) -> dict[str, Any]:
        """This input as a JSON tensor (BYTES elements as base64 text).

        Returns:
            The tensor object, with its data inline.
        """
        if isinstance(self.values, tuple):  # BYTES in JSON: base64 text, as this service and its clients agree
            data: list[Any] = [base64.b64encode(b).decode("ascii") for b in self.values]
        else:
            data = self.values.ravel().tolist()
        return {"name": self.name, "shape": list(self.shape), "datatype": self.datatype, "data": data}

    def binary_tensor(self) -> tuple[dict[str, Any], bytes]:
        """This input for the binary tensor data extension.

        Returns:
            The tensor object (its size in ``parameters.binary_data_size``, no data) and its raw bytes.
        """
        raw = pack_bytes(self.values) if isinstance(self.values, tuple) else numeric_bytes(self.values, self.datatype)
        meta = {"name": self.name, "shape": list(self.shape), "datatype": self.datatype,
                "parameters": {binary.SIZE_PARAM: len(raw)}}
        return meta, raw


@dataclass(frozen=True)
class InferPayload:
    """An infer request before the choice of JSON or binary tensors; ``outputs`` empty asks for every output."""

    inputs: tuple[InferInput, ...]
    outputs: tuple[str, ...] = ()
    request_id: str | None = field(default=None)

    def _header(self) -> dict[str, Any]:
        # no "id": null: the protocol's id is an optional string, and kserve's ModelServer fails (500) on a null
        return {} if self.request_id is None else {"id": self.request_id}

    def json_doc(self) -> dict[str, Any]:
        """The request as a JSON document, every tensor's data inline.

        Returns:
            The document, ready for ``json.dumps``.
        """
        doc: dict[str, Any] = {**self._header(), "inputs": [t.json_tensor() for t in self.inputs]}
        if self.outputs:
            doc["outputs"] = [{"name": o} for o in self.outputs]
        return doc

    def encode(self, binary_data: bool) -> Encoded:
        """The body and headers: plain JSON, or binary inputs asking for binary outputs.

        Args:
            binary_data: send the inputs with the binary tensor data extension (only to a server that lists it).

        Returns:
            The body and its ``Content-Type`` (and ``Inference-Header-Content-Length`` when binary).
        """
        if not binary_data:
            body = json.dumps(self.json_doc(), separators=(",", ":"), allow_nan=False).encode()
            return Encoded(body, {"Content-Type": "application/json"})
        metas, blobs = zip(*(t.binary_tensor() for t in self.inputs), strict=True)
        doc: dict[str, Any] = {**self._header(), "inputs": list(metas)}
        if self.outputs:
            doc["outputs"] = [{"name": o, "parameters": {binary.OUTPUT_PARAM: True}} for o in self.outputs]
        else:
            doc["parameters"] = {binary.REQUEST_OUTPUT_PARAM: True}
        body, n = join_body(doc, blobs)
        return Encoded(body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(n)})


def images_payload(images: Sequence[bytes], request_id: str | None = None,
                   outputs: tuple[str, ...] = ()) -> InferPayload:
    """A request carrying encoded images (PNG/JPEG/...) as a BYTES tensor [N].

    Args:
        images: the encoded files, one per image.
        request_id: the request's ``id``, or None for none.
        outputs: the outputs to ask for; empty asks for every output.

    Returns:
        The request, not yet encoded.
    """
    items = tuple(bytes(b) for b in images)
    return InferPayload((InferInput(INPUT_NAME, "BYTES", (len(items),), items),), outputs, request_id)


def tensor_payload(batch: np.ndarray, request_id: str | None = None,
                   outputs: tuple[str, ...] = ()) -> InferPayload:
    """A request carrying an NHWC UINT8 (raw RGB pixels) or FP32 (preprocessed) tensor.

    Args:
        batch: the images, [N, H, W, C], uint8 or float32.
        request_id: the request's ``id``, or None for none.
        outputs: the outputs to ask for; empty asks for every output.

    Returns:
        The request, not yet encoded.

    Raises:
        ValueError: the batch is neither uint8 nor float32, or not four-dimensional.
    """
    dt: Datatype
    if batch.dtype == np.uint8:
        dt = "UINT8"
    elif batch.dtype == np.float32:
        dt = "FP32"
    else:
        raise ValueError(f"tensor dtype must be uint8 or float32, not {batch.dtype}")
    if batch.ndim != 4:
        raise ValueError(f"tensor must be NHWC, got shape {batch.shape}")
    return InferPayload((InferInput(INPUT_NAME, dt, tuple(batch.shape), batch),), outputs, request_id)


def images_request(images: Sequence[bytes], request_id: str | None = None) -> dict[str, Any]:
    """An infer request (JSON) carrying encoded images (PNG/JPEG/...) as base64 BYTES.

    Args:
        images: the encoded files, one per image.
        request_id: the request's ``id``, or None for none.

    Returns:
        The JSON document.
    """
    return images_payload(images, request_id).json_doc()


def tensor_request(batch: np.ndarray, request_id: str | None = None) -> dict[str, Any]:
    """An infer request (JSON) carrying an NHWC UINT8 (raw RGB pixels) or FP32 (preprocessed) tensor.

    Args:
        batch: the images, [N, H, W, C], uint8 or float32.
        request_id: the request's ``id``, or None for none.

    Returns:
        The JSON document.

    Raises:
        ValueError: the batch is neither uint8 nor float32, or not four-dimensional.
    """
    return tensor_payload(batch, request_id).json_doc()


def read_response(content: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """An infer response body -> (its JSON, the binary data after it).

    Args:
        content: the response body.
        header_length: its ``Inference-Header-Content-Length`` header, or None when it had none.

    Returns:
        The decoded JSON part and a view of the binary data after it.

    Raises:
        ValueError: not JSON, or a header length that does not fit (ProtocolError).
    """
    head, data = split_body(content, header_length)
    return json.loads(head), data


def parse_outputs(body: Any, n: int, num_classes: int,
                  data: bytes | memoryview = b"") -> tuple[np.ndarray, list[str] | None]:
    """Validate an infer response for n images: probabilities [n, C] FP32, labels [n] (optional).

    Args:
        body: the response's JSON part, decoded.
        n: how many images the request carried.
        num_classes: how many classes the model has.
        data: the binary data after the JSON, for outputs that carry ``binary_data_size``.

    Returns:
        The probabilities [n, C] as float32, and the labels when the response has them.

    Raises:
        ValueError: naming what is wrong (a ProtocolError when the binary data does not frame), so a client can
            treat a bad answer as a failure.
    """
    resp = InferResponse.model_validate(body)
    raws = slice_data([(t.name, binary_size(t.parameters, t.name)) for t in resp.outputs], memoryview(data))
    by_name = {t.name: (t, raw) for t, raw in zip(resp.outputs, raws, strict=True)}
    if PROBS_OUTPUT not in by_name:
        raise ValueError(f"response has no '{PROBS_OUTPUT}' output (has: {sorted(by_name)})")
    t, raw = by_name[PROBS_OUTPUT]
    if t.shape != [n, num_classes]:
        raise ValueError(f"'{PROBS_OUTPUT}' has shape {t.shape}, expected [{n}, {num_classes}]")
    probs = _probabilities(t, raw).reshape(n, num_classes)
    if not np.isfinite(probs).all():
        raise ValueError(f"'{PROBS_OUTPUT}' contains NaN or Inf")
    if probs.size and (probs.min() < -1e-3 or probs.max() > 1 + 1e-3 or not np.allclose(probs.sum(1), 1, atol=1e-2)):
        raise ValueError(
            f"'{PROBS_OUTPUT}' rows are not probability distributions (logits from a model without softmax?)"
        )
    labels = None
    if LABEL_OUTPUT in by_name:
        labels = _labels(*by_name[LABEL_OUTPUT], n)
    return probs, labels


def _probabilities(t: Tensor, raw: memoryview | None) -> np.ndarray:
    want = math.prod(t.shape)
    if raw is not None:
        if t.datatype not in ("FP32", "FP64"):
            raise ValueError(f"'{PROBS_OUTPUT}' is {t.datatype} in binary; expected FP32")
        dtype = np.dtype(binary.NUMPY_TYPES[t.datatype])
        if len(raw) != want * dtype.itemsize:
            raise ValueError(f"'{PROBS_OUTPUT}' carries {len(raw)} bytes for shape {t.shape} of {t.datatype}")
        return np.frombuffer(raw, dtype).astype(np.float32)
    if t.data is None:
        raise ValueError(f"'{PROBS_OUTPUT}' has neither data nor {binary.SIZE_PARAM}")
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused by the caller
            probs = np.asarray(t.data, dtype=np.float32)
    except (TypeError, ValueError):  # objects, strings, ragged lists: a bad answer, not a crash
        raise ValueError(f"'{PROBS_OUTPUT}' data is not a flat list of numbers") from None
    if probs.size != want:
        raise ValueError(f"'{PROBS_OUTPUT}' carries {probs.size} values for shape {t.shape}")
    return probs


def _labels(t: Tensor, raw: memoryview | None, n: int) -> list[str]:
    if raw is not None:
        items: list[Any] = [b.decode("utf-8", "replace") for b in binary.unpack_bytes(raw, n)]
    else:
        items = list(t.data or [])
    if t.shape != [n] or len(items) != n:
        raise ValueError(f"'{LABEL_OUTPUT}' has shape {t.shape}, expected [{n}]")
    return [str(x) for x in items]
