"""The cloud service on a real loopback port: every endpoint, both input kinds, and every 4xx from its real cause.

One server (auth off, two digits models plus a tiny bundle with a real int8
edge model) serves most tests; a second has API keys, a rate limit and small
limits. Answers are checked against the same Keras model run in this process.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from cloud_server import serve_app_in_thread
from edge_helpers import cached_tiny_bundle

from edge_sdk.bundle import load_bundle, sha256_file
from edge_sdk.preprocess import encode_jpeg, encode_png, preprocess
from edge_sdk.protocol import images_request, parse_outputs, tensor_request

KEY = "test-key-0123456789"
OTHER_KEY = "other-key-9876543210"
PNG = {"Content-Type": "image/png"}


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_files(digits_dir) -> list[tuple[Path, str]]:
    """Two images of each digit: (path, true label)."""
    return [(p, d.name) for d in sorted(digits_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:2]]


@pytest.fixture(scope="module")
def reference(trained_bundle_session):
    """The bundle's model run here, in-process, through the same preprocessing: the answers the server must give."""
    import keras

    bundle = load_bundle(trained_bundle_session)
    model = keras.saving.load_model(trained_bundle_session / "cloud.keras", safe_mode=True)

    def probs(srcs, **kw) -> np.ndarray:
        x = np.stack([preprocess(s, bundle.manifest.input, bundle.manifest.preprocess, **kw) for s in srcs])
        return np.asarray(model(x, training=False))

    probs.labels = bundle.manifest.labels
    probs.manifest = bundle.manifest
    return probs


