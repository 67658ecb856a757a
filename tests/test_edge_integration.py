"""The edge SDK against the real cloud service on loopback, with the quantized digits bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
from cloud_server import serve_in_thread

from edge_sdk.bundle import ModelFile, load_bundle, write_bundle
from edge_sdk.errors import CloudUnavailableError
from edge_sdk.hybrid import HybridClassifier

KEY = "edge-test-key-0123456789"


@pytest.fixture(scope="module")
def served(quantized_bundle_session):
    with serve_in_thread([quantized_bundle_session], api_keys=[KEY], max_delay_ms=2) as url:
        yield url


@pytest.fixture(scope="module")
def test_images(quantized_bundle_session):
    """40 test-split digit files and their labels (the split the bundle was scored on)."""
    from quantize.data import split_from_info

    m = load_bundle(quantized_bundle_session).manifest
    sp = split_from_info(m.data)
    items = sp.test[::max(1, len(sp.test) // 40)][:40]
    return [p for p, _ in items], [m.labels[y] for _, y in items]


def _clf(bundle, url=None, **kw):
    kw.setdefault("probes", [])
    return HybridClassifier.from_bundle(bundle, cloud_url=url, api_key=KEY if url else None, **kw)


def test_modes_agree_with_the_server_and_the_labels(quantized_bundle_session, served, test_images):
    paths, labels = test_images
    edge = _clf(quantized_bundle_session, mode="edge_only")
    cloud = _clf(quantized_bundle_session, served, mode="cloud_only")
    hybrid = _clf(quantized_bundle_session, served)
    pe = [edge.predict(p) for p in paths]
    pc = [cloud.predict(p) for p in paths]
    ph = [hybrid.predict(p) for p in paths]
    assert edge.model.backend == "ai_edge_litert"
    assert {p.source for p in pe} == {"edge"} and {p.source for p in pc} == {"cloud"}
    # the cloud answer is the server's own classification of the same file
    raw = requests.post(f"{served}/v1/classify", data=paths[0].read_bytes(), timeout=30,
                        headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEY}"}).json()
    assert raw["label"] == pc[0].label and raw["confidence"] == pytest.approx(pc[0].confidence, abs=0.02)
    acc = lambda ps: np.mean([p.label == y for p, y in zip(ps, labels, strict=True)])  # noqa: E731
    assert acc(pe) >= 0.85 and acc(pc) >= 0.85 and acc(ph) >= acc(pe) - 0.05
    for h, e, c in zip(ph, pe, pc, strict=True):
        if h.source == "edge":
            assert h.reason == "confident" and h.label == e.label and h.confidence == e.confidence
        else:
            # unsure, or flagged by the bundle's out-of-distribution score (about 1% of in-distribution images)
            assert h.reason in ("low_confidence", "out_of_distribution") and h.label == c.label and h.bytes_sent > 0
            assert h.out_of_distribution == (h.reason == "out_of_distribution")
    st = hybrid.stats()
    assert st.calls == len(paths) and st.breaker.state == "closed"
    assert st.latency_ms["total"].p95 >= st.latency_ms["total"].p50 > 0


def test_predict_is_correct_from_8_threads_at_once(quantized_bundle_session, served, test_images):
    """Each thread's answer equals the sequential answer of the side that gave it."""
    paths, _ = test_images
    imgs = [p.read_bytes() for p in paths[:24]]
    ref_edge = [p.probabilities for p in _clf(quantized_bundle_session, mode="edge_only").predict_batch(imgs)]
    ref_cloud = [p.label for p in _clf(quantized_bundle_session, served, mode="cloud_only").predict_batch(imgs)]
    conf = np.array([p.max() for p in ref_edge])
    threshold = float(np.quantile(conf, 0.5))  # about half go to the cloud
    clf = _clf(quantized_bundle_session, served, threshold=threshold, deadline_ms=10_000)
    results: list[tuple[int, object]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(k):
        start.wait()
        for r in range(2 * len(imgs) // 8 + 1):
            i = (k * 5 + r) % len(imgs)
            try:
                p = clf.predict(imgs[i])
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append((i, p))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    assert errors == []
    assert len(results) == 8 * (2 * len(imgs) // 8 + 1)
    sources = {p.source for _, p in results}
    assert sources == {"edge", "cloud"}
    for i, p in results:
        if p.source == "edge":
            assert p.reason == "confident" and np.array_equal(p.probabilities, ref_edge[i])
        else:
            assert p.reason == "low_confidence" and p.label == ref_cloud[i]
    assert clf.stats().calls == len(results)


def test_wrong_key_falls_back_to_the_edge(quantized_bundle_session, served, test_images):
    paths, _ = test_images
    clf = HybridClassifier.from_bundle(quantized_bundle_session, cloud_url=served, api_key="wrong-key-123456",
                                       threshold=1.01, probes=[])
    p = clf.predict(paths[0])
    assert (p.source, p.reason) == ("edge", "cloud_error:http_401") and "401" in p.cloud_error
    strict = HybridClassifier.from_bundle(quantized_bundle_session, cloud_url=served, mode="cloud_only", probes=[])
    with pytest.raises(CloudUnavailableError) as ei:
        strict.predict(paths[0])
    assert ei.value.reason == "cloud_error:http_401"


def test_batch_and_uploads_against_the_server(quantized_bundle_session, served, test_images):
    paths, labels = test_images
    probs, sent = {}, {}
    for upload in ("jpeg", "original", "tensor"):
        clf = _clf(quantized_bundle_session, served, mode="cloud_only", upload=upload)
        preds = clf.predict_batch(paths[:12])
        assert all(p.source == "cloud" for p in preds)
        assert np.mean([p.label == y for p, y in zip(preds, labels[:12], strict=True)]) >= 0.8
        probs[upload] = np.stack([p.probabilities for p in preds])
        sent[upload] = clf.stats().bytes_sent
        assert sent[upload] == sum(p.bytes_sent for p in preds) > 0
    # the lossless uploads reach the model as the very same pixels (32x32 PNGs: no resize)
    assert np.allclose(probs["original"], probs["tensor"], atol=1e-4)


def test_over_the_air_update_end_to_end(quantized_bundle_session, served, tmp_path, test_images):
    """The device has an older edge model; the server's is fetched, verified and swapped in while threads predict."""
    src = load_bundle(quantized_bundle_session)
    old = tmp_path / "old_edge.tflite"
    old.write_bytes((quantized_bundle_session / "edge_int8.tflite").read_bytes() + b"\0" * 64)  # same net, other bytes
    device = tmp_path / "device"
    man = src.manifest.model_copy(deep=True)
    man.models = {"edge": ModelFile(**{**man.models["edge"].model_dump(), "file": "edge_int8.tflite"})}
    write_bundle(device, man, {"edge_int8.tflite": old})
    clf = _clf(device, served, mode="edge_only")
    old_sha = clf.model.sha256
    server_sha = src.manifest.models["edge"].sha256
    assert old_sha != server_sha
    imgs = [p.read_bytes() for p in test_images[0][:8]]
    stop, errors, count = threading.Event(), [], [0]

    def worker():
        while not stop.is_set():
            for im in imgs:
                try:
                    clf.predict(im)
                    count[0] += 1
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))

    ts = [threading.Thread(target=worker) for _ in range(3)]
    [t.start() for t in ts]
    try:
        r = clf.check_for_update()
    finally:
        stop.set()
        [t.join(30) for t in ts]
    assert errors == [] and count[0] > 0
    assert r.updated and r.previous_sha256 == old_sha and r.sha256 == server_sha == clf.model.sha256
    assert r.persisted and load_bundle(device).manifest.models["edge"].sha256 == server_sha  # survives a restart
    again = clf.check_for_update()
    assert not again.updated and again.sha256 == server_sha  # 304 now


def test_cli_predict_against_the_server(quantized_bundle_session, served, test_images):
    paths, labels = test_images
    env = {**os.environ, "HV_API_KEY": KEY, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "edge_sdk.cli", "predict", str(quantized_bundle_session), *map(str, paths[:3]),
           "--cloud-url", served, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, paths[:3]))
    assert all(r["source"] in ("edge", "cloud") and r["label"] in [str(i) for i in range(10)] for r in rows)
    plain = subprocess.run(cmd[:-3] + ["/no/such.png", "--mode", "edge_only"], capture_output=True, text=True,
                           env=env, timeout=120)
    lines = plain.stdout.splitlines()
    assert plain.returncode == 1 and len(lines) == 3 and "no such file" in plain.stderr
    path, label, conf, source, reason = lines[0].split("\t")
    assert (path, source, reason) == (str(paths[0]), "edge", "edge_only") and 0 < float(conf) <= 1
