"""What a hybrid model has done so far: counts by source and reason, latency percentiles, bytes, errors.

:class:`StatsRecorder` is fed one answer at a time on the hot path (one lock,
a few operations); :class:`Stats` is the typed snapshot ``stats()`` returns.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .breaker import BreakerSnapshot

LATENCY_KINDS = ("total", "edge", "cloud")


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds over the recent window; every figure is None when nothing was recorded."""

    n: int
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: np.ndarray) -> LatencySummary:
        """Summarize latencies.

        Args:
            values: milliseconds, any order.

        Returns:
            Count, mean and percentiles (all None for no values).
        """
        if not values.size:
            return cls(0)
        p50, p95, p99 = (float(v) for v in np.percentile(values, (50, 95, 99)))
        return cls(int(values.size), float(values.mean()), p50, p95, p99)


@dataclass(frozen=True)
class ModelState:
    """The edge model serving now."""

    loaded: bool
    backend: str | None
    sha256: str | None
    error: str | None


@dataclass(frozen=True)
class Stats:
    """A snapshot of a hybrid model's counters, latencies and configuration."""

    calls: int
    by_source: dict[str, int]
    by_reason: dict[str, int]
    bytes_sent: int
    errors: dict[str, int]
    latency_ms: dict[str, LatencySummary]  # total, edge, cloud
    offload_fraction: float
    mode: str
    metric: str
    threshold: float
    upload: str
    breaker: BreakerSnapshot | None
    model: ModelState

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts all the way down.

        Returns:
            The snapshot as JSON-ready dicts.
        """
        return asdict(self)


class StatsRecorder:
    """Counts and a window of recent latencies: per answer, one lock, one counter, one append."""

    def __init__(self, window: int = 10_000) -> None:
        """Args:
        window: how many recent answers the latency percentiles cover.
        """
        self._lock = threading.Lock()
        self._answers: Counter[tuple[str, str]] = Counter()  # (source, reason) -> answers
        self._errors: Counter[str] = Counter()
        self._bytes_sent = 0
        self._recent: deque[tuple[float | None, ...]] = deque(maxlen=window)  # latency by LATENCY_KINDS

    def record(self, source: str, reason: str, bytes_sent: int, latency_ms: Mapping[str, float]) -> None:
        """Count one final answer.

        Args:
            source: edge or cloud.
            reason: why.
            bytes_sent: what the answer cost in upload.
            latency_ms: its latencies by kind (total, edge, cloud; others are ignored).
        """
        recent = (latency_ms.get("total"), latency_ms.get("edge"), latency_ms.get("cloud"))
        with self._lock:
            self._answers[source, reason] += 1
            self._bytes_sent += bytes_sent
            self._recent.append(recent)

    def record_error(self, kind: str) -> None:
        """Count one failure.

        Args:
            kind: invalid_image, edge_inference, observer, or the reason nobody answered.
        """
        with self._lock:
            self._errors[kind] += 1

    def snapshot(
        self, *, mode: str, metric: str, threshold: float, upload: str, breaker: BreakerSnapshot | None,
        model: ModelState,
    ) -> Stats:
        """The counters now, with the configuration the caller adds.

        Args:
            mode: the model's mode.
            metric: its routing metric.
            threshold: its routing threshold.
            upload: what it uploads.
            breaker: its breaker's state, or None without a cloud.
            model: the edge model serving now.

        Returns:
            A typed snapshot.
        """
        with self._lock:
            answers, sent = dict(self._answers), self._bytes_sent
            errors = {str(k): n for k, n in self._errors.items()}
            recent = np.array(self._recent, dtype=float).reshape(-1, len(LATENCY_KINDS))  # None -> nan
        by_source: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        for (source, reason), n in answers.items():
            by_source[source] += n
            by_reason[str(reason)] += n
        calls = sum(answers.values())
        latency = {k: LatencySummary.of(col[~np.isnan(col)]) for k, col in zip(LATENCY_KINDS, recent.T, strict=True)}
        return Stats(
            calls=calls, by_source=dict(by_source), by_reason=dict(by_reason), bytes_sent=sent, errors=errors,
            latency_ms=latency, offload_fraction=by_source.get("cloud", 0) / calls if calls else 0.0,
            mode=mode, metric=metric, threshold=threshold, upload=upload, breaker=breaker, model=model,
        )
