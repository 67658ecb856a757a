"""What the SDK sends to the cloud for an image, by the ``upload=`` option.

* ``jpeg``: the image resized to the model's input (edge_sdk.preprocess.resize),
  JPEG-encoded: smallest, and the server resizes nothing.
* ``original``: the bytes the caller gave (a file's or an encoded buffer's);
  arrays are PNG-encoded, losslessly. Largest, but the cloud sees everything.
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
from .preprocess import ImageInput, cv2, encode_jpeg, encode_png
from .protocol import PROBS_OUTPUT, InferPayload, images_payload, tensor_payload

Upload = Literal["jpeg", "original", "tensor"]
UPLOADS: tuple[str, ...] = get_args(Upload)


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
        upload: jpeg, original or tensor.
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
    if upload == "original":
        return images_payload([original_bytes(s) for s in items], outputs=ASKED)
    raise ValueError(f"unknown upload {upload!r}; choose from {', '.join(UPLOADS)}")


def original_bytes(s: Staged) -> bytes:
    """The caller's own encoded bytes when there are any; else a lossless PNG of the decoded pixels.

    Args:
        s: the staged image.

    Returns:
        The encoded file to upload.

    Raises:
        InvalidImageError: the image came from a file that can no longer be read.
    """
    src = s.source
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str, os.PathLike)):
        try:
            return Path(src).read_bytes()
        except OSError as e:  # it was readable a moment ago when it was decoded
            raise InvalidImageError(f"{src}: cannot re-read for upload ({e.strerror or e})") from None
    return encode_png(s.rgb)