@pytest.fixture(scope="module")
def tiny_edge(tmp_path_factory) -> Path:
    return cached_tiny_bundle(tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def srv(trained_bundle_session, tiny_edge):
    bundles = {"digits": trained_bundle_session, "digits2": trained_bundle_session, "tiny": tiny_edge}
    with serve_app_in_thread(bundles, bench_endpoints=True, max_batch_size=8, max_delay_ms=20) as s:
        yield s


@pytest.fixture(scope="module")
def guarded(trained_bundle_session):
    """API keys on, 1 request/s with a burst of 3 for the rate-limited key, small body/pixel/batch limits."""
    with serve_app_in_thread({"digits": trained_bundle_session}, api_keys=[KEY, OTHER_KEY], max_body_bytes=64 * 1024,
                             max_pixels=100_000, max_request_images=4) as s:
        yield s


@pytest.fixture
def http():
    with requests.Session() as s:
        yield s


def metric(url: str, name: str, headers=None, **labels) -> float:
    """The value of one Prometheus sample from /metrics (0 when absent)."""
    text = requests.get(url + "/metrics", headers=headers, timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_error(r: requests.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body
    return body


# --- health, metadata, docs ----------------------------------------------------


def test_health_and_model_readiness(srv, http):
    assert http.get(srv.url + "/v2/health/live").json() == {"live": True}
    assert http.get(srv.url + "/v2/health/ready").json() == {"ready": True}
    for name in ("digits", "digits2", "tiny"):
        assert http.get(f"{srv.url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert_error(http.get(srv.url + "/v2/models/nope/ready"), 404, "nope")


def test_model_metadata_describes_inputs_and_outputs(srv, http, reference, tiny_edge):
    meta = http.get(srv.url + "/v2/models/digits").json()
    inp = reference.manifest.input
    assert meta["name"] == "digits" and meta["platform"] == "keras_tensorflow"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, inp.height, inp.width, inp.channels]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"probabilities": [-1, 10], "label": [-1]}
    assert meta["parameters"]["labels"] == reference.labels
    assert meta["parameters"]["edge_model"] is None
    tiny = http.get(srv.url + "/v2/models/tiny").json()
    assert tiny["parameters"]["edge_model"] == load_bundle(tiny_edge).manifest.models["edge"].sha256


def test_openapi_document_lists_every_endpoint_and_the_infer_body(srv, http):
    doc = http.get(srv.url + "/openapi.json").json()
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/infer", "/v1/classify", "/v1/models/{name}/edge", "/metrics"):
        assert path in doc["paths"], path
    body = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/InferRequest"}
    assert {"InferRequest", "Tensor"} <= set(doc["components"]["schemas"])


# --- inference: both input kinds ----------------------------------------------


def test_classify_raw_png_matches_the_model_in_process(srv, http, digit_files, reference):
    for path, _truth in digit_files[::4]:
        data = path.read_bytes()
        r = http.post(srv.url + "/v1/classify?model=digits&top_k=3", data=data, headers=PNG)
        assert r.status_code == 200, r.text
        body = r.json()
        want = reference([data])[0]
        assert body["model_name"] == "digits"
        assert body["label"] == reference.labels[int(want.argmax())]
        assert body["confidence"] == pytest.approx(float(want.max()), abs=1e-5)
        assert [t["label"] for t in body["top_k"]] == [reference.labels[i] for i in np.argsort(-want)[:3]]


@pytest.mark.parametrize("fmt", ["jpeg", "bmp", "webp", "octet"])
def test_classify_other_formats(srv, http, digit_files, reference, fmt):
    rgb = cv2.cvtColor(cv2.imread(str(digit_files[5][0])), cv2.COLOR_BGR2RGB)
    if fmt in ("jpeg", "octet"):
        data, ctype = encode_jpeg(rgb), "image/jpeg" if fmt == "jpeg" else "application/octet-stream"
    else:
        ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        data, ctype = buf.tobytes(), f"image/{fmt}"
    r = http.post(srv.url + "/v1/classify?model=digits", data=data, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert r.json()["confidence"] == pytest.approx(float(reference([data])[0].max()), abs=1e-5)


def test_infer_bytes_batch(srv, http, digit_files, reference):
    datas = [p.read_bytes() for p, _ in digit_files[:7]]
    r = http.post(srv.url + "/v2/models/digits/infer", json=images_request(datas, request_id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "digits" and body["id"] == "req-1"
    probs, labels = parse_outputs(body, len(datas), 10)
    want = reference(datas)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert labels == [reference.labels[i] for i in want.argmax(1)]


def test_infer_uint8_and_fp32_tensors_give_the_same_answers_as_encoded_images(srv, http, digit_files, reference):
    rgb = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (40, 40))
                    for p, _ in digit_files[:3]])
    pngs = [encode_png(im) for im in rgb]
    by_bytes, _ = parse_outputs(http.post(srv.url + "/v2/models/digits/infer", json=images_request(pngs)).json(), 3, 10)
    answer = http.post(srv.url + "/v2/models/digits/infer", json=tensor_request(rgb)).json()
    by_uint8, labels = parse_outputs(answer, 3, 10)
    np.testing.assert_allclose(by_uint8, by_bytes, atol=1e-6)
    m = reference.manifest
    x = np.stack([preprocess(im, m.input, m.preprocess, color="rgb") for im in rgb])
    by_fp32, _ = parse_outputs(http.post(srv.url + "/v2/models/digits/infer", json=tensor_request(x)).json(), 3, 10)
    np.testing.assert_allclose(by_fp32, by_bytes, atol=1e-6)
    np.testing.assert_allclose(by_bytes, reference(pngs), atol=1e-5)
    # a grey UINT8 tensor [N, H, W, 1] and nested (not flattened) data are accepted too
    grey = rgb[..., :1]
    nested = {"inputs": [{"name": "image", "shape": list(grey.shape), "datatype": "UINT8", "data": grey.tolist()}]}
    r = http.post(srv.url + "/v2/models/digits/infer", json=nested)
    assert r.status_code == 200, r.text


def test_infer_returns_only_the_requested_outputs(srv, http, digit_files):
    req = images_request([digit_files[0][0].read_bytes()])
    req["outputs"] = [{"name": "label"}]
    out = http.post(srv.url + "/v2/models/digits/infer", json=req).json()["outputs"]
    assert [o["name"] for o in out] == ["label"] and out[0]["shape"] == [1]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(srv, http, digit_files, reference):
    datas = [p.read_bytes() for p, _ in digit_files]
    want = [reference.labels[i] for i in reference(datas).argmax(1)]
    before_count = metric(srv.url, "hv_batch_size_count", model="digits2")
    before_sum = metric(srv.url, "hv_batch_size_sum", model="digits2")

    def one(i):
        with requests.Session() as s:
            r = s.post(srv.url + "/v1/classify?model=digits2", data=datas[i], headers=PNG, timeout=30)
            return r.json()["label"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(datas))))
    assert got == want
    calls = metric(srv.url, "hv_batch_size_count", model="digits2") - before_count
    images = metric(srv.url, "hv_batch_size_sum", model="digits2") - before_sum
    assert images == len(datas)
    assert calls < len(datas), "16 concurrent clients never shared a model call"


