"""Network faults between the real HybridClassifier and the real service: every call still answers, in time.

A loopback fault proxy (tests/faultproxy.py) sits between them. For each fault:
the classifier (edge always unsure, so it always asks the cloud) answers every
``predict`` within its deadline + 50 ms from the edge, with the reason the
fault should give; the breaker opens and later answers say ``circuit_open``;
the attempts the callers gave up on do not keep sockets open; once the proxy
heals the breaker closes and the cloud answers again. Then nothing the test
started is left running: no threads, fds or connections.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from faultproxy import FaultProxy
from rel_helpers import KEY, leaks, snapshot, sockets_to

from edge_sdk.breaker import CircuitBreaker
from edge_sdk.hybrid import HybridClassifier

pytestmark = pytest.mark.reliability

DEADLINE_MS = 400.0
SLACK_MS = 50.0
COOLDOWN_S = 0.4
FAILURES_TO_OPEN = 3

# name -> (how to break the proxy, the reasons answers may carry until the breaker opens)
CONN, DEADLINE = {"cloud_error:connection"}, {"deadline"}
FAULTS = {
    "latency_past_deadline": (lambda p: p.set("latency", latency_s=1.5), DEADLINE),
    "drop": (lambda p: p.set("drop"), CONN),
    # a reset comes after the server has done its work, so on a busy machine a retry may run out of time
    "reset_in_headers": (lambda p: p.set("reset", reset_after=60), CONN | DEADLINE),
    "reset_in_body": (lambda p: p.set("reset", reset_after=200), CONN | DEADLINE),
    "stall_after_headers": (lambda p: p.set("stall"), DEADLINE),
    "drip_one_byte_at_a_time": (lambda p: p.set("drip", drip_s=0.05), DEADLINE),
    "garbage": (lambda p: p.set("garbage"), CONN),
    "garbage_http_200": (lambda p: p.set("garbage_http"), {"cloud_error:bad_response"}),
    "down": (lambda p: p.go_down(), CONN),
}


@pytest.fixture(scope="module")
def images(digit_pngs, quantized_bundle_session):
    """Six digit PNGs and the edge-only answer for each (what a fallback must return)."""
    pngs = [b for b, _ in digit_pngs[::3]][:6]
    with HybridClassifier.from_bundle(quantized_bundle_session, mode="edge_only", probes=[]) as edge:
        return [(b, edge.predict(b)) for b in pngs]


def make(bundle, url: str) -> HybridClassifier:
    """Threshold above 1: the edge is never confident, so every call wants the cloud."""
    return HybridClassifier.from_bundle(
        bundle, cloud_url=url, api_key=KEY, threshold=1.01, deadline_ms=DEADLINE_MS, probes=[],
        breaker=CircuitBreaker(failure_threshold=FAILURES_TO_OPEN, cooldown_s=COOLDOWN_S),
    )


def timed(clf: HybridClassifier, img: bytes):
    t = time.perf_counter()
    p = clf.predict(img)
    return p, (time.perf_counter() - t) * 1000


def check_cloud(p, ms):
    assert (p.source, p.reason) == ("cloud", "low_confidence"), (p.source, p.reason, p.cloud_error)
    assert ms <= DEADLINE_MS + SLACK_MS, ms


def check_fallback(p, ms, edge, allowed):
    assert p.source == "edge" and p.reason in allowed, (p.source, p.reason, p.cloud_error)
    assert ms <= DEADLINE_MS + SLACK_MS, f"{p.reason}: {ms:.0f} ms for a {DEADLINE_MS:.0f} ms deadline"
    assert p.label == edge.label and np.array_equal(p.probabilities, edge.probabilities)  # the edge answer, intact
    if p.reason != "circuit_open":
        assert p.cloud_error, "a cloud failure says what went wrong"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_answers_in_time_trips_the_breaker_and_recovers(fault, server, quantized_bundle_session, images):
    breaks, reasons = FAULTS[fault]
    upstream = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    before = snapshot((upstream[1],))
    with FaultProxy(upstream) as proxy:
        ports = (upstream[1], proxy.port)
        clf = make(quantized_bundle_session, proxy.url)
        try:
            check_cloud(*timed(clf, images[0][0]))  # healthy through the proxy
            breaks(proxy)
            seen = []
            for img, edge in images:  # one thread: the breaker's sequence is exact
                p, ms = timed(clf, img)
                check_fallback(p, ms, edge, reasons if len(seen) < FAILURES_TO_OPEN else {"circuit_open"})
                seen.append(p.reason)
            assert clf.cloud.breaker.times_opened == 1 and clf.cloud.breaker.state in ("open", "half_open")
            # the attempts the callers gave up on end too: no worker is left holding a socket
            assert sockets_to(proxy.port, wait_s=DEADLINE_MS / 1000 + 0.5) == 0
            # several threads at once under the same fault: still every answer in time
            results, errors = [], []

            def worker():
                for img, edge in images[:3]:
                    try:
                        p, ms = timed(clf, img)
                        check_fallback(p, ms, edge, reasons | {"circuit_open"})
                        results.append(p.reason)
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(repr(e))

            time.sleep(COOLDOWN_S)  # half-open: one probe goes out and fails, the rest see the breaker
            ts = [threading.Thread(target=worker) for _ in range(4)]
            [t.start() for t in ts]
            [t.join(30) for t in ts]
            assert errors == [] and len(results) == 12
            assert clf.cloud.breaker.times_opened >= 2  # the probe failed: open again
            # heal, wait out the cool-down: the next call is the probe, it succeeds, the breaker closes
            if fault == "down":
                proxy.come_back()
            else:
                proxy.heal()
            time.sleep(COOLDOWN_S + 0.05)
            check_cloud(*timed(clf, images[1][0]))
            assert clf.cloud.breaker.state == "closed"
            for img, _ in images[2:4]:
                check_cloud(*timed(clf, img))
            st = clf.stats()
            assert st.by_reason["circuit_open"] >= 3
            assert sum(st.by_reason.get(r, 0) for r in reasons) >= FAILURES_TO_OPEN
        finally:
            clf.close()
    assert leaks(before, ports) == {}


def test_latency_within_the_deadline_still_gets_the_cloud_answer(server, quantized_bundle_session, images):
    upstream = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    before = snapshot((upstream[1],))
    with FaultProxy(upstream) as proxy:
        proxy.set("latency", latency_s=0.12)
        with make(quantized_bundle_session, proxy.url) as clf:
            for img, _ in images:
                p, ms = timed(clf, img)
                check_cloud(p, ms)
                assert p.latency_ms["cloud"] >= 115  # the proxy's delay was really in the path
            assert clf.cloud.breaker.times_opened == 0
        ports = (upstream[1], proxy.port)
    assert leaks(before, ports) == {}
