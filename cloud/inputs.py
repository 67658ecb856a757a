"""Request bodies -> model tensors. Pure functions, run in the decode thread pool, off the event loop.

Every image goes through ``edge_sdk.preprocess`` (the one preprocessing path).
A body is JSON, or JSON followed by binary tensor data (``edge_sdk.binary``)
when the request has an ``Inference-Header-Content-Length``. Each failure is an
:class:`ApiError` with the status the design lists: 400 for a malformed request
(bad JSON, an unknown datatype, binary sizes that do not frame the body), 413
over a limit, 415 for a format we do not decode, 422 for an image that does not
decode or a tensor whose shape does not match its data or the model.
"""

from __future__ import annotations

import binascii
import math
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge_sdk import binary
from edge_sdk.errors import InvalidImageError, ProtocolError
from edge_sdk.preprocess import ImageLimits, InputSpec, PreprocessSpec, preprocess
from edge_sdk.protocol import INPUT_NAME, LABEL_OUTPUT, PROBS_OUTPUT, InferRequest, RequestedOutput, Tensor

from .errors import ApiError, from_image_error

OUTPUTS = (PROBS_OUTPUT, LABEL_OUTPUT)


@dataclass(frozen=True)
class ModelInput:
    """What a model needs to turn requests into tensors."""

    input: InputSpec
    preprocess: PreprocessSpec
    limits: ImageLimits
    max_images: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.input.height, self.input.width, self.input.channels)


@dataclass(frozen=True)
class ParsedInfer:
    id: str | None
    outputs: tuple[str, ...]
    x: np.ndarray  # float32 [N, H, W, C]
    binary_outputs: frozenset[str] = frozenset()  # the outputs to answer as binary data


def image_tensor(data: bytes, spec: ModelInput) -> np.ndarray:
    """One encoded image (a raw request body) -> float32 [1, H, W, C]."""
    try:
        return preprocess(data, spec.input, spec.preprocess, limits=spec.limits)[None]
    except InvalidImageError as e:
        raise from_image_error(e) from None


def parse_infer(body: bytes, spec: ModelInput, header_length: str | None = None) -> ParsedInfer:
    """A KServe v2 infer request body -> the model's float32 batch and the outputs asked for.

    ``header_length`` is the request's ``Inference-Header-Content-Length``: the body is then that many bytes
    of JSON followed by the binary data of the tensors that give a ``binary_data_size``.
    """
    try:
        head, data = binary.split_body(body, header_length)
    except ProtocolError as e:
        raise ApiError(400, str(e)) from None
    try:
        req = InferRequest.model_validate_json(head)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e, header_length is None)) from None
    outputs, binary_outputs = _requested_outputs(req)
    t = req.inputs[0]
    if t.name != INPUT_NAME:
        raise ApiError(400, f"unknown input {t.name!r}; this model takes one input named {INPUT_NAME!r}")
    if any(d < 0 for d in t.shape):  # malformed whatever the datatype, so checked before any shape rule
        raise ApiError(400, f"shape {t.shape} has a negative dimension")
    raw = _binary_data(req.inputs, data)
    if t.datatype == "BYTES":
        x = _bytes_tensor(t, spec, raw)
    elif t.datatype == "UINT8":
        x = _uint8_tensor(t, spec, raw)
    elif t.datatype == "FP32":
        x = _fp32_tensor(t, spec, raw)
    else:
        raise ApiError(422, f"datatype {t.datatype} is not accepted; send BYTES (encoded images), UINT8 or FP32")
    return ParsedInfer(req.id, outputs, x, binary_outputs)


def _requested_outputs(req: InferRequest) -> tuple[tuple[str, ...], frozenset[str]]:
    """(the outputs to send, those to send as binary data): each output's ``binary_data`` wins over the
    request's ``binary_data_output``."""
    all_binary = _flag(req.parameters, binary.REQUEST_OUTPUT_PARAM, "parameters")
    if not req.outputs:
        return OUTPUTS, frozenset(OUTPUTS if all_binary else ())
    unknown = [o.name for o in req.outputs if o.name not in OUTPUTS]
    if unknown:
        raise ApiError(400, f"unknown output(s) {unknown}; this model gives {list(OUTPUTS)}")
    return tuple(dict.fromkeys(o.name for o in req.outputs)), frozenset(
        o.name for o in req.outputs if _output_binary(o, all_binary))


def _output_binary(o: RequestedOutput, default: bool) -> bool:
    if o.parameters and "classification" in o.parameters:
        raise ApiError(400, f"output {o.name!r}: the classification extension is not supported; "
                            f"read '{LABEL_OUTPUT}' and '{PROBS_OUTPUT}' instead")
    if o.parameters and binary.OUTPUT_PARAM in o.parameters:
        return _flag(o.parameters, binary.OUTPUT_PARAM, f"output {o.name!r} parameters")
    return default


def _flag(parameters: dict[str, Any] | None, key: str, where: str) -> bool:
    value = (parameters or {}).get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{where}.{key} must be true or false, not {value!r}")
    return value