# --- edge model (over-the-air updates) -----------------------------------------


def test_edge_model_download_etag_and_304(srv, http, tiny_edge):
    sha = load_bundle(tiny_edge).manifest.models["edge"].sha256
    r = http.get(srv.url + "/v1/models/tiny/edge")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.content == (tiny_edge / "edge_int8.tflite").read_bytes()
    assert r.headers["ETag"] == f'"{sha}"' and r.headers["X-Edge-Model-Sha256"] == sha
    r304 = http.get(srv.url + "/v1/models/tiny/edge", headers={"If-None-Match": f'"{sha}"'})
    assert r304.status_code == 304 and r304.content == b"" and r304.headers["ETag"] == f'"{sha}"'
    assert http.get(srv.url + "/v1/models/tiny/edge", headers={"If-None-Match": '"0000"'}).status_code == 200

    m = http.get(srv.url + "/v1/models/tiny/edge?part=manifest")
    doc = m.json()
    assert doc["edge"] == {"file": "edge_int8.tflite", "sha256": sha, "size": len(r.content)}
    assert doc["manifest"]["models"]["edge"]["sha256"] == sha and doc["manifest"]["labels"] == ["c0", "c1", "c2", "c3"]
    again = http.get(srv.url + "/v1/models/tiny/edge?part=manifest", headers={"If-None-Match": m.headers["ETag"]})
    assert again.status_code == 304

    assert_error(http.get(srv.url + "/v1/models/digits/edge"), 404, "no edge model")
    assert_error(http.get(srv.url + "/v1/models/nope/edge"), 404, "unknown model")
    assert_error(http.get(srv.url + "/v1/models/tiny/edge?part=weights"), 400, "part")


def test_edge_model_of_a_quantized_bundle(quantized_bundle_session, http):
    from cloud_server import serve_in_thread

    sha = sha256_file(quantized_bundle_session / "edge_int8.tflite")
    assert sha == load_bundle(quantized_bundle_session).manifest.models["edge"].sha256
    with serve_in_thread([quantized_bundle_session]) as url:
        name = load_bundle(quantized_bundle_session).manifest.name
        r = http.get(f"{url}/v1/models/{name}/edge")
        assert r.status_code == 200 and r.headers["ETag"] == f'"{sha}"'
        import hashlib

        assert hashlib.sha256(r.content).hexdigest() == sha
        assert http.get(f"{url}/v1/models/{name}/edge", headers={"If-None-Match": f'"{sha}"'}).status_code == 304


# --- metrics -------------------------------------------------------------------


