"""tritonclient 2.73 (HTTP, sync and asyncio) against a real `hybrid-vision serve`, with the clients' defaults.

Each row of issue 14's table: server and model metadata, readiness, versioned paths, and inference with JSON and
with binary tensor data (the client's default), as an FP32 tensor and as BYTES images; the probabilities must be
/v1/classify's.
"""

from __future__ import annotations

import asyncio
import base64
from importlib.metadata import version

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from tritonclient.utils import InferenceServerException

ATOL = 1e-6  # /v1/classify runs images one by one, these in a batch of ten: float32 rounding may differ


def test_the_pinned_client():
    assert version("tritonclient") == "2.73.0"


@pytest.fixture(scope="module")
def client(serve):
    c = th.InferenceServerClient(serve.removeprefix("http://"))
    yield c
    c.close()


def image_input(assets, binary: bool, cls=th.InferInput):
    inp = cls("image", [len(assets.pngs)], "BYTES")
    data = assets.pngs if binary else [base64.b64encode(b) for b in assets.pngs]  # JSON BYTES are base64 text
    return inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)


def fp32_input(assets, binary: bool, cls=th.InferInput):
    return cls("image", list(assets.fp32.shape), "FP32").set_data_from_numpy(assets.fp32, binary_data=binary)


def test_server_and_model_metadata(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "hybrid-vision" and "binary_tensor_data" in meta["extensions"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2")
    for v in ("", "1"):
        m = client.get_model_metadata("digits", v)
        assert m["versions"] == ["1"] and m["inputs"][0]["name"] == "image"
    assert client.get_model_repository_index() == [{"name": "digits", "version": "1", "state": "READY", "reason": ""}]


@pytest.mark.parametrize("kind", ["image", "fp32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model_version", ["", "1"], ids=["latest", "versioned"])
def test_sync_infer(client, assets, reference, kind, binary, model_version):
    inp = (image_input if kind == "image" else fp32_input)(assets, binary)
    res = client.infer("digits", [inp], model_version=model_version)  # no outputs named: all, binary (the default)
    np.testing.assert_allclose(res.as_numpy("probabilities"), reference, atol=ATOL, rtol=0)
    labels = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")]
    assert labels == [str(i) for i in reference.argmax(1)]


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary_out", "json_out"])
def test_sync_infer_requested_outputs(client, assets, reference, binary_out):
    outs = [th.InferRequestedOutput("probabilities", binary_data=binary_out)]
    res = client.infer("digits", [image_input(assets, True)], outputs=outs, request_id="r-1")
    np.testing.assert_allclose(res.as_numpy("probabilities"), reference, atol=ATOL, rtol=0)
    assert res.as_numpy("label") is None and res.get_response()["id"] == "r-1"


@pytest.mark.parametrize("kind", ["image", "fp32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_aio_infer(serve, assets, reference, kind, binary):
    async def run():
        c = tha.InferenceServerClient(serve.removeprefix("http://"))
        try:
            meta = await c.get_server_metadata()
            inp = (image_input if kind == "image" else fp32_input)(assets, binary, tha.InferInput)
            res = await c.infer("digits", [inp], model_version="1")
            return meta, res.as_numpy("probabilities")
        finally:
            await c.close()

    meta, probs = asyncio.run(run())
    assert "binary_tensor_data" in meta["extensions"]
    np.testing.assert_allclose(probs, reference, atol=ATOL, rtol=0)


def test_errors_reach_the_client_with_their_status(client, assets):
    bad = th.InferInput("image", [1, 2, 2, 2], "FP32").set_data_from_numpy(np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("digits", [bad])
    assert e.value.status() == "422" and "preprocessed to the model's shape" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [image_input(assets, True)])
    assert e.value.status() == "404"
