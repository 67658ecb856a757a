"""Collected samples on disk: one PNG a sample, its metadata inside it, in a bounded, crash-safe folder.

A sample is the image the edge model ran on (resized to the model's input,
RGB, lossless PNG) with a ``tEXt`` chunk (keyword ``hybrid-vision``) holding
its metadata as JSON (:class:`SampleMeta`: what the cloud answered, what the
edge answered, why, when). Any image viewer opens it; ``hybrid-vision distill``
reads it back through the one preprocessing path.

The folder (:class:`SampleStore`):

* ``<seq>.png`` files, ``seq`` a 12-digit sequence number: oldest first.
* Each is written to ``.<seq>.png.tmp``, fsynced, renamed into place, and the
  folder fsynced, so a file with a final name is always whole; a crash leaves
  at most a ``.tmp`` file, removed the next time the folder is opened.
* ``index.json``: the folder's manifest (format, the bundle's name and labels,
  the samples and their sizes), rewritten by the same temp-fsync-rename every
  few samples and on close. The sample files are the truth: opening reconciles
  the index with them, so a stale index (a crash between writes) loses nothing.
* Bounded: past ``max_bytes`` (or ``max_items``) the oldest samples are deleted
  after a new one is safely written, never before, so a failed write (a full
  disk) costs nothing already stored.

Numpy and the standard library only (OpenCV for the PNG codec, as everywhere on the device).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import HybridVisionError
from .preprocess import cv2

log = logging.getLogger(__name__)

FORMAT = "hybrid-vision-samples"
FORMAT_VERSION = 1
INDEX = "index.json"
CHUNK_KEY = b"hybrid-vision"
NAME = re.compile(r"^(\d{12})\.png$")
INDEX_EVERY = 32  # samples between index rewrites (the files are the truth; the index is their summary)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Kind = Literal["offload", "audit", "offline", "cloud", "queued"]
KINDS: tuple[str, ...] = ("offload", "audit", "offline", "cloud", "queued")


class SampleStoreError(HybridVisionError):
    """A sample folder cannot be used: it holds samples for other labels, or is not a folder."""


@dataclass(frozen=True)
class SampleMeta:
    """What is stored with each image (all of it; nothing else is).

    Attributes:
        kind: ``offload`` (the edge was unsure; the cloud answered), ``audit`` (a confident edge answer the cloud
            answered again), ``offline`` (queued while the cloud was unreachable, answered later), ``cloud`` (stored
            by the service), ``queued`` (still waiting in the offline queue).
        time: when the image was answered on the device (Unix seconds).
        label, probabilities: the cloud's answer (None while queued).
        edge_label, edge_confidence, edge_probabilities: the edge's answer (probabilities for audits and queued
            images, where the edge's answer is the one that was given).
        reason: the routing reason of the answer given at the time.
        model: the edge model's sha256 (first 16 hex digits) or, from the service, the bundle's version.
    """

    kind: Kind
    time: float
    label: str | None = None
    probabilities: list[float] | None = None
    edge_label: str | None = None
    edge_confidence: float | None = None
    edge_probabilities: list[float] | None = None
    reason: str | None = None
    model: str | None = None

    def to_json(self) -> str:
        """The metadata as compact JSON (what the PNG's tEXt chunk holds).

        Returns:
            One line of ASCII JSON.
        """
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SampleMeta:
        """The metadata from its JSON (unknown keys are ignored, so a newer writer's samples still read).

        Args:
            text: what :meth:`to_json` wrote.

        Returns:
            The metadata.

        Raises:
            ValueError: anything that is not this metadata.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
            raise ValueError("not sample metadata")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)


@dataclass(frozen=True)
class Sample:
    """One stored sample: its sequence number, file, metadata and (encoded) image."""

    seq: int
    path: Path
    meta: SampleMeta
    png: bytes = field(repr=False)

    def image(self) -> np.ndarray:
        """The image as RGB uint8 (decoded from the PNG).

        Returns:
            An HxWx3 array.

        Raises:
            ValueError: the PNG cannot be decoded.
        """
        bgr = cv2.imdecode(np.frombuffer(self.png, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{self.path}: not a decodable PNG")
        return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@dataclass(frozen=True)
class LateAnswer:
    """The cloud's answer for an image answered by the edge while the cloud was unreachable."""

    seq: int  # its place in the queue (answers come in this order)
    label: str
    confidence: float
    probabilities: np.ndarray = field(repr=False)
    edge_label: str | None  # the answer given at the time
    reason: str | None  # and why it was the edge's
    queued_at: float  # Unix seconds
    answered_at: float
    image: np.ndarray = field(repr=False)  # the model-size RGB image that was sent


def probs_list(p: np.ndarray | None) -> list[float] | None:
    """Probabilities as a JSON-ready list, 6 significant digits (what is stored).

    Args:
        p: probabilities (any shape; flattened), or None.

    Returns:
        A list of floats, or None for None.
    """
    return None if p is None else [float(f"{v:.6g}") for v in np.asarray(p, np.float64).ravel()]


# --- the file format: a PNG with one tEXt chunk -------------------------------------------------------------


def encode_sample(image: np.ndarray, meta: SampleMeta) -> bytes:
    """A sample's file: the image as a lossless PNG carrying ``meta`` in a tEXt chunk before IEND.

    Args:
        image: RGB (HxWx3) or grey (HxW, HxWx1) uint8.
        meta: what is stored with it.

    Returns:
        The PNG bytes.

    Raises:
        ValueError: the image cannot be encoded.
    """
    img = image if image.ndim == 2 or image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode the sample as PNG")
    png = buf.tobytes()
    data = CHUNK_KEY + b"\0" + meta.to_json().encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]  # the last 12 bytes are the IEND chunk


def decode_meta(png: bytes) -> SampleMeta:
    """The metadata inside a sample PNG (the chunks are walked and their CRCs checked; the image is not decoded).

    Args:
        png: a sample file's bytes.

    Returns:
        Its metadata.

    Raises:
        ValueError: not a PNG, no metadata, or a chunk that is cut or corrupt.
    """
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if len(data) != length or pos + 12 + length > len(png):
            raise ValueError("cut PNG chunk")
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + data) != crc:
            raise ValueError(f"corrupt PNG chunk {kind!r}")
        if kind == b"tEXt" and data.startswith(CHUNK_KEY + b"\0"):
            return SampleMeta.from_json(data[len(CHUNK_KEY) + 1 :].decode("latin-1"))
        if kind == b"IEND":
            break
        pos += 12 + length
    raise ValueError("no hybrid-vision metadata in the PNG")


# --- reading a folder (distill, tests): touches nothing -----------------------------------------------------


def sample_files(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Every complete sample file in ``folder``, oldest first (temp files are never listed).

    Args:
        folder: a sample folder (a missing one has none).

    Returns:
        (sequence number, path) pairs.
    """
    root = Path(folder)
    out = []
    for p in root.iterdir() if root.is_dir() else ():
        m = NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_samples(folder: str | os.PathLike[str], kinds: Sequence[str] | None = None) -> Iterator[Sample]:
    """The samples of a folder, oldest first; unreadable files are logged and skipped. Changes nothing.

    Args:
        folder: a sample folder (a device's collection, the offline queue, or ``serve --collect``'s per-key one).
        kinds: only these kinds (None: all).

    Yields:
        Each sample, its image still encoded.

    Raises:
        SampleStoreError: ``folder`` is not a folder.
    """
    if not Path(folder).is_dir():
        raise SampleStoreError(f"{folder}: no such folder of collected samples")
    for seq, path in sample_files(folder):
        try:
            png = path.read_bytes()
            meta = decode_meta(png)
        except (OSError, ValueError, TypeError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if kinds is None or meta.kind in kinds:
            yield Sample(seq, path, meta, png)


def read_index(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The folder's index.json (its format, bundle name, labels and samples).

    Args:
        folder: a sample folder.

    Returns:
        The index, or None when it is missing, unreadable or of another format.
    """
    try:
        doc = json.loads((Path(folder) / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


# --- the bounded, crash-safe folder ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file beside it (fsync, rename, fsync the folder).

    Args:
        path: the final name.
        data: the whole content.
        fsync: make it durable before returning (off only where durability does not matter: tests, benchmarks).

    Raises:
        OSError: the write failed (a full disk): the temp file is removed and ``path`` is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


class SampleStore:
    """A bounded folder of samples (see the module docstring). Thread-safe; one writer process at a time."""

    def __init__(self, folder: str | os.PathLike[str], *, labels: Sequence[str], name: str = "",
                 max_bytes: int | None = None, max_items: int | None = None, fsync: bool = True) -> None:
        """Open (or create) ``folder``: remove leftover temp files and reconcile the index with the samples.

        Args:
            folder: the folder (made if missing).
            labels: the model's labels; a folder holding samples for other labels is refused.
            name: the bundle's name, recorded in the index.
            max_bytes: the bound on the samples' total size (None: none).
            max_items: the bound on their number (None: none).
            fsync: make each sample durable before ``put`` returns.

        Raises:
            SampleStoreError: the folder holds samples for other labels, or cannot be made.
            ValueError: a bound that is not positive.
        """
        if (max_bytes is not None and max_bytes <= 0) or (max_items is not None and max_items <= 0):
            raise ValueError("max_bytes and max_items must be positive")
        self.path = Path(folder)
        self.labels, self.name = list(labels), name
        self.max_bytes, self.max_items, self.fsync = max_bytes, max_items, fsync
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, int] = OrderedDict()  # seq -> bytes, oldest first
        self._bytes = 0
        self._since_index = 0
        self.evicted = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SampleStoreError(f"{self.path}: cannot make the sample folder ({e.strerror or e})") from None
        self._check_labels()
        self._recover()

    # --- state ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def seqs(self) -> list[int]:
        """The stored sequence numbers.

        Returns:
            Oldest first.
        """
        with self._lock:
            return list(self._entries)

    def file(self, seq: int) -> Path:
        """Where a sample lives.

        Args:
            seq: its sequence number.

        Returns:
            Its path (which may not exist).
        """
        return self.path / f"{seq:012d}.png"

    # --- writing -------------------------------------------------------------------------------------------

    def put(self, image: np.ndarray, meta: SampleMeta) -> int:
        """Store one sample durably, then evict the oldest past the bounds.

        Args:
            image: the model-size image (RGB or grey uint8).
            meta: what is stored with it.

        Returns:
            Its sequence number.

        Raises:
            OSError: the disk refused (full, read-only); nothing already stored is touched.
            ValueError: the image cannot be encoded.
        """
        data = encode_sample(image, meta)
        with self._lock:
            seq = self._next
            self._next += 1
            write_atomic(self.file(seq), data, self.fsync)
            self._entries[seq] = len(data)
            self._bytes += len(data)
            self._evict_over_bounds()
            self._since_index += 1
            if self._since_index >= INDEX_EVERY:
                self._write_index()
        return seq

    def remove(self, seq: int) -> None:
        """Delete one sample (gone already: nothing to do).

        Args:
            seq: its sequence number.
        """
        with self._lock:
            self._delete(seq)

    def read(self, seq: int) -> Sample:
        """One stored sample.

        Args:
            seq: its sequence number.

        Returns:
            The sample, its image still encoded.

        Raises:
            OSError: its file is gone or unreadable.
            ValueError: its file holds no readable metadata.
        """
        path = self.file(seq)
        png = path.read_bytes()
        return Sample(seq, path, decode_meta(png), png)

    def close(self) -> None:
        """Write the index (best effort: the samples are already safe)."""
        with self._lock:
            self._write_index()

    # --- internals -----------------------------------------------------------------------------------------

    def _evict_over_bounds(self) -> None:
        while len(self._entries) > 1 and (
            (self.max_bytes is not None and self._bytes > self.max_bytes)
            or (self.max_items is not None and len(self._entries) > self.max_items)
        ):
            self._delete(next(iter(self._entries)))
            self.evicted += 1

    def _delete(self, seq: int) -> None:
        size = self._entries.pop(seq, None)
        if size is None:
            return
        self._bytes -= size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(seq))

    def _check_labels(self) -> None:
        index = read_index(self.path)
        if index is not None and index.get("labels") not in (None, self.labels):
            raise SampleStoreError(
                f"{self.path}: holds samples for other labels ({len(index['labels'])} labels, bundle "
                f"{index.get('name')!r}); give this model its own folder"
            )

    def _recover(self) -> None:
        """Remove temp files a crash left; list the complete samples (the index only summarises them)."""
        for p in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                log.warning("removed %s, left by an interrupted write", p)
        for seq, p in sample_files(self.path):
            try:
                size = p.stat().st_size
            except OSError:
                continue
            self._entries[seq] = size
            self._bytes += size
        self._next = (next(reversed(self._entries)) + 1) if self._entries else 0
        index = read_index(self.path)
        if index is None or [s for s, _ in index.get("samples", [])] != list(self._entries):
            with self._lock:
                self._write_index()

    def _write_index(self) -> None:
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "labels": self.labels,
               "updated": time.time(), "count": len(self._entries), "bytes": self._bytes,
               "samples": [[s, b] for s, b in self._entries.items()]}
        try:
            write_atomic(self.path / INDEX, json.dumps(doc, separators=(",", ":")).encode(), self.fsync)
            self._since_index = 0
        except OSError as e:  # the samples are safe; the next open rebuilds the index from them
            log.warning("could not write %s: %s", self.path / INDEX, e)