def test_metrics_count_requests_batches_and_queue(srv, http, digit_files):
    http.post(srv.url + "/v1/classify?model=digits", data=digit_files[0][0].read_bytes(), headers=PNG)
    http.get(srv.url + "/v2/models/nope")
    text = http.get(srv.url + "/metrics").text
    assert 'hv_requests_total{endpoint="/v1/classify",method="POST",status="200"}' in text
    assert 'hv_requests_total{endpoint="/v2/models/{name}",method="GET",status="404"}' in text
    assert 'hv_request_duration_seconds_bucket{endpoint="/v1/classify",le="0.1"}' in text
    assert 'hv_batch_size_bucket{le="1.0",model="digits"}' in text
    assert 'hv_queue_depth{model="digits"} 0.0' in text
    assert "hv_ready 1.0" in text


# --- 4xx from their real causes ----------------------------------------------------


def test_400_malformed_requests(srv, http, digit_files):
    url = srv.url + "/v2/models/digits/infer"
    J = {"Content-Type": "application/json"}
    assert_error(http.post(url, data=b'{"inputs": [', headers=J), 400, "not valid JSON")
    assert_error(http.post(url, json={"inputs": []}), 400, "inputs")
    assert_error(http.post(url, json={"wrong": 1}), 400)
    bad64 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!!"]}]}
    assert_error(http.post(url, json=bad64), 400, "base64")
    other = images_request([digit_files[0][0].read_bytes()])
    other["inputs"][0]["name"] = "pixels"
    assert_error(http.post(url, json=other), 400, "unknown input")
    other = images_request([digit_files[0][0].read_bytes()])
    other["outputs"] = [{"name": "logits"}]
    assert_error(http.post(url, json=other), 400, "unknown output")
    # several models are served: /v1/classify needs ?model=
    assert_error(http.post(srv.url + "/v1/classify", data=digit_files[0][0].read_bytes(), headers=PNG), 400, "model=")
    assert_error(http.post(srv.url + "/v1/classify?model=digits&top_k=0", data=b"x", headers=PNG), 400, "top_k")


def test_404_unknown_model_or_route_and_405(srv, http, digit_files):
    png = digit_files[0][0].read_bytes()
    assert_error(http.get(srv.url + "/v2/models/nope"), 404, "unknown model")
    assert_error(http.post(srv.url + "/v2/models/nope/infer", json=images_request([png])), 404, "unknown model")
    assert_error(http.post(srv.url + "/v1/classify?model=nope", data=png, headers=PNG), 404, "unknown model")
    assert_error(http.get(srv.url + "/v3/whatever"), 404, "not found")
    assert_error(http.delete(srv.url + "/v2/models/digits/infer"), 405, "not allowed")
    assert_error(http.get(srv.url + "/v2/models/digits/infer"), 405)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: a decompression bomb, refused before any decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_413_body_pixels_and_batch_limits(guarded, digit_files):
    h = {"X-API-Key": KEY}
    with requests.Session() as s:  # Content-Length over the limit: refused before the body is read
        too_big = s.post(guarded.url + "/v1/classify", data=b"\0" * (100 * 1024), headers={**h, **PNG})
        assert_error(too_big, 413, "limit")
    with requests.Session() as s:  # no Content-Length (chunked): refused while reading
        chunks = (b"\0" * 8192 for _ in range(16))
        assert_error(s.post(guarded.url + "/v1/classify", data=chunks, headers={**h, **PNG}), 413, "limit")
    with requests.Session() as s:
        bomb = _png_header_only(20_000, 20_000)
        assert len(bomb) < 200
        assert_error(s.post(guarded.url + "/v1/classify", data=bomb, headers={**h, **PNG}), 413, "pixels")
        big = {"inputs": [{"name": "image", "shape": [1, 400, 400, 1], "datatype": "UINT8", "data": [0]}]}
        too_many = s.post(guarded.url + "/v2/models/digits/infer", json=big, headers=h)
        assert_error(too_many, 413, "pixels")  # 160,000 > 100,000
        five = images_request([digit_files[0][0].read_bytes()] * 5)
        assert_error(s.post(guarded.url + "/v2/models/digits/infer", json=five, headers=h), 413, "4")
        # the server is fine afterwards
        ok = s.post(guarded.url + "/v1/classify", data=digit_files[0][0].read_bytes(), headers={**h, **PNG})
        assert ok.status_code == 200


