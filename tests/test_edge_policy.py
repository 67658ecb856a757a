"""Routing decisions, confidence metrics, the circuit breaker and capacity probes: pure, no models."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from edge_sdk.breaker import BreakerSnapshot, CircuitBreaker
from edge_sdk.capacity import (
    CpuLoadProbe,
    InflightProbe,
    MemoryProbe,
    ModelLoadProbe,
    ProbeResult,
    default_probes,
    first_failure,
)
from edge_sdk.policy import (
    ConfidenceScorer,
    Decision,
    Verdict,
    after_cloud_failure,
    confidence,
    decide,
    edge_skip_reason,
    is_confident,
    route,
)
from edge_sdk.reasons import Reason

# --- confidence metrics ----------------------------------------------------------


def test_metrics_on_a_known_vector():
    p = np.array([0.1, 0.6, 0.3])
    assert confidence(p, "max_prob") == pytest.approx(0.6)
    assert confidence(p, "margin") == pytest.approx(0.3)
    assert confidence(p, "entropy") == pytest.approx(-(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3)))


def test_metrics_batch_match_rows():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20)
    for m in ("max_prob", "margin", "entropy"):
        batch = confidence(p, m)
        assert batch.shape == (20,)
        assert np.allclose(batch, [confidence(row, m) for row in p])


def test_entropy_clips_zeros_and_one_hot_is_certain():
    assert confidence(np.array([1.0, 0.0, 0.0]), "entropy") == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(confidence(np.array([0.5, 0.5, 0.0]), "entropy"))
    assert confidence(np.array([0.5, 0.5]), "entropy") == pytest.approx(math.log(2))


def test_direction_of_confidence():
    assert is_confident(0.9, 0.8, "max_prob") and not is_confident(0.7, 0.8, "max_prob")
    assert is_confident(0.8, 0.8, "margin")  # at the threshold counts as confident
    assert is_confident(0.1, 0.5, "entropy") and not is_confident(0.6, 0.5, "entropy")


@pytest.mark.parametrize("bad", [np.array([1.0]), np.zeros((2, 2, 2))])
def test_confidence_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        confidence(bad, "max_prob")


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="metric"):
        confidence(np.array([0.5, 0.5]), "vibes")
    with pytest.raises(ValueError, match="metric"):
        is_confident(0.5, 0.5, "vibes")


# --- routing -----------------------------------------------------------------------

R = dict(threshold=0.8, metric="max_prob")


def test_auto_confident_edge_answers():
    assert route(mode="auto", edge_score=0.95, **R) == Decision("edge", "confident")


def test_auto_unsure_goes_to_cloud():
    assert route(mode="auto", edge_score=0.5, **R) == Decision("cloud", "low_confidence")


def test_auto_unsure_but_cloud_blocked_keeps_edge_with_why():
    assert route(mode="auto", edge_score=0.5, cloud_configured=False, **R) == Decision("edge", "cloud_unavailable")
    assert route(mode="auto", edge_score=0.5, breaker_allows=False, **R) == Decision("edge", "circuit_open")
    assert route(mode="auto", edge_score=0.5, time_left_s=0.001, **R) == Decision("edge", "deadline")


def test_auto_without_edge_result_asks_cloud_with_the_skip_reason():
    skipped = dict(mode="auto", edge_score=None, **R)
    assert route(edge_skip="no_capacity:memory", **skipped) == Decision("cloud", "no_capacity:memory")
    assert route(edge_skip="model_unavailable", **skipped) == Decision("cloud", "model_unavailable")
    assert route(edge_skip="model_unavailable", cloud_configured=False, **skipped) == Decision(
        "fail", "cloud_unavailable")


def test_edge_only_never_calls_cloud():
    assert route(mode="edge_only", edge_score=0.1, **R) == Decision("edge", "edge_only")
    assert route(mode="edge_only", edge_score=None, edge_skip="model_unavailable", **R) == Decision(
        "fail", "model_unavailable")


def test_cloud_only_never_uses_edge():
    assert route(mode="cloud_only", edge_score=None, **R) == Decision("cloud", "cloud_only")
    assert route(mode="cloud_only", edge_score=0.99, breaker_allows=False, **R) == Decision("fail", "circuit_open")
    assert route(mode="cloud_only", edge_score=None, cloud_configured=False, **R) == Decision(
        "fail", "cloud_unavailable")


def test_entropy_threshold_routes_the_other_way():
    assert route(mode="auto", edge_score=0.1, threshold=0.3, metric="entropy") == Decision("edge", "confident")
    assert route(mode="auto", edge_score=0.9, threshold=0.3, metric="entropy") == Decision("cloud", "low_confidence")


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="mode"):
        route(mode="sometimes", edge_score=0.5, **R)


def test_after_cloud_failure():
    assert after_cloud_failure("auto", True, "timeout") == Decision("edge", "cloud_error:timeout")
    assert after_cloud_failure("auto", True, "deadline") == Decision("edge", "deadline")
    assert after_cloud_failure("auto", True, "circuit_open") == Decision("edge", "circuit_open")
    assert after_cloud_failure("auto", False, "http_500") == Decision("fail", "cloud_error:http_500")
    assert after_cloud_failure("cloud_only", True, "http_500").action == "fail"


def test_decide_asks_why_not_cloud_only_when_the_cloud_could_answer():
    asked = []

    def why_not():
        asked.append(1)
        return None

    assert decide("auto", Verdict(0.9, True), None, why_not) == Decision("edge", "confident")
    assert decide("edge_only", Verdict(0.1, False), None, why_not) == Decision("edge", "edge_only")
    assert asked == []
    assert decide("auto", Verdict(0.1, False), None, why_not) == Decision("cloud", "low_confidence")
    assert asked == [1]


def test_a_scorer_may_give_its_own_reason_for_wanting_the_cloud():
    ood = Verdict(0.99, False, Reason.CLOUD_ONLY)  # any reason a scorer chooses travels with the image
    assert decide("auto", ood, None, lambda: None) == Decision("cloud", Reason.CLOUD_ONLY)
    assert decide("auto", ood, None, lambda: Reason.DEADLINE) == Decision("edge", "deadline")


def test_confidence_scorer_matches_the_metric_functions():
    p = np.array([0.1, 0.6, 0.3], np.float32)
    for metric, threshold in (("max_prob", 0.5), ("margin", 0.4), ("entropy", 0.5)):
        v = ConfidenceScorer(metric, threshold)(p)
        assert v.score == pytest.approx(confidence(p, metric))
        assert v.confident == is_confident(confidence(p, metric), threshold, metric)
    with pytest.raises(ValueError, match="metric"):
        ConfidenceScorer("vibes", 0.5)


def test_edge_skip_reason():
    assert edge_skip_reason(None, True) is None
    assert edge_skip_reason("memory", True) == "no_capacity:memory"
    assert edge_skip_reason("model", True) == "model_unavailable"
    assert edge_skip_reason(None, False) == "model_unavailable"


# --- circuit breaker -------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_n_consecutive_failures():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    b.record_success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.record_failure()
    assert b.state == "open" and not b.allow() and b.times_opened == 1


def test_breaker_half_opens_lets_one_probe_and_closes_on_success():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    b.record_failure()
    clock.t = 9.9
    assert not b.allow()
    clock.t = 10.0
    assert b.state == "half_open"
    assert b.allow()          # the one probe
    assert not b.allow()      # nobody else while it is out
    b.record_success()
    assert b.state == "closed" and b.allow()


def test_breaker_probe_failure_reopens_for_another_cooldown():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, cooldown_s=10, clock=clock)
    for _ in range(5):
        b.record_failure()
    clock.t = 10
    assert b.allow()
    b.record_failure()  # one failure in half_open is enough
    assert b.state == "open" and not b.allow()
    clock.t = 19.9
    assert not b.allow()
    clock.t = 20
    assert b.allow()


def test_breaker_is_open_only_reads():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    assert not b.is_open
    b.record_failure()
    assert b.is_open and b.state == "open"
    clock.t = 10
    for _ in range(3):  # asking never takes the half-open probe slot
        assert not b.is_open
    assert b.allow() and not b.allow()  # the probe is still there to take, once
    assert not b.is_open  # half-open with a probe out: not "open"; allow() refuses the others
    assert b.snapshot() == BreakerSnapshot("half_open", 1, 1)


def test_breaker_lost_probe_is_retried_after_a_cooldown_and_release_frees_it():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    b.record_failure()
    clock.t = 5
    assert b.allow() and not b.allow()
    clock.t = 10  # the probe never reported back
    assert b.allow()
    b.release()
    assert b.allow()


def test_breaker_is_thread_safe_exactly_one_probe():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    b.record_failure()
    clock.t = 1
    got = []
    ts = [threading.Thread(target=lambda: got.append(b.allow())) for _ in range(16)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sum(got) == 1


# --- capacity probes ---------------------------------------------------------------


def test_memory_probe_threshold_and_cache():
    reads = iter([100.0, 10.0])
    p = MemoryProbe(min_available_mb=50, cache_s=60, read=lambda: next(reads))
    r = p.check()
    assert r.ok and r.value == 100 and r.threshold == 50
    assert p.check().value == 100  # cached: the second reading is not taken yet
    p2 = MemoryProbe(min_available_mb=50, cache_s=0, read=lambda: 10.0)
    assert not p2.check().ok


def test_cpu_probe():
    assert CpuLoadProbe(max_load_per_core=1.0, read=lambda: 0.5).check().ok
    assert not CpuLoadProbe(max_load_per_core=1.0, read=lambda: 1.5).check().ok


def test_real_psutil_readings_are_sane():
    m, c = MemoryProbe().check(), CpuLoadProbe().check()
    assert m.value > 0 and c.value >= 0


def test_inflight_probe_counts_tracked_work():
    p = InflightProbe(limit=2)
    assert p.check().ok
    with p.track():
        with p.track():
            assert not p.check().ok and p.in_flight == 2
        assert p.check().ok
    assert p.in_flight == 0


def test_model_probe_and_first_failure_order():
    loaded = {"v": True}
    mp = ModelLoadProbe(lambda: loaded["v"], lambda: "bad file")
    assert first_failure([mp]) is None
    loaded["v"] = False
    name, r = first_failure([mp, CpuLoadProbe(read=lambda: 99.0)])
    assert name == "model" and r.detail == "bad file"


def test_custom_probe_and_a_raising_probe():
    class Battery:
        name = "battery"

        def __init__(self, level):
            self.level = level

        def check(self):
            return ProbeResult(self.level >= 20, self.level, 20, "battery %")

    class Broken:
        name = "broken"

        def check(self):
            raise RuntimeError("sensor gone")

    assert first_failure([Battery(80)]) is None
    assert first_failure([Battery(5)])[0] == "battery"
    name, r = first_failure([Battery(80), Broken()])
    assert name == "broken" and not r.ok and "sensor gone" in r.detail


def test_default_probes_names():
    assert [p.name for p in default_probes()] == ["memory", "cpu", "inflight"]
