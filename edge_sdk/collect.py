"""Opt-in collection on the device: the images the cloud answered, and a random audit of confident ones.

With ``HybridClassifier(..., collect=CollectConfig(dir=...))`` every final
answer passes :meth:`Collector.observe` (a routing-path observer, in the
caller's thread). It only looks at the answer and, when the answer is one to
keep, hands the resized image to a background worker through a bounded queue
(``put_nowait``: when the queue is full the sample is dropped and counted,
``predict`` never waits). The worker:

* stores each **offloaded** image with the cloud's probabilities and label;
* asks the cloud again about a random ``audit_rate`` share of **confident**
  edge answers and stores both answers: an unbiased sample of what the edge
  says alone, so the agreement measured on it (:func:`audit_estimate`)
  estimates the edge's accuracy in the field (the idea of Groundlight's
  audits of confident answers);
* stores the late answers of the offline queue (:mod:`edge_sdk.offline_queue`).

Storage is a :class:`~edge_sdk.samples.SampleStore`: bounded (oldest first),
crash-safe, and a failed write (a full disk) is logged and counted, never
raised. Nothing is written anywhere unless a ``CollectConfig`` is given.
"""

from __future__ import annotations

import errno
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import CloudError
from .options import CollectConfig
from .reasons import Reason
from .samples import SampleMeta, SampleStore, probs_list
from .stats import CollectionStats
from .upload import Staged

log = logging.getLogger(__name__)

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Cloud failures that say "not reachable now" (the offline queue keeps these images for later).
UNREACHABLE = frozenset({"connection", "timeout", "overloaded", "rate_limited", "circuit_open"})

AskImages = Callable[[Sequence[np.ndarray], float], tuple[list[np.ndarray], int]]
"""Ask the cloud about model-size RGB images within ``deadline_ms``: (probabilities per image, bytes sent).
Raises CloudError."""


class Answer(Protocol):
    """What the collector reads of an answer (a :class:`~edge_sdk.hybrid.Prediction`)."""

    label: str
    source: str
    reason: Reason
    edge_confidence: float | None
    probabilities: np.ndarray | None


@dataclass(frozen=True)
class AuditEstimate:
    """The edge's accuracy estimated from the audit sample: agreement with the cloud, with a 95% interval."""

    n: int
    agree: int
    accuracy: float | None
    low: float | None
    high: float | None


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion k/n (Wilson 1927), 95% by default.

    Args:
        k: successes.
        n: trials.
        z: the normal quantile (1.96: 95%).

    Returns:
        (low, high), within [0, 1]; (0, 1) when there are no trials.
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audit_estimate(metas: Sequence[SampleMeta]) -> AuditEstimate:
    """The share of audited confident answers on which the edge and the cloud agree, with its 95% interval.

    Args:
        metas: the metadata of collected samples (only the answered audits count).

    Returns:
        The estimate (accuracy and interval None when there is no audit).
    """
    audits = [m for m in metas if m.kind == "audit" and m.label is not None]
    agree = sum(m.edge_label == m.label for m in audits)
    if not audits:
        return AuditEstimate(0, 0, None, None, None)
    low, high = wilson_interval(agree, len(audits))
    return AuditEstimate(len(audits), agree, agree / len(audits), low, high)