def test_413_decompression_bomb_on_default_limits(srv, http):
    assert_error(http.post(srv.url + "/v1/classify?model=digits", data=_png_header_only(30_000, 30_000), headers=PNG),
                 413, "pixels")


def test_415_unsupported_media_type_or_image_format(srv, http, digit_files):
    png = digit_files[0][0].read_bytes()
    classify = srv.url + "/v1/classify?model=digits"
    assert_error(http.post(classify, data=png, headers={"Content-Type": "text/plain"}), 415, "Content-Type")
    assert_error(http.post(srv.url + "/v1/classify?model=digits", data=png), 415)  # no Content-Type at all
    gif = b"GIF89a" + struct.pack("<HH", 4, 4) + b"\0" * 40
    assert_error(http.post(srv.url + "/v1/classify?model=digits", data=gif, headers={"Content-Type": "image/gif"}), 415)
    assert_error(http.post(srv.url + "/v1/classify?model=digits", data=gif, headers=PNG), 415, "gif")
    assert_error(http.post(classify, data=b"hello, not an image", headers=PNG), 415, "not a recognised")
    assert_error(http.post(srv.url + "/v2/models/digits/infer", json=images_request([gif])), 415, "image 0")
    assert_error(http.post(srv.url + "/v2/models/digits/infer", data=b"{}", headers={"Content-Type": "text/xml"}), 415)


