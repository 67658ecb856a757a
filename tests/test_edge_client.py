"""The cloud fallback's fault matrix: every cloud failure yields the edge answer with its reason, never an exception.

`responses` mocks the HTTP layer for the failure shapes; a real loopback server
(plain and TLS) checks the things a mock cannot: refused connections, a server
too slow for the deadline, and certificate verification.
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import ssl
import threading
import time

import numpy as np
import pytest
import requests
import responses
from edge_helpers import SIZE, cached_tiny_bundle, tiny_images

from edge_sdk.binary import HEADER_LENGTH, split_body
from edge_sdk.breaker import CircuitBreaker
from edge_sdk.client import CloudClient, _parse_retry_after, deadline_after
from edge_sdk.errors import CloudError, CloudUnavailableError, InvalidImageError
from edge_sdk.hybrid import HybridClassifier
from edge_sdk.preprocess import decode_bytes, resize

BASE = "http://cloud.test"
URL = f"{BASE}/v2/models/tiny/infer"
CLOUD_CLASS = 2  # the mocked cloud always says c2, with 0.9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_bundle(tmp_path_factory, seed=0)


def v2_answer(n: int, cls: int = CLOUD_CLASS, classes: int = 4) -> dict:
    p = np.full((n, classes), 0.1 / (classes - 1), np.float32)
    p[:, cls] = 0.9
    return {"model_name": "tiny", "outputs": [
        {"name": "probabilities", "shape": [n, classes], "datatype": "FP32", "data": p.ravel().tolist()},
        {"name": "label", "shape": [n], "datatype": "BYTES", "data": [f"c{cls}"] * n},
    ]}


def ok_callback(request):
    n = json.loads(request.body)["inputs"][0]["shape"][0]
    return 200, {"Content-Type": "application/json"}, json.dumps(v2_answer(n))


def make(tiny, base=BASE, *, threshold=0.99, deadline_ms=2000, **kw):
    """A classifier whose edge is always unsure (threshold 0.99 on a tiny random model), so it asks the cloud.

    The mocked cloud is a v2 server without ``GET /v2`` (404), so the SDK talks JSON to it.
    """
    responses.upsert(responses.GET, f"{BASE}/v2", status=404, json={"error": "not found"})
    kw.setdefault("probes", [])
    return HybridClassifier.from_bundle(tiny, cloud_url=base, threshold=threshold, deadline_ms=deadline_ms, **kw)


def infer_calls() -> list:
    """The mocked infer requests (the SDK's one ``GET /v2`` left out)."""
    return [c for c in responses.calls if c.request.method == "POST"]


@pytest.fixture
def edge_answer(tiny):
    clf = HybridClassifier.from_bundle(tiny, mode="edge_only", probes=[])
    img = tiny_images(1)[0]
    return img, clf.predict(img)


# --- the happy path: what goes over the wire ----------------------------------------------


@responses.activate
def test_unsure_edge_asks_cloud_with_a_v2_request(tiny, edge_answer):
    img, edge = edge_answer
    responses.post(URL, json=v2_answer(1))
    clf = make(tiny, api_key="s3cret")
    p = clf.predict(img)
    assert (p.source, p.reason, p.label) == ("cloud", "low_confidence", "c2")
    assert p.cloud_confidence == pytest.approx(0.9) and p.edge_confidence == pytest.approx(edge.confidence)
    assert p.cloud_error is None and {"preprocess", "edge", "cloud", "total"} <= set(p.latency_ms)
    req = infer_calls()[0].request
    assert req.headers["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in repr(clf.cloud)
    body = json.loads(req.body)
    t = body["inputs"][0]
    assert (t["name"], t["datatype"], t["shape"]) == ("image", "BYTES", [1])
    sent = base64.b64decode(t["data"][0])
    assert sent[:4] == b"RIFF" and sent[8:12] == b"WEBP"  # default upload "auto": an array goes as lossless WebP
    assert np.array_equal(decode_bytes(sent), resize(img[..., ::-1], SIZE, SIZE, "stretch"))  # the edge's pixels
    assert p.bytes_sent == len(req.body)
    assert clf.stats().bytes_sent == len(req.body)


@responses.activate
def test_upload_tensor_and_original(tiny, tmp_path):
    import cv2

    responses.add_callback(responses.POST, URL, callback=ok_callback)
    img = tiny_images(1)[0]
    path = tmp_path / "img.png"
    big = cv2.resize(img, (SIZE * 4, SIZE * 4), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), big)
    assert make(tiny, upload="tensor").predict(img).source == "cloud"
    t = json.loads(infer_calls()[0].request.body)["inputs"][0]
    assert (t["datatype"], t["shape"]) == ("UINT8", [1, SIZE, SIZE, 1])  # a grey model gets grey pixels
    grey = cv2.cvtColor(np.ascontiguousarray(img[..., ::-1]), cv2.COLOR_RGB2GRAY)  # BGR in -> RGB -> grey
    assert np.array_equal(np.asarray(t["data"], np.uint8).reshape(SIZE, SIZE), grey)
    make(tiny, upload="original").predict(str(path))
    assert base64.b64decode(json.loads(infer_calls()[1].request.body)["inputs"][0]["data"][0]) == path.read_bytes()
    make(tiny, upload="original").predict(img)  # an array: sent as lossless PNG of the full image
    png = base64.b64decode(json.loads(infer_calls()[2].request.body)["inputs"][0]["data"][0])
    assert np.array_equal(decode_bytes(png), img[..., ::-1])


@responses.activate
def test_confident_edge_never_calls_cloud(tiny, edge_answer):
    img, edge = edge_answer
    p = make(tiny, threshold=0.01).predict(img)
    assert (p.source, p.reason, p.label) == ("edge", "confident", edge.label)
    assert len(infer_calls()) == 0 and p.bytes_sent == 0


# --- binary tensor data, where the server says it speaks it -----------------------------------


def binary_answer(request):
    """A v2 server's binary answer to a binary request: probabilities as raw little-endian float32."""
    head_len = int(request.headers[HEADER_LENGTH])
    doc = json.loads(request.body[:head_len])
    assert doc["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}] and doc["id"]
    n = doc["inputs"][0]["shape"][0]
    raw = np.asarray(v2_answer(n)["outputs"][0]["data"], "<f4").tobytes()
    head = json.dumps({"model_name": "tiny", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [n, 4],
                                                          "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return 200, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}, head + raw


@responses.activate
def test_binary_tensors_to_a_server_that_lists_the_extension(tiny, edge_answer):
    import cv2

    img, _ = edge_answer
    responses.upsert(responses.GET, f"{BASE}/v2", json={"name": "triton", "version": "2",
                                                        "extensions": ["binary_tensor_data"]})
    responses.add_callback(responses.POST, URL, callback=binary_answer)
    clf = HybridClassifier.from_bundle(tiny, cloud_url=BASE, threshold=0.99, probes=[], upload="tensor")
    assert clf.cloud.negotiate()
    p = clf.predict(img)
    assert (p.source, p.label, p.cloud_confidence) == ("cloud", "c2", pytest.approx(0.9))
    req = infer_calls()[0].request
    assert req.headers["Content-Type"] == "application/octet-stream" and p.bytes_sent == len(req.body)
    head, raw = split_body(req.body, req.headers[HEADER_LENGTH])
    grey = cv2.cvtColor(np.ascontiguousarray(img[..., ::-1]), cv2.COLOR_RGB2GRAY)
    assert bytes(raw) == grey.tobytes() and json.loads(head)["inputs"][0]["parameters"]["binary_data_size"] == SIZE ** 2


@responses.activate
def test_a_binary_answer_that_does_not_frame_is_a_bad_response(tiny, edge_answer):
    img, edge = edge_answer
    responses.upsert(responses.GET, f"{BASE}/v2", json={"extensions": ["binary_tensor_data"]})
    head = json.dumps({"model_name": "tiny", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 4],
                                                          "parameters": {"binary_data_size": 16}}]}).encode()
    responses.post(URL, body=head + b"\0" * 8, headers={HEADER_LENGTH: str(len(head))})  # 8 of 16 bytes
    clf = HybridClassifier.from_bundle(tiny, cloud_url=BASE, threshold=0.99, probes=[])
    assert clf.cloud.negotiate()
    p = clf.predict(img)
    assert (p.source, p.reason, p.label) == ("edge", "cloud_error:bad_response", edge.label)
    assert "past the end" in p.cloud_error


@responses.activate
def test_a_server_that_cannot_say_gets_json_and_is_asked_again_later(tiny, edge_answer):
    img, _ = edge_answer
    responses.upsert(responses.GET, f"{BASE}/v2", status=503, json={"error": "warming up"})
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    clf = HybridClassifier.from_bundle(tiny, cloud_url=BASE, threshold=0.99, probes=[])
    assert clf.cloud.negotiate() is False
    asked = len([c for c in responses.calls if c.request.method == "GET"])
    for _ in range(3):
        assert clf.predict(img).source == "cloud"
    assert all(c.request.headers["Content-Type"] == "application/json" for c in infer_calls())
    assert len([c for c in responses.calls if c.request.method == "GET"]) == asked  # not again within PROBE_RETRY_S
    clf.cloud._next_probe = 0.0
    responses.upsert(responses.GET, f"{BASE}/v2", json={"extensions": ["binary_tensor_data"]})
    assert clf.cloud.speaks_binary is False and clf.cloud.negotiate() is True  # asked again once due


# --- the fault matrix ------------------------------------------------------------------------

FAULTS = [
    ("connection", dict(body=requests.ConnectionError("refused")), "cloud_error:connection", 3),
    ("timeout", dict(body=requests.exceptions.ReadTimeout("read timed out")), "cloud_error:timeout", 1),
    ("http_500", dict(status=500, json={"error": "boom"}), "cloud_error:http_500", 1),
    ("http_401", dict(status=401, json={"error": "no or wrong key"}), "cloud_error:http_401", 1),
    ("malformed_json", dict(status=200, body="{not json", content_type="application/json"),
     "cloud_error:bad_response", 1),
    ("wrong_shape", dict(status=200, json=v2_answer(2)), "cloud_error:bad_response", 1),
    ("wrong_classes", dict(status=200, json=v2_answer(1, classes=7)), "cloud_error:bad_response", 1),
    ("no_outputs", dict(status=200, json={"model_name": "tiny", "outputs": []}), "cloud_error:bad_response", 1),
    ("html", dict(status=200, body="<html>proxy login</html>", content_type="text/html"),
     "cloud_error:bad_response", 1),
    ("overloaded", dict(status=503, json={"error": "busy"}), "cloud_error:overloaded", 3),
]


@pytest.mark.parametrize("name,mock,reason,calls", FAULTS, ids=[f[0] for f in FAULTS])
@responses.activate
def test_fault_yields_edge_answer_with_reason(tiny, edge_answer, name, mock, reason, calls):
    img, edge = edge_answer
    responses.post(URL, **mock)
    clf = make(tiny)
    if name == "timeout":
        clf.cloud.max_attempt_s = 1.0  # the per-attempt limit, not the deadline, is what ran out
    clf.cloud.backoff_s = 0.001
    p = clf.predict(img)
    assert (p.source, p.reason) == ("edge", reason)
    assert p.label == edge.label and p.confidence == pytest.approx(edge.confidence)
    assert p.cloud_error and p.cloud_confidence is None
    assert len(infer_calls()) == calls  # retries only on connection errors and 503
    assert clf.stats().by_reason == {reason: 1}


@responses.activate
def test_503_retry_after_is_honoured_then_succeeds(tiny, edge_answer):
    img, _ = edge_answer
    responses.post(URL, status=503, headers={"Retry-After": "0.2"}, json={"error": "busy"})
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    t = time.perf_counter()
    p = make(tiny).predict(img)
    assert (p.source, p.reason) == ("cloud", "low_confidence")
    assert time.perf_counter() - t >= 0.2
    assert len(infer_calls()) == 2
    assert p.bytes_sent == 2 * len(infer_calls()[0].request.body)  # both attempts counted


@responses.activate
def test_503_retry_after_beyond_the_deadline_is_not_waited_for(tiny, edge_answer):
    img, edge = edge_answer
    responses.post(URL, status=503, headers={"Retry-After": "30"}, json={"error": "busy"})
    t = time.perf_counter()
    p = make(tiny, deadline_ms=500).predict(img)
    assert (p.source, p.reason, p.label) == ("edge", "cloud_error:overloaded", edge.label)
    assert time.perf_counter() - t < 0.3 and len(infer_calls()) == 1


@responses.activate
def test_slow_answer_past_the_deadline(tiny, edge_answer):
    img, edge = edge_answer

    def slow(request):
        time.sleep(0.6)
        return ok_callback(request)

    responses.add_callback(responses.POST, URL, callback=slow)
    clf = make(tiny, deadline_ms=150)
    t = time.perf_counter()
    p = clf.predict(img)
    took = (time.perf_counter() - t) * 1000
    assert (p.source, p.reason, p.label) == ("edge", "deadline", edge.label)
    assert took <= 150 + 50
    time.sleep(0.5)  # let the abandoned request finish before responses is torn down


@responses.activate
def test_cloud_only_raises_when_the_cloud_fails(tiny, edge_answer):
    img, _ = edge_answer
    responses.post(URL, status=500, json={"error": "boom"})
    clf = make(tiny, mode="cloud_only")
    with pytest.raises(CloudUnavailableError) as ei:
        clf.predict(img)
    assert ei.value.reason == "cloud_error:http_500" and ei.value.status == 500


@responses.activate
def test_invalid_image_raises_before_any_call(tiny):
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    clf = make(tiny)
    for bad in (b"", b"not an image", np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32), 42):
        with pytest.raises(InvalidImageError):
            clf.predict(bad)
    assert len(infer_calls()) == 0
    assert clf.stats().errors == {"invalid_image": 5}


