"""The one path from an input (path, bytes or array) to a model tensor.

Training, quantization, the cloud service and the edge SDK all call
:func:`preprocess`, so one image gives the same pixels everywhere. Order:
decode with OpenCV -> RGB uint8 -> resize as the manifest says -> grey if the
model wants one channel -> scale/normalise to float32 -> optionally quantize to
the edge model's integer input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidImageError
from .imageinfo import read_info

# OpenCV's own guard is 2^30 pixels; ours is checked from the header, before it.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))
import cv2 as cv2  # noqa: E402  (re-exported: importing it from here sets the pixel limit first)

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray
DECODABLE = ("png", "jpeg", "bmp", "webp")


class InputSpec(BaseModel):
    """Shape and colour of the model's input tensor (NHWC without N)."""

    model_config = ConfigDict(extra="forbid")
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 3
    color: Literal["RGB", "GRAY"] = "RGB"

    @field_validator("color")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()


class PreprocessSpec(BaseModel):
    """x = (pixel * scale - mean) / std, per channel, after resizing."""

    model_config = ConfigDict(extra="forbid")
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class QuantParams(BaseModel):
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""

    model_config = ConfigDict(extra="forbid")
    scale: float = Field(gt=0)
    zero_point: int
    dtype: Literal["int8", "uint8"] = "int8"


@dataclass(frozen=True)
class ImageLimits:
    """Refuse inputs over these before decoding them in full."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


DEFAULT_LIMITS = ImageLimits()


def load_image(src: ImageInput, *, color: str = "bgr", limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode or convert any accepted input.

    Args:
        src: a path, encoded bytes (PNG, JPEG, BMP, WebP), or a uint8 array (HxW, HxWx1, HxWx3, HxWx4).
        color: how to read a 3/4-channel array: bgr (OpenCV's order) or rgb.
        limits: inputs over these are refused before they are decoded.

    Returns:
        HxWx3 uint8 RGB.

    Raises:
        InvalidImageError: not an image this SDK accepts (``kind`` says why).
    """
    if isinstance(src, np.ndarray):
        return _from_array(src, color, limits)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(src), limits)
    if isinstance(src, (str, os.PathLike)):
        return decode_bytes(_read_file(Path(src), limits), limits)
    raise InvalidImageError(
        f"unsupported input type {type(src).__name__}: expected a path, encoded bytes or a numpy uint8 array"
    )


