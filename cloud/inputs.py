"""Request bodies -> model tensors. Pure functions, run in the decode thread pool, off the event loop.

Every image goes through ``edge_sdk.preprocess`` (the one preprocessing path).
Each failure is an :class:`ApiError` with the status the design lists: 400 for
a malformed request, 413 over a limit, 415 for a format we do not decode, 422
for an image that does not decode or a tensor of the wrong shape or values.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from edge_sdk.errors import InvalidImageError
from edge_sdk.imageinfo import read_info
from edge_sdk.preprocess import ImageLimits, InputSpec, PreprocessSpec, preprocess
from edge_sdk.protocol import INPUT_NAME, LABEL_OUTPUT, PROBS_OUTPUT, InferRequest, Tensor

from .errors import ApiError, from_image_error

OUTPUTS = (PROBS_OUTPUT, LABEL_OUTPUT)


@dataclass(frozen=True)
class ModelInput:
    """What a model needs to turn requests into tensors."""

    input: InputSpec
    preprocess: PreprocessSpec
    limits: ImageLimits
    max_images: int
    outputs: tuple[str, ...] = OUTPUTS  # the outputs v2 infer may ask for (a detector has its own)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.input.height, self.input.width, self.input.channels)


@dataclass(frozen=True)
class ParsedInfer:
    id: str | None
    outputs: tuple[str, ...]
    x: np.ndarray  # float32 [N, H, W, C]
    sizes: tuple[tuple[int, int], ...] = ()  # (height, width) of each image as sent


def image_tensor(data: bytes, spec: ModelInput) -> np.ndarray:
    """One encoded image (a raw request body) -> float32 [1, H, W, C]."""
    try:
        return preprocess(data, spec.input, spec.preprocess, limits=spec.limits)[None]
    except InvalidImageError as e:
        raise from_image_error(e) from None


def parse_infer(body: bytes, spec: ModelInput) -> ParsedInfer:
    """A KServe v2 infer request body -> the model's float32 batch and the outputs asked for."""
    try:
        req = InferRequest.model_validate_json(body)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e)) from None
    outputs = spec.outputs
    if req.outputs:
        asked = [o.name for o in req.outputs]
        unknown = [n for n in asked if n not in spec.outputs]
        if unknown:
            raise ApiError(400, f"unknown output(s) {unknown}; this model gives {list(spec.outputs)}")
        outputs = tuple(dict.fromkeys(asked))
    t = req.inputs[0]
    if t.name != INPUT_NAME:
        raise ApiError(400, f"unknown input {t.name!r}; this model takes one input named {INPUT_NAME!r}")
    if any(d < 0 for d in t.shape):  # malformed whatever the datatype, so checked before any shape rule
        raise ApiError(400, f"shape {t.shape} has a negative dimension")
    if t.datatype == "BYTES":
        x = _bytes_tensor(t, spec)
    elif t.datatype == "UINT8":
        x = _uint8_tensor(t, spec)
    elif t.datatype == "FP32":
        x = _fp32_tensor(t, spec)
    else:
        raise ApiError(422, f"datatype {t.datatype} is not accepted; send BYTES (encoded images), UINT8 or FP32")
    return ParsedInfer(req.id, outputs, x, _sizes(t, spec) if spec.outputs != OUTPUTS else ())


def _sizes(t: Tensor, spec: ModelInput) -> tuple[tuple[int, int], ...]:
    """(height, width) of each image as sent: from an encoded image's header, a UINT8 tensor's shape, or the
    model's input for preprocessed FP32 (only called once the data parsed, so the header reads cleanly)."""
    if t.datatype == "BYTES":
        infos = (read_info(b64decode(s)) for s in t.data)
        return tuple((int(i.height or 0), int(i.width or 0)) for i in infos)
    if t.datatype == "UINT8":
        return ((t.shape[1], t.shape[2]),) * t.shape[0]
    return ((spec.input.height, spec.input.width),) * t.shape[0]


