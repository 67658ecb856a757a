"""When to trust the edge answer and when to ask the cloud: pure functions, no I/O.

Everything here is a function of its arguments, so the whole routing table can
be tested without a model, a network or a clock.

Reasons a :class:`Decision` (and so a ``Prediction``) carries:

=====================  ==========================================================
``confident``          edge answer met the threshold (source "edge")
``low_confidence``     edge answer was unsure, so the cloud was asked
``no_capacity:<name>`` a capacity probe (memory, cpu, inflight, ...) said no to
                       running the edge model, so the cloud was asked
``model_unavailable``  the edge model is not loaded or failed to run
``edge_only``          mode edge_only: the edge answers, whatever its confidence
``cloud_only``         mode cloud_only: the cloud answers
``cloud_unavailable``  the cloud was wanted but no cloud URL is configured
``circuit_open``       the cloud was wanted but the circuit breaker is open
``deadline``           the cloud was wanted but the call's deadline left no time
                       (or ran out while waiting for it)
``cloud_error:<cause>`` the cloud call failed; cause is the CloudError reason
                       (connection, timeout, http_500, http_401, overloaded,
                       bad_response, ...)
=====================  ==========================================================

A reason from the last four groups on a source="edge" answer means the edge
answer was unsure (or unchecked) but the cloud could not help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["max_prob", "margin", "entropy"]
Mode = Literal["auto", "edge_only", "cloud_only"]
Action = Literal["edge", "cloud", "fail"]
METRICS: tuple[str, ...] = ("max_prob", "margin", "entropy")
MODES: tuple[str, ...] = ("auto", "edge_only", "cloud_only")
_EPS = 1e-12


def confidence(probs: np.ndarray, metric: str = "max_prob") -> np.ndarray | float:
    """The confidence score of one probability vector [C] (a float) or a batch [N, C] (an array [N]).

    max_prob: p1; margin: p1 - p2; entropy: -sum p ln p with p clipped at 1e-12
    (lower is more confident).
    """
    if metric == "max_prob" and isinstance(probs, np.ndarray) and probs.ndim == 1 and probs.shape[0] >= 2:
        return float(probs.max())  # the per-call fast path
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[-1] < 2:
        raise ValueError(f"probabilities must be [C] or [N, C] with C >= 2, got shape {p.shape}")
    if metric == "max_prob":
        out = p.max(axis=-1)
    elif metric == "margin":
        top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
        out = top2[..., 1] - top2[..., 0]
    elif metric == "entropy":
        q = np.clip(p, _EPS, 1.0)
        out = -(q * np.log(q)).sum(axis=-1)
    else:
        raise ValueError(f"unknown confidence metric {metric!r}; choose from {', '.join(METRICS)}")
    return float(out) if p.ndim == 1 else out


def is_confident(score, threshold: float, metric: str = "max_prob"):
    """Entropy is confident at or below the threshold; max_prob and margin at or above it."""
    if metric not in METRICS:
        raise ValueError(f"unknown confidence metric {metric!r}; choose from {', '.join(METRICS)}")
    return score <= threshold if metric == "entropy" else score >= threshold


@dataclass(frozen=True)
class Decision:
    action: Action  # "edge": answer from the edge; "cloud": ask the cloud; "fail": nobody can answer
    reason: str


def edge_skip_reason(failed_probe: str | None, model_loaded: bool) -> str | None:
    """Why the edge model must not run now, or None when it may."""
    if not model_loaded or failed_probe == "model":
        return "model_unavailable"
    if failed_probe:
        return f"no_capacity:{failed_probe}"
    return None


def route(
    *,
    mode: str,
    edge_score: float | None,
    threshold: float,
    metric: str = "max_prob",
    edge_skip: str | None = None,
    cloud_configured: bool = True,
    breaker_allows: bool = True,
    time_left_s: float = float("inf"),
    min_cloud_s: float = 0.005,
) -> Decision:
    """Route one image, given what the edge said (``edge_score`` None: it did not run, ``edge_skip`` says why).

    The breaker input is whether it would let a request through now; the caller
    asks it only when this function could choose the cloud.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    have_edge = edge_score is not None
    if mode == "edge_only":
        return Decision("edge", "edge_only") if have_edge else Decision("fail", edge_skip or "model_unavailable")
    if mode == "auto":
        if have_edge and is_confident(edge_score, threshold, metric):
            return Decision("edge", "confident")
        wanted = "low_confidence" if have_edge else (edge_skip or "model_unavailable")
    else:
        wanted = "cloud_only"
    blocked = cloud_blocker(cloud_configured, breaker_allows, time_left_s, min_cloud_s)
    if blocked is None:
        return Decision("cloud", wanted)
    return Decision("edge" if have_edge and mode == "auto" else "fail", blocked)


def cloud_blocker(cloud_configured: bool, breaker_allows: bool, time_left_s: float, min_cloud_s: float) -> str | None:
    """Why a cloud call cannot be made now, or None when it can."""
    if not cloud_configured:
        return "cloud_unavailable"
    if time_left_s < min_cloud_s:
        return "deadline"
    if not breaker_allows:
        return "circuit_open"
    return None


def after_cloud_failure(mode: str, have_edge: bool, error_reason: str) -> Decision:
    """The cloud was asked and failed: fall back to the edge answer if there is one."""
    plain = ("deadline", "circuit_open", "cloud_unavailable")
    reason = error_reason if error_reason in plain else f"cloud_error:{error_reason}"
    if have_edge and mode == "auto":
        return Decision("edge", reason)
    return Decision("fail", reason)
