"""Dynamic batching: many requests, few model calls, ``instances`` worker threads.

Requests wait in a bounded queue. Each model instance is a worker thread that,
as soon as it is free, takes the first waiting request and then keeps taking
until its batch holds ``max_batch_size`` images or ``max_delay_ms`` has passed
since that first request arrived; it runs the model and hands the results back
to the event loop, which answers each caller's future, in order.

The workers pull their next batch themselves. When the event loop picked the
batches instead, every batch waited for the loop to get round to it (under load
the loop has a queue of its own) and the model sat idle 20-30% of the time.

One instance keeps a GPU fed best. On a CPU, two instances that each run the
model on half the cores keep every core busy (see ``cloud.model.plan_instances``).

A worker that finds other instances idle takes only its share of the waiting
requests, so at low load the instances split the work rather than one running
a batch while the others wait. A worker waits for more only while a request is
known to be on its way (announced by :meth:`Batcher.infer` while its image
decodes); a lone client never pays the delay. (Also waiting while another
instance was busy, for its callers to come back, gave bigger batches but idle
cores: no faster at 64 clients, slower answers at low load.) A full queue
refuses at once with :class:`QueueFullError` (the service's 503), so memory and
latency stay bounded under overload.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


Outputs = np.ndarray | tuple[np.ndarray, ...] | list[np.ndarray] | dict[str, np.ndarray]
"""What a model gives for a batch: one array, or several (a tuple, list or dict of arrays), each with one row
per image. A multi-output model goes through the batchers unchanged: every output is split the same way."""


BatchObserver = Callable[[int, float], None]  # (images in the batch, seconds the model took)


class Batcher:
    """Collects arrays of shape [n, ...] from many callers into batches for ``fn``.

    ``fn`` is called from ``instances`` threads at once, so it must be thread-safe
    (a compiled TensorFlow/JAX/torch inference call is).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Outputs],
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        queue_size: int = 256,
        instances: int = 1,
        name: str = "model",
        on_batch: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or queue_size < 1 or instances < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size, queue_size and instances must be >= 1, max_delay_ms >= 0")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self.instances = instances
        self.name = name
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._waiting: deque[_Item] = deque()  # guarded by _cond
        self._filling = False  # one worker at a time gathers a batch (guarded by _cond)
        self._busy = 0  # instances running a batch (guarded by _cond)
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._incoming = 0  # callers announced by infer(), still preparing their input (event loop only)
        self.in_worker = 0  # requests in batches being run and not yet answered
        self._closing = False

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the worker threads; results come back to the running loop."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self.instances):
            t = threading.Thread(target=self._work, name=f"model-{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    async def close(self) -> None:
        """Refuse new work, finish everything queued, then stop the worker threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        threads, self._threads = self._threads, []
        if threads:  # joined off the loop, which meanwhile delivers the last results
            await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
            await asyncio.sleep(0)  # the last deliveries were scheduled before the threads ended

    # --- submitting --------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batches it is running)."""
        return len(self._waiting)

    @property
    def preparing(self) -> int:
        """Requests admitted by :meth:`infer` whose input is still being prepared (decoded)."""
        return self._incoming

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._closing

    def check_capacity(self) -> None:
        """Refuse early, before a request spends work on decoding, when the queue is full or closed."""
        if not self.running:
            raise BatcherClosedError(f"{self.name}: the model is shutting down")
        if self.depth + self._incoming >= self.queue_size:
            raise QueueFullError(f"{self.name}: the queue is full ({self.queue_size} requests waiting); retry shortly")

    async def infer(self, prepare: Callable[[], Awaitable[np.ndarray]]) -> Outputs:
        """Admit a request, then await ``prepare()`` (e.g. a decode in a thread pool), then batch its array.

        The capacity check comes first, so an overloaded service refuses before
        decoding. Announcing the request while its input is being prepared lets
        a worker wait for it instead of starting a smaller batch.
        """
        self.check_capacity()
        self._incoming += 1
        try:
            x = await prepare()
        finally:
            self._incoming -= 1
        return await self.submit(x)

    async def submit(self, x: np.ndarray) -> Outputs:
        """Queue one request's array [n, ...] and wait for the model's outputs for it."""
        if not self.running:
            raise BatcherClosedError(f"{self.name}: the model is shutting down")
        item = _Item(x, self._loop.create_future())
        with self._cond:
            if len(self._waiting) >= self.queue_size:
                raise QueueFullError(f"{self.name}: the queue is full ({self.queue_size} requests waiting); "
                                     "retry shortly")
            self._waiting.append(item)
            self._cond.notify_all()
        return await item.future

    # --- the workers -------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        """The next batch (blocking until there is one); None once closing and drained."""
        with self._cond:
            while self._filling or not self._waiting:
                if self._closing and not self._waiting:
                    return None
                self._cond.wait()
            self._filling = True
            try:
                # With other instances idle, take only a fair share of what waits: they take the rest at once.
                idle_others = self.instances - self._busy - 1
                cap = self.max_batch_size
                if idle_others > 0:
                    cap = min(cap, max(1, -(-sum(len(it.x) for it in self._waiting) // (idle_others + 1))))
                first = self._waiting.popleft()
                batch, n = [first], len(first.x)
                deadline = first.t_enqueued + self.max_delay
                while n < cap:
                    if self._waiting:
                        if n + len(self._waiting[0].x) > cap:
                            break  # it starts the next batch; order is kept
                        nxt = self._waiting.popleft()
                        batch.append(nxt)
                        n += len(nxt.x)
                        continue
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or self._closing or self._incoming == 0:
                        break
                    self._cond.wait(remaining)
                self._busy += 1
                self.in_worker += n
                return batch
            finally:
                self._filling = False
                self._cond.notify_all()

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = [it for it in batch if not it.future.done()]  # a caller that gave up needs no answer
            outs = error = None
            seconds = 0.0
            try:
                if live:
                    outs, seconds = run_batch(self.fn, [it.x for it in live])
            except Exception as e:  # the model failed: every caller in the batch learns why
                log.exception("%s: model call failed on a batch of %d request(s)", self.name, len(live))
                error = e
            finally:
                with self._cond:
                    self._busy -= 1
                    self.in_worker -= sum(len(it.x) for it in batch)
                    self._cond.notify_all()
            if live:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, live, outs, seconds, error)
                except RuntimeError:  # the loop is closed: no caller is left to answer
                    log.warning("%s: event loop closed; dropped the answers to %d request(s)", self.name, len(live))

    def _deliver(self, live: list[_Item], outs: Outputs | None, seconds: float, error: Exception | None) -> None:
        if error is not None:
            for it in live:
                if not it.future.done():
                    it.future.set_exception(error)
            return
        if self.on_batch is not None:
            self.on_batch(sum(len(it.x) for it in live), seconds)
        for it, rows in zip(live, split_rows(outs, [len(it.x) for it in live]), strict=True):
            if not it.future.done():
                it.future.set_result(rows)


# --- one batch, whoever runs it (this batcher's workers, or a Ray replica's @serve.batch) ---------

def run_batch(fn: Callable[[np.ndarray], Outputs], xs: list[np.ndarray]) -> tuple[Outputs, float]:
    """``fn`` on the requests' arrays joined into one batch: (its outputs, the seconds it took)."""
    t0 = time.perf_counter()
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = fn(x)
    n = num_rows(y)
    if n != len(x):
        raise RuntimeError(f"model returned {n} rows for {len(x)} inputs")
    return y, time.perf_counter() - t0


def num_rows(y: Outputs) -> int:
    """Rows (images) in a batch's outputs; every output of a multi-output model must have as many."""
    arrays = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (tuple, list)) else [y]
    counts = {len(a) for a in arrays}
    if len(counts) != 1:
        raise RuntimeError(f"the model's outputs have different numbers of rows: {sorted(counts)}")
    return counts.pop()


def split_rows(y: Outputs, sizes: list[int]) -> list[Outputs]:
    """A batch's outputs cut back into each request's rows (``sizes``: images per request, in order)."""
    out, start = [], 0
    for n in sizes:
        end = start + n
        if isinstance(y, dict):
            out.append({k: v[start:end] for k, v in y.items()})
        elif isinstance(y, (tuple, list)):
            out.append(type(y)(v[start:end] for v in y))
        else:
            out.append(y[start:end])
        start = end
    return out