def _count(t: Tensor, spec: ModelInput) -> int:
    if any(d < 0 for d in t.shape):
        raise ApiError(400, f"shape {t.shape} has a negative dimension")
    n = t.shape[0]
    if n < 1:
        raise ApiError(422, "the batch is empty: shape[0] must be at least 1")
    if n > spec.max_images:
        raise ApiError(413, f"{n} images in one request, over the limit of {spec.max_images}")
    return n


def _bytes_tensor(t: Tensor, spec: ModelInput) -> np.ndarray:
    if len(t.shape) != 1:
        raise ApiError(422, f"a BYTES input must have shape [N] (one encoded image each), not {t.shape}")
    n = _count(t, spec)
    if len(t.data) != n:
        raise ApiError(422, f"shape {t.shape} says {n} image(s) but data holds {len(t.data)}")
    out = np.empty((n,) + spec.shape, np.float32)
    for i, s in enumerate(t.data):
        if not isinstance(s, str):
            raise ApiError(400, f"image {i}: BYTES elements must be base64 strings, not {type(s).__name__}")
        try:
            raw = b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"image {i}: not valid base64") from None
        try:
            out[i] = preprocess(raw, spec.input, spec.preprocess, limits=spec.limits)
        except InvalidImageError as e:
            raise from_image_error(InvalidImageError(f"image {i}: {e}", e.kind)) from None
    return out


def _numeric(t: Tensor, kinds: str, what: str) -> np.ndarray:
    """The data as a flat numpy array; nested (row-major) or flat lists are both accepted."""
    try:
        arr = np.asarray(t.data)
    except (ValueError, TypeError):
        raise ApiError(422, f"{t.datatype} data is ragged or not numeric") from None
    if arr.dtype.kind not in kinds:
        raise ApiError(422, f"{t.datatype} data must be {what}")
    expected = int(np.prod(t.shape))
    if arr.size != expected:
        raise ApiError(422, f"shape {t.shape} needs {expected} values but data holds {arr.size}")
    return arr.reshape(t.shape)


def _uint8_tensor(t: Tensor, spec: ModelInput) -> np.ndarray:
    if len(t.shape) != 4 or t.shape[3] not in (1, 3, 4):
        raise ApiError(422, f"a UINT8 input must be NHWC RGB pixels [N, H, W, 1|3|4], not {t.shape}")
    n = _count(t, spec)
    h, w = t.shape[1], t.shape[2]
    if h < 1 or w < 1:
        raise ApiError(422, f"shape {t.shape} has no pixels")
    if h * w > spec.limits.max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {spec.limits.max_pixels}")
    arr = _numeric(t, "iu", "integers 0..255")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ApiError(422, "UINT8 values must be in 0..255")
    arr = arr.astype(np.uint8)
    out = np.empty((n,) + spec.shape, np.float32)
    for i in range(n):
        try:
            out[i] = preprocess(arr[i], spec.input, spec.preprocess, color="rgb", limits=spec.limits)
        except InvalidImageError as e:
            raise from_image_error(InvalidImageError(f"image {i}: {e}", e.kind)) from None
    return out


def _fp32_tensor(t: Tensor, spec: ModelInput) -> np.ndarray:
    want = list(spec.shape)
    if len(t.shape) != 4 or t.shape[1:] != want:
        raise ApiError(422, f"an FP32 input must be preprocessed to the model's shape [N, {', '.join(map(str, want))}], "
                            f"not {t.shape}")
    _count(t, spec)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        arr = _numeric(t, "iuf", "numbers").astype(np.float32)
    if not np.isfinite(arr).all():
        raise ApiError(422, "FP32 data contains NaN or Inf (or a value out of float32 range)")
    return arr


def _validation_message(e: ValidationError) -> str:
    first = e.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return f"request body is not valid JSON: {first['msg']}"
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"malformed infer request at '{where}': {first['msg']}"
