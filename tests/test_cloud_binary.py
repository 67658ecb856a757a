"""The binary tensor data extension and the rest of the protocol the official clients need, on a real server.

`GET /v2`, versioned paths, the repository index, content types, unknown top-level fields, binary requests and
answers (checked against the JSON path, which test_cloud.py checks against the model), every malformed binary
request's typed 4xx, the SDK's negotiation, and a fuzz run (10,000 random requests through the parser in
process, a few hundred over HTTP) that must give no 5xx and leave the service ready.
"""

from __future__ import annotations

import base64
import json
import struct
import time

import numpy as np
import pytest
import requests
from binary_fuzz import fuzz_over_http, random_case
from cloud_server import serve_app_in_thread

from cloud.errors import ApiError
from cloud.inputs import ModelInput, parse_infer
from edge_sdk.binary import HEADER_LENGTH, pack_bytes, split_body
from edge_sdk.bundle import load_bundle
from edge_sdk.client import CloudClient, deadline_after
from edge_sdk.hybrid import HybridClassifier
from edge_sdk.options import HybridOptions
from edge_sdk.preprocess import ImageLimits, InputSpec, PreprocessSpec, encode_png, load_image, preprocess
from edge_sdk.protocol import images_payload, parse_outputs, read_response, tensor_payload

OCTET = "application/octet-stream"


@pytest.fixture(scope="module")
def srv(trained_bundle_session):
    with serve_app_in_thread({"digits": trained_bundle_session}, max_batch_size=8, max_delay_ms=2) as s:
        yield s


@pytest.fixture(scope="module")
def pngs(digits_dir) -> list[bytes]:
    return [p.read_bytes() for d in sorted(digits_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:1]]


@pytest.fixture
def http():
    with requests.Session() as s:
        yield s


def infer(http, url, payload, binary: bool, path: str = "/v2/models/digits/infer") -> requests.Response:
    enc = payload.encode(binary)
    return http.post(url + path, data=enc.body, headers=enc.headers, timeout=60)


def answer(r: requests.Response, n: int) -> tuple[np.ndarray, list[str] | None]:
    assert r.status_code == 200, r.text
    body, data = read_response(r.content, r.headers.get(HEADER_LENGTH))
    return parse_outputs(body, n, 10, data)