# --- circuit breaker in use --------------------------------------------------------------------


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


@responses.activate
def test_breaker_opens_then_half_opens_and_closes(tiny, edge_answer):
    img, edge = edge_answer
    clock = Clock()
    responses.post(URL, status=500, json={"error": "boom"})
    clf = make(tiny, breaker=CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock))
    reasons = [clf.predict(img).reason for _ in range(5)]
    assert reasons == ["cloud_error:http_500"] * 3 + ["circuit_open"] * 2
    assert len(infer_calls()) == 3  # no calls while open
    assert clf.stats().breaker.state == "open"
    clock.t = 30  # cool-down over: one probe; the server has recovered
    responses.reset()
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    assert clf.stats().breaker.state == "half_open"
    p = clf.predict(img)
    assert (p.source, p.reason) == ("cloud", "low_confidence")
    assert clf.stats().breaker.state == "closed" and len(infer_calls()) == 1


@responses.activate
def test_bad_input_answers_do_not_trip_the_breaker(tiny, edge_answer):
    img, _ = edge_answer
    responses.post(URL, status=422, json={"error": "undecodable image"})
    clf = make(tiny, breaker=CircuitBreaker(failure_threshold=2, cooldown_s=30))
    for _ in range(4):
        assert clf.predict(img).reason == "cloud_error:http_422"
    assert clf.cloud.breaker.state == "closed"


