"""When to trust the edge answer and when to ask the cloud: pure functions, no I/O.

Everything here is a function of its arguments, so the whole routing table can
be tested without a model, a network or a clock. The reasons a
:class:`Decision` carries are :class:`edge_sdk.reasons.Reason` members.

The table is :func:`decide`: given the mode, the edge's :class:`Verdict` (or
why the edge did not run) and why a cloud call cannot be made now (asked only
when the cloud could be chosen), it says who answers. :func:`route` is the same
table for a classifier's confidence score and threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast, get_args

import numpy as np

from .reasons import Reason

Metric = Literal["max_prob", "margin", "entropy"]
Mode = Literal["auto", "edge_only", "cloud_only"]
Action = Literal["edge", "cloud", "fail"]
METRICS: tuple[str, ...] = get_args(Metric)
MODES: tuple[str, ...] = get_args(Mode)
_EPS = 1e-12


def one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """Args:
        value: a name.
        choices: the names allowed.
        what: what the name is, for the message.

    Returns:
        ``value``.

    Raises:
        ValueError: it is not one of ``choices`` (the message names them).
    """
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")
    return value


def check_mode(mode: str) -> Mode:
    """Args:
        mode: a mode name.

    Returns:
        ``mode``, typed as a :data:`Mode`.

    Raises:
        ValueError: it is not one of :data:`MODES` (the message names them).
    """
    return cast(Mode, one_of(mode, MODES, "mode"))


def check_metric(metric: str) -> Metric:
    """Args:
        metric: a confidence metric's name.

    Returns:
        ``metric``, typed as a :data:`Metric`; a ValueError (naming :data:`METRICS`) if it is none.
    """
    return cast(Metric, one_of(metric, METRICS, "confidence metric"))


def confidence(probs: np.ndarray, metric: str = "max_prob") -> np.ndarray | float:
    """The confidence score of one probability vector [C] (a float) or a batch [N, C] (an array [N]).

    max_prob: p1; margin: p1 - p2; entropy: -sum p ln p with p clipped at 1e-12
    (lower is more confident).

    Args:
        probs: probabilities, [C] or [N, C].
        metric: max_prob, margin or entropy.

    Returns:
        A float for [C], an array [N] for [N, C].

    Raises:
        ValueError: an unknown metric, or probabilities that are not [C] or [N, C] with C >= 2.
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


def is_confident(score: Any, threshold: float, metric: str = "max_prob") -> Any:
    """Whether a score is good enough: entropy at or below the threshold, max_prob and margin at or above it.

    Args:
        score: a score or an array of scores from :func:`confidence`.
        threshold: the routing threshold.
        metric: the metric the score and the threshold are in.

    Returns:
        A bool, or a bool array shaped like ``score``.

    Raises:
        ValueError: an unknown metric.
    """
    check_metric(metric)
    return score <= threshold if metric == "entropy" else score >= threshold


class Verdict(NamedTuple):
    """What the edge's output says about itself: its score, whether that is good enough, and if not, why
    the cloud is wanted (``low_confidence``; a scorer may give another reason, e.g. out of distribution)."""

    score: float
    confident: bool
    unsure: Reason = Reason.LOW_CONFIDENCE


class ConfidenceScorer:
    """A classifier's scorer: a confidence metric of the edge's probabilities against a threshold.

    This is the routing path's pluggable score step (see :class:`edge_sdk.routing.Scorer`); a metric
    that needs more than the probabilities (a learned deferral model) is another scorer, not a branch here.
    """

    __slots__ = ("metric", "threshold", "_max_prob")

    def __init__(self, metric: str, threshold: float) -> None:
        """Args:
            metric: max_prob, margin or entropy.
            threshold: the score at which the edge answers alone.

        Raises:
            ValueError: an unknown metric.
        """
        self.metric: Metric = check_metric(metric)
        self.threshold = float(threshold)
        self._max_prob = metric == "max_prob"

    def __call__(self, probs: np.ndarray) -> Verdict:
        if self._max_prob:  # the per-call fast path: a short list's max beats a numpy reduction's overhead
            score = max(probs.tolist()) if probs.shape[0] <= 64 else float(probs.max())
            return Verdict(score, score >= self.threshold)
        score = float(confidence(probs, self.metric))
        return Verdict(score, bool(is_confident(score, self.threshold, self.metric)))

    def __repr__(self) -> str:
        return f"ConfidenceScorer({self.metric!r}, {self.threshold!r})"


@dataclass(frozen=True)
class Decision:
    action: Action  # "edge": answer from the edge; "cloud": ask the cloud; "fail": nobody can answer
    reason: Reason


