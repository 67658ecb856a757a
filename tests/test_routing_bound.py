"""The threshold with a guarantee (quantize.threshold_bound): hand-computed cases, the point-estimate ordering,
the small-sample fallback, and the guarantee itself in simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from quantize.threshold_bound import (
    Split,
    clopper_pearson_lower,
    clopper_pearson_upper,
    evaluate_steps,
    gap_upper_bound,
    offload_grid,
    select_certified,
    select_threshold,
    start_index,
)


def test_clopper_pearson_closed_forms():
    # zero successes: (1 - U)^n = alpha; all successes: L^n = alpha
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20))
    assert clopper_pearson_lower(20, 20, 0.05) == pytest.approx(0.05 ** (1 / 20))
    assert clopper_pearson_lower(0, 20, 0.05) == 0.0 and clopper_pearson_upper(20, 20, 0.05) == 1.0


@pytest.mark.parametrize("k,n", [(1, 10), (3, 100), (17, 750)])
def test_clopper_pearson_is_the_exact_binomial_tail(k, n):
    u, lo = clopper_pearson_upper(k, n, 0.05), clopper_pearson_lower(k, n, 0.05)
    assert binom.cdf(k, n, u) == pytest.approx(0.05, abs=1e-9)  # P(X <= k | p = U) = alpha
    assert binom.sf(k - 1, n, lo) == pytest.approx(0.05, abs=1e-9)  # P(X >= k | p = L) = alpha
    assert lo < k / n < u


def test_gap_bound_by_hand():
    # n = 100, no harm, no help, delta = 0.1: U = 1 - 0.05^(1/100) = 0.029513..., L = 0
    assert gap_upper_bound(0, 0, 100, 0.1) == pytest.approx(1 - math.exp(math.log(0.05) / 100))
    assert gap_upper_bound(0, 0, 100, 0.1) == pytest.approx(0.0295130, abs=1e-6)
    # help lowers the bound: 100 of 100 helped means L = 0.05^(1/100)
    assert gap_upper_bound(0, 100, 100, 0.1) == pytest.approx((1 - 0.05 ** 0.01) - 0.05 ** 0.01)


def _hand_case():
    """100 images scored 0..99 (higher = surer); the 5 least sure are the cloud's fixes, the rest both get right."""
    scores = np.arange(100, dtype=float)
    cloud_ok = np.ones(100, bool)
    edge_ok = scores >= 5
    return scores, edge_ok, cloud_ok


def test_selection_on_a_case_computed_by_hand():
    scores, edge_ok, cloud_ok = _hand_case()
    grid = offload_grid(scores, lower_is_confident=False)
    sel = select_threshold("max_prob", scores, edge_ok, cloud_ok, grid, lower_is_confident=False,
                           target_gap=0.03, delta=0.1)
    # Offloading >= 5% keeps no fix on the edge: bound = 1 - 0.05^(1/100) = 0.0295 <= 0.03, certified.
    # Offloading 4% keeps one fix: bound = CP upper(1, 100, 0.05) = 0.0466 > 0.03, the sequence stops.
    assert sel.offload == pytest.approx(0.05)
    assert sel.estimate == 0.0 and sel.bound == pytest.approx(0.0295130, abs=1e-6)
    assert not sel.too_small and sel.index == 95
    # The point estimate accepts up to 3 kept fixes (3 / 100 <= 0.03): offload 2%.
    assert sel.point_offload == pytest.approx(0.02)
    assert sel.offload >= sel.point_offload


def test_too_small_a_calibration_set_offloads_everything_and_says_so():
    scores, edge_ok, cloud_ok = _hand_case()
    grid = offload_grid(scores, lower_is_confident=False)
    sel = select_threshold("max_prob", scores[:20], edge_ok[:20] | True, cloud_ok[:20], grid,
                           lower_is_confident=False, target_gap=0.005, delta=0.1)
    # even with no harm at all, 20 images bound the gap at 1 - 0.05^(1/20) = 0.139 > 0.005
    assert sel.too_small and sel.offload == 1.0 and sel.index == 0
    assert sel.point_offload < 1.0  # the point estimate alone would have kept images on the edge


