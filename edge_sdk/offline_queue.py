"""The offline queue: hard images the cloud could not be reached for, kept on disk and sent when it returns.

With ``HybridClassifier(..., offline_queue=OfflineQueueConfig(dir=...))``, an
answer that wanted the cloud but got the edge's because the cloud was
unreachable (a refused connection, a timeout, 503/429 after the retries, an
open circuit breaker) is still returned at once, with the edge's label and
its reason, as without the queue. Its image is queued on disk as well
(bounded: past ``max_items`` or ``max_mb`` the oldest queued image is dropped
and counted). A background thread sends the queue, oldest first and in order,
``batch`` images a request, whenever the cloud answers again (it tries every
``retry_s``, and at once after any answer from the cloud). Each late answer
goes to the collection (if one is configured) and to ``on_answer``; then its
image leaves the queue. A crash between the two sends that image again after a
restart: late answers are delivered at least once.

The queue is a :class:`~edge_sdk.samples.SampleStore` folder of ``queued``
samples: crash-safe, and a full disk is logged and counted, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from .collect import DISK_FULL, UNREACHABLE, Answer, AskImages, Counters
from .errors import CloudError
from .options import OfflineQueueConfig
from .reasons import Reason
from .samples import LateAnswer, Sample, SampleMeta, SampleStore, probs_list
from .stats import OfflineQueueStats
from .upload import Staged

log = logging.getLogger(__name__)


def waits_for_cloud(answer: Answer) -> bool:
    """Whether an answer is one the queue keeps.

    Args:
        answer: the answer given.

    Returns:
        True for an edge answer given because the cloud was unreachable (not because the edge was confident,
        the input bad or the cloud refused it).
    """
    if answer.source != "edge":
        return False
    reason = answer.reason
    if reason == Reason.CIRCUIT_OPEN:
        return True
    if not reason.is_cloud_error:
        return False
    cause = reason.value.partition(":")[2]
    return cause in UNREACHABLE or cause.startswith("http_5")


class OfflineQueue:
    """The queue and its thread (see the module docstring)."""

    def __init__(self, config: OfflineQueueConfig, *, labels: Sequence[str], name: str, ask: AskImages,
                 late: Callable[[np.ndarray, SampleMeta], None] | None) -> None:
        """Open the queue folder (what a previous run left is sent first) and start its thread.

        Args:
            config: where, how much, how often to retry.
            labels: the model's labels.
            name: the bundle's name.
            ask: asks the cloud about images.
            late: where late answers are stored (the collection's ``offer_late``; None: nowhere).

        Raises:
            SampleStoreError: the folder holds samples for other labels, or cannot be made.
        """
        self.config = config
        self.labels = list(labels)
        self.store = SampleStore(config.dir, labels=labels, name=name, max_items=config.max_items,
                                 max_bytes=int(config.max_mb * 1024 * 1024), fsync=config.fsync)
        self._ask, self._late = ask, late
        self._incoming: queue.Queue[tuple[np.ndarray, Answer, float]] = queue.Queue(256)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.counts = Counters()
        self._thread = threading.Thread(target=self._run, name="hv-offline-queue", daemon=True)
        self._thread.start()

    # --- the hot path ---------------------------------------------------------------------------------------

    def observe(self, staged: Staged, answer: Answer) -> None:
        """A routing-path observer: queue the image if the cloud was unreachable; wake the sender if it answered.

        Args:
            staged: the call's input (its model-size RGB image is what is queued).
            answer: the answer given.
        """
        if answer.source == "cloud":
            if len(self.store):
                self._wake.set()
        elif waits_for_cloud(answer):
            try:
                self._incoming.put_nowait((staged.resized, answer, time.time()))
                self._wake.set()
            except queue.Full:
                self._count("dropped_queue_full")

    # --- the thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.retry_s)
            self._wake.clear()
            try:
                self._write_incoming()
                while not self._stop.is_set() and len(self.store) and self._send_oldest():
                    self._write_incoming()
            except Exception as e:  # the thread must outlive any one image
                log.warning("offline queue: %s: %s", type(e).__name__, e)
                self._count("errors")

    def _write_incoming(self) -> None:
        while True:
            try:
                image, answer, t = self._incoming.get_nowait()
            except queue.Empty:
                return
            meta = SampleMeta(kind="queued", time=t, edge_label=answer.label, edge_confidence=answer.edge_confidence,
                              edge_probabilities=probs_list(answer.probabilities), reason=str(answer.reason))
            before = self.store.evicted
            try:
                self.store.put(image, meta)
            except OSError as e:
                self._count("disk_full" if e.errno in DISK_FULL else "write_errors")
                log.warning("offline queue: could not queue an image in %s: %s", self.store.path, e)
                continue
            self._count("queued")
            self._count("dropped_full", self.store.evicted - before)

    def _send_oldest(self) -> bool:
        """Send the oldest ``batch`` queued images in one request; False when the cloud did not answer."""
        batch: list[Sample] = []
        for seq in self.store.seqs()[: self.config.batch]:
            try:
                batch.append(self.store.read(seq))
            except (OSError, ValueError) as e:  # unreadable: it can never be sent
                log.warning("offline queue: dropping unreadable %s: %s", self.store.file(seq), e)
                self.store.remove(seq)
        if not batch:
            return bool(len(self.store))
        images = [s.image() for s in batch]
        try:
            probs, sent = self._ask(images, self.config.deadline_ms)
        except CloudError as e:
            self._count("send_failures")
            log.debug("offline queue: the cloud is still unreachable (%s)", e.reason)
            return False
        self._count("bytes_sent", sent)
        now = time.time()
        for sample, image, p in zip(batch, images, probs, strict=True):
            self._deliver(sample, image, p, now)
            self.store.remove(sample.seq)
            self._count("sent")
        return True

    def _deliver(self, sample: Sample, image: np.ndarray, p: np.ndarray, now: float) -> None:
        m = sample.meta
        top = int(np.argmax(p))
        if self._late is not None:
            self._late(image, SampleMeta(
                kind="offline", time=m.time, label=self.labels[top], probabilities=probs_list(p),
                edge_label=m.edge_label, edge_confidence=m.edge_confidence,
                edge_probabilities=m.edge_probabilities, reason=m.reason, model=m.model))
        if self.config.on_answer is not None:
            answer = LateAnswer(sample.seq, self.labels[top], float(p[top]), np.asarray(p), m.edge_label, m.reason,
                                m.time, now, image)
            try:
                self.config.on_answer(answer)
            except Exception as e:  # a callback must never stop the queue
                log.warning("offline queue: on_answer failed: %s: %s", type(e).__name__, e)
                self._count("callback_errors")

    def _count(self, key: str, k: int = 1) -> None:
        if k:
            self.counts.add(key, k)

    # --- control --------------------------------------------------------------------------------------------

    def send_now(self) -> None:
        """Try the cloud now rather than at the next ``retry_s``."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (what is queued stays on disk for the next run).

        Args:
            timeout: the most seconds to wait for it.
        """
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._write_incoming()  # what arrived after the thread's last look
        self.store.close()

    def stats(self) -> OfflineQueueStats:
        """What waits and what happened to what was queued.

        Returns:
            A snapshot of the counts.
        """
        c = self.counts.get
        return OfflineQueueStats(
            dir=str(self.store.path), pending=len(self.store), queued=c("queued"), sent=c("sent"),
            dropped_full=c("dropped_full"), dropped_queue_full=c("dropped_queue_full"),
            send_failures=c("send_failures"), bytes_sent=c("bytes_sent"), disk_full=c("disk_full"),
            write_errors=c("write_errors"), callback_errors=c("callback_errors"),
        )