# --- predict_batch -----------------------------------------------------------------------------


@responses.activate
def test_batch_sends_only_the_unsure_ones_in_one_request(tiny):
    imgs = tiny_images(10, seed=5)
    edge_only = HybridClassifier.from_bundle(tiny, mode="edge_only", probes=[])
    conf = np.array([edge_only.predict(im).confidence for im in imgs])
    assert conf.min() < conf.max()
    threshold = float(conf.min() + conf.max()) / 2
    unsure = [i for i, c in enumerate(conf) if c < threshold]
    assert 0 < len(unsure) < len(imgs)
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    preds = make(tiny, threshold=threshold).predict_batch(imgs)
    assert len(infer_calls()) == 1
    assert json.loads(infer_calls()[0].request.body)["inputs"][0]["shape"] == [len(unsure)]
    assert [i for i, p in enumerate(preds) if p.source == "cloud"] == unsure
    for i, p in enumerate(preds):
        if i in unsure:
            assert (p.label, p.reason) == ("c2", "low_confidence")
        else:
            assert (p.reason, p.confidence) == ("confident", pytest.approx(conf[i]))


@responses.activate
def test_batch_cloud_failure_keeps_every_edge_answer(tiny):
    imgs = tiny_images(4, seed=6)
    responses.post(URL, status=500, json={"error": "boom"})
    preds = make(tiny).predict_batch(imgs)
    assert len(infer_calls()) == 1
    assert all(p.source == "edge" and p.reason == "cloud_error:http_500" and p.cloud_error for p in preds)