def test_422_undecodable_images_and_bad_tensors(srv, http, digit_files, reference):
    png = digit_files[0][0].read_bytes()
    url = srv.url + "/v2/models/digits/infer"
    classify = srv.url + "/v1/classify?model=digits"
    assert_error(http.post(classify, data=png[: len(png) // 2], headers=PNG), 422)
    jpeg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    assert_error(http.post(classify, data=jpeg[:-40], headers={"Content-Type": "image/jpeg"}), 422, "truncated")
    assert_error(http.post(srv.url + "/v1/classify?model=digits", data=b"", headers=PNG), 422, "empty")
    assert_error(http.post(url, json=images_request([png, png[:60]])), 422, "image 1")
    m = reference.manifest.input
    ok_shape = [1, m.height, m.width, m.channels]
    fp = lambda data, shape=ok_shape: {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": data}]}  # noqa: E731
    n = int(np.prod(ok_shape))
    assert_error(http.post(url, json=fp([0.0] * 12, [1, 2, 2, 3])), 422, "shape")
    assert_error(http.post(url, json=fp([0.0] * (n - 1))), 422, "values")
    nan_body = json.dumps(fp([0.0] * n)).replace("0.0", "NaN", 1).encode()
    assert_error(http.post(url, data=nan_body, headers={"Content-Type": "application/json"}), 422, "NaN")
    assert_error(http.post(url, json=fp([1e39] + [0.0] * (n - 1))), 422, "NaN or Inf")
    assert_error(http.post(url, json=fp(["a"] * n)), 422, "numbers")
    u8 = lambda data, shape: {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8", "data": data}]}  # noqa: E731
    assert_error(http.post(url, json=u8([300] * 12, [1, 2, 2, 3])), 422, "0..255")
    assert_error(http.post(url, json=u8([1.5] * 12, [1, 2, 2, 3])), 422, "integers")
    assert_error(http.post(url, json=u8([1] * 12, [1, 2, 2, 2])), 422, "NHWC")
    assert_error(http.post(url, json=u8([[1, 2], [3]], [1, 1, 1, 3])), 422)
    int32 = {"inputs": [{"name": "image", "shape": [1], "datatype": "INT32", "data": [1]}]}
    assert_error(http.post(url, json=int32), 422, "INT32")
    assert_error(http.post(url, json={"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                                  "data": [base64.b64encode(png).decode()]}]}), 422, "2 image")


def test_401_and_keys(guarded, digit_files):
    png = digit_files[0][0].read_bytes()
    with requests.Session() as s:
        assert s.get(guarded.url + "/v2/health/live").status_code == 200  # probes need no key
        assert s.get(guarded.url + "/v2/health/ready").status_code == 200
        paths = ("/v2/models/digits", "/v2/models/digits/ready", "/metrics", "/openapi.json", "/v1/models/digits/edge")
        for path in paths:
            assert_error(s.get(guarded.url + path), 401, "API key")
            assert_error(s.get(guarded.url + path, headers={"Authorization": "Bearer wrong-key-123456"}), 401)
        assert_error(s.post(guarded.url + "/v1/classify", data=png, headers=PNG), 401)
        wrong = s.post(guarded.url + "/v1/classify", data=png, headers={**PNG, "X-API-Key": KEY[:-1] + "X"})
        assert_error(wrong, 401)
        assert KEY not in wrong.text and "X-API-Key: KEY" in wrong.json()["error"]
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
        ok_bearer = s.post(guarded.url + "/v1/classify", data=png, headers={**PNG, "Authorization": f"Bearer {KEY}"})
        ok_header = s.post(guarded.url + "/v1/classify", data=png, headers={**PNG, "X-API-Key": OTHER_KEY})
        assert ok_bearer.status_code == ok_header.status_code == 200
        assert ok_bearer.json() == ok_header.json()
        assert s.get(guarded.url + "/metrics", headers={"X-API-Key": KEY}).status_code == 200


def test_auth_off_needs_no_key(srv, http):
    assert http.get(srv.url + "/v2/models/digits").status_code == 200
    assert http.get(srv.url + "/metrics").status_code == 200


def test_429_rate_limit_per_key(trained_bundle_session, digit_files):
    png = digit_files[0][0].read_bytes()
    with serve_app_in_thread([trained_bundle_session], api_keys=[KEY, OTHER_KEY], rate_limit_rps=0.5,
                             rate_limit_burst=3) as s, requests.Session() as c:
        a, b = {**PNG, "X-API-Key": KEY}, {**PNG, "X-API-Key": OTHER_KEY}
        codes = [c.post(s.url + "/v1/classify", data=png, headers=a).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = c.post(s.url + "/v1/classify", data=png, headers=a)
        assert_error(r, 429, "rate limit")
        assert int(r.headers["Retry-After"]) >= 1
        # the other key has its own bucket
        assert c.post(s.url + "/v1/classify", data=png, headers=b).status_code == 200
        assert c.get(s.url + "/v2/health/ready").status_code == 200  # probes are never limited


def test_a_model_failure_is_a_json_500_counted_and_the_service_goes_on(trained_bundle_session, digit_files):
    png = digit_files[0][0].read_bytes()
    with serve_app_in_thread([trained_bundle_session]) as s, requests.Session() as c:
        batcher = s.app.state.hv.models["trained"].batcher
        model_fn = batcher.fn

        def broken(x):
            raise RuntimeError("simulated device failure")

        batcher.fn = broken
        r = c.post(s.url + "/v1/classify", data=png, headers=PNG)
        assert_error(r, 500, "internal server error")
        assert "simulated" not in r.text  # the cause is logged, not shown to the client
        assert s.app.state.hv.metrics.internal_errors._value.get() == 1
        batcher.fn = model_fn
        assert c.post(s.url + "/v1/classify", data=png, headers=PNG).status_code == 200


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(trained_bundle_session, digit_files):
    """Without keys the rate limit is per client address; a client must not pick its own address."""
    png = digit_files[0][0].read_bytes()
    with serve_app_in_thread([trained_bundle_session], rate_limit_rps=0.2, rate_limit_burst=2) as s, \
            requests.Session() as c:
        codes = [c.post(s.url + "/v1/classify", data=png, headers={**PNG, "X-Forwarded-For": f"10.0.0.{i}"}).status_code
                 for i in range(3)]
        assert codes == [200, 200, 429]
    with serve_app_in_thread([trained_bundle_session], rate_limit_rps=0.2, rate_limit_burst=2,
                             forwarded_allow_ips="127.0.0.1") as s, requests.Session() as c:
        codes = [c.post(s.url + "/v1/classify", data=png, headers={**PNG, "X-Forwarded-For": f"10.0.0.{i}"}).status_code
                 for i in range(3)]
        assert codes == [200, 200, 200]  # behind a trusted proxy each forwarded client has its own bucket


def test_503_when_the_queue_is_full_then_recovers(trained_bundle_session, digit_files):
    png = digit_files[0][0].read_bytes()
    with serve_app_in_thread([trained_bundle_session], queue_size=1, max_batch_size=1, max_delay_ms=0,
                             model_instances=1) as s:
        batcher = s.app.state.hv.models["trained"].batcher  # named by its manifest
        gate = threading.Event()
        model_fn = batcher.fn

        def gated(x):  # the model's one instance blocks on the gate, as a long batch would
            gate.wait(30)
            return model_fn(x)

        batcher.fn = gated
        results = {}

        def send(i):
            with requests.Session() as c:
                results[i] = c.post(s.url + "/v1/classify", data=png, headers=PNG, timeout=60)

        def wait_for(cond):
            for _ in range(1000):
                if cond():
                    return True
                threading.Event().wait(0.01)
            return False

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        try:
            threads[0].start()  # taken by the collector, handed to the (blocked) worker
            assert wait_for(lambda: batcher.in_worker == 1)
            threads[1].start()  # waits in the queue of 1
            assert wait_for(lambda: batcher.depth == 1)
            with requests.Session() as c:
                r = c.post(s.url + "/v1/classify", data=png, headers=PNG)
                assert_error(r, 503, "queue is full")
                assert int(r.headers["Retry-After"]) >= 1
                assert c.get(s.url + "/v2/health/live").status_code == 200
        finally:
            gate.set()  # the worker is free again: both waiting requests complete
        for t in threads:
            t.join(30)
        assert batcher.in_worker == 0 and batcher.depth == 0
        assert [results[i].status_code for i in range(2)] == [200, 200]
        with requests.Session() as c:
            assert c.post(s.url + "/v1/classify", data=png, headers=PNG).status_code == 200
            # draining: readiness goes 503 at once so load balancers stop sending work
            s.app.state.hv.begin_drain()
            assert_error(c.get(s.url + "/v2/health/ready"), 503, "draining")


def test_tls(trained_bundle_session, digit_files, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    with serve_app_in_thread([trained_bundle_session], ssl_certfile=tmp_path / "server.pem",
                             ssl_keyfile=tmp_path / "key.pem") as s:
        assert s.url.startswith("https://")
        # Connection: close, so no idle TLS keep-alive connection holds up the drain (asyncio gives a
        # TLS peer up to 30 s to answer the server's close_notify)
        with requests.Session() as c:
            r = c.post(s.url + "/v1/classify", data=digit_files[0][0].read_bytes(),
                       headers={**PNG, "Connection": "close"}, verify=str(tmp_path / "ca.pem"))
            assert r.status_code == 200 and r.json()["label"]
        with requests.Session() as c, pytest.raises(requests.exceptions.SSLError):
            c.get(s.url + "/v2/health/live")  # not trusted without the CA


# --- bad input never reaches the 500 handler ----------------------------------------


def test_no_bad_input_reached_the_500_handler(srv, guarded):
    """Runs after the error tests above on the same servers: none of their bad inputs became a 500."""
    for s in (srv, guarded):
        hdr = {"X-API-Key": KEY}
        assert metric(s.url, "hv_internal_errors_total", headers=hdr) == 0.0
        text = requests.get(s.url + "/metrics", headers=hdr).text
        assert 'status="500"' not in text
        assert 'status="4' in text  # the error tests did reach this server
