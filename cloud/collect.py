"""`serve --collect DIR`: the service keeps what it answered on the infer endpoint, per API key (off by default).

The alternative to collecting on the device: the SDK's offloads arrive at
``/v2/models/{name}/infer``; with ``--collect DIR`` each image of such a
request is stored with the probabilities the model answered, in the format the
device uses (:mod:`edge_sdk.samples`, kind ``cloud``), so ``hybrid-vision
distill B --from DIR/<key>/<model>`` reads it the same way. ``/v1/classify``
is not collected.

* Per key: each API key's samples go to their own folder, named by the first
  16 hex digits of the key's sha256 (``key-3f2a...``); the key itself is never
  written. Without keys the folder is ``anonymous``.
* What is stored is the model's input, turned back into 8-bit pixels (the
  inverse of the manifest's scale/mean/std): the image at the model's size,
  grey for a grey model, exactly what the model saw.
* Off the event loop: the request hands its tensor and answer to a bounded
  queue (full: dropped and counted, the answer is never delayed); one thread
  writes. Each folder is bounded (``--collect-max-mb``, oldest first) and
  crash-safe (temp file, fsync, rename).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.preprocess import PreprocessSpec
from edge_sdk.samples import SampleMeta, SampleStore, probs_list

log = logging.getLogger("hybrid_vision.cloud")

ANONYMOUS = "anonymous"


def key_folder(key: str) -> str:
    """The folder name for one API key: a prefix of its sha256, never the key."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def to_pixels(x: np.ndarray, pp: PreprocessSpec) -> np.ndarray:
    """The model's float input [H, W, C] back to uint8 pixels (HxW for one channel): the inverse of normalize."""
    v = x.astype(np.float32) * np.asarray(pp.std, np.float32) + np.asarray(pp.mean, np.float32)
    px = np.clip(np.rint(v / np.float32(pp.scale)), 0, 255).astype(np.uint8)
    return px[..., 0] if px.shape[-1] == 1 else px


class CloudCollector:
    """Stores (key, model, input, answer) off the event loop; see the module docstring."""

    def __init__(self, root: str | Path, keys: Sequence[str], *, max_mb: float = 1000.0, queue_size: int = 1024,
                 fsync: bool = True) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.fsync = fsync
        self._folders = {f"key{i}": key_folder(k) for i, k in enumerate(keys)}  # the middleware's ids -> hashes
        self._stores: dict[tuple[str, str], SampleStore] = {}
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(queue_size)
        self.counts = {"stored": 0, "dropped_queue_full": 0, "write_errors": 0, "disk_full": 0}
        self._thread = threading.Thread(target=self._run, name="hv-cloud-collect", daemon=True)
        self._thread.start()

    def offer(self, client: str | None, name: str, labels: list[str], version: str, pp: PreprocessSpec,
              x: np.ndarray | Callable[[], np.ndarray], probs: np.ndarray) -> None:
        """Hand one answered request over (on the event loop: no I/O, no copy).

        ``x`` is the model's input batch, or a function that makes it (run on the writer thread).
        """
        folder = self._folders.get(client or "", ANONYMOUS)
        try:
            self._queue.put_nowait((folder, name, labels, version, pp, x, probs, time.time()))
        except queue.Full:
            self.counts["dropped_queue_full"] += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception as e:  # the writer must outlive any one request
                log.warning("collect: %s: %s", type(e).__name__, e)
            finally:
                self._queue.task_done()

    def _write(self, folder: str, name: str, labels: list[str], version: str, pp: PreprocessSpec,
               x: np.ndarray | Callable[[], np.ndarray], probs: np.ndarray, t: float) -> None:
        store = self._store(folder, name, labels)
        if callable(x):
            x = x()
        for xi, p in zip(x, probs, strict=True):
            meta = SampleMeta(kind="cloud", time=t, label=labels[int(np.argmax(p))], probabilities=probs_list(p),
                              model=f"{name}:{version}")
            try:
                store.put(to_pixels(xi, pp), meta)
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                self.counts["disk_full" if full else "write_errors"] += 1
                log.warning("collect: could not store a sample in %s: %s", store.path, e)
                continue
            self.counts["stored"] += 1

    def _store(self, folder: str, name: str, labels: list[str]) -> SampleStore:
        s = self._stores.get((folder, name))
        if s is None:
            s = SampleStore(self.root / folder / name, labels=labels, name=name, max_bytes=self.max_bytes,
                            fsync=self.fsync)
            self._stores[folder, name] = s
        return s

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything handed over is stored; False on timeout."""
        end = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued, stop the writer, write each folder's index."""
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        for s in self._stores.values():
            s.close()
        log.info("collect: %s", self.counts)
