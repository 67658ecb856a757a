"""The infer answer: the outputs a request asked for, each as JSON data or as binary tensor data.

An answer with any binary output is the JSON header followed by the outputs' raw data in the order they are
listed, with ``Inference-Header-Content-Length`` giving the header's length (``edge_sdk.binary``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_sdk import binary
from edge_sdk.protocol import LABEL_OUTPUT, PROBS_OUTPUT

from .detect_outputs import infer_outputs
from .inputs import InferAsk
from .state import ServedModel

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


def infer_document(sm: ServedModel, ask: InferAsk, probs: np.ndarray) -> tuple[dict[str, Any], list[bytes]]:
    """(the JSON document, the binary blobs that follow it, in order); a detect model's rows become boxes."""
    if sm.is_detector:
        outputs, blobs = infer_outputs(sm.bundle, probs, ask.sizes, ask.outputs, ask.binary_outputs)
    else:
        outputs, blobs = _classify_outputs(sm, ask, probs)
    doc = {"model_name": sm.name, "model_version": sm.version, "id": ask.id, "outputs": outputs}
    return doc, blobs


def _classify_outputs(sm: ServedModel, ask: InferAsk, probs: np.ndarray) -> tuple[list[dict[str, Any]], list[bytes]]:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in ask.outputs:
        tensor, raw = _output(sm, name, probs, name in ask.binary_outputs)
        outputs.append(tensor)
        if raw is not None:
            blobs.append(raw)
    return outputs, blobs


def _output(sm: ServedModel, name: str, probs: np.ndarray, as_binary: bool) -> tuple[dict[str, Any], bytes | None]:
    if name == PROBS_OUTPUT:
        tensor: dict[str, Any] = {"name": PROBS_OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
        if as_binary:
            return _with_size(tensor, binary.numeric_bytes(probs, "FP32"))
        tensor["data"] = probs.ravel().tolist()
        return tensor, None
    labels = [sm.labels[i] for i in probs.argmax(1)]
    tensor = {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(labels)]}
    if as_binary:
        return _with_size(tensor, binary.pack_bytes(lb.encode("utf-8") for lb in labels))
    tensor["data"] = labels
    return tensor, None


def _with_size(tensor: dict[str, Any], raw: bytes) -> tuple[dict[str, Any], bytes]:
    tensor["parameters"] = {binary.SIZE_PARAM: len(raw)}
    return tensor, raw


def encode_answer(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """(body, headers): plain JSON, or the JSON header and the blobs with the header's length."""
    body, header_length = binary.join_body(doc, blobs)
    if header_length is None:
        return body, {"content-type": JSON_TYPE}
    return body, {"content-type": BINARY_TYPE, binary.HEADER_LENGTH.lower(): str(header_length)}
