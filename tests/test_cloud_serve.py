"""`hybrid-vision serve` as a real process: curl answers, API key files, and a graceful SIGTERM drain."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import requests
from cloud_server import serve_subprocess

from edge_sdk.bundle import load_bundle
from edge_sdk.protocol import images_request, parse_outputs


def _digit_pngs(digits_dir, n: int) -> list[bytes]:
    files = sorted(p for d in sorted(digits_dir.iterdir()) if d.is_dir() for p in d.glob("*.png"))
    return [files[i * 7 % len(files)].read_bytes() for i in range(n)]


def _in_flight(url: str, endpoint: str) -> float:
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'hv_requests_in_flight{{endpoint="{endpoint}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _refused(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_serve_answers_curl_and_drains_in_flight_requests_on_sigterm(trained_bundle_session, digits_dir, tmp_path):
    name = load_bundle(trained_bundle_session).manifest.name
    with serve_subprocess([trained_bundle_session], "--max-batch-size", "32", "--max-delay-ms", "5") as (url, proc):
        log = proc.log_path.read_text()
        assert f"listening on {url}" in log

        # the README's curl line
        img = tmp_path / "img.png"
        img.write_bytes(_digit_pngs(digits_dir, 1)[0])
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-sS", "--data-binary", f"@{img}", "-H", "Content-Type: image/png",
                                  f"{url}/v1/classify"], capture_output=True, text=True, timeout=30, check=True).stdout
        else:  # the same request without curl
            out = requests.post(f"{url}/v1/classify", data=img.read_bytes(), headers={"Content-Type": "image/png"}).text
        body = json.loads(out)
        assert body["model_name"] == name and body["label"] in load_bundle(trained_bundle_session).labels
        assert 0.0 < body["confidence"] <= 1.0

        # requests in flight when SIGTERM arrives all complete
        n_req, per = 12, 128
        pngs = _digit_pngs(digits_dir, per)
        results: dict[int, tuple[int, float, dict]] = {}

        def send(i):
            with requests.Session() as s:
                r = s.post(f"{url}/v2/models/{name}/infer", json=images_request(pngs, request_id=str(i)), timeout=120)
                results[i] = (r.status_code, time.monotonic(), r.json())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n_req)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while _in_flight(url, "/v2/models/{name}/infer") < n_req and len(results) == 0:
            assert time.monotonic() < deadline, "requests never arrived"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        while not _refused(url):  # the listener closes at once
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        t_refused = time.monotonic()
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
        log = proc.log_path.read_text()

    assert sorted(results) == list(range(n_req))
    for i, (status, _t, body) in results.items():
        assert status == 200, body
        assert body["id"] == str(i)
        probs, labels = parse_outputs(body, per, 10)
        assert np.allclose(probs.sum(1), 1, atol=1e-4) and len(labels) == per
    assert max(t for _s, t, _b in results.values()) > t_refused, "no request was still in flight during the drain"
    assert "drained" in log and "Traceback" not in log


def test_serve_with_an_api_key_file(trained_bundle_session, digits_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key a line\nfile-key-0123456789\n\nsecond-key-0123456789\n")
    png = _digit_pngs(digits_dir, 1)[0]
    with serve_subprocess({"digits": trained_bundle_session}, "--api-key-file", str(keys),
                          env={"HV_MAX_BATCH_SIZE": "4"}) as (url, proc):
        with requests.Session() as s:
            assert s.get(url + "/v2/health/ready").status_code == 200
            r = s.post(url + "/v1/classify", data=png, headers={"Content-Type": "image/png"})
            assert r.status_code == 401 and r.json()["error"]
            ok = s.post(url + "/v1/classify", data=png,
                        headers={"Content-Type": "image/png", "Authorization": "Bearer second-key-0123456789"})
            assert ok.status_code == 200 and ok.json()["model_name"] == "digits"
            meta = s.get(url + "/v2/models/digits", headers={"X-API-Key": "file-key-0123456789"}).json()
            assert meta["parameters"]["max_batch_size"] == 4  # from the environment
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log = proc.log_path.read_text()
    assert "file-key-0123456789" not in log and "second-key-0123456789" not in log
    assert "2 API key(s)" in log


@pytest.mark.parametrize("args, message", [
    (["--api-key-file", "/nonexistent/keys"], "cannot read the API key file"),
    (["--max-batch-size", "0"], "max_batch_size"),
    (["--ssl-certfile", "/nonexistent/cert.pem"], "ssl_certfile and ssl_keyfile go together"),
])
def test_serve_refuses_bad_settings_cleanly(trained_bundle_session, args, message):
    r = subprocess.run([*_cli(), "serve", str(trained_bundle_session), "--port", "0", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "edge_sdk.cli"]
