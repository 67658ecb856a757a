"""Security: keys on every route, keys kept out of logs and bodies, TLS verified, tampered models refused.

* Every route the app has (enumerated from ``app.routes`` and its OpenAPI
  document, not a hand list) refuses a missing or wrong key with 401, except
  the two health probes.
* `hybrid-vision serve` with keys, TLS, debug logging and an access log: the
  SDK connects with the test CA and is refused (a TLS reason) without it; the
  server's whole log and the SDK's log hold no key, right or wrong; and it
  stops promptly though a client holds an idle TLS connection.
* A tampered bundle file is refused at load; an over-the-air download altered
  in transit (by the fault proxy) is refused while other threads keep
  predicting on the old model, which is only replaced by a clean download.
"""

from __future__ import annotations

import base64
import logging
import shutil
import threading
import time

import numpy as np
import pytest
import requests
from cloud_server import serve_subprocess
from faultproxy import FaultProxy
from rel_helpers import KEY
from starlette.routing import Route

from cloud.security import PUBLIC_PATHS
from edge_sdk.bundle import ModelFile, load_bundle, write_bundle
from edge_sdk.errors import BundleError, CloudUnavailableError, UpdateError
from edge_sdk.hybrid import HybridClassifier

pytestmark = pytest.mark.reliability

WRONG = "wrong-key-but-long-enough-42"


def presentations() -> dict[str, dict]:
    """Ways to present no key or a wrong one."""
    return {
        "none": {},
        "bearer_wrong": {"Authorization": f"Bearer {WRONG}"},
        "header_wrong": {"X-API-Key": WRONG},
        "one_char_off": {"Authorization": f"Bearer {KEY[:-1]}{chr(ord(KEY[-1]) ^ 1)}"},
        "prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
        "longer": {"X-API-Key": KEY + "x"},
        "basic_scheme": {"Authorization": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()},
        "no_scheme": {"Authorization": KEY},
        "empty_bearer": {"Authorization": "Bearer "},
        "in_query_string": {},  # ?api_key=KEY is not a way to send a key
    }