def test_batch_bad_image_names_its_index(tiny):
    with pytest.raises(InvalidImageError, match="image 1"):
        make(tiny).predict_batch([tiny_images(1)[0], b"junk"])


# --- capacity routing ------------------------------------------------------------------------


class No:
    name = "battery"

    def check(self):
        from edge_sdk.capacity import ProbeResult

        return ProbeResult(False, 5.0, 20.0, "battery low")


@responses.activate
def test_no_capacity_skips_the_edge_and_asks_the_cloud(tiny, edge_answer):
    img, edge = edge_answer
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    p = make(tiny, threshold=0.01, probes=[No()]).predict(img)
    assert (p.source, p.reason, p.edge_confidence) == ("cloud", "no_capacity:battery", None)


@responses.activate
def test_no_capacity_and_a_failing_cloud_still_answers_from_the_edge(tiny, edge_answer):
    img, edge = edge_answer
    responses.post(URL, status=500, json={"error": "boom"})
    p = make(tiny, probes=[No()]).predict(img)
    assert (p.source, p.reason, p.label) == ("edge", "cloud_error:http_500", edge.label)
    p = HybridClassifier.from_bundle(tiny, probes=[No()], threshold=0.99).predict(img)  # no cloud at all
    assert (p.source, p.reason) == ("edge", "cloud_unavailable")


