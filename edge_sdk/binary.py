"""The KServe v2 binary tensor data extension (Triton's ``binary_tensor_data``), for the service and the SDK alike.

A binary body is a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw data of every tensor
whose ``parameters.binary_data_size`` is set, in the order the tensors are listed. Numeric data is row-major and
little-endian; a BYTES tensor is its elements one after another, each preceded by its length as a 4-byte
little-endian unsigned integer. It saves JSON's (or base64's) bytes and, above all, their parsing.

Format: Triton Inference Server, docs/protocol/extension_binary_data.md (the Open Inference Protocol's
binary extension), as tritonclient and kserve implement it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ProtocolError

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"  # how GET /v2 says a server speaks it
SIZE_PARAM = "binary_data_size"  # on a tensor: its data follows the JSON, this many bytes
OUTPUT_PARAM = "binary_data"  # on a requested output: answer it in binary
REQUEST_OUTPUT_PARAM = "binary_data_output"  # on the request: every output in binary unless it says otherwise
MAX_HEADER_DIGITS = 15

NUMPY_TYPES: dict[str, str] = {
    "BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "|i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | int | None) -> tuple[bytes, memoryview]:
    """(the JSON header, the binary data after it); without a header length the whole body is JSON.

    Args:
        body: the request or response body as received.
        header_length: the ``Inference-Header-Content-Length`` header's value, or None when it was absent.

    Returns:
        The JSON header's bytes and a view of the binary data after it (empty without a header length).

    Raises:
        ProtocolError: the header length is not a positive integer, or is longer than the body.
    """
    if header_length is None:
        return body, memoryview(b"")
    n = _parse_length(header_length)
    if n > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _parse_length(value: str | int) -> int:
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii() or len(text) > MAX_HEADER_DIGITS:
            raise ProtocolError(f"{HEADER_LENGTH} must be a positive integer, not {value[:40]!r}")
        n = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise ProtocolError(f"{HEADER_LENGTH} must be a positive integer, not {value!r}")
    if n < 1:
        raise ProtocolError(f"{HEADER_LENGTH} must be a positive integer, not {n}")
    return n


def binary_size(parameters: Mapping[str, Any] | None, name: str) -> int | None:
    """A tensor's ``parameters.binary_data_size``, or None when its data is in the JSON.

    Args:
        parameters: the tensor's ``parameters`` object, or None when it has none.
        name: the tensor's name, for the error message.

    Returns:
        The size in bytes, or None when the tensor's data is in the JSON.

    Raises:
        ProtocolError: the size is there but not a non-negative integer.
    """
    if not parameters or SIZE_PARAM not in parameters:
        return None
    size = parameters[SIZE_PARAM]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"tensor {name!r}: parameters.{SIZE_PARAM} must be a non-negative integer, not {size!r}")
    return size


def slice_data(sizes: Sequence[tuple[str, int | None]], data: memoryview) -> list[memoryview | None]:
    """Cut the binary data into one view per tensor (None where a tensor has no binary size), in order.

    Args:
        sizes: (name, binary size or None) of every tensor, in the order they are listed.
        data: the binary data after the JSON header.

    Returns:
        One view per tensor, None where the tensor's data is in the JSON.

    Raises:
        ProtocolError: a size runs past the end of the data, or bytes are left over after the last tensor.
    """
    out: list[memoryview | None] = []
    offset = 0
    for name, size in sizes:
        if size is None:
            out.append(None)
            continue
        end = offset + size
        if end > len(data):
            raise ProtocolError(f"tensor {name!r}: {SIZE_PARAM} {size} at offset {offset} runs past the end of "
                                f"the binary data ({len(data)} bytes)")
        out.append(data[offset:end])
        offset = end
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} bytes of binary data after the last tensor's; the "
                            f"{SIZE_PARAM}s add up to {offset}, not {len(data)}")
    return out


def pack_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES elements as the extension carries them: each one's 4-byte little-endian length, then its bytes.

    Args:
        elements: the BYTES tensor's elements, in order.

    Returns:
        The tensor's binary data.
    """
    parts: list[bytes] = []
    for e in elements:
        parts.append(_LENGTH.pack(len(e)))
        parts.append(e)
    return b"".join(parts)


def unpack_bytes(data: bytes | memoryview, max_count: int) -> list[bytes]:
    """The elements of a BYTES tensor's data; stops after ``max_count + 1`` (the caller then reports too many).

    Args:
        data: the tensor's binary data.
        max_count: how many elements the caller accepts; one more is read so it can tell.

    Returns:
        The elements, at most ``max_count + 1`` of them.

    Raises:
        ProtocolError: a length prefix or an element is cut short by the end of the data.
    """
    view = memoryview(data)
    out: list[bytes] = []
    pos = 0
    while pos < len(view) and len(out) <= max_count:
        if pos + 4 > len(view):
            raise ProtocolError(f"BYTES element {len(out)}: its 4-byte length is cut short ({len(view) - pos} "
                                f"byte(s) left)")
        (n,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if n > len(view) - pos:
            raise ProtocolError(f"BYTES element {len(out)} says {n} bytes but only {len(view) - pos} remain")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out


def numeric_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A numeric tensor's binary data: row-major, little-endian.

    Args:
        array: the tensor's values.
        datatype: its KServe v2 datatype (a key of ``NUMPY_TYPES``), which sets the element type.

    Returns:
        The raw bytes.
    """
    return np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype]).tobytes()


def join_body(header: Mapping[str, Any], blobs: Sequence[bytes]) -> tuple[bytes, int | None]:
    """(body, its JSON header's length); the length is None when no tensor is binary (a plain JSON body).

    Args:
        header: the JSON part (inputs or outputs with their ``binary_data_size`` parameters set).
        blobs: the binary data of the binary tensors, in the order the header lists them.

    Returns:
        The body and the value for ``Inference-Header-Content-Length`` (None: send no such header).
    """
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
