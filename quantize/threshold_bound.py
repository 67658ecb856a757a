"""A routing threshold that holds on new data: an upper confidence bound on the hybrid's gap to the cloud.

For a threshold t, each calibration image either stays on the edge or goes to
the cloud. The hybrid's accuracy gap to the cloud is

    gap(t) = P(kept and the edge wrong and the cloud right) - P(kept and the edge right and the cloud wrong)
           = p_harm(t) - p_help(t).

With probability at least 1 - delta, p_harm <= U (Clopper-Pearson upper bound at
delta/2) and p_help >= L (Clopper-Pearson lower bound at delta/2), so
``gap <= U - L`` (the union bound). That bound is computed at each threshold of a
grid (offload 100%, 99%, ..., 0%) and the thresholds are tested in a fixed
order at level delta each, stopping at the first that fails: fixed-sequence
testing, which controls the chance that the chosen threshold's true gap exceeds
the target at delta without a union bound over the grid (Learn then Test,
Angelopoulos et al. 2021, "Learn then Test: Calibrating Predictive Algorithms
to Achieve Risk Control"). The grid, the metric and the order are fixed on a
*fit* split the calibration data is not part of, and the sequence walks from
most offload towards less. It starts next to "offload everything" when the
calibration set is large enough for the first tests to pass: they keep a
handful of images on the edge, where no image helps and the bound is its floor,
1 - (delta/2)^(1/n), about 3/n (over a 0.5-point target below n = 600). A
smaller set starts where the fit split's hybrid is most accurate instead.

Offloading everything is always allowed (its gap is exactly 0): when the first
test fails, the calibration set is too small for the target, everything is
offloaded, and the result says so. The bound is never below the point
estimate, so the chosen threshold never offloads less than the point estimate's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """The exact one-sided (1 - alpha) upper confidence bound on a binomial rate, k successes in n."""
    from scipy.stats import beta

    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """The exact one-sided (1 - alpha) lower confidence bound on a binomial rate, k successes in n."""
    from scipy.stats import beta

    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def gap_upper_bound(harm: int, help_: int, n: int, delta: float) -> float:
    """An upper bound on the true gap, valid with probability >= 1 - delta (see the module docstring)."""
    return clopper_pearson_upper(harm, n, delta / 2) - clopper_pearson_lower(help_, n, delta / 2)


def offload_grid(fit_scores: np.ndarray, lower_is_confident: bool, step: float = 0.01) -> np.ndarray:
    """Thresholds at offload 100%, 100% - step, ..., 0% of ``fit_scores`` (data the calibration set is not part of).

    Returned in testing order (most offload first). An image is kept on the edge when its score is
    at or below the threshold (``lower_is_confident``) or at or above it.
    """
    s = np.asarray(fit_scores, np.float64)
    keep = np.arange(0.0, 1.0 + step / 2, step)  # share kept on the edge: 0, step, ..., 1
    q = np.quantile(s, keep if lower_is_confident else 1.0 - keep)
    pad = max(1.0, float(s.max() - s.min()))  # the ends lie well outside: new data beyond the fit's range stays put
    q[0] = (s.min() - pad) if lower_is_confident else (s.max() + pad)  # keeps nothing
    q[-1] = (s.max() + pad) if lower_is_confident else (s.min() - pad)  # keeps everything
    return q


@dataclass
class Step:
    """One threshold of the sequence, on the calibration data."""

    threshold: float
    offload: float
    estimate: float  # empirical gap (fraction)
    bound: float  # upper confidence bound on the gap (fraction)
    harm: int
    help: int


def evaluate_steps(scores: np.ndarray, edge_ok: np.ndarray, cloud_ok: np.ndarray, grid: np.ndarray,
                   lower_is_confident: bool, delta: float) -> list[Step]:
    """The estimate and the bound at every threshold of ``grid`` on the calibration data."""
    from scipy.stats import beta

    s = np.asarray(scores, np.float64)
    e, c = np.asarray(edge_ok, bool), np.asarray(cloud_ok, bool)
    n = len(s)
    t = np.asarray(grid, np.float64)[:, None]
    kept = s[None, :] <= t if lower_is_confident else s[None, :] >= t  # (thresholds, images)
    harm = (kept & (c & ~e)[None, :]).sum(axis=1)
    help_ = (kept & (e & ~c)[None, :]).sum(axis=1)
    a = delta / 2
    with np.errstate(invalid="ignore", divide="ignore"):  # the k = n and k = 0 ends are set exactly below
        upper = np.where(harm == n, 1.0, beta.ppf(1 - a, harm + 1, n - harm))
        lower = np.where(help_ == 0, 0.0, beta.ppf(a, help_, n - help_ + 1))
    offload = 1.0 - kept.mean(axis=1)
    return [Step(float(t[i, 0]), float(offload[i]), (int(harm[i]) - int(help_[i])) / n, float(upper[i] - lower[i]),
                 int(harm[i]), int(help_[i])) for i in range(len(t))]


@dataclass
class Selection:
    """The threshold chosen for one metric, by the bound and (for comparison) by the point estimate."""

    metric: str
    threshold: float
    offload: float
    estimate: float
    bound: float
    n: int
    delta: float  # this metric's share of delta
    target_gap: float  # fraction
    index: int  # the chosen point of the grid (0: offload everything)
    start: int  # where the fixed sequence started
    point_threshold: float  # lowest-offload threshold whose estimate meets the target (no guarantee)
    point_offload: float
    too_small: bool  # the first step failed: the calibration set cannot certify the target, so everything goes

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def select_threshold(metric: str, scores: np.ndarray, edge_ok: np.ndarray, cloud_ok: np.ndarray, grid: np.ndarray,
                     *, lower_is_confident: bool, target_gap: float, delta: float, start: int = 0) -> Selection:
    """Fixed-sequence testing down ``grid`` (ordered most offload first) from ``start``: the last threshold before
    the first whose bound exceeds ``target_gap`` (a fraction). Grid point 0 (offload everything) needs no test."""
    steps = evaluate_steps(scores, edge_ok, cloud_ok, grid, lower_is_confident, delta)
    chosen = 0
    for i in range(max(start, 1), len(steps)):
        if steps[i].bound > target_gap:
            break
        chosen = i
    met = [i for i, st in enumerate(steps) if st.estimate <= target_gap]
    point = min(met, key=lambda i: (steps[i].offload, steps[i].estimate))
    st = steps[chosen]
    bound = 0.0 if chosen == 0 else st.bound  # offloading everything: the gap is exactly 0
    return Selection(metric, st.threshold, st.offload, st.estimate, bound, len(scores), delta, target_gap, chosen,
                     start, steps[point].threshold, steps[point].offload, chosen == 0 and len(steps) > 1)


def start_index(steps: Sequence[Step], target_gap: float, n: int, delta: float) -> int:
    """Where the sequence starts: the first test (grid point 1, next to offloading everything) when the bound's
    floor with ``n`` calibration images, 1 - (delta/2)^(1/n), is within the target; else, since the first tests
    would fail at that floor, the grid point with the fit split's most accurate hybrid (lowest estimated gap;
    ties: the least offload), where images the edge gets right and the cloud wrong can offset the misses."""
    if len(steps) < 2 or clopper_pearson_upper(0, n, delta / 2) <= target_gap:
        return min(1, len(steps) - 1)
    return min(range(len(steps)), key=lambda i: (steps[i].estimate, steps[i].offload))


def point_offload(steps: Sequence[Step], target_gap: float) -> float:
    """The least offload whose estimated gap meets the target (the point estimate's choice)."""
    return min(st.offload for st in steps if st.estimate <= target_gap)


@dataclass
class Split:
    """Routing scores and who is right, on one split: ``metric -> (scores, lower_is_confident)``."""

    scores: Mapping[str, tuple[np.ndarray, bool]]
    edge_ok: np.ndarray
    cloud_ok: np.ndarray


def select_certified(fit: Split, cal: Split, *, target_gap: float, delta: float,
                     order: Sequence[str] | None = None) -> tuple[Selection, dict[str, float]]:
    """Choose the metric, grid and starting point on ``fit``; certify the threshold on ``cal`` at ``delta``.

    The metric is the one whose point estimate on ``fit`` reaches the target with the least offload (ties:
    the earlier in ``order``). Returns the selection and each metric's offload on ``fit``.
    """
    names = list(order or fit.scores)
    plans = {}
    for m in names:
        scores, lower = fit.scores[m]
        grid = offload_grid(scores, lower)
        steps = evaluate_steps(scores, fit.edge_ok, fit.cloud_ok, grid, lower, delta)
        plans[m] = (grid, start_index(steps, target_gap, len(cal.edge_ok), delta), point_offload(steps, target_gap))
    best = min(names, key=lambda m: (plans[m][2], names.index(m)))
    grid, start, _ = plans[best]
    cal_scores, lower = cal.scores[best]
    sel = select_threshold(best, cal_scores, cal.edge_ok, cal.cloud_ok, grid, lower_is_confident=lower,
                           target_gap=target_gap, delta=delta, start=start)
    return sel, {m: p[2] for m, p in plans.items()}
