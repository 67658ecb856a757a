"""The service serves detect bundles: v2 infer outputs boxes/scores/classes/count, and POST /v1/detect, on a real
server on loopback. The detector here is untrained (its boxes are arbitrary but deterministic), with every peak
kept, so the tests check the plumbing: shapes, pixel frames, agreement between the two endpoints, and errors."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
import requests
from cloud_server import serve_in_thread
from detect_helpers import make_detect_bundle

from edge_sdk.preprocess import encode_png
from quantize.detect import synth


@pytest.fixture(scope="module")
def detect_bundle(tmp_path_factory):
    return make_detect_bundle(tmp_path_factory.mktemp("detb"), int8=False)


@pytest.fixture(scope="module")
def url(detect_bundle):
    with serve_in_thread([detect_bundle], max_batch_size=4) as u:
        yield u


def image(h=96, w=128, i=0):
    rgb = cv2.resize(synth.Generator("test").image(i)[0], (w, h))
    return encode_png(rgb)


def test_detect_endpoint_answers_boxes_in_image_pixels(url):
    r = requests.post(url + "/v1/detect", data=image(), headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "shapes_det" and doc["image_size"] == {"height": 96, "width": 128}
    dets = doc["detections"]
    assert len(dets) == 10
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
        assert d["label"] == synth.LABELS[d["class_id"]]
    big = requests.post(url + "/v1/detect", data=image(192, 256), headers={"Content-Type": "image/png"},
                        timeout=60).json()
    assert big["image_size"] == {"height": 192, "width": 256}
    boxes = np.array([d["box"] for d in big["detections"]])
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 256).all() and (boxes[:, [1, 3]] <= 192).all()
    assert boxes[:, [0, 2]].max() > 128 or boxes[:, [1, 3]].max() > 96  # in the big image's frame
    few = requests.post(url + "/v1/detect?min_score=0.5", data=image(), headers={"Content-Type": "image/png"},
                        timeout=60).json()
    assert all(d["score"] >= 0.5 for d in few["detections"])


def test_v2_infer_outputs_match_the_detect_endpoint(url):
    imgs = [image(96, 128, 0), image(64, 64, 1)]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(b).decode() for b in imgs]}]}
    r = requests.post(url + "/v2/models/shapes_det/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert list(out) == ["boxes", "scores", "classes", "count"]
    assert out["boxes"]["shape"] == [2, 10, 4] and out["boxes"]["datatype"] == "FP32"
    assert out["scores"]["shape"] == [2, 10] and out["classes"]["datatype"] == "INT64"
    assert out["count"]["shape"] == [2] and out["count"]["data"] == [10, 10]
    boxes = np.array(out["boxes"]["data"]).reshape(2, 10, 4)
    single = requests.post(url + "/v1/detect", data=imgs[0], headers={"Content-Type": "image/png"}, timeout=60)
    np.testing.assert_allclose(boxes[0], [d["box"] for d in single.json()["detections"]], atol=1e-3)
    only = requests.post(url + "/v2/models/shapes_det/infer", json={**body, "outputs": [{"name": "count"}]},
                         timeout=60).json()
    assert [o["name"] for o in only["outputs"]] == ["count"]


def test_detect_bundle_metadata_and_errors(url):
    meta = requests.get(url + "/v2/models/shapes_det", timeout=10).json()
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "count"]
    assert meta["parameters"]["task"] == "detect"
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}
    r = requests.post(url + "/v2/models/shapes_det/infer", json=bad, timeout=30)
    assert r.status_code in (415, 422) and "error" in r.json()
    r = requests.post(url + "/v2/models/shapes_det/infer", json={**bad, "outputs": [{"name": "probabilities"}]},
                      timeout=30)
    assert r.status_code == 400 and "boxes" in r.json()["error"]
    r = requests.post(url + "/v1/classify", data=image(), headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 400 and "/v1/detect" in r.json()["error"]
    r = requests.post(url + "/v1/detect?min_score=2", data=image(), headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 400
    r = requests.post(url + "/v1/detect", data=b"junk", headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code in (415, 422)


def test_v2_infer_binary_tensors_carry_the_same_detections(url):
    from edge_sdk import binary
    from edge_sdk.protocol import images_payload, read_response

    imgs = [image(96, 128, 0), image(64, 64, 1)]
    names = ("boxes", "scores", "classes", "count")
    as_json = requests.post(url + "/v2/models/shapes_det/infer", timeout=60,
                            json=images_payload(imgs, outputs=names).json_doc()).json()
    enc = images_payload(imgs, outputs=names).encode(binary_data=True)
    r = requests.post(url + "/v2/models/shapes_det/infer", data=enc.body, headers=enc.headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, data = read_response(r.content, r.headers.get(binary.HEADER_LENGTH))
    raws = binary.slice_data([(o["name"], binary.binary_size(o["parameters"], o["name"])) for o in head["outputs"]],
                             data)
    want = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in as_json["outputs"]}
    for o, raw in zip(head["outputs"], raws, strict=True):
        got = np.frombuffer(raw, binary.NUMPY_TYPES[o["datatype"]]).reshape(o["shape"])
        np.testing.assert_allclose(got, want[o["name"]], atol=1e-5)
    assert [o["name"] for o in head["outputs"]] == list(names)