@pytest.mark.parametrize("seed", range(30))
def test_bound_never_offloads_less_than_the_point_estimate(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 800))
    scores = rng.random(n)
    edge_ok = rng.random(n) < 0.4 + 0.55 * scores  # surer images are right more often
    cloud_ok = rng.random(n) < rng.uniform(0.6, 0.95)
    lower = bool(rng.integers(2))
    s = -scores if lower else scores
    grid = offload_grid(rng.permutation(s), lower)
    target = float(rng.choice([0.0, 0.005, 0.02]))
    sel = select_threshold("m", s, edge_ok, cloud_ok, grid, lower_is_confident=lower, target_gap=target, delta=0.1)
    assert sel.offload >= sel.point_offload
    for st in evaluate_steps(s, edge_ok, cloud_ok, grid, lower, 0.1):
        assert st.bound >= st.estimate - 1e-12


def test_the_fit_split_chooses_metric_and_start_and_the_calibration_split_certifies():
    scores, edge_ok, cloud_ok = _hand_case()
    shuffled = np.random.default_rng(0).permutation(scores)
    fit = Split({"good": (scores, False), "random": (shuffled, False)}, edge_ok, cloud_ok)
    sel, fit_offload = select_certified(fit, fit, target_gap=0.03, delta=0.1)
    assert sel.metric == "good" and fit_offload["good"] < fit_offload["random"]
    # n = 100 puts the bound's floor (0.0295) within the 3-point target: the sequence starts at the first test,
    # passes every threshold that keeps no fix, and stops at 5% offload
    assert sel.start == 1 and sel.index == 95 and sel.offload == pytest.approx(0.05) and sel.delta == 0.1
    # at a 2-point target the floor fails: the sequence starts at the fit split's best point (5% offload), fails
    # there, and everything is offloaded, as the calibration set is too small
    sel2, _ = select_certified(fit, fit, target_gap=0.02, delta=0.1)
    assert sel2.start == 95 and sel2.too_small and sel2.offload == 1.0


def test_starting_where_the_hybrid_is_best_certifies_what_starting_at_full_offload_cannot():
    """With few images kept the bound sits at its floor (~3/n) and fails; started at the fit split's best point
    (where the edge's right answers the cloud gets wrong offset the misses) the same data certifies."""
    rng = np.random.default_rng(5)
    n = 500  # the floor 1 - 0.05^(1/500) = 0.6% is over the 0.5-point target
    conf = rng.random(n)
    edge_ok = rng.random(n) < 0.3 + 0.7 * conf
    cloud_ok = rng.random(n) < 0.8
    grid = offload_grid(conf, lower_is_confident=False)
    plain = select_threshold("m", conf, edge_ok, cloud_ok, grid, lower_is_confident=False, target_gap=0.005, delta=0.1)
    steps = evaluate_steps(conf, edge_ok, cloud_ok, grid, False, 0.1)
    start = min(range(len(steps)), key=lambda i: (steps[i].estimate, steps[i].offload))
    assert start_index(steps, 0.005, n, 0.1) == start  # the floor fails at n = 500: start at the best point
    assert start_index(steps, 0.005, 1000, 0.1) == 1  # at n = 1000 (floor 0.3%) the first test can pass
    started = select_threshold("m", conf, edge_ok, cloud_ok, grid, lower_is_confident=False, target_gap=0.005,
                               delta=0.1, start=start)
    assert plain.too_small and not started.too_small and started.offload < 0.9
    assert started.bound <= 0.005 and started.offload >= started.point_offload


def test_the_guarantee_holds_in_simulation():
    """Draw many calibration sets from one population; the chosen threshold's true gap exceeds the target at most
    about delta of the time (here far less: the bound is conservative)."""
    rng = np.random.default_rng(7)
    pop = 200_000
    conf = rng.random(pop)
    edge_ok = rng.random(pop) < 0.3 + 0.7 * conf  # 65%, right more often when sure
    cloud_ok = rng.random(pop) < 0.8  # the cloud's mistakes fall anywhere
    target, delta, n, trials = 0.005, 0.1, 600, 200
    violations = certified = 0
    for _ in range(trials):
        fit_idx, idx = rng.choice(pop, n, replace=False), rng.choice(pop, n, replace=False)
        fit = Split({"m": (conf[fit_idx], False)}, edge_ok[fit_idx], cloud_ok[fit_idx])
        cal = Split({"m": (conf[idx], False)}, edge_ok[idx], cloud_ok[idx])
        sel, _ = select_certified(fit, cal, target_gap=target, delta=delta)
        certified += not sel.too_small
        kept = conf >= sel.threshold
        true_gap = (kept & cloud_ok & ~edge_ok).mean() - (kept & edge_ok & ~cloud_ok).mean()
        violations += true_gap > target
    assert violations / trials <= delta
    assert certified > trials / 2  # and it is not vacuous: most draws keep images on the edge
