"""HybridDetector against the real service on loopback: edge boxes, cloud boxes, one request per batch, stats,
and a cloud that fails mid-stream: the edge boxes come back with the reason, never a lost answer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from cloud_server import serve_in_thread
from detect_helpers import make_detect_bundle
from faultproxy import FaultProxy

from edge_sdk import CloudUnavailableError, HybridDetector
from edge_sdk.bundle import Manifest, load_bundle, write_bundle
from edge_sdk.errors import BundleError, InvalidImageError
from edge_sdk.preprocess import InputSpec
from quantize.detect import synth


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_detect_bundle(tmp_path_factory.mktemp("sdkdet"), int8=True)


@pytest.fixture(scope="module")
def url(bundle):
    with serve_in_thread([bundle], max_batch_size=4) as u:
        yield u


def frame(i: int = 0, h: int = 120, w: int = 200) -> np.ndarray:
    rgb = synth.Generator("test").image(i)[0]
    return cv2.cvtColor(cv2.resize(rgb, (w, h)), cv2.COLOR_RGB2BGR)  # an OpenCV frame


def in_frame(r, h=120, w=200) -> bool:
    return all(0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h for d in r.detections)


def test_edge_only_gives_boxes_in_frame_pixels(bundle):
    with HybridDetector.from_bundle(bundle, mode="edge_only") as det:
        r = det.predict(frame())
        assert r.source == "edge" and r.reason == "edge_only" and r.bytes_sent == 0
        assert r.image_size == (120, 200) and len(r.detections) == 10 and in_frame(r)
        assert all(d.label == synth.LABELS[d.class_id] for d in r.detections)
        assert r.edge_score is not None and r.latency_ms["total"] > 0
        with pytest.raises(InvalidImageError):
            det.predict(b"not an image")


def test_unsure_frames_go_to_the_cloud_in_one_request(bundle, url):
    with HybridDetector.from_bundle(bundle, cloud_url=url, threshold=-1.0, probes=[]) as det:  # never sure
        r = det.predict(frame(1))
        assert r.source == "cloud" and r.reason == "low_confidence" and r.bytes_sent > 100
        assert len(r.detections) == 10 and in_frame(r)
        rs = det.predict_batch([frame(i) for i in range(3)])
        assert [x.source for x in rs] == ["cloud"] * 3 and all(in_frame(x) for x in rs)
        s = det.stats()
        assert s.calls == 4 and s.by_source == {"cloud": 4}
    with HybridDetector.from_bundle(bundle, cloud_url=url, probes=[]) as det:  # the bundle's threshold: always sure
        r = det.predict(frame(2))
        assert r.source == "edge" and r.reason == "confident" and r.bytes_sent == 0


def test_cloud_only_matches_the_detect_endpoint_frame(bundle, url):
    with HybridDetector.from_bundle(bundle, cloud_url=url, mode="cloud_only", upload="original") as det:
        r = det.predict(frame(3))
        assert r.source == "cloud" and r.reason == "cloud_only" and in_frame(r)


def test_cloud_failing_mid_stream_returns_edge_boxes_with_the_reason(bundle, url):
    port = int(url.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port)) as proxy, \
            HybridDetector.from_bundle(bundle, cloud_url=proxy.url, threshold=-1.0, probes=[], max_retries=0,
                                       deadline_ms=3000) as det:
        first = det.predict(frame(0))
        assert first.source == "cloud"
        proxy.go_down()
        r = det.predict(frame(1))
        assert r.source == "edge" and r.reason == "cloud_error:connection" and r.cloud_error
        assert len(r.detections) == 10 and in_frame(r)
        proxy.come_back()
        proxy.set("garbage_http")
        r = det.predict(frame(2))
        assert r.source == "edge" and r.reason == "cloud_error:bad_response"
        proxy.heal()
        assert det.stats().by_reason.get("cloud_error:connection") == 1


def test_no_edge_and_no_cloud_is_an_error_not_a_lost_answer(bundle, tmp_path):
    with HybridDetector.from_bundle(bundle, mode="cloud_only", cloud_url="http://127.0.0.1:9", max_retries=0,
                                    deadline_ms=500) as det, pytest.raises(CloudUnavailableError):
        det.predict(frame())


def test_a_classify_bundle_is_refused(tmp_path):
    man = Manifest(name="c", labels=["a", "b"], input=InputSpec(height=8, width=8), models={})
    path = write_bundle(tmp_path / "c", man, {}).path
    assert load_bundle(path).manifest.task == "classify"
    with pytest.raises(BundleError, match="not a detect bundle"):
        HybridDetector.from_bundle(path, mode="edge_only")


def test_evaluate_against_the_service(bundle, url, tmp_path):
    from quantize.detect.annotations import write_yolo
    from quantize.detect.evaluate import evaluate_detector

    data = write_yolo(synth.make_set("test", 6), tmp_path / "photos")
    rep = evaluate_detector(bundle, str(data), out_dir=tmp_path / "ev", progress=False, cloud_url=url)
    rows = {r["name"]: r for r in rep["rows"]}
    assert rep["cloud"]["where"] == "http" and rep["data"]["n"] == 6
    assert rows["cloud-only"]["offload"] == 1.0 and rows["edge-only"]["offload"] == 0.0
    assert rows["hybrid"]["offload"] == 0.0  # the bundle's threshold keeps every frame on the edge
    assert (tmp_path / "ev" / "detections.png").stat().st_size > 1000


def test_camera_example_draws_the_boxes(bundle, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    video, out = tmp_path / "clip.avi", tmp_path / "boxed.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (200, 120))
    for i in range(4):
        w.write(frame(i))
    w.release()
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(repo / "examples" / "camera_loop.py"), str(bundle), "--source", str(video),
                        "--no-window", "--out", str(out), "--print"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("10 objects\tedge\tedge_only") == 4
    cap = cv2.VideoCapture(str(out))
    ok, shown = cap.read()
    cap.release()
    assert ok and shown.shape == (120, 200, 3)
    assert np.abs(shown.astype(int) - frame(0).astype(int)).mean() > 1  # boxes and banner drawn on the frame
