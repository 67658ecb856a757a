"""The SDK against a cloud URL, in the main environment; prints its answers as one JSON object.

    python tests/interop/sdk_predict.py BUNDLE URL MODEL UPLOAD IMAGE...

The threshold is 1.0, so the edge is never confident and every image goes to the cloud (reason
``low_confidence``): once one at a time (``predict``), then all together (``predict_batch``).
"""

from __future__ import annotations

import json
import sys

from edge_sdk.hybrid import HybridClassifier


def main(bundle: str, url: str, model: str, upload: str, images: list[str]) -> None:
    clf = HybridClassifier.from_bundle(bundle, cloud_url=url, cloud_model=model, threshold=1.0, upload=upload,
                                       probes=[], deadline_ms=60_000)
    binary = clf.cloud.negotiate()  # the SDK asks GET /v2 in the background; wait for it, to test what it chose
    single = [clf.predict(p) for p in images]
    batch = clf.predict_batch(images)
    out = {
        "binary": binary,
        "predict": [_row(p) for p in single],
        "predict_batch": [_row(p) for p in batch],
    }
    clf.cloud.close()
    print(json.dumps(out))


def _row(p) -> dict:
    return {"source": p.source, "reason": p.reason, "label": p.label, "cloud_error": p.cloud_error,
            "bytes_sent": p.bytes_sent,
            "probabilities": None if p.probabilities is None else [float(v) for v in p.probabilities]}


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5:])
