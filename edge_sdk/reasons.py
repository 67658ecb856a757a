"""Why an answer came from where it did: :class:`Reason`, a string enum.

A reason compares equal to its text (``Reason.CONFIDENT == "confident"``), so
logs, JSON and code that matched strings keep working. Two families carry a
detail after a colon: ``no_capacity:<probe>`` (a capacity probe said no to
running the edge model) and ``cloud_error:<cause>`` (the cloud call failed;
the cause is the :class:`~edge_sdk.errors.CloudError` reason). Their members
are made on first use, like a Flag's pseudo-members, so
``Reason("no_capacity:battery")`` works for any probe name, and control flow
asks :attr:`Reason.is_no_capacity` instead of testing the text.

=====================  ==========================================================
``confident``          edge answer met the threshold (source "edge")
``low_confidence``     edge answer was unsure, so the cloud was asked
``out_of_distribution`` the frame is unlike the training data (the bundle's
                       out-of-distribution score): the cloud was asked, or the
                       device answered "unknown" (option out_of_distribution)
``no_capacity:<name>`` a capacity probe (memory, cpu, inflight, ...) said no to
                       running the edge model, so the cloud was asked
``model_unavailable``  the edge model is not loaded or failed to run
``edge_only``          mode edge_only: the edge answers, whatever its confidence
``cloud_only``         mode cloud_only: the cloud answers
``cloud_unavailable``  the cloud was wanted but no cloud URL is configured
``circuit_open``       the cloud was wanted but the circuit breaker is open
``deadline``           the cloud was wanted but the call's deadline left no time
                       (or ran out while waiting for it)
``cloud_error:<cause>`` the cloud call failed (connection, timeout, http_500,
                       http_401, overloaded, bad_response, ...)
=====================  ==========================================================

A reason from the last four rows on a source="edge" answer means the edge
answer was unsure (or unchecked) but the cloud could not help.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """enum.StrEnum for Python 3.10: members are their values, and print as them."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


NO_CAPACITY = "no_capacity"
CLOUD_ERROR = "cloud_error"
_FAMILIES = (NO_CAPACITY, CLOUD_ERROR)


class Reason(StrEnum):
    """Why a :class:`~edge_sdk.hybrid.Prediction` has its source; see the module docstring for the table."""

    CONFIDENT = "confident"
    LOW_CONFIDENCE = "low_confidence"
    MODEL_UNAVAILABLE = "model_unavailable"
    EDGE_ONLY = "edge_only"
    CLOUD_ONLY = "cloud_only"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    CIRCUIT_OPEN = "circuit_open"
    DEADLINE = "deadline"
    OUT_OF_DISTRIBUTION = "out_of_distribution"

    @classmethod
    def no_capacity(cls, probe: str) -> Reason:
        """The reason for a capacity probe that said no.

        Args:
            probe: the probe's name (memory, cpu, inflight, battery, ...).

        Returns:
            ``no_capacity:<probe>``.
        """
        return cls(f"{NO_CAPACITY}:{probe}")

    @classmethod
    def cloud_failed(cls, cause: str) -> Reason:
        """The reason for a failed cloud call.

        Args:
            cause: the CloudError's reason (connection, timeout, http_500, deadline, ...).

        Returns:
            ``cloud_error:<cause>``; causes that are reasons of their own (deadline, circuit_open,
            cloud_unavailable) stay plain.
        """
        if cause in _PLAIN_CLOUD_FAILURES:
            return cls(cause)
        return cls(f"{CLOUD_ERROR}:{cause}")

    @property
    def family(self) -> str:
        """The text before the colon (``no_capacity``, ``cloud_error``), or the whole reason."""
        return self.value.partition(":")[0]

    @property
    def is_no_capacity(self) -> bool:
        """A capacity probe said no: the edge could still run if nothing else can answer."""
        return self.family == NO_CAPACITY

    @property
    def is_cloud_error(self) -> bool:
        return self.family == CLOUD_ERROR

    @classmethod
    def _missing_(cls, value: object) -> Reason | None:
        """``no_capacity:<probe>`` and ``cloud_error:<cause>``: made once, then found like any member."""
        if not isinstance(value, str):
            return None
        family, sep, detail = value.partition(":")
        if not sep or family not in _FAMILIES or not detail or "\n" in detail:
            return None
        member = str.__new__(cls, value)
        member._name_ = f"{family.upper()}_{detail.upper()}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]


_PLAIN_CLOUD_FAILURES = frozenset({"deadline", "circuit_open", "cloud_unavailable"})
