"""Bad input to the real service: every kind gets its documented status (never a 500) and a JSON error body.

The corpus (tests/reliability/badinputs.py) is generated here: broken and odd
images sent raw and as base64 tensors, malformed and hostile JSON, NaN/Inf,
wrong shapes and types, batches of 10,000, a body over the limit, wrong
Content-Types. Afterwards the service is still ready and still answers.
"""

from __future__ import annotations

import socket
from collections import Counter

import pytest
import requests
from badinputs import corpus
from rel_helpers import AUTH, KEY

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def cases(server):
    sm = next(iter(server.app.state.hv.models.values()))
    return corpus(sm.name, sm.spec.shape)


def internal_errors(server) -> float:
    return server.app.state.hv.metrics.internal_errors._value.get()


def test_corpus_is_broad_and_images_reach_every_input_endpoint(cases):
    assert len({c.kind for c in cases}) >= 60
    by_kind: dict[str, set] = {}
    for c in cases:
        by_kind.setdefault(c.kind, set()).add(c.path.split("?")[0])
    endpoints = set().union(*by_kind.values())
    assert {"/v1/classify"} < endpoints and any(e.endswith("/infer") for e in endpoints)
    assert all(len(v) == 2 for k, v in by_kind.items() if k.startswith("image:"))


def test_every_bad_input_gets_its_documented_status(server, cases, record_property):
    before = internal_errors(server)
    wrong, statuses = [], Counter()
    with requests.Session() as s:
        for c in cases:
            r = s.request(c.method, server.url + c.path, data=c.body, headers={**AUTH, **c.headers}, timeout=60)
            statuses[r.status_code] += 1
            problem = None
            if r.status_code != c.status:
                problem = f"status {r.status_code}, documented {c.status}: {r.text[:200]}"
            elif r.status_code >= 400:
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
                one_message = isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
                if not (one_message and body["error"]):
                    problem = f"error body is not JSON {{'error': str}}: {r.text[:200]}"
            if KEY in r.text:
                problem = "the API key is echoed in the response"
            if problem:
                wrong.append(f"{c.kind} {c.method} {c.path.split('?')[0]}: {problem}")
    record_property("bad_input_requests", len(cases))
    record_property("statuses", dict(statuses))
    kinds = len({c.kind for c in cases})
    print(f"\nbad inputs: {len(cases)} requests, {kinds} kinds, statuses {dict(sorted(statuses.items()))}")
    assert wrong == []
    assert statuses[500] == 0 and internal_errors(server) == before
    # still ready, still right
    assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
    ok = [c for c in cases if c.kind == "transport:ok_control_classify"][0]
    r = requests.post(server.url + ok.path, data=ok.body, headers={**AUTH, **ok.headers}, timeout=30)
    assert r.status_code == 200


def test_malformed_http_is_refused_and_the_service_stays_up(server):
    """Below the app: a broken request line, bad Content-Lengths, a TLS hello on the plain port."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    raw = [
        b"NONSENSE\r\n\r\n",
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello to a plain-HTTP port
    ]
    for data in raw:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            try:
                s.sendall(data)
                reply = s.recv(4096)
            except ConnectionResetError:
                reply = b""
        assert not reply.startswith(b"HTTP/1.1 5"), reply[:100]
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:100]
    assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
