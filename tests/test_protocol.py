"""KServe v2 response validation: a bad answer is a ValueError, never a wrong label."""

import numpy as np
import pytest

from edge_sdk.protocol import images_request, parse_outputs, tensor_request


def body(data, shape=(1, 3), labels=None):
    outs = [{"name": "probabilities", "shape": list(shape), "datatype": "FP32", "data": data}]
    if labels is not None:
        outs.append({"name": "label", "shape": [len(labels)], "datatype": "BYTES", "data": labels})
    return {"model_name": "m", "outputs": outs}


def test_valid_response():
    probs, labels = parse_outputs(body([0.1, 0.7, 0.2], labels=["b"]), 1, 3)
    assert probs.shape == (1, 3) and labels == ["b"]


@pytest.mark.parametrize("data, shape, words", [
    ([2.0, -1.0, 0.0], (1, 3), "not probability distributions"),  # logits
    ([0.1, 0.1, 0.1], (1, 3), "not probability distributions"),  # does not sum to 1
    ([0.5, 0.5], (1, 2), "expected [1, 3]"),
    ([0.5, 0.5], (1, 3), "carries 2 values"),
    ([float("nan"), 0.5, 0.5], (1, 3), "NaN"),
])
def test_bad_responses(data, shape, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_outputs(body(data, shape), 1, 3)


def test_requests_are_well_formed():
    r = images_request([b"\x89PNG"])
    assert r["inputs"][0]["datatype"] == "BYTES" and r["inputs"][0]["data"] == ["iVBORw=="]
    t = tensor_request(np.zeros((2, 4, 4, 1), np.uint8))
    assert t["inputs"][0]["shape"] == [2, 4, 4, 1] and len(t["inputs"][0]["data"]) == 32
    with pytest.raises(ValueError, match="NHWC"):
        tensor_request(np.zeros((4, 4), np.uint8))
