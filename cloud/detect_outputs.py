"""What the service answers for a detect bundle: the v2 infer outputs and the ``POST /v1/detect`` body.

A detect model's batcher gives packed rows (``cloud.detect_model``); here they
become boxes in the pixels of each image as it was sent: the decoded size of an
encoded image, the H x W of a UINT8 tensor, the model's input for an FP32 one.

v2 infer outputs: ``boxes`` FP32 [N, K, 4] (x0, y0, x1, y1), ``scores`` FP32
[N, K], ``classes`` INT64 [N, K] and ``count`` INT32 [N]; the rows past an
image's count are zero boxes with score 0 and class -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_sdk import binary
from edge_sdk.bundle import Bundle

from .detect_model import unpack

DATATYPES = {"boxes": "FP32", "scores": "FP32", "classes": "INT64", "count": "INT32"}


def _model_hw(bundle: Bundle) -> tuple[int, int]:
    return bundle.manifest.input.height, bundle.manifest.input.width


def detection_arrays(bundle: Bundle, packed: np.ndarray,
                     sizes: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Packed rows -> the four output tensors, each image's boxes in its own pixels."""
    n, k = len(packed), packed.shape[1] if packed.ndim == 3 else 0
    out = {"boxes": np.zeros((n, k, 4), np.float32), "scores": np.zeros((n, k), np.float32),
           "classes": np.full((n, k), -1, np.int64), "count": np.zeros(n, np.int32)}
    for i, (row, size) in enumerate(zip(packed, sizes, strict=True)):
        d = unpack(row, bundle.manifest.preprocess.resize, _model_hw(bundle), size)
        c = len(d)
        out["boxes"][i, :c], out["scores"][i, :c], out["classes"][i, :c], out["count"][i] = (
            d.boxes, d.scores, d.classes, c)
    return out


def infer_outputs(bundle: Bundle, packed: np.ndarray, sizes: Sequence[tuple[int, int]],
                  asked: Sequence[str], as_binary: frozenset[str] = frozenset()
                  ) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(the v2 infer ``outputs`` list in the order asked, the binary data of those in ``as_binary``, in order)."""
    arrays = detection_arrays(bundle, packed, sizes)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in asked:
        tensor: dict[str, Any] = {"name": name, "datatype": DATATYPES[name], "shape": list(arrays[name].shape)}
        if name in as_binary:
            raw = binary.numeric_bytes(arrays[name], DATATYPES[name])
            tensor["parameters"] = {binary.SIZE_PARAM: len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = arrays[name].ravel().tolist()
        outputs.append(tensor)
    return outputs, blobs


def detect_body(name: str, bundle: Bundle, row: np.ndarray, size: tuple[int, int],
                min_score: float) -> dict[str, Any]:
    """The /v1/detect answer: the boxes scoring >= ``min_score``, in the image's pixels, best first."""
    d = unpack(row, bundle.manifest.preprocess.resize, _model_hw(bundle), size, min_score)
    return {"model_name": name, "image_size": {"height": size[0], "width": size[1]},
            "detections": [{"box": [float(v) for v in b], "label": bundle.labels[int(c)], "class_id": int(c),
                            "score": float(s)} for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True)]}
