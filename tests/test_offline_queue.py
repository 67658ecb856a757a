"""The offline queue against a real server behind a proxy that goes down and comes back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from cloud_server import serve_in_thread
from edge_helpers import cached_tiny_bundle, tiny_images
from faultproxy import FaultProxy

from edge_sdk import CircuitBreaker, HybridClassifier
from edge_sdk.options import CollectConfig, OfflineQueueConfig
from edge_sdk.preprocess import load_image, resize
from edge_sdk.samples import LateAnswer, read_samples


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return cached_tiny_bundle(tmp_path_factory, seed=0, threshold=1.01)  # every edge answer unsure: all hard


@pytest.fixture(scope="module")
def server(bundle):
    with serve_in_thread([bundle], max_delay_ms=1) as url:
        yield url


@pytest.fixture
def proxy(server):
    u = urlparse(server)
    with FaultProxy((u.hostname, u.port)) as p:
        yield p


def _wait(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _device(bundle, url, tmp_path, on_answer=None, **queue):
    cfg = OfflineQueueConfig(dir=tmp_path / "q", **{"retry_s": 0.2, "batch": 3, "on_answer": on_answer, **queue})
    return HybridClassifier.from_bundle(
        bundle, cloud_url=url, probes=[], deadline_ms=2000, max_retries=0, offline_queue=cfg,
        collect=CollectConfig(dir=tmp_path / "c", audit_rate=0.0),
        breaker=CircuitBreaker(failure_threshold=3, cooldown_s=0.3))


def test_queue_drains_in_order_when_the_cloud_returns(bundle, server, proxy, tmp_path):
    images = tiny_images(10, seed=7)
    with HybridClassifier.from_bundle(bundle, cloud_url=server, probes=[], mode="cloud_only") as cloud:
        truth = [cloud.predict(im) for im in images]
    late: list[LateAnswer] = []
    lock = threading.Lock()

    def on_answer(a: LateAnswer) -> None:
        with lock:
            late.append(a)

    with _device(bundle, proxy.url, tmp_path, on_answer) as clf:
        proxy.go_down()
        given = [clf.predict(im) for im in images]
        assert {p.source for p in given} == {"edge"}  # the answer at the time is still the edge's, with its reason
        assert {str(p.reason) for p in given} <= {"cloud_error:connection", "circuit_open"}
        assert _wait(lambda: clf.stats().offline_queue.queued == 10)
        time.sleep(0.5)  # it keeps trying while the cloud is down; nothing is lost
        assert clf.stats().offline_queue.pending == 10 and not late
        proxy.come_back()
        assert _wait(lambda: clf.stats().offline_queue.pending == 0), clf.stats().offline_queue
        assert clf.flywheel.flush(30)
        stats = clf.stats()
    assert [a.seq for a in late] == sorted(a.seq for a in late)  # in order
    for a, image, edge, cloud in zip(late, images, given, truth, strict=True):
        assert np.array_equal(a.image, resize(load_image(image), 8, 8))
        assert a.label == cloud.label and np.allclose(a.probabilities, cloud.probabilities, atol=1e-5)
        assert a.edge_label == edge.label and a.reason == str(edge.reason)
        assert a.answered_at >= a.queued_at
    assert stats.offline_queue.sent == 10 and stats.offline_queue.send_failures > 0
    kept = list(read_samples(tmp_path / "c"))
    assert [s.meta.kind for s in kept] == ["offline"] * 10
    assert [s.meta.label for s in kept] == [c.label for c in truth]


def test_queue_is_capped_while_the_cloud_stays_away(bundle, proxy, tmp_path):
    images = tiny_images(8, seed=9)
    with _device(bundle, proxy.url, tmp_path, max_items=3) as clf:
        proxy.go_down()
        given = [clf.predict(im) for im in images]
        assert _wait(lambda: clf.stats().offline_queue.queued == 8)
        q = clf.stats().offline_queue
        assert (q.pending, q.dropped_full, q.sent) == (3, 5, 0)
    assert all(p.source == "edge" for p in given)
    waiting = list(read_samples(tmp_path / "q"))  # the newest three wait for the next run
    assert [s.meta.kind for s in waiting] == ["queued"] * 3
    for s, image in zip(waiting, images[-3:], strict=True):
        assert np.array_equal(s.image(), resize(load_image(image), 8, 8))


def test_what_a_previous_run_queued_is_sent_by_the_next(bundle, server, proxy, tmp_path):
    images = tiny_images(4, seed=11)
    with _device(bundle, proxy.url, tmp_path) as clf:
        proxy.go_down()
        for im in images:
            clf.predict(im)
        assert _wait(lambda: clf.stats().offline_queue.pending == 4)
    late: list[LateAnswer] = []
    with _device(bundle, server, tmp_path, late.append) as clf:
        assert _wait(lambda: clf.stats().offline_queue.pending == 0)
    assert len(late) == 4 and [a.seq for a in late] == sorted(a.seq for a in late)


def test_only_unreachable_clouds_queue(bundle, server, tmp_path):
    with pytest.raises(ValueError, match="cloud_url"):
        HybridClassifier.from_bundle(bundle, offline_queue=OfflineQueueConfig(dir=tmp_path / "q"))
    with _device(bundle, server, tmp_path) as clf:  # the cloud answers: nothing to queue
        for im in tiny_images(3):
            assert clf.predict(im).source == "cloud"
        time.sleep(0.3)
        assert clf.stats().offline_queue.queued == 0
