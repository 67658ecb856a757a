"""Random binary-tensor infer requests for fuzzing: valid ones, then random damage to lengths, offsets and types.

``random_case(rng, shape)`` gives ``(body, headers)`` for a model of input ``shape`` (H, W, C): it starts from a
well-formed binary request (FP32, UINT8 or BYTES) and changes some of its datatype, shape,
``binary_data_size``, ``Inference-Header-Content-Length``, the BYTES elements' length prefixes, the body's
end, the number of inputs, and the outputs' binary flags. Seeded numpy, so a failure names its seed and index.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import cv2
import numpy as np

from edge_sdk.binary import HEADER_LENGTH

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16",
             "FP32", "FP64", "BYTES", "FP8", "STRING", "fp32", "", "UINT8 "]
ODD_INTS = [-(2 ** 63), -(2 ** 31), -1, 0, 1, 2, 3, 7, 255, 4096, 2 ** 31 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64]
ODD_VALUES: list[Any] = [None, True, False, 1.5, "12", [], {}, "x" * 20]


def _png(rng: np.random.Generator) -> bytes:
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (int(rng.integers(4, 24)), int(rng.integers(4, 24)), 3),
                                                np.uint8))
    assert ok
    return buf.tobytes()


def _valid_input(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[dict[str, Any], bytes]:
    n = int(rng.integers(1, 4))
    kind = rng.choice(["FP32", "UINT8", "BYTES"])
    if kind == "FP32":
        raw = rng.random((n, *shape), np.float32).tobytes()
        dims = [n, *shape]
    elif kind == "UINT8":
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        c = int(rng.choice([1, 3, 4]))
        raw = rng.integers(0, 256, (n, h, w, c), np.uint8).tobytes()
        dims = [n, h, w, c]
    else:
        raw = b"".join(struct.pack("<I", len(p)) + p for p in (_png(rng) for _ in range(n)))
        dims = [n]
    return {"name": "image", "shape": dims, "datatype": str(kind), "parameters": {"binary_data_size": len(raw)}}, raw


def _odd_int(rng: np.random.Generator, near: int) -> Any:
    r = rng.random()
    if r < 0.4:
        return near + int(rng.integers(-8, 9))
    if r < 0.85:
        return ODD_INTS[int(rng.integers(len(ODD_INTS)))]
    return ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]


def _mutate_tensor(rng: np.random.Generator, t: dict[str, Any], raw: bytes) -> bytes:
    if rng.random() < 0.3:
        t["datatype"] = DATATYPES[int(rng.integers(len(DATATYPES)))]
    if rng.random() < 0.3:
        t["shape"] = [_odd_int(rng, 3) if rng.random() < 0.5 else int(rng.integers(0, 40))
                      for _ in range(int(rng.integers(0, 6)))]
    if rng.random() < 0.3:
        t["parameters"]["binary_data_size"] = _odd_int(rng, len(raw))
    if rng.random() < 0.1:
        t["parameters"] = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
    if rng.random() < 0.1:
        t["data"] = [1, 2, 3]
    if t["datatype"] == "BYTES" and raw and rng.random() < 0.3:  # a lying element length prefix
        at = int(rng.integers(0, max(1, len(raw) - 4)))
        lie = int(rng.choice([0, 1, 2 ** 32 - 1, len(raw), int(rng.integers(0, 2 ** 16))]))
        raw = raw[:at] + struct.pack("<I", lie) + raw[at + 4:]
    return raw


def random_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[bytes, dict[str, str]]:
    """One request (body, headers): well-formed in about a fifth of the cases, damaged somewhere in the rest."""
    tensors, raws = [], []
    for _ in range(1 if rng.random() < 0.85 else 2):
        t, raw = _valid_input(rng, shape)
        if rng.random() < 0.8:
            raw = _mutate_tensor(rng, t, raw)
        tensors.append(t)
        raws.append(raw)
    doc: dict[str, Any] = {"inputs": tensors, "model_name": "x", "id": str(rng.integers(1000))}
    if rng.random() < 0.3:
        flag = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))] if rng.random() < 0.3 else bool(rng.random() < 0.5)
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": flag}} for n in ("probabilities", "label")]
    if rng.random() < 0.3:
        doc["parameters"] = {"binary_data_output": bool(rng.random() < 0.5)}
    head = json.dumps(doc).encode()
    body = head + b"".join(raws)
    if rng.random() < 0.15:  # cut or extend the body
        cut = rng.random() < 0.5
        body = body[:int(rng.integers(0, len(body) + 1))] if cut else body + rng.bytes(int(rng.integers(1, 64)))
    headers = {"Content-Type": "application/octet-stream"}
    r = rng.random()
    if r < 0.7:
        headers[HEADER_LENGTH] = str(len(head))
    elif r < 0.9:
        value = _odd_int(rng, len(head))
        headers[HEADER_LENGTH] = str(value) if not isinstance(value, str) else value
    return body, headers


def fuzz_over_http(server, cases: int, seed: int, headers: dict[str, str] | None = None) -> dict[int, int]:
    """``cases`` random requests to a real in-process server (``ThreadedServer``): every answer a 200 or a JSON
    4xx, none a 5xx or a hang, no internal error counted, and the service still ready at the end.
    Returns how many answers had each status."""
    import requests

    name, sm = next(iter(server.app.state.hv.models.items()))
    rng = np.random.default_rng(seed)
    statuses: dict[int, int] = {}
    with requests.Session() as s:
        s.headers.update(headers or {})
        for i in range(cases):
            body, extra = random_case(rng, sm.spec.shape)
            r = s.post(f"{server.url}/v2/models/{name}/infer", data=body, headers=extra, timeout=30)
            assert r.status_code < 500, (i, seed, r.status_code, r.text, body[:300], extra)
            if r.status_code != 200:
                assert set(r.json()) == {"error"}, r.text
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert s.get(server.url + "/v2/health/ready", timeout=10).json() == {"ready": True}
    assert server.app.state.hv.metrics.internal_errors._value.get() == 0
    return statuses