@responses.activate
def test_batch_short_of_capacity_and_a_failing_cloud_still_answers_every_image_from_the_edge(tiny):
    imgs = tiny_images(3, seed=7)
    responses.post(URL, status=500, json={"error": "boom"})
    preds = make(tiny, probes=[No()]).predict_batch(imgs)  # the same routing path as predict
    want = HybridClassifier.from_bundle(tiny, mode="edge_only", probes=[]).predict_batch(imgs)
    assert [(p.source, p.reason, p.label) for p in preds] == [("edge", "cloud_error:http_500", w.label) for w in want]
    no_cloud = HybridClassifier.from_bundle(tiny, probes=[No()], threshold=0.99).predict_batch(imgs)
    assert [(p.source, p.reason) for p in no_cloud] == [("edge", "cloud_unavailable")] * 3


# --- observers: the one place every final answer passes ----------------------------------------


@responses.activate
def test_observers_see_every_answer_and_cannot_break_predict(tiny, edge_answer):
    img, _ = edge_answer
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    clf = make(tiny)
    seen = []

    def broken(staged, p):
        raise RuntimeError("observer bug")

    clf.add_observer(lambda staged, p: seen.append((staged.resized.shape, p.source, p.reason)))
    clf.add_observer(broken)
    p = clf.predict(img)
    batch = clf.predict_batch(tiny_images(2, seed=8))
    assert seen == [((SIZE, SIZE, 3), "cloud", "low_confidence")] * 3
    assert p.source == "cloud" and len(batch) == 2
    assert clf.stats().errors == {"observer": 3}
    clf.remove_observer(broken)
    clf.predict(img)
    assert clf.stats().errors == {"observer": 3} and len(seen) == 4


def test_stats_are_typed(tiny, edge_answer):
    img, _ = edge_answer
    clf = HybridClassifier.from_bundle(tiny, mode="edge_only", probes=[])
    empty = clf.stats()
    assert empty.calls == 0 and empty.latency_ms["total"].n == 0 and empty.latency_ms["total"].p50 is None
    for _ in range(3):
        clf.predict(img)
    s = clf.stats()
    assert (s.calls, s.by_source, s.by_reason, s.offload_fraction) == (3, {"edge": 3}, {"edge_only": 3}, 0.0)
    assert s.latency_ms["total"].n == 3 and s.latency_ms["cloud"].n == 0 and s.breaker is None
    assert s.model.loaded and s.model.sha256 == clf.model.sha256 and s.mode == "edge_only"
    assert json.loads(json.dumps(s.to_dict()))["latency_ms"]["total"]["n"] == 3


def test_options_object_and_overrides(tiny, edge_answer):
    from edge_sdk import HybridOptions

    img, edge = edge_answer
    base = HybridOptions(mode="edge_only", probes=(), top_k=2)
    clf = HybridClassifier.from_bundle(tiny, base, top_k=1)
    assert clf.options.top_k == 1 and base.top_k == 2  # overrides never change the options given
    p = clf.predict(img)
    assert len(p.top_k) == 1 and p.label == edge.label
    with pytest.raises(TypeError, match="unknown option"):
        HybridClassifier.from_bundle(tiny, mode="edge_only", min_cloud_ms=3)


# --- real sockets: refused, slow, TLS ------------------------------------------------------------


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_real_connection_refused(tiny, edge_answer):
    img, edge = edge_answer
    clf = make(tiny, f"http://127.0.0.1:{free_port()}")
    clf.cloud.backoff_s = 0.001
    p = clf.predict(img)
    assert (p.source, p.reason, p.label) == ("edge", "cloud_error:connection", edge.label)


