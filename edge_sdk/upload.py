"""What the SDK sends to the cloud for an image, by the ``upload=`` option.

* ``auto`` (the default): the caller's own encoded bytes when they are small for
  the model's input (no larger than :func:`original_budget`: then they cost no
  more than a lossless copy and the cloud sees exactly what the caller gave);
  otherwise the image resized to the model's input, losslessly as WebP when the
  input is small (at most :data:`LOSSLESS_MAX_PIXELS` pixels, where JPEG saves
  little and costs accuracy), else as JPEG at :data:`AUTO_JPEG_QUALITY`.
* ``lossless``: the resized image as lossless WebP: the cloud sees the edge's pixels.
* ``jpeg``: the resized image as JPEG (quality 90). A second lossy generation for
  an image that already was a JPEG: on 32x32 CIFAR photos it is larger than the
  original file and cost the cloud about 0.8 points (benchmarks/photo_bench.py).
* ``original``: the bytes the caller gave (a file's or an encoded buffer's);
  arrays are PNG-encoded, losslessly. Largest for big photos, but the cloud sees everything.
* ``tensor``: the resized pixels as a UINT8 NHWC tensor (RGB, or grey for a
  1-channel model): no codec on either side.

Each is an :class:`~edge_sdk.protocol.InferPayload`; the client puts it on the
wire as binary tensor data (raw pixels, raw image bytes) where the server says
it speaks the extension, else as JSON (numbers, base64).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from .errors import InvalidImageError
from .preprocess import ImageInput, cv2, encode_jpeg, encode_png, encode_webp_lossless
from .protocol import PROBS_OUTPUT, InferPayload, images_payload, tensor_payload

Upload = Literal["auto", "lossless", "jpeg", "original", "tensor"]
UPLOADS: tuple[str, ...] = get_args(Upload)
LOSSLESS_MAX_PIXELS = 128 * 128
AUTO_JPEG_QUALITY = 95


@dataclass
class Staged:
    """One image after decoding: what the edge needs (``resized``) and what an upload may need."""

    source: ImageInput
    rgb: np.ndarray      # full-size RGB uint8
    resized: np.ndarray  # model-size RGB uint8


def check_upload(upload: str) -> Upload:
    """``upload`` if it is one of :data:`UPLOADS`; else a ValueError naming the choices.

    Args:
        upload: the upload option as given.

    Returns:
        The same value, typed as :data:`Upload`.

    Raises:
        ValueError: ``upload`` is not one of :data:`UPLOADS`.
    """
    if upload not in UPLOADS:
        raise ValueError(f"unknown upload {upload!r}; choose from {', '.join(UPLOADS)}")
    return upload  # type: ignore[return-value]


ASKED = (PROBS_OUTPUT,)  # all the SDK reads; a server need not send (or even have) the label output


def build_request(items: Sequence[Staged], upload: str, channels: int = 3, jpeg_quality: int = 90) -> InferPayload:
    """The KServe v2 infer request carrying ``items`` as ``upload`` says, asking for the probabilities.

    For a 1-channel model a tensor upload carries grey pixels (a third of the
    bytes): the server's preprocessing turns them back into exactly the grey
    values it would have computed from RGB.

    Args:
        items: the staged images of one request.
        upload: one of :data:`UPLOADS` (auto, lossless, jpeg, original, tensor).
        channels: the model's input channels (1: a tensor upload carries grey pixels).
        jpeg_quality: the JPEG quality of a jpeg upload.

    Returns:
        The request, not yet encoded as JSON or binary.

    Raises:
        ValueError: an unknown ``upload``.
        InvalidImageError: an original upload whose file can no longer be read.
    """
    if upload == "tensor":
        if channels == 1:
            grey = np.stack([cv2.cvtColor(s.resized, cv2.COLOR_RGB2GRAY)[..., None] for s in items])
            return tensor_payload(grey, outputs=ASKED)
        return tensor_payload(np.stack([s.resized for s in items]), outputs=ASKED)
    if upload == "jpeg":
        return images_payload([encode_jpeg(s.resized, jpeg_quality) for s in items], outputs=ASKED)
    if upload == "lossless":
        return images_payload([encode_webp_lossless(s.resized) for s in items], outputs=ASKED)
    if upload == "original":
        return images_payload([original_bytes(s) for s in items], outputs=ASKED)
    if upload == "auto":
        return images_payload([auto_bytes(s, channels) for s in items], outputs=ASKED)
    raise ValueError(f"unknown upload {upload!r}; choose from {', '.join(UPLOADS)}")


def original_budget(resized: np.ndarray, channels: int) -> int:
    """Bytes under which the caller's file is sent as it is.

    Half a byte per model input value, about what lossless WebP takes for a photo at the model's size
    (1,538 bytes at 32x32 on CIFAR, whose files are ~920).

    Args:
        resized: the image at the model's input size.
        channels: the model's input channels.

    Returns:
        The byte budget.
    """
    h, w = resized.shape[:2]
    return int(h * w * channels // 2)


def auto_bytes(s: Staged, channels: int = 3) -> bytes:
    """What ``upload="auto"`` sends for one image (see the module docstring).

    Args:
        s: the staged image.
        channels: the model's input channels.

    Returns:
        The encoded file to upload.

    Raises:
        InvalidImageError: the image came from a file that can no longer be read.
    """
    budget = original_budget(s.resized, channels)
    src = s.source
    big_file = isinstance(src, (str, os.PathLike)) and _file_size(src) > budget  # not read again just to drop it
    own = None if big_file else _own_bytes(src)
    if own is not None and len(own) <= budget:
        return own
    h, w = s.resized.shape[:2]
    if h * w <= LOSSLESS_MAX_PIXELS:
        return encode_webp_lossless(s.resized)
    return encode_jpeg(s.resized, AUTO_JPEG_QUALITY)


def _file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise InvalidImageError(f"{path}: cannot re-read for upload ({e.strerror or e})") from None


def _own_bytes(src: ImageInput) -> bytes | None:
    """The caller's encoded bytes (a buffer, or a file's content), or None for an array."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str, os.PathLike)):
        try:
            return Path(src).read_bytes()
        except OSError as e:  # it was readable a moment ago when it was decoded
            raise InvalidImageError(f"{src}: cannot re-read for upload ({e.strerror or e})") from None
    return None


def original_bytes(s: Staged) -> bytes:
    """The caller's own encoded bytes when there are any; else a lossless PNG of the decoded pixels.

    Args:
        s: the staged image.

    Returns:
        The encoded file to upload.

    Raises:
        InvalidImageError: the image came from a file that can no longer be read.
    """
    own = _own_bytes(s.source)
    return own if own is not None else encode_png(s.rgb)
