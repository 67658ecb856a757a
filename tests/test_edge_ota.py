"""Over-the-air edge model updates against a mocked server: 304, a verified swap, and every refusal."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import responses
from edge_helpers import cached_tiny_bundle, tiny_images

from edge_sdk.bundle import load_bundle
from edge_sdk.errors import UpdateError
from edge_sdk.hybrid import HybridClassifier

BASE = "http://cloud.test"
EDGE = f"{BASE}/v1/models/tiny/edge"


@pytest.fixture
def bundles(tmp_path_factory, tmp_path):
    """Two tiny bundles, copied per test: an update writes into the device's bundle."""
    return tuple(Path(shutil.copytree(cached_tiny_bundle(tmp_path_factory, seed=i), tmp_path / f"b{i}"))
                 for i in (0, 1))


def manifest_doc(bundle_dir, *, threshold=None, labels=None, sha=None) -> dict:
    """What the server's ?part=manifest answers for a bundle."""
    m = load_bundle(bundle_dir).manifest.model_copy(deep=True)
    if threshold is not None:
        m.routing.threshold = threshold
    if labels is not None:
        m.labels = labels
    data = (bundle_dir / "edge_int8.tflite").read_bytes()
    real = hashlib.sha256(data).hexdigest()
    return {"name": m.name, "version": m.version, "manifest": m.model_dump(mode="json"),
            "edge": {"file": "edge_int8.tflite", "sha256": sha or real, "size": len(data)}}


def serve_update(bundle_dir, *, body=None, etag=None, doc=None):
    data = (bundle_dir / "edge_int8.tflite").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    responses.add(responses.GET, EDGE + "?part=manifest", json=doc or manifest_doc(bundle_dir),
                  match=[responses.matchers.query_param_matcher({"part": "manifest"})])
    responses.add(responses.GET, EDGE, body=data if body is None else body, content_type="application/octet-stream",
                  headers={"ETag": f'"{etag or sha}"', "X-Edge-Model-Sha256": etag or sha},
                  match=[responses.matchers.query_param_matcher({})])
    return sha


def make(bundle_dir):
    return HybridClassifier.from_bundle(bundle_dir, cloud_url=BASE, probes=[])


@responses.activate
def test_304_means_current(bundles):
    a, _ = bundles
    clf = make(a)
    before = clf.model
    responses.add(responses.GET, EDGE, status=304, headers={"ETag": f'"{before.sha256}"'})
    r = clf.check_for_update()
    assert not r.updated and r.sha256 == before.sha256 and clf.model is before
    (call,) = [c for c in responses.calls if c.request.url == EDGE]  # (beside the client's own GET /v2)
    assert call.request.headers["If-None-Match"] == f'"{before.sha256}"'


@responses.activate
def test_a_newer_model_is_verified_and_swapped_in(bundles):
    a, b = bundles
    clf = make(a)
    imgs = tiny_images(6, seed=9)
    before = [clf.predict(im, deadline_ms=1).probabilities for im in imgs]  # too little time for a cloud call
    new_sha = serve_update(b, doc=manifest_doc(b, threshold=0.123))
    r = clf.check_for_update()
    assert r.updated and r.sha256 == new_sha and r.previous_sha256 != new_sha
    assert clf.model.sha256 == new_sha and r.bytes_downloaded == (b / "edge_int8.tflite").stat().st_size
    assert clf.threshold == pytest.approx(0.123)  # the recalibrated threshold came with it
    want = HybridClassifier.from_bundle(b, mode="edge_only", probes=[])
    after = [clf.predict(im).probabilities for im in imgs]
    assert all(np.array_equal(x, want.predict(im).probabilities) for x, im in zip(after, imgs, strict=False))
    assert any(not np.array_equal(x, y) for x, y in zip(before, after, strict=False))
    # written into the bundle on disk: a restart comes back with the new model and its threshold
    assert r.persisted and r.persist_error is None
    on_disk = load_bundle(a)  # sha256 verified
    assert on_disk.manifest.models["edge"].sha256 == new_sha and on_disk.manifest.routing.threshold == 0.123
    restarted = HybridClassifier.from_bundle(a, mode="edge_only", probes=[])
    assert restarted.model.sha256 == new_sha and restarted.threshold == pytest.approx(0.123)


@responses.activate
def test_an_update_the_disk_refuses_still_serves_from_memory(bundles, monkeypatch):
    a, b = bundles
    clf = make(a)
    before = load_bundle(a).manifest.models["edge"].sha256
    new_sha = serve_update(b)

    def full_disk(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edge_sdk.ota.update_bundle", full_disk)
    r = clf.check_for_update()
    assert r.updated and clf.model.sha256 == new_sha
    assert not r.persisted and "No space left" in r.persist_error
    assert load_bundle(a).manifest.models["edge"].sha256 == before  # the bundle on disk is whole and unchanged


@responses.activate
def test_user_threshold_survives_an_update(bundles):
    a, b = bundles
    clf = HybridClassifier.from_bundle(a, cloud_url=BASE, probes=[], threshold=0.77)
    serve_update(b, doc=manifest_doc(b, threshold=0.1))
    assert clf.check_for_update().updated and clf.threshold == pytest.approx(0.77)


def _refused(clf, match):
    before = clf.model
    with pytest.raises(UpdateError, match=match):
        clf.check_for_update()
    assert clf.model is before  # the old model stays


@responses.activate
def test_corrupt_download_is_refused(bundles):
    a, b = bundles
    data = bytearray((b / "edge_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    serve_update(b, body=bytes(data))
    _refused(make(a), "corrupt download")


@responses.activate
def test_manifest_disagreeing_with_the_download_is_refused(bundles):
    a, b = bundles
    serve_update(b, doc=manifest_doc(b, sha="ab" * 32))
    _refused(make(a), "does not match the manifest")


@responses.activate
def test_different_labels_are_refused(bundles):
    a, b = bundles
    serve_update(b, doc=manifest_doc(b, labels=["w", "x", "y", "z"]))
    _refused(make(a), "labels")


@responses.activate
def test_a_consistent_but_unloadable_file_is_refused(bundles):
    a, b = bundles
    junk = b"not a model at all" * 100
    sha = hashlib.sha256(junk).hexdigest()
    doc = manifest_doc(b, sha=sha)
    doc["manifest"]["models"]["edge"]["sha256"] = sha
    serve_update(b, body=junk, etag=sha, doc=doc)
    _refused(make(a), "refused")


@responses.activate
def test_server_errors_and_garbage_manifests_are_refused(bundles):
    a, b = bundles
    responses.add(responses.GET, EDGE, status=404, json={"error": "no edge model"})
    _refused(make(a), "404")
    responses.reset()
    responses.add(responses.GET, EDGE, body=requests.ConnectionError("refused"))
    _refused(make(a), "update check failed")
    responses.reset()
    serve_update(b, doc={"manifest": {"nope": 1}})
    _refused(make(a), "malformed")


@responses.activate
def test_no_checksum_headers_no_update(bundles):
    a, b = bundles
    responses.add(responses.GET, EDGE, body=(b / "edge_int8.tflite").read_bytes())
    _refused(make(a), "cannot verify")


def test_no_cloud_no_update(bundles):
    with pytest.raises(UpdateError, match="no cloud_url"):
        HybridClassifier.from_bundle(bundles[0], probes=[]).check_for_update()
