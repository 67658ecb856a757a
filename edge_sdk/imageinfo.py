"""Read an encoded image's format and size from its header, before any decode.

This is what lets us refuse a small PNG that declares 30000x30000 pixels without
allocating gigabytes: OpenCV would only tell us after trying.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png", "jpeg", "bmp", "webp", "gif", "tiff" or "unknown"
    width: int | None = None
    height: int | None = None


def sniff_format(data: bytes) -> str:
    """Args:
        data: the start of an encoded image.

    Returns:
        png, jpeg, bmp, webp, gif, tiff or unknown, from the magic bytes.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return "unknown"


def read_info(data: bytes) -> ImageInfo:
    """Read an encoded image's header.

    Args:
        data: the encoded image.

    Returns:
        Its format and declared size (width/height None when the header is unreadable).
    """
    fmt = sniff_format(data)
    try:
        size = _SIZE_READERS[fmt](data) if fmt in _SIZE_READERS else None
    except (struct.error, IndexError, ValueError):
        size = None
    if size is None:
        return ImageInfo(fmt)
    return ImageInfo(fmt, int(size[0]), int(size[1]))


def _png(d: bytes) -> tuple[int, int] | None:
    if d[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", d[16:24])
    return int(w), int(h)


def _jpeg(d: bytes) -> tuple[int, int] | None:
    i, n = 2, len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            return None
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = int(struct.unpack(">H", d[i + 2 : i + 4])[0])
        # Start-of-frame markers carry the size; C4, C8 and CC are not frames.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", d[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + seg_len
    return None


def _bmp(d: bytes) -> tuple[int, int] | None:
    w, h = struct.unpack("<ii", d[18:26])
    return abs(int(w)), abs(int(h))


def _webp(d: bytes) -> tuple[int, int] | None:
    chunk = d[12:16]
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(d[24:27], "little")
        h = 1 + int.from_bytes(d[27:30], "little")
        return w, h
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", d[26:30])
        return int(w) & 0x3FFF, int(h) & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(d[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    return None


def _gif(d: bytes) -> tuple[int, int] | None:
    w, h = struct.unpack("<HH", d[6:10])
    return int(w), int(h)


_SIZE_READERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "png": _png, "jpeg": _jpeg, "bmp": _bmp, "webp": _webp, "gif": _gif,
}