def decode_bytes(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an encoded image, refusing oversize ones from their header.

    Args:
        data: PNG, JPEG, BMP or WebP bytes.
        limits: the byte and pixel limits.

    Returns:
        HxWx3 uint8 RGB.

    Raises:
        InvalidImageError: empty, over a limit, an unsupported format, truncated or undecodable.
    """
    if not data:
        raise InvalidImageError("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(
            f"encoded image is {len(data)} bytes, over the limit of {limits.max_bytes}", "too_large"
        )
    info = read_info(data)
    if info.format not in DECODABLE:
        what = "not a recognised image format" if info.format == "unknown" else f"format {info.format} is not supported"
        raise InvalidImageError(f"{what}; send PNG, JPEG, BMP or WebP", "unsupported")
    if info.width is None or info.height is None:
        raise InvalidImageError(f"{info.format} header is unreadable or truncated")
    _check_pixels(info.width, info.height, limits)
    if info.format == "jpeg" and not _jpeg_complete(data):
        raise InvalidImageError("JPEG is truncated: no end-of-image marker after the scan data")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise InvalidImageError(f"could not decode the {info.format} data (corrupt or truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(rgb: np.ndarray, height: int, width: int, mode: str = "stretch") -> np.ndarray:
    """Resize to the model's input.

    Args:
        rgb: an HxWxC image.
        height: the target height.
        width: the target width.
        mode: stretch, letterbox (pad with 0) or center_crop.

    Returns:
        The image at (height, width); ``rgb`` itself when it already is.

    Raises:
        ValueError: an unknown mode.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    if mode == "stretch":
        return _cv_resize(rgb, height, width)
    if mode == "letterbox":
        s = min(height / h, width / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        out = np.zeros((height, width) + rgb.shape[2:], rgb.dtype)
        top, left = (height - nh) // 2, (width - nw) // 2
        out[top : top + nh, left : left + nw] = _cv_resize(rgb, nh, nw)
        return out
    if mode == "center_crop":
        s = max(height / h, width / w)
        nh, nw = max(height, round(h * s)), max(width, round(w * s))
        big = _cv_resize(rgb, nh, nw)
        top, left = (nh - height) // 2, (nw - width) // 2
        return big[top : top + height, left : left + width]
    raise ValueError(f"unknown resize mode {mode!r}")


def normalize(rgb: np.ndarray, inp: InputSpec, pp: PreprocessSpec) -> np.ndarray:
    """Scale and normalise resized pixels.

    Args:
        rgb: HxWx3 uint8 RGB at the model's size.
        inp: the model's input (1 channel: converted to grey first).
        pp: scale, mean and std.

    Returns:
        float32 HxWxC as the model expects.
    """
    img = rgb
    if inp.channels == 1:
        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    x: np.ndarray = img.astype(np.float32) * np.float32(pp.scale)
    mean = np.asarray(pp.mean, np.float32)
    std = np.asarray(pp.std, np.float32)
    if mean.any():
        x -= mean
    if (std != 1).any():
        x /= std
    return x


def quantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """Quantize a float input.

    Args:
        x: float32 from :func:`normalize`.
        q: the edge model's input quantization.

    Returns:
        The model's int8/uint8 input (rounded, clipped).
    """
    info = np.iinfo(q.dtype)
    v = np.rint(x / np.float32(q.scale)) + q.zero_point
    out: np.ndarray = np.clip(v, info.min, info.max).astype(q.dtype)
    return out


def dequantize(v: np.ndarray, q: QuantParams) -> np.ndarray:
    """Dequantize an output.

    Args:
        v: the edge model's int8/uint8 output.
        q: its quantization.

    Returns:
        float32 values.
    """
    out: np.ndarray = (v.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)
    return out


def preprocess(
    src: ImageInput,
    inp: InputSpec,
    pp: PreprocessSpec,
    *,
    color: str = "bgr",
    quant: QuantParams | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """The one preprocessing path: decode, resize, normalise (and quantize).

    Args:
        src: as for :func:`load_image`.
        inp: the model's input.
        pp: its preprocessing.
        color: as for :func:`load_image`.
        quant: quantize with these parameters (None: float32).
        limits: as for :func:`load_image`.

    Returns:
        The HxWxC model tensor.

    Raises:
        InvalidImageError: as for :func:`load_image`.
    """
    rgb = load_image(src, color=color, limits=limits)
    x = normalize(resize(rgb, inp.height, inp.width, pp.resize), inp, pp)
    return quantize(x, quant) if quant is not None else x


def preprocess_batch(srcs: Sequence[ImageInput], inp: InputSpec, pp: PreprocessSpec, **kw: Any) -> np.ndarray:
    """:func:`preprocess` for several inputs.

    Args:
        srcs: the inputs.
        inp: the model's input.
        pp: its preprocessing.
        **kw: :func:`preprocess`'s keyword arguments.

    Returns:
        NxHxWxC.

    Raises:
        InvalidImageError: the first bad input (the message names its index), or no inputs.
    """
    out = []
    for i, s in enumerate(srcs):
        try:
            out.append(preprocess(s, inp, pp, **kw))
        except InvalidImageError as e:
            raise InvalidImageError(f"image {i}: {e}", e.kind) from e
    if not out:
        raise InvalidImageError("empty batch: no images given")
    return np.stack(out)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode losslessly, the inverse of :func:`decode_bytes`.

    Args:
        rgb: HxWx3 uint8 RGB.

    Returns:
        PNG bytes.

    Raises:
        InvalidImageError: OpenCV could not encode it.
    """
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidImageError("could not encode PNG")
    return buf.tobytes()


def encode_webp_lossless(rgb: np.ndarray) -> bytes:
    """Encode losslessly as WebP: the same pixels back, about 40% smaller than PNG on photos.

    Args:
        rgb: HxWx3 uint8 RGB.

    Returns:
        The WebP file's bytes.

    Raises:
        InvalidImageError: OpenCV could not encode it.
    """
    ok, buf = cv2.imencode(".webp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
    if not ok:
        raise InvalidImageError("could not encode WebP")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode as JPEG.

    Args:
        rgb: HxWx3 uint8 RGB.
        quality: 0-100.

    Returns:
        JPEG bytes.

    Raises:
        InvalidImageError: OpenCV could not encode it.
    """
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidImageError("could not encode JPEG")
    return buf.tobytes()


# --- helpers -----------------------------------------------------------------


def _read_file(path: Path, limits: ImageLimits) -> bytes:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise InvalidImageError(f"{path}: {size} bytes, over the limit of {limits.max_bytes}", "too_large")
        if not path.is_file():
            raise InvalidImageError(f"{path}: not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidImageError(f"{path}: no such file") from None
    except PermissionError:
        raise InvalidImageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise InvalidImageError(f"{path}: is a directory") from None


def _from_array(a: np.ndarray, color: str, limits: ImageLimits) -> np.ndarray:
    color = color.lower()
    if color not in ("bgr", "rgb"):
        raise InvalidImageError(f"color must be 'bgr' or 'rgb', not {color!r}")
    if a.dtype != np.uint8:
        raise InvalidImageError(f"array dtype is {a.dtype}; expected uint8 pixels (0..255)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InvalidImageError(f"array shape {a.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidImageError(f"array shape {a.shape} has no pixels")
    _check_pixels(a.shape[1], a.shape[0], limits)
    a = np.ascontiguousarray(a)
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB) if color == "bgr" else a


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image declares {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}", "too_large"
        )


def _jpeg_complete(data: bytes) -> bool:
    sos = data.rfind(b"\xff\xda")
    return sos != -1 and data.find(b"\xff\xd9", sos) != -1


def _cv_resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    shrink = height <= img.shape[0] and width <= img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
