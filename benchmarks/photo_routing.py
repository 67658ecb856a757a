"""The routing, out-of-distribution and upload sections of benchmarks/photo_bench.py (issue 13).

Each function measures one thing on real data and returns one JSON-able dict:

* :func:`upload_section`: for each ``upload=`` choice, the bytes the SDK sends per image and the cloud
  model's accuracy on what arrives, against the cloud on the original files;
* :func:`routing_section`: on the test split, the ECE before and after the bundle's temperature, for
  every routing metric the offload needed to come within the target of the cloud, the oracle's, and the
  calibrated threshold's validation estimate and bound beside its test gap and offload; plus the plot;
* :func:`ood_section`: one data set shown to a bundle trained on the other: the AUROC of the bundle's
  out-of-distribution score, and how many outliers the device would still answer as confident.

The edge model runs through the edge SDK's own :class:`edge_sdk.runtime.LocalModel` and
:mod:`edge_sdk.scores` (what the device runs); the cloud model runs in this process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _cloud_call(bundle):
    from quantize.evaluate import compiled_keras

    inp = bundle.manifest.input
    return compiled_keras(bundle.model_path("cloud"), (inp.height, inp.width, inp.channels))


def _batched(call, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([call(x[i:i + batch]) for i in range(0, len(x), batch)])


def _sent_bytes(item_bytes: Sequence[bytes]) -> float:
    return float(np.mean([len(b) for b in item_bytes]))


def upload_section(bundle_path: str | Path, items: Sequence[tuple[Path, int]], progress: bool = False
                   ) -> dict[str, Any]:
    """Cloud accuracy and bytes per image for each ``upload=`` choice, against the cloud on the original files.

    What the server decodes is rebuilt from the very request the SDK builds (edge_sdk.upload.build_request),
    then run through the one preprocessing path, as cloud.inputs does.
    """
    from base64 import b64decode

    from tqdm.auto import tqdm

    from edge_sdk.bundle import load_bundle
    from edge_sdk.preprocess import load_image, normalize, preprocess, resize
    from edge_sdk.upload import UPLOADS, Staged, build_request

    bundle = load_bundle(bundle_path)
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    y = np.array([c for _, c in items])
    call = _cloud_call(bundle)
    xs: dict[str, list[np.ndarray]] = {u: [] for u in ("files", *UPLOADS)}
    sent: dict[str, list[int]] = {u: [] for u in UPLOADS}
    for path, _ in tqdm(items, desc="uploads", disable=not progress, leave=False):
        rgb = load_image(path)
        staged = Staged(path, rgb, resize(rgb, inp.height, inp.width, pp.resize))
        xs["files"].append(preprocess(path, inp, pp))
        for u in UPLOADS:
            req = build_request([staged], u, inp.channels)
            sent[u].append(len(json.dumps(req, separators=(",", ":")).encode()))
            data = req["inputs"][0]["data"]
            if u == "tensor":
                pixels = np.asarray(data, np.uint8).reshape(req["inputs"][0]["shape"])[0]
                xs[u].append(normalize(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels, inp, pp))
            else:
                xs[u].append(preprocess(b64decode(data[0]), inp, pp))
    acc = {u: float((_batched(call, np.stack(x)).argmax(1) == y).mean()) for u, x in xs.items()}
    base = acc.pop("files")
    return {
        "n": int(len(y)), "input": f"{inp.height}x{inp.width}x{inp.channels}",
        "cloud_accuracy_original_files": base,
        "file_bytes_mean": float(np.mean([Path(p).stat().st_size for p, _ in items])),
        "formats": {u: {"cloud_accuracy": acc[u], "cost_points": 100 * (base - acc[u]),
                        "request_bytes_mean": float(np.mean(sent[u]))} for u in UPLOADS},
    }
