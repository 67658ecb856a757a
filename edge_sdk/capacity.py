"""Capacity probes: may the device run the edge model right now?

A probe is anything with a ``name`` and a ``check() -> ProbeResult``; add your
own (battery, temperature) by writing one. The built-in ones read psutil at
most every ``cache_s`` seconds, so asking on every call stays cheap.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol, runtime_checkable


class ProbeResult(NamedTuple):
    """A probe's answer: may the edge model run now, and the reading behind it (a tuple: cheap per call)."""

    ok: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


@runtime_checkable
class Probe(Protocol):
    """Anything with a ``name`` and a ``check()``: may the edge model run now?"""

    name: str

    def check(self) -> ProbeResult:
        """Returns:
        Whether the edge may run now, and the reading behind the answer (asked on every call: keep it cheap).
        """
        ...


class _Cached:
    """A reading, and the probe's result for it, refreshed at most every ``ttl`` seconds (or when the threshold
    changes); in between, a check is one clock read. Benign races: two threads may both refresh."""

    def __init__(self, read: Callable[[], float], ttl: float, judge: Callable[[float, float], ProbeResult],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._ttl, self._judge, self._clock = read, ttl, judge, clock
        self._at = float("-inf")
        self._result = ProbeResult(True)

    def get(self, threshold: float) -> ProbeResult:
        now = self._clock()
        result = self._result
        if now - self._at >= self._ttl or result.threshold != threshold:
            result = self._result = self._judge(float(self._read()), threshold)
            self._at = now
        return result


class MemoryProbe:
    """Enough free (available) memory to run an inference without swapping."""

    name = "memory"

    def __init__(
        self, min_available_mb: float = 64.0, cache_s: float = 0.25, read: Callable[[], float] | None = None
    ) -> None:
        """Args:
        min_available_mb: below this much available memory the edge model does not run.
        cache_s: how long one reading is reused.
        read: the reading in MiB (default: psutil's available memory).
        """
        import psutil

        self.threshold = float(min_available_mb)
        self._mb = _Cached(read or (lambda: psutil.virtual_memory().available / 2**20), cache_s,
                           lambda v, t: ProbeResult(v >= t, v, t, "available memory, MiB"))

    def check(self) -> ProbeResult:
        """Returns:
        ok when the available memory is at least the threshold.
        """
        return self._mb.get(self.threshold)


class CpuLoadProbe:
    """1-minute load average per core under a limit: a busy device offloads instead of queueing."""

    name = "cpu"

    def __init__(
        self, max_load_per_core: float = 4.0, cache_s: float = 0.5, read: Callable[[], float] | None = None
    ) -> None:
        """Args:
        max_load_per_core: above this 1-minute load average per core the edge model does not run.
        cache_s: how long one reading is reused.
        read: the load per core (default: psutil's load average over the core count).
        """
        import psutil

        cores = psutil.cpu_count() or os.cpu_count() or 1
        self.threshold = float(max_load_per_core)
        self._load = _Cached(read or (lambda: psutil.getloadavg()[0] / cores), cache_s,
                             lambda v, t: ProbeResult(v <= t, v, t, "1-min load average per core"))

    def check(self) -> ProbeResult:
        """Returns:
        ok when the load per core is at most the threshold.
        """
        return self._load.get(self.threshold)


class InflightProbe:
    """Local inferences running at once, against a limit. The classifier wraps each edge run in ``track()``."""

    name = "inflight"

    def __init__(self, limit: int | None = None) -> None:
        """Args:
        limit: inferences at once (default: twice the CPU count, at least 2).
        """
        self.threshold = int(limit if limit is not None else max(2, 2 * (os.cpu_count() or 1)))
        self._n = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._n

    def enter(self) -> None:
        """An inference starts."""
        with self._lock:
            self._n += 1

    def exit(self) -> None:
        """An inference ended."""
        with self._lock:
            self._n -= 1

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the inference inside the ``with`` block.

        Returns:
            A context manager.
        """
        self.enter()
        try:
            yield
        finally:
            self.exit()

    def check(self) -> ProbeResult:
        """Returns:
        ok when fewer inferences than the limit are running.
        """
        n = self._n
        return ProbeResult(n < self.threshold, float(n), float(self.threshold), "local inferences in flight")


class ModelLoadProbe:
    """Fails when the edge model did not load; ``is_loaded`` is asked on each check."""

    name = "model"

    def __init__(self, is_loaded: Callable[[], bool], error: Callable[[], str | None] = lambda: None) -> None:
        """Args:
        is_loaded: asked on each check.
        error: why not, for the result's detail.
        """
        self._is_loaded = is_loaded
        self._error = error

    def check(self) -> ProbeResult:
        """Returns:
        ok when the model is loaded; else the error as detail.
        """
        ok = bool(self._is_loaded())
        return ProbeResult(ok, 1.0 if ok else 0.0, 1.0, "" if ok else (self._error() or "edge model not loaded"))


def default_probes(
    *, min_available_mb: float = 64.0, max_load_per_core: float = 4.0, max_inflight: int | None = None
) -> list[Probe]:
    """The built-in probes.

    Args:
        min_available_mb: see :class:`MemoryProbe`.
        max_load_per_core: see :class:`CpuLoadProbe`.
        max_inflight: see :class:`InflightProbe`.

    Returns:
        Memory, CPU load and in-flight probes, in that order.
    """
    return [MemoryProbe(min_available_mb), CpuLoadProbe(max_load_per_core), InflightProbe(max_inflight)]


def first_failure(probes: Sequence[Probe]) -> tuple[str, ProbeResult] | None:
    """Ask the probes in order.

    Args:
        probes: the probes.

    Returns:
        The first that says no, with its result (a probe that raises counts as a no), or None.
    """
    for p in probes:
        try:
            r = p.check()
        except Exception as e:  # a user's probe must not take predict down
            return p.name, ProbeResult(False, None, None, f"probe raised {type(e).__name__}: {e}")
        if not r.ok:
            return p.name, r
    return None
