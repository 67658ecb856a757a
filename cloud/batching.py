"""Dynamic batching: many requests, one model call, one worker thread.

Requests wait on a bounded asyncio queue. A collector task takes the first,
then keeps taking until the batch holds ``max_batch_size`` images or
``max_delay_ms`` has passed since that first request arrived, and hands the
batch to a single worker thread (the model is not thread-safe, and one caller
keeps a GPU fed best). Results go back to each caller's future, in order.

The collector waits for more only while a request is known to be on its way
(announced by :meth:`Batcher.infer` while its image decodes); a lone client
never pays the delay. A full queue refuses at once with :class:`QueueFullError`
(the service's 503), so memory and latency stay bounded under overload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from edge_sdk.errors import HybridVisionError

log = logging.getLogger(__name__)


class QueueFullError(HybridVisionError):
    """The model's queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosedError(HybridVisionError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    t_enqueued: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[int, float], None]  # (images in the batch, seconds the model took)


class Batcher:
    """Collects arrays of shape [n, ...] from many callers into batches for ``fn``."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        queue_size: int = 256,
        name: str = "model",
        on_batch: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or queue_size < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size and queue_size must be >= 1, max_delay_ms >= 0")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self.name = name
        self.on_batch = on_batch
        # The one thread the model runs in; public so operators (and tests) can see it is busy.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task | None = None
        self._incoming = 0  # callers announced by infer(), still preparing their input
        self.in_worker = 0  # requests handed to the worker thread and not yet answered
        self._closing = False

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the collector on the running loop."""
        if self._task is not None:
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Refuse new work, finish everything queued, then stop the worker thread."""
        self._closing = True
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)  # after every queued item: they are drained first
            await self._task
            self._task = None
        self.worker.shutdown(wait=True)

    # --- submitting --------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch it is running)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def preparing(self) -> int:
        """Requests admitted by :meth:`infer` whose input is still being prepared (decoded)."""
        return self._incoming

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def check_capacity(self) -> None:
        """Refuse early, before a request spends work on decoding, when the queue is full or closed."""
        if self._closing or not self.running:
            raise BatcherClosedError(f"{self.name}: the model is shutting down")
        if self.depth + self._incoming >= self.queue_size:
            raise QueueFullError(f"{self.name}: the queue is full ({self.queue_size} requests waiting); retry shortly")

    async def infer(self, prepare: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        """Admit a request, then await ``prepare()`` (e.g. a decode in a thread pool), then batch its array.

        The capacity check comes first, so an overloaded service refuses before
        decoding. Announcing the request while its input is being prepared lets
        the collector wait for it instead of starting a smaller batch.
        """
        self.check_capacity()
        self._incoming += 1
        try:
            x = await prepare()
        finally:
            self._incoming -= 1
        return await self.submit(x)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue one request's array [n, ...] and wait for the model's outputs for it."""
        if self._closing or not self.running:
            raise BatcherClosedError(f"{self.name}: the model is shutting down")
        item = _Item(x, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.name}: the queue is full ({self.queue_size} requests waiting); retry shortly") from None
        return await item.future

    # --- the collector -----------------------------------------------------

    async def _collect(self) -> None:
        q = self._queue
        carry: _Item | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else await q.get()
            carry = None
            if first is None:
                break
            batch, n = [first], len(first.x)
            deadline = first.t_enqueued + self.max_delay
            while n < self.max_batch_size:
                try:
                    nxt = q.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if self._incoming == 0 or remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(q.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if nxt is None:
                    stop = True
                    break
                if n + len(nxt.x) > self.max_batch_size:
                    carry = nxt  # starts the next batch; order is kept
                    break
                batch.append(nxt)
                n += len(nxt.x)
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        live = [it for it in batch if not it.future.done()]  # a caller that gave up needs no answer
        if not live:
            return
        loop = asyncio.get_running_loop()
        self.in_worker = len(live)
        try:
            outs, seconds = await loop.run_in_executor(self.worker, _call, self.fn, [it.x for it in live])
        except Exception as e:  # the model failed: every caller in the batch learns why
            log.exception("%s: model call failed on a batch of %d request(s)", self.name, len(live))
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        finally:
            self.in_worker = 0
        if self.on_batch is not None:
            self.on_batch(sum(len(it.x) for it in live), seconds)
        start = 0
        for it in live:
            end = start + len(it.x)
            if not it.future.done():
                it.future.set_result(outs[start:end])
            start = end


def _call(fn: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = fn(x)
    if len(y) != len(x):
        raise RuntimeError(f"model returned {len(y)} rows for {len(x)} inputs")
    return y, time.perf_counter() - t0