class Counters:
    """Named counts behind one lock (a background thread and the caller's thread both count)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n: dict[str, int] = {}

    def add(self, key: str, k: int = 1) -> None:
        """Count.

        Args:
            key: the count's name.
            k: how many.
        """
        with self.lock:
            self.n[key] = self.n.get(key, 0) + k

    def get(self, key: str) -> int:
        """One count.

        Args:
            key: the count's name.

        Returns:
            The count (0 if never counted).
        """
        with self.lock:
            return self.n.get(key, 0)

    def with_prefix(self, prefix: str) -> dict[str, int]:
        """The counts whose names start with ``prefix``.

        Args:
            prefix: the names' start.

        Returns:
            Those counts by name, the prefix removed.
        """
        with self.lock:
            return {k[len(prefix):]: v for k, v in sorted(self.n.items()) if k.startswith(prefix)}


class Collector:
    """Keeps offloaded images, audits a share of confident ones, stores late answers (see the module docstring)."""

    def __init__(self, config: CollectConfig, *, labels: Sequence[str], name: str, ask: AskImages | None,
                 model_id: Callable[[], str | None]) -> None:
        """Open the store and start the background worker.

        Args:
            config: where, how much, and the audit share.
            labels: the model's labels.
            name: the bundle's name (recorded in the folder's index).
            ask: asks the cloud about images (None: no cloud, so no audits).
            model_id: the current edge model's sha256 (stored with each sample; it changes with an update).

        Raises:
            SampleStoreError: the folder holds samples for other labels, or cannot be made.
        """
        self.config = config
        self.labels = list(labels)
        self.store = SampleStore(config.dir, labels=labels, name=name, max_bytes=int(config.max_mb * 1024 * 1024),
                                 fsync=config.fsync)
        self._ask = ask
        self._model_id = model_id
        self._audit_rate = config.audit_rate if ask is not None else 0.0
        self._random = random.Random(config.seed).random
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(config.queue_size)
        self.counts = Counters()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="hv-collect", daemon=True)
        self._worker.start()

    # --- the hot path: the caller's thread ------------------------------------------------------------------

    def observe(self, staged: Staged, answer: Answer) -> None:
        """A routing-path observer: keep the offloaded, draw the audits; a few hundred nanoseconds otherwise.

        Args:
            staged: the call's input (its model-size RGB image is what is kept).
            answer: the answer given.
        """
        if answer.source == "cloud":
            self._offer(("offload", staged.resized, answer, time.time()))
        elif answer.reason == Reason.CONFIDENT and self._audit_rate and self._random() < self._audit_rate:
            self._offer(("audit", staged.resized, answer, time.time()))

    def offer_late(self, image: np.ndarray, meta: SampleMeta) -> None:
        """Store a late answer (from the offline queue's thread).

        Args:
            image: the model-size RGB image.
            meta: the cloud's late answer and the edge's at the time.
        """
        self._offer(("late", image, meta))

    def _offer(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counts.add("dropped_queue_full")

    # --- the worker -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(item)
            except Exception as e:  # the worker must outlive any one sample
                log.warning("collection: %s: %s", type(e).__name__, e)
                self.counts.add("errors")
            finally:
                self._queue.task_done()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "offload":
            _, image, answer, t = item
            self._store(image, SampleMeta(
                kind="offload", time=t, label=answer.label, probabilities=probs_list(answer.probabilities),
                edge_confidence=answer.edge_confidence, reason=str(answer.reason), model=self._model()))
        elif kind == "audit":
            self._audit(*item[1:])
        else:
            self._store(item[1], item[2])

    def _audit(self, image: np.ndarray, answer: Answer, t: float) -> None:
        assert self._ask is not None  # audits are drawn only when there is a cloud to ask
        self.counts.add("audits_asked")
        try:
            probs, sent = self._ask([image], self.config.audit_deadline_ms)
        except CloudError as e:
            self.counts.add("audit_failures")
            log.debug("audit: the cloud did not answer (%s)", e.reason)
            return
        self.counts.add("audit_bytes", sent)
        p = probs[0]
        self._store(image, SampleMeta(
            kind="audit", time=t, label=self.labels[int(np.argmax(p))], probabilities=probs_list(p),
            edge_label=answer.label, edge_confidence=answer.edge_confidence,
            edge_probabilities=probs_list(answer.probabilities), reason=str(answer.reason), model=self._model()))

    def _store(self, image: np.ndarray, meta: SampleMeta) -> None:
        try:
            self.store.put(image, meta)
        except OSError as e:
            full = e.errno in DISK_FULL
            self.counts.add("disk_full" if full else "write_errors")
            n = self.counts.get("disk_full" if full else "write_errors")
            if n == 1 or n % 100 == 0:  # log the first and then every 100th, not every sample
                log.warning("collection: could not store a sample in %s (%s; %d so far): %s",
                            self.store.path, "disk full" if full else "write error", n, e)
            return
        self.counts.add(f"stored_{meta.kind}")

    def _model(self) -> str | None:
        sha = self._model_id()
        return sha[:16] if sha else None

    # --- control --------------------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every sample handed over so far is stored (or dropped).

        Args:
            timeout: the most seconds to wait.

        Returns:
            False on timeout.
        """
        end = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Store what is waiting, stop the worker, write the index.

        Args:
            timeout: the most seconds to wait for the worker.
        """
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        try:
            self._queue.put(None, timeout=max(0.1, timeout))
        except queue.Full:
            log.warning("collection: the worker is still busy; %d sample(s) not stored", self._queue.qsize())
        self._worker.join(timeout)
        self.store.close()

    def stats(self) -> CollectionStats:
        """What the collection holds and what happened to the samples handed over.

        Returns:
            A snapshot of the counts.
        """
        c = self.counts
        return CollectionStats(
            dir=str(self.store.path), samples=len(self.store), bytes_on_disk=self.store.bytes,
            stored=c.with_prefix("stored_"),
            evicted=self.store.evicted, dropped_queue_full=c.get("dropped_queue_full"), disk_full=c.get("disk_full"),
            write_errors=c.get("write_errors"), audits_asked=c.get("audits_asked"),
            audit_failures=c.get("audit_failures"), audit_bytes=c.get("audit_bytes"),
        )
