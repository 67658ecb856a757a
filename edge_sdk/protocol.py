"""KServe v2 / Open Inference Protocol messages (HTTP/JSON), shared by the service and the SDK.

Images travel as BYTES tensors whose elements are base64 strings of the encoded
file; pixel tensors travel as UINT8 (raw RGB pixels, any size) or FP32 (already
preprocessed, exactly the model's input shape), NHWC, data flattened row-major.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BYTES"]

INPUT_NAME = "image"
PROBS_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"


class Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class ErrorBody(BaseModel):
    error: str


class ClassifyResponse(BaseModel):
    """`POST /v1/classify`: the top answer and the runners-up."""

    model_name: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]


def images_request(images: Sequence[bytes], request_id: str | None = None) -> dict[str, Any]:
    """An infer request carrying encoded images (PNG/JPEG/...) as base64 BYTES."""
    return {
        "id": request_id,
        "inputs": [{
            "name": INPUT_NAME, "shape": [len(images)], "datatype": "BYTES",
            "data": [base64.b64encode(b).decode("ascii") for b in images],
        }],
    }


def tensor_request(batch: np.ndarray, request_id: str | None = None) -> dict[str, Any]:
    """An infer request carrying an NHWC UINT8 (raw RGB pixels) or FP32 (preprocessed) tensor."""
    if batch.dtype == np.uint8:
        dt = "UINT8"
    elif batch.dtype == np.float32:
        dt = "FP32"
    else:
        raise ValueError(f"tensor dtype must be uint8 or float32, not {batch.dtype}")
    if batch.ndim != 4:
        raise ValueError(f"tensor must be NHWC, got shape {batch.shape}")
    return {
        "id": request_id,
        "inputs": [{"name": INPUT_NAME, "shape": list(batch.shape), "datatype": dt, "data": batch.ravel().tolist()}],
    }


def parse_outputs(body: Any, n: int, num_classes: int) -> tuple[np.ndarray, list[str] | None]:
    """Validate an infer response for n images: probabilities [n, C] FP32, labels [n] (optional).

    Raises ValueError naming what is wrong, so a client can treat a bad answer as a failure.
    """
    resp = InferResponse.model_validate(body)
    by_name = {t.name: t for t in resp.outputs}
    if PROBS_OUTPUT not in by_name:
        raise ValueError(f"response has no '{PROBS_OUTPUT}' output (has: {sorted(by_name)})")
    t = by_name[PROBS_OUTPUT]
    if t.shape != [n, num_classes]:
        raise ValueError(f"'{PROBS_OUTPUT}' has shape {t.shape}, expected [{n}, {num_classes}]")
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
            probs = np.asarray(t.data, dtype=np.float32)
    except (TypeError, ValueError):  # objects, strings, ragged lists: a bad answer, not a crash
        raise ValueError(f"'{PROBS_OUTPUT}' data is not a flat list of numbers") from None
    if probs.size != n * num_classes:
        raise ValueError(f"'{PROBS_OUTPUT}' carries {probs.size} values for shape {t.shape}")
    probs = probs.reshape(n, num_classes)
    if not np.isfinite(probs).all():
        raise ValueError(f"'{PROBS_OUTPUT}' contains NaN or Inf")
    if probs.size and (probs.min() < -1e-3 or probs.max() > 1 + 1e-3 or not np.allclose(probs.sum(1), 1, atol=1e-2)):
        raise ValueError(
            f"'{PROBS_OUTPUT}' rows are not probability distributions (logits from a model without softmax?)"
        )
    labels = None
    if LABEL_OUTPUT in by_name:
        lt = by_name[LABEL_OUTPUT]
        if lt.shape != [n] or len(lt.data) != n:
            raise ValueError(f"'{LABEL_OUTPUT}' has shape {lt.shape}, expected [{n}]")
        labels = [str(x) for x in lt.data]
    return probs, labels
