"""A circuit breaker, so a device stops waiting on a cloud that keeps failing.

closed -> (``failure_threshold`` consecutive failures) -> open -> (``cooldown_s``)
-> half_open: exactly one probe request is let through; its success closes the
breaker, its failure opens it again for another cool-down. A probe that never
reports back (its thread died) is given up on after one more cool-down, so the
breaker cannot stay half-open forever. The clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerSnapshot:
    """The breaker as ``stats()`` reports it."""

    state: State
    consecutive_failures: int
    times_opened: int


class CircuitBreaker:
    """Stops calls to a failing cloud for a cool-down; thread-safe. See the module docstring."""

    def __init__(
        self, failure_threshold: int = 5, cooldown_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Args:
            failure_threshold: consecutive failures that open the breaker (>= 1).
            cooldown_s: how long it stays open before one probe request is let through.
            clock: a monotonic clock in seconds (injectable for tests).

        Raises:
            ValueError: a threshold under 1 or a negative cool-down.
        """
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.times_opened = 0

    @property
    def state(self) -> State:
        """The state as a caller would see it now (an open breaker past its cool-down reads half_open)."""
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
                return "half_open"
            return self._state

    @property
    def is_open(self) -> bool:
        """Would a request be refused now? Reads, never changes, the state (no lock: a stale read is harmless,
        since :meth:`allow` decides for real when the request is made)."""
        return self._state == "open" and self._clock() - self._opened_at < self.cooldown_s

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a request go out now? Call it only for a request you will make (it takes the half-open slot).

        Returns:
            True when closed; in half_open, True for the one probe only; False while open.
        """
        with self._lock:
            now = self._clock()
            if self._state == "closed":
                return True
            if self._state == "open":
                if now - self._opened_at < self.cooldown_s:
                    return False
                self._state = "half_open"
                self._probe_started = now
                return True
            # half_open: a probe is out; let another through only if it was lost
            if self._probe_started is not None and now - self._probe_started < max(self.cooldown_s, 1e-9):
                return False
            self._probe_started = now
            return True

    def record_success(self) -> None:
        """The request answered: close the breaker and forget the failures."""
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._probe_started = None

    def record_failure(self) -> None:
        """The request failed: count it, and open the breaker at the threshold (or at once in half_open)."""
        with self._lock:
            self._failures += 1
            if self._state == "half_open" or self._failures >= self.failure_threshold:
                if self._state != "open":
                    self.times_opened += 1
                self._state = "open"
                self._opened_at = self._clock()
                self._probe_started = None

    def release(self) -> None:
        """A request that was allowed but never sent: free the half-open probe slot."""
        with self._lock:
            if self._state == "half_open":
                self._probe_started = None
                self._state = "open"
                self._opened_at = self._clock() - self.cooldown_s  # eligible again at once

    def snapshot(self) -> BreakerSnapshot:
        """The breaker as a typed record.

        Returns:
            State, consecutive failures and how often it opened.
        """
        return BreakerSnapshot(self.state, self._failures, self.times_opened)
