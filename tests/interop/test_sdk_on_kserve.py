"""The SDK against a real kserve ModelServer serving the bundle's model, and against `hybrid-vision serve`.

The kserve server (Keras 3 on JAX, this environment) does not list the binary extension in `GET /v2`, so the SDK
must talk JSON to it; `hybrid-vision serve` lists it, so the SDK sends binary there. Either way every image is
answered by the cloud with the same probabilities as /v1/classify.
"""

from __future__ import annotations

import numpy as np
import requests
from interop_helpers import sdk_answers

ATOL = 1e-5  # JAX here, TensorFlow there: the same model, float32 rounding apart


def check(report: dict, reference: np.ndarray) -> None:
    for key in ("predict", "predict_batch"):
        rows = report[key]
        assert [(r["source"], r["reason"], r["cloud_error"]) for r in rows] == [("cloud", "low_confidence", None)] * 10
        probs = np.array([r["probabilities"] for r in rows])
        np.testing.assert_allclose(probs, reference, atol=ATOL, rtol=0)
        assert [r["label"] for r in rows] == [str(i) for i in reference.argmax(1)]


def test_kserve_model_server_speaks_v2(kserve_url):
    meta = requests.get(kserve_url + "/v2", timeout=10).json()
    assert "binary_tensor_data" not in meta["extensions"]
    assert requests.get(kserve_url + "/v2/models/digits", timeout=10).json()["name"] == "digits"


def test_sdk_on_kserve_model_server(kserve_url, assets, reference):
    report = sdk_answers(kserve_url, assets, "tensor")
    assert report["binary"] is False  # kserve does not list the extension: JSON
    check(report, reference)


def test_sdk_on_hybrid_vision_serve(serve, assets, reference):
    for upload in ("tensor", "jpeg", "original"):
        report = sdk_answers(serve, assets, upload)
        assert report["binary"] is True
        check(report, reference if upload != "jpeg" else report_reference(report))


def report_reference(report: dict) -> np.ndarray:
    """With upload="jpeg" the cloud sees a JPEG of the resized image, not the PNG: compare single and batch."""
    return np.array([r["probabilities"] for r in report["predict"]])