def _binary_data(inputs: Sequence[Tensor], data: memoryview) -> memoryview | None:
    """The first input's binary data (None when its data is in the JSON); every input must frame."""
    try:
        sizes = [(t.name, binary.binary_size(t.parameters, t.name)) for t in inputs]
        raws = binary.slice_data(sizes, data)
    except ProtocolError as e:
        raise ApiError(400, str(e)) from None
    for t, raw in zip(inputs, raws, strict=True):
        if raw is not None and t.data is not None:
            raise ApiError(400, f"input {t.name!r} has both data and parameters.{binary.SIZE_PARAM}; send one")
        if raw is None and t.data is None:
            raise ApiError(400, f"input {t.name!r} has no data: give data, or parameters.{binary.SIZE_PARAM} "
                                f"and an Inference-Header-Content-Length")
    return raws[0]


def _count(t: Tensor, spec: ModelInput) -> int:
    if any(d < 0 for d in t.shape):
        raise ApiError(400, f"shape {t.shape} has a negative dimension")
    n = t.shape[0]
    if n < 1:
        raise ApiError(422, "the batch is empty: shape[0] must be at least 1")
    if n > spec.max_images:
        raise ApiError(413, f"{n} images in one request, over the limit of {spec.max_images}")
    return n


def _bytes_tensor(t: Tensor, spec: ModelInput, raw: memoryview | None) -> np.ndarray:
    """Encoded images: base64 strings in JSON, the files' own bytes in binary."""
    if len(t.shape) != 1:
        raise ApiError(422, f"a BYTES input must have shape [N] (one encoded image each), not {t.shape}")
    n = _count(t, spec)
    if raw is None:
        items: list[Any] = list(t.data or [])
    else:
        try:
            items = binary.unpack_bytes(raw, n)
        except ProtocolError as e:
            raise ApiError(400, str(e)) from None
    if len(items) != n:
        held = f"more than {n}" if raw is not None and len(items) > n else str(len(items))
        raise ApiError(422, f"shape {t.shape} says {n} image(s) but data holds {held}")
    out = np.empty((n,) + spec.shape, np.float32)
    for i, item in enumerate(items):
        encoded = item if raw is not None else _from_base64(item, i)
        try:
            out[i] = preprocess(encoded, spec.input, spec.preprocess, limits=spec.limits)
        except InvalidImageError as e:
            raise from_image_error(InvalidImageError(f"image {i}: {e}", e.kind)) from None
    return out


def _from_base64(s: Any, i: int) -> bytes:
    if not isinstance(s, str):
        raise ApiError(400, f"image {i}: BYTES elements must be base64 strings, not {type(s).__name__}")
    try:
        return b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image {i}: not valid base64") from None


def _numeric(t: Tensor, kinds: str, what: str, raw: memoryview | None) -> np.ndarray:
    """The data as an array of ``t.shape``: from binary data, or from nested (row-major) or flat JSON lists."""
    expected = math.prod(t.shape)
    if raw is not None:
        dtype = np.dtype(binary.NUMPY_TYPES[t.datatype])
        if len(raw) != expected * dtype.itemsize:
            raise ApiError(422, f"shape {t.shape} needs {expected} {t.datatype} values ({expected * dtype.itemsize} "
                                f"bytes) but {binary.SIZE_PARAM} is {len(raw)}")
        return np.frombuffer(raw, dtype).reshape(t.shape)
    try:
        arr = np.asarray(t.data)
    except (ValueError, TypeError):
        raise ApiError(422, f"{t.datatype} data is ragged or not numeric") from None
    if arr.dtype.kind not in kinds:
        raise ApiError(422, f"{t.datatype} data must be {what}")
    if arr.size != expected:
        raise ApiError(422, f"shape {t.shape} needs {expected} values but data holds {arr.size}")
    return arr.reshape(t.shape)


def _uint8_tensor(t: Tensor, spec: ModelInput, raw: memoryview | None) -> np.ndarray:
    if len(t.shape) != 4 or t.shape[3] not in (1, 3, 4):
        raise ApiError(422, f"a UINT8 input must be NHWC RGB pixels [N, H, W, 1|3|4], not {t.shape}")
    n = _count(t, spec)
    h, w = t.shape[1], t.shape[2]
    if h < 1 or w < 1:
        raise ApiError(422, f"shape {t.shape} has no pixels")
    if h * w > spec.limits.max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {spec.limits.max_pixels}")
    arr = _numeric(t, "iu", "integers 0..255", raw)
    if raw is None and arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ApiError(422, "UINT8 values must be in 0..255")
    arr = arr.astype(np.uint8, copy=False)
    out = np.empty((n,) + spec.shape, np.float32)
    for i in range(n):
        try:
            out[i] = preprocess(arr[i], spec.input, spec.preprocess, color="rgb", limits=spec.limits)
        except InvalidImageError as e:
            raise from_image_error(InvalidImageError(f"image {i}: {e}", e.kind)) from None
    return out


def _fp32_tensor(t: Tensor, spec: ModelInput, raw: memoryview | None) -> np.ndarray:
    want = list(spec.shape)
    if len(t.shape) != 4 or t.shape[1:] != want:
        shape = ", ".join(map(str, want))
        raise ApiError(422, f"an FP32 input must be preprocessed to the model's shape [N, {shape}], not {t.shape}")
    _count(t, spec)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        arr = _numeric(t, "iuf", "numbers", raw).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ApiError(422, "FP32 data contains NaN or Inf (or a value out of float32 range)")
    return arr


def _validation_message(e: ValidationError, whole_body: bool) -> str:
    first = e.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        hint = (" (binary tensor data needs an Inference-Header-Content-Length header giving the JSON's length)"
                if whole_body else "")
        return f"request body is not valid JSON: {first['msg']}{hint}"
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"malformed infer request at '{where}': {first['msg']}"