_CONFIDENT = Decision("edge", Reason.CONFIDENT)
_EDGE_ONLY = Decision("edge", Reason.EDGE_ONLY)


def edge_skip_reason(failed_probe: str | None, model_loaded: bool) -> Reason | None:
    """Why the edge model must not run now.

    Args:
        failed_probe: the name of the first capacity probe that said no, or None.
        model_loaded: whether there is an edge model at all.

    Returns:
        ``model_unavailable``, ``no_capacity:<probe>``, or None when the edge may run.
    """
    if not model_loaded or failed_probe == "model":
        return Reason.MODEL_UNAVAILABLE
    if failed_probe:
        return Reason.no_capacity(failed_probe)
    return None


def decide(
    mode: Mode, verdict: Verdict | None, edge_skip: Reason | None, why_not_cloud: Callable[[], Reason | None]
) -> Decision:
    """Who answers one image.

    Args:
        mode: auto, edge_only or cloud_only (already checked).
        verdict: the edge output's verdict; None when the edge did not run (``edge_skip`` says why).
        edge_skip: why the edge did not run, when it did not.
        why_not_cloud: asked only when the cloud could be chosen: why a cloud call cannot be made now,
            or None when it can (see :func:`cloud_blocker`).

    Returns:
        The action and its reason.
    """
    if mode == "edge_only":
        return _EDGE_ONLY if verdict is not None else Decision("fail", edge_skip or Reason.MODEL_UNAVAILABLE)
    if mode == "auto":
        if verdict is not None and verdict.confident:
            return _CONFIDENT
        wanted = verdict.unsure if verdict is not None else (edge_skip or Reason.MODEL_UNAVAILABLE)
    else:
        wanted = Reason.CLOUD_ONLY
    blocked = why_not_cloud()
    if blocked is None:
        return Decision("cloud", wanted)
    return Decision("edge" if verdict is not None and mode == "auto" else "fail", blocked)


def route(
    *,
    mode: str,
    edge_score: float | None,
    threshold: float,
    metric: str = "max_prob",
    edge_skip: Reason | None = None,
    cloud_configured: bool = True,
    breaker_allows: bool = True,
    time_left_s: float = float("inf"),
    min_cloud_s: float = 0.005,
) -> Decision:
    """Route one image by a confidence score (``edge_score`` None: the edge did not run, ``edge_skip`` says why).

    The same table as :func:`decide`, for callers that have a score and a threshold rather than a verdict.

    Args:
        mode: auto, edge_only or cloud_only.
        edge_score: the edge output's score, or None when the edge did not run.
        threshold: the routing threshold, in ``metric``.
        metric: max_prob, margin or entropy.
        edge_skip: why the edge did not run, when it did not.
        cloud_configured: whether there is a cloud to ask.
        breaker_allows: whether the circuit breaker would let a request through now.
        time_left_s: what is left of the call's deadline.
        min_cloud_s: a cloud call is not started with less time left than this.

    Returns:
        The action and its reason.

    Raises:
        ValueError: an unknown mode or metric.
    """
    verdict = None if edge_score is None else Verdict(edge_score, bool(is_confident(edge_score, threshold, metric)))
    return decide(
        check_mode(mode), verdict, edge_skip,
        lambda: cloud_blocker(cloud_configured, breaker_allows, time_left_s, min_cloud_s),
    )


def cloud_blocker(
    cloud_configured: bool, breaker_allows: bool, time_left_s: float, min_cloud_s: float
) -> Reason | None:
    """Why a cloud call cannot be made now.

    Args:
        cloud_configured: whether there is a cloud to ask.
        breaker_allows: whether the circuit breaker would let a request through now.
        time_left_s: what is left of the call's deadline.
        min_cloud_s: a cloud call is not started with less time left than this.

    Returns:
        ``cloud_unavailable``, ``deadline`` or ``circuit_open``; None when a call can be made.
    """
    if not cloud_configured:
        return Reason.CLOUD_UNAVAILABLE
    if time_left_s < min_cloud_s:
        return Reason.DEADLINE
    if not breaker_allows:
        return Reason.CIRCUIT_OPEN
    return None


def after_cloud_failure(mode: str, have_edge: bool, error_reason: str) -> Decision:
    """The cloud was asked and failed: fall back to the edge answer if there is one.

    Args:
        mode: the mode (only auto falls back).
        have_edge: whether there is an edge answer to fall back to.
        error_reason: the CloudError's reason (connection, timeout, http_500, deadline, ...).

    Returns:
        ("edge", why) to answer from the edge, or ("fail", why) when nobody can answer.
    """
    reason = Reason.cloud_failed(error_reason)
    if have_edge and mode == "auto":
        return Decision("edge", reason)
    return Decision("fail", reason)
