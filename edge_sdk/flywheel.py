"""The device's half of the flywheel: collection and the offline queue, made from the options, as observers.

``HybridClassifier`` makes a :class:`Flywheel` only when ``collect`` or
``offline_queue`` is configured (nothing is written otherwise) and adds its
observers to the routing path. The late answers of the offline queue go to
the collection. ``hybrid-vision distill`` reads the collection folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .collect import AskImages, Collector
from .offline_queue import OfflineQueue
from .options import CollectConfig, OfflineQueueConfig
from .routing import Observer
from .stats import CollectionStats, OfflineQueueStats


class Flywheel:
    """The collector and the offline queue of one classifier (either may be None)."""

    def __init__(self, collect: CollectConfig | None, offline_queue: OfflineQueueConfig | None, *,
                 labels: Sequence[str], name: str, ask: AskImages | None,
                 model_id: Callable[[], str | None]) -> None:
        """Start what is configured.

        Args:
            collect: collection (None: none).
            offline_queue: the offline queue (None: none).
            labels: the model's labels.
            name: the bundle's name.
            ask: asks the cloud about images (None: no cloud).
            model_id: the current edge model's sha256.

        Raises:
            SampleStoreError: a folder holds samples for other labels, or cannot be made.
            ValueError: an offline queue without a cloud to send it to.
        """
        if offline_queue is not None and ask is None:
            raise ValueError("offline_queue needs a cloud_url to send the queue to")
        self.collector = (Collector(collect, labels=labels, name=name, ask=ask, model_id=model_id)
                          if collect is not None else None)
        self.queue = None
        if offline_queue is not None and ask is not None:
            late = self.collector.offer_late if self.collector is not None else None
            self.queue = OfflineQueue(offline_queue, labels=labels, name=name, ask=ask, late=late)

    @property
    def observers(self) -> list[Observer[object]]:
        out: list[Observer[object]] = []
        if self.collector is not None:
            out.append(self.collector.observe)  # type: ignore[arg-type]
        if self.queue is not None:
            out.append(self.queue.observe)  # type: ignore[arg-type]
        return out

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every sample handed to the collection so far is stored.

        Args:
            timeout: the most seconds to wait.

        Returns:
            False on timeout.
        """
        return self.collector.flush(timeout) if self.collector is not None else True

    def stats(self) -> tuple[CollectionStats | None, OfflineQueueStats | None]:
        """The collection's and the offline queue's counts.

        Returns:
            (collection, offline queue), each None when not configured.
        """
        return (self.collector.stats() if self.collector is not None else None,
                self.queue.stats() if self.queue is not None else None)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the queue's thread (what waits stays on disk), then store what the collection holds.

        Args:
            timeout: the most seconds to wait for each thread.
        """
        if self.queue is not None:
            self.queue.close(timeout)
        if self.collector is not None:
            self.collector.close(timeout)
