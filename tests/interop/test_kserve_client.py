"""kserve 0.21's InferenceRESTClient (v2 protocol) against a real `hybrid-vision serve`: JSON and binary tensor
data, FP32 tensor and BYTES images; the probabilities must be /v1/classify's."""

from __future__ import annotations

import asyncio
import base64
from importlib.metadata import version

import numpy as np
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

ATOL = 1e-6


def test_the_pinned_client():
    assert version("kserve") == "0.21.0"


def request(assets, kind: str, binary: bool) -> InferRequest:
    if kind == "image":
        inp = InferInput("image", [len(assets.pngs)], "BYTES")
        data = assets.pngs if binary else [base64.b64encode(b) for b in assets.pngs]
        inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    else:
        inp = InferInput("image", list(assets.fp32.shape), "FP32")
        inp.set_data_from_numpy(assets.fp32, binary_data=binary)
    outputs = [RequestedOutput("probabilities", parameters={"binary_data": binary})]
    return InferRequest(model_name="digits", infer_inputs=[inp], request_outputs=outputs, request_id="k-1")


async def _infer(url: str, req: InferRequest):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        ready = await client.is_server_ready(url) and await client.is_model_ready(url, "digits")
        return ready, await client.infer(url, req, model_name="digits")
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["image", "fp32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_rest_client_infer(serve, assets, reference, kind, binary):
    ready, res = asyncio.run(_infer(serve, request(assets, kind, binary)))
    assert ready and res.model_name == "digits" and res.id == "k-1"
    (out,) = res.outputs
    assert out.name == "probabilities"
    np.testing.assert_allclose(out.as_numpy(), reference, atol=ATOL, rtol=0)