class _Handler(http.server.BaseHTTPRequestHandler):
    delay = 0.0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = json.loads(body)["inputs"][0]["shape"][0]
        time.sleep(self.server.delay)
        out = json.dumps(v2_answer(n)).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except OSError:
            pass

    def log_message(self, *a):
        pass


@pytest.fixture
def loopback():
    servers = []

    def start(delay=0.0, tls_ctx=None):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.delay = delay
        srv.daemon_threads = True
        if tls_ctx is not None:
            srv.socket = tls_ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"{'https' if tls_ctx else 'http'}://127.0.0.1:{srv.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("deadline_ms", [100, 300])
def test_real_slow_server_never_outlives_the_deadline(tiny, edge_answer, loopback, deadline_ms):
    img, edge = edge_answer
    clf = make(tiny, loopback(delay=1.0), deadline_ms=deadline_ms)
    t = time.perf_counter()
    p = clf.predict(img)
    took = (time.perf_counter() - t) * 1000
    assert (p.source, p.reason, p.label) == ("edge", "deadline", edge.label)
    assert deadline_ms - 5 <= took <= deadline_ms + 50


def test_real_server_answers_and_keeps_the_connection_alive(tiny, edge_answer, loopback):
    img, _ = edge_answer
    clf = make(tiny, loopback())
    assert clf.cloud.negotiate() is False  # no GET /v2 there (501); asked on its own connection, reused after
    for _ in range(3):
        assert clf.predict(img).source == "cloud"
    pool = next(iter(clf.cloud.session.adapters["http://"].poolmanager.pools._container.values()))
    assert pool.num_connections == 1  # one TCP connection for three calls


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ctx, str(ca_file)


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_work(tiny, edge_answer, loopback, tls):
    img, edge = edge_answer
    ctx, ca_file = tls
    url = loopback(tls_ctx=ctx)
    p = make(tiny, url).predict(img)
    assert (p.source, p.reason) == ("edge", "cloud_error:tls")  # unknown CA: refused, not silently trusted
    p = make(tiny, url, ca_bundle=ca_file).predict(img)
    assert (p.source, p.label) == ("cloud", "c2")


# --- client details ------------------------------------------------------------------------------


def test_retry_after_parsing():
    assert _parse_retry_after("2") == 2.0
    assert _parse_retry_after(None) is None and _parse_retry_after("soon") is None
    assert 0 <= _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # a date in the past: now


def test_client_refuses_non_http_urls():
    with pytest.raises(ValueError, match="http"):
        CloudClient("ftp://x", "m")


@responses.activate
def test_client_oversized_response_is_bad_response():
    responses.post(URL, body=b"x" * 2000)
    c = CloudClient(BASE, "tiny", max_response_bytes=1000)
    with pytest.raises(CloudError) as ei:
        c.infer_images([b"abc"], 4, deadline_after(1000))
    assert ei.value.reason == "bad_response"


@responses.activate
def test_client_nan_probabilities_are_bad_response():
    body = v2_answer(1)
    body["outputs"][0]["data"][0] = "NaN"
    responses.post(URL, body=json.dumps(body).replace('"NaN"', "NaN"), content_type="application/json")
    c = CloudClient(BASE, "tiny")
    with pytest.raises(CloudError) as ei:
        c.infer_images([b"abc"], 4, deadline_after(1000))
    assert ei.value.reason == "bad_response"


# --- no edge model -------------------------------------------------------------------------------


@responses.activate
def test_model_load_failure_goes_to_the_cloud_and_raises_only_if_it_fails_too(tiny, edge_answer):
    img, _ = edge_answer
    # a device where no interpreter backend can load the model
    clf = make(tiny, backend=["tflite_runtime"])
    assert clf.model is None and "tflite_runtime" in clf.stats().model.error
    responses.add_callback(responses.POST, URL, callback=ok_callback)
    p = clf.predict(img)
    assert (p.source, p.reason, p.edge_confidence) == ("cloud", "model_unavailable", None)
    responses.reset()
    responses.post(URL, status=500, json={"error": "boom"})
    with pytest.raises(CloudUnavailableError) as ei:
        clf.predict(img)
    assert ei.value.reason == "cloud_error:http_500"
    from edge_sdk.errors import ModelLoadError

    with pytest.raises(ModelLoadError):  # and with no cloud to fall back to, loading fails loudly
        HybridClassifier.from_bundle(tiny, backend=["tflite_runtime"])