def assert_error(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body


# --- server metadata, versions, repository ----------------------------------------------------------


def test_server_metadata_lists_the_binary_extension(srv, http):
    meta = http.get(srv.url + "/v2").json()
    assert meta["name"] == "hybrid-vision" and meta["version"] and "binary_tensor_data" in meta["extensions"]


def test_versioned_paths_and_repository_index(srv, http, pngs):
    assert http.get(srv.url + "/v2/models/digits/versions/1").json()["versions"] == ["1"]
    assert http.get(srv.url + "/v2/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}
    assert_error(http.get(srv.url + "/v2/models/digits/versions/7"), 404, "no version '7'")
    assert_error(http.get(srv.url + "/v2/models/digits/versions/7/ready"), 404, "version")
    assert_error(infer(http, srv.url, images_payload(pngs[:1]), True, "/v2/models/digits/versions/7/infer"), 404)
    assert_error(http.post(srv.url + "/v2/models/digits/versions//infer", json={}), 404)
    versioned, _ = answer(infer(http, srv.url, images_payload(pngs[:2]), True, "/v2/models/digits/versions/1/infer"), 2)
    plain, _ = answer(infer(http, srv.url, images_payload(pngs[:2]), True), 2)
    np.testing.assert_array_equal(versioned, plain)
    entry = {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    assert http.post(srv.url + "/v2/repository/index").json() == [entry]  # tritonclient sends no body
    assert http.post(srv.url + "/v2/repository/index", json={"ready": True}).json() == [entry]
    assert_error(http.post(srv.url + "/v2/repository/index", json={"ready": "yes"}), 400, "ready")
    assert_error(http.post(srv.url + "/v2/repository/index", data=b"{nope"), 400, "JSON")


def test_openapi_describes_the_new_routes(srv, http):
    paths = http.get(srv.url + "/openapi.json").json()["paths"]
    for p in ("/v2", "/v2/repository/index", "/v2/models/{name}/versions/{version}",
              "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/versions/{version}/infer"):
        assert p in paths, p
    infer_op = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer_op["requestBody"]["content"]) == {"application/json", OCTET}
    assert HEADER_LENGTH in [p["name"] for p in infer_op["parameters"]]


# --- binary requests and answers ------------------------------------------------------------------


def test_binary_inputs_give_the_json_answers(srv, http, pngs):
    rgb = np.stack([load_image(p)[:20, :20] for p in pngs[:3]])
    for payload in (images_payload(pngs[:3]), tensor_payload(rgb), tensor_payload(rgb[..., :1])):
        by_json, labels = answer(infer(http, srv.url, payload, False), 3)
        by_binary, binary_labels = answer(infer(http, srv.url, payload, True), 3)
        np.testing.assert_allclose(by_binary, by_json, atol=1e-6)
        assert binary_labels == labels and len(labels) == 3


def test_fp32_binary_tensor_and_binary_outputs(srv, http, pngs, trained_bundle_session):
    m = load_bundle(trained_bundle_session).manifest
    x = np.stack([preprocess(p, m.input, m.preprocess) for p in pngs[:4]])
    r = infer(http, srv.url, tensor_payload(x), True)
    assert r.headers["content-type"] == OCTET and int(r.headers[HEADER_LENGTH]) < len(r.content)
    head, data = split_body(r.content, r.headers[HEADER_LENGTH])
    outs = {o["name"]: o for o in json.loads(head)["outputs"]}
    assert outs["probabilities"]["parameters"]["binary_data_size"] == 4 * 10 * 4 and "data" not in outs["probabilities"]
    assert len(data) == 160 + outs["label"]["parameters"]["binary_data_size"]
    by_binary, labels = answer(r, 4)
    by_json, json_labels = answer(infer(http, srv.url, tensor_payload(x), False), 4)
    np.testing.assert_allclose(by_binary, by_json, atol=1e-6)
    assert labels == json_labels


def test_each_output_chooses_binary_or_json(srv, http, pngs):
    meta, raw = images_payload(pngs[:2]).inputs[0].binary_tensor()
    doc = {"model_name": "digits", "inputs": [meta], "parameters": {"binary_data_output": True},
           "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}]}
    head = json.dumps(doc).encode()
    r = http.post(srv.url + "/v2/models/digits/infer", data=head + raw,
                  headers={"Content-Type": OCTET, HEADER_LENGTH: str(len(head))})
    body, data = read_response(r.content, r.headers.get(HEADER_LENGTH))
    label, probs = body["outputs"]
    assert label["name"] == "label" and len(label["data"]) == 2 and "parameters" not in label
    assert probs["parameters"]["binary_data_size"] == len(data) == 2 * 10 * 4


def test_content_types_and_unknown_top_level_fields(srv, http, pngs):
    doc = {"model_name": "digits", "model_version": "1", "something_new": {"a": 1},
           **images_payload(pngs[:1]).json_doc()}
    for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8", OCTET):
        r = http.post(srv.url + "/v2/models/digits/infer", data=json.dumps(doc), headers={"Content-Type": ctype})
        answer(r, 1)
    assert_error(http.post(srv.url + "/v2/models/digits/infer", data=json.dumps(doc),
                           headers={"Content-Type": "text/plain"}), 415, "text/plain")
    assert_error(http.post(srv.url + "/v2/models/digits/infer", data=json.dumps(doc).encode("utf-16"),
                           headers={"Content-Type": "application/json; charset=utf-16"}), 415, "UTF-8")
    assert_error(http.post(srv.url + "/v2/models/digits/infer", data=json.dumps(doc),
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}), 415, "gzip")
    bad = {**doc, "inputs": [{**doc["inputs"][0], "extra_field": 1}]}  # the tensors stay strict
    assert_error(http.post(srv.url + "/v2/models/digits/infer", json=bad), 400, "extra_field")


# --- every malformed binary request has its typed 4xx ----------------------------------------------


def _body(tensors: list[dict], raw: bytes, header_length=None, extra: bytes = b"", **fields) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": tensors, **fields}).encode()
    n = len(head) if header_length is None else header_length
    return head + raw + extra, {"Content-Type": OCTET, HEADER_LENGTH: str(n)}


FP32 = {"name": "image", "datatype": "FP32", "shape": [1, 32, 32, 1]}
FP32_RAW = np.zeros((1, 32, 32, 1), np.float32).tobytes()


def _case(name: str, png: bytes) -> tuple[bytes, dict]:
    size = {"parameters": {"binary_data_size": len(FP32_RAW)}}
    bytes_t = {"name": "image", "datatype": "BYTES", "shape": [2]}
    cases = {
        "header_not_a_number": lambda: _body([{**FP32, **size}], FP32_RAW, header_length="12a"),
        "header_negative": lambda: _body([{**FP32, **size}], FP32_RAW, header_length=-5),
        "header_zero": lambda: _body([{**FP32, **size}], FP32_RAW, header_length=0),
        "header_past_the_end": lambda: _body([{**FP32, **size}], FP32_RAW, header_length=10 ** 7),
        "header_cuts_the_json": lambda: _body([{**FP32, **size}], FP32_RAW, header_length=20),
        "size_past_the_end": lambda: _body([{**FP32, "parameters": {"binary_data_size": len(FP32_RAW) + 1}}], FP32_RAW),
        "bytes_left_over": lambda: _body([{**FP32, **size}], FP32_RAW, extra=b"\0" * 8),
        "size_not_an_integer": lambda: _body([{**FP32, "parameters": {"binary_data_size": "4096"}}], FP32_RAW),
        "size_negative": lambda: _body([{**FP32, "parameters": {"binary_data_size": -1}}], FP32_RAW),
        "unknown_datatype": lambda: _body([{**FP32, **size, "datatype": "FP8"}], FP32_RAW),
        "shape_not_the_data": lambda: _body([{**FP32, "shape": [2, 32, 32, 1], **size}], FP32_RAW),
        "fp32_wrong_length": lambda: _body([{**FP32, "parameters": {"binary_data_size": 4095}}], FP32_RAW[:4095]),
        "data_and_binary": lambda: _body([{**FP32, **size, "data": [0.0]}], FP32_RAW),
        "neither_data_nor_binary": lambda: _body([FP32], b""),
        "binary_without_header": lambda: (json.dumps({"inputs": [{**FP32, **size}]}).encode() + FP32_RAW,
                                          {"Content-Type": OCTET}),
        "bytes_prefix_cut": lambda: _body([{**bytes_t, "parameters": {"binary_data_size": 2}}], b"\x05\x00"),
        "bytes_element_past_the_end": lambda: _body([{**bytes_t, "parameters": {"binary_data_size": 8}}],
                                                    struct.pack("<I", 1000) + png[:4]),
        "bytes_count_not_the_shape": lambda: _body([{**bytes_t, "parameters": {"binary_data_size": len(png) + 4}}],
                                                   pack_bytes([png])),
        "bytes_not_an_image": lambda: _body([{**bytes_t, "shape": [1], "parameters": {"binary_data_size": 7}}],
                                            pack_bytes([b"abc"])),
        "output_flag_not_bool": lambda: _body([{**FP32, **size}], FP32_RAW,
                                              outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
    }
    return cases[name]()


MALFORMED = {  # case -> (status, words in the error)
    "header_not_a_number": (400, HEADER_LENGTH), "header_negative": (400, HEADER_LENGTH),
    "header_zero": (400, "positive"), "header_past_the_end": (400, "body has only"),
    "header_cuts_the_json": (400, "not valid JSON"), "size_past_the_end": (400, "past the end"),
    "bytes_left_over": (400, "after the last tensor"), "size_not_an_integer": (400, "binary_data_size"),
    "size_negative": (400, "non-negative"), "unknown_datatype": (400, "datatype"),
    "shape_not_the_data": (422, "needs 2048 FP32 values"), "fp32_wrong_length": (422, "binary_data_size is 4095"),
    "data_and_binary": (400, "both data"), "neither_data_nor_binary": (400, "no data"),
    "binary_without_header": (400, HEADER_LENGTH), "bytes_prefix_cut": (400, "cut short"),
    "bytes_element_past_the_end": (400, "says 1000 bytes"), "bytes_count_not_the_shape": (422, "holds 1"),
    "bytes_not_an_image": (415, "image 0"), "output_flag_not_bool": (400, "binary_data"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_binary_requests_get_typed_4xx(srv, http, pngs, name):
    body, headers = _case(name, pngs[0])
    status, words = MALFORMED[name]
    assert_error(http.post(srv.url + "/v2/models/digits/infer", data=body, headers=headers), status, words)


# --- the SDK negotiates ------------------------------------------------------------------------------


def test_sdk_sends_binary_to_a_server_that_lists_it_and_json_when_told(srv, trained_bundle_session, pngs):
    auto = CloudClient(srv.url, "digits")
    json_only = CloudClient(srv.url, "digits", wire="json")
    try:
        assert auto.negotiate() and not json_only.negotiate()  # asked in the background from construction
        a = auto.infer_images(pngs[:3], 10, deadline_after(30_000))
        j = json_only.infer_images(pngs[:3], 10, deadline_after(30_000))
        np.testing.assert_allclose(a.probs, j.probs, atol=1e-6)
        assert a.bytes_sent < 0.8 * j.bytes_sent  # raw image bytes instead of base64
    finally:
        auto.close()
        json_only.close()
    bundle = load_bundle(trained_bundle_session)
    for upload in ("tensor", "jpeg", "original"):
        clf = HybridClassifier.from_bundle(bundle, cloud_url=srv.url, mode="cloud_only", upload=upload,
                                           cloud_model="digits")
        ref = HybridClassifier(bundle, model=None, options=HybridOptions(mode="cloud_only", upload=upload),
                               cloud=CloudClient(srv.url, "digits", wire="json"))
        assert clf.cloud.negotiate()
        got, want = clf.predict_batch(pngs[:4]), ref.predict_batch(pngs[:4])
        assert all(p.source == "cloud" for p in got)
        np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in want], atol=1e-6)
        assert [p.label for p in got] == [p.label for p in want]
        assert sum(p.bytes_sent for p in got) < sum(p.bytes_sent for p in want)
        clf.cloud.close()
        ref.cloud.close()


def test_sdk_binary_tensor_upload_is_smaller_and_answers_the_same(srv, trained_bundle_session, pngs):
    answers, sent = {}, {}
    for wire in ("binary", "json"):
        clf = HybridClassifier.from_bundle(trained_bundle_session, cloud_url=srv.url, mode="cloud_only",
                                           cloud_model="digits", upload="tensor")
        clf.cloud.negotiate()
        clf.cloud.wire, clf.cloud._speaks_binary = wire, wire == "binary"
        preds = clf.predict_batch(pngs[:5])
        answers[wire] = np.array([p.confidence for p in preds])
        sent[wire] = sum(p.bytes_sent for p in preds)
        clf.cloud.close()
    np.testing.assert_allclose(answers["binary"], answers["json"], atol=1e-6)
    assert sent["binary"] < 0.5 * sent["json"]


# --- fuzz: random lengths, offsets and datatypes -------------------------------------------------------

FUZZ_SPEC = ModelInput(InputSpec(height=16, width=16, channels=1, color="GRAY"),
                       PreprocessSpec(resize="letterbox", scale=1 / 255.0),
                       ImageLimits(max_bytes=256 * 1024, max_pixels=96 * 96), max_images=8)
IN_PROCESS_CASES = 10_000
HTTP_CASES = 300


def check_parse(body: bytes, headers: dict[str, str], spec: ModelInput) -> int:
    """200 or the 4xx parse_infer gives; anything else (another exception, a bad tensor) fails the test."""
    try:
        parsed = parse_infer(body, spec, headers.get(HEADER_LENGTH))
    except ApiError as e:
        assert 400 <= e.status < 500 and e.message, (e.status, e.message)
        return e.status
    x = parsed.x
    assert x.dtype == np.float32 and x.shape[1:] == spec.shape and 1 <= len(x) <= spec.max_images
    assert np.isfinite(x).all()
    return 200


def test_fuzz_in_process_parser_10000_cases():
    rng = np.random.default_rng(20260503)
    statuses: dict[int, int] = {}
    for i in range(IN_PROCESS_CASES):
        body, headers = random_case(rng, FUZZ_SPEC.shape)
        try:
            s = check_parse(body, headers, FUZZ_SPEC)
        except Exception as e:
            raise AssertionError(f"case {i} (seed 20260503): {type(e).__name__}: {e}\n{body[:300]!r} {headers}") from e
        statuses[s] = statuses.get(s, 0) + 1
    print(f"\nin-process binary fuzz: {IN_PROCESS_CASES} cases, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) == IN_PROCESS_CASES
    assert statuses.get(200, 0) > 100 and statuses.get(400, 0) > 1000 and statuses.get(422, 0) > 100


def test_fuzz_over_http_gives_no_5xx_and_the_service_stays_ready(srv):
    t = time.perf_counter()
    statuses = fuzz_over_http(srv, HTTP_CASES, seed=7)
    took = time.perf_counter() - t
    print(f"\nHTTP binary fuzz: {HTTP_CASES} cases in {took:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 5 and len(statuses) >= 3


def test_base64_json_bytes_still_work(srv, http, pngs):
    doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                       "data": [base64.b64encode(encode_png(load_image(pngs[0]))).decode()]}]}
    answer(http.post(srv.url + "/v2/models/digits/infer", json=doc), 1)