def routes(app, model: str) -> list[tuple[str, str]]:
    """(method, path) of everything the app serves: its router's routes, and every operation its OpenAPI
    document describes (which includes the endpoints served ahead of the router, see cloud.image_endpoints)."""
    found = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or ())}
    found |= {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    return sorted((m, p.replace("{name}", model)) for m, p in found)


def test_every_route_refuses_a_missing_or_wrong_key(server, digit_pngs):
    model = next(iter(server.app.state.hv.models))
    all_routes = routes(server.app, model)
    assert {p for _, p in all_routes} >= {f"/v2/models/{model}/infer", "/v1/classify", f"/v1/models/{model}/edge",
                                          "/metrics", "/openapi.json", "/docs"}
    png, wrong = digit_pngs[0][0], []
    with requests.Session() as s:
        for method, path in all_routes:
            body = png if method == "POST" else None
            ctype = {"Content-Type": "image/png"} if path == "/v1/classify" else {"Content-Type": "application/json"}
            if path in PUBLIC_PATHS:
                assert s.request(method, server.url + path, timeout=10).status_code == 200
                continue
            for how, headers in presentations().items():
                url = server.url + path + (f"?api_key={KEY}" if how == "in_query_string" else "")
                r = s.request(method, url, data=body, headers={**ctype, **headers}, timeout=10)
                ok = r.status_code == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer")
                if method != "HEAD":
                    ok = ok and set(r.json()) == {"error"} and KEY not in r.text and WRONG not in r.text
                if not ok:
                    wrong.append(f"{method} {path} [{how}]: {r.status_code} {r.text[:100]}")
            r = s.request(method, server.url + path, data=body, headers={**ctype, "X-API-Key": KEY}, timeout=30)
            assert r.status_code != 401, (method, path)  # the right key gets past the door
        # a refused request is refused before its body counts: 401, not 413, for 40 MB without a key
        big = s.post(server.url + "/v1/classify", data=b"\0" * (40 << 20), headers={"Content-Type": "image/png"},
                     timeout=60)
        assert big.status_code == 401
    assert wrong == []
    assert KEY not in repr(server.app.state.hv.settings) and KEY not in str(server.app.state.hv.settings)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    import trustme

    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")  # not "localhost": a name mismatch must be refused too
    cert.private_key_and_cert_chain_pem.write_to_path(d / "server.pem")
    cert.private_key_pem.write_to_path(d / "key.pem")
    ca.cert_pem.write_to_path(d / "ca.pem")
    trustme.CA().cert_pem.write_to_path(d / "other-ca.pem")
    (d / "keys.txt").write_text(f"# the service's keys\n{KEY}\n")
    return d


def test_tls_serve_sdk_verifies_and_no_key_reaches_any_log(quantized_bundle_session, tls_files, digit_pngs, caplog):
    d = tls_files
    img = digit_pngs[3][0]
    args = ("--ssl-certfile", str(d / "server.pem"), "--ssl-keyfile", str(d / "key.pem"), "--api-key-file",
            str(d / "keys.txt"), "--log-level", "debug", "--access-log")
    make = lambda url, **kw: HybridClassifier.from_bundle(  # noqa: E731
        quantized_bundle_session, cloud_url=url, threshold=1.01, probes=[], deadline_ms=10_000,
        **{"api_key": KEY, **kw})
    caplog.set_level(logging.DEBUG)
    with serve_subprocess([quantized_bundle_session], *args) as (url, proc):
        assert url.startswith("https://127.0.0.1:")
        with make(url, ca_bundle=str(d / "ca.pem")) as clf:
            p = clf.predict(img)
            assert (p.source, p.reason) == ("cloud", "low_confidence")
        refusals = {
            "no CA": make(url),
            "another CA": make(url, ca_bundle=str(d / "other-ca.pem")),
            "name mismatch": make(url.replace("127.0.0.1", "localhost"), ca_bundle=str(d / "ca.pem")),
        }
        for what, clf in refusals.items():
            with clf:
                p = clf.predict(img)
                assert (p.source, p.reason) == ("edge", "cloud_error:tls"), what
                assert "TLS" in p.cloud_error and KEY not in p.cloud_error
        with make(url, mode="cloud_only") as clf, pytest.raises(CloudUnavailableError) as ei:
            clf.predict(img)
        assert ei.value.reason == "cloud_error:tls"
        with make(url, ca_bundle=str(d / "ca.pem"), api_key=WRONG) as clf:  # the wrong key: 401, edge answer
            p = clf.predict(img)
            assert (p.source, p.reason) == ("edge", "cloud_error:http_401") and WRONG not in p.cloud_error
            assert WRONG not in repr(clf.cloud)
        idle = requests.Session()  # keeps its TLS connection open, idle, through the server's stop
        r = idle.post(url + "/v1/classify", data=b"not an image", verify=str(d / "ca.pem"),
                      headers={"Content-Type": "image/png", "X-API-Key": KEY}, timeout=30)
        assert r.status_code == 415 and KEY not in r.text
        t_stop = time.monotonic()
    stop_s = time.monotonic() - t_stop
    idle.close()
    # an idle keep-alive client never answers the server's TLS close_notify; the stop must not wait on it (30 s)
    assert proc.returncode == 0 and stop_s < 15, stop_s
    log = proc.log_path.read_text()
    assert "TLS" in log and "POST /v2/models/" in log and " 401" in log  # debug and access logs were really on
    assert KEY not in log and WRONG not in log
    assert caplog.records and all(KEY not in m and WRONG not in m for m in caplog.messages)


@pytest.mark.parametrize("target", ["edge_int8.tflite", "cloud.keras", "labels.txt"])
def test_tampered_bundle_is_refused_at_load_and_a_running_model_is_untouched(quantized_bundle, target, digit_pngs):
    from cloud.app import create_app

    img = digit_pngs[5][0]
    running = HybridClassifier.from_bundle(quantized_bundle, mode="edge_only", probes=[])
    before = running.predict(img).probabilities
    f = quantized_bundle / target
    data = bytearray(f.read_bytes())
    if target == "labels.txt":
        data[:1] = b"X"
    else:
        data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    for load in (load_bundle, lambda b: HybridClassifier.from_bundle(b, mode="edge_only"), lambda b: create_app([b])):
        with pytest.raises(BundleError, match=target.replace(".", r"\.")):
            load(quantized_bundle)
    assert np.array_equal(running.predict(img).probabilities, before)  # what was loaded keeps serving


def test_tampered_update_download_is_refused_while_predictions_continue(server, quantized_bundle_session, tmp_path,
                                                                       digit_pngs):
    src = load_bundle(quantized_bundle_session)
    old_edge = tmp_path / "old_edge.tflite"  # the same network, other bytes: the device is "out of date"
    old_edge.write_bytes((quantized_bundle_session / "edge_int8.tflite").read_bytes() + b"\0" * 64)
    device = tmp_path / "device"
    man = src.manifest.model_copy(deep=True)
    man.models = {"edge": ModelFile(**{**man.models["edge"].model_dump(), "file": "edge_int8.tflite"})}
    write_bundle(device, man, {"edge_int8.tflite": old_edge})
    imgs = [b for b, _ in digit_pngs[::4]][:5]
    upstream = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    with FaultProxy(upstream) as proxy, HybridClassifier.from_bundle(device, cloud_url=proxy.url, api_key=KEY,
                                                                     mode="edge_only", probes=[]) as clf:
        old = clf.model
        want = [clf.predict(b).label for b in imgs]
        stop, errors, count = threading.Event(), [], [0]

        def worker():
            while not stop.is_set():
                for b, label in zip(imgs, want, strict=False):
                    try:
                        assert clf.predict(b).label == label
                        count[0] += 1
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(repr(e))

        threads = [threading.Thread(target=worker) for _ in range(3)]
        [t.start() for t in threads]
        try:
            proxy.set("tamper", tamper_at=1000)  # one bit flipped in each response body, in transit
            for _ in range(2):
                with pytest.raises(UpdateError, match="corrupt download"):
                    clf.check_for_update()
                assert clf.model is old
            seen_during = count[0]
            proxy.heal()
            r = clf.check_for_update()
        finally:
            stop.set()
            [t.join(30) for t in threads]
        assert errors == [] and seen_during > 0 and count[0] > seen_during
        assert r.updated and r.previous_sha256 == old.sha256 and clf.model.sha256 == src.manifest.models["edge"].sha256
        assert [clf.predict(b).label for b in imgs] == want
    shutil.rmtree(device)
