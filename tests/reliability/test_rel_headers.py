"""Clients that abuse the header phase: a header-trickling ("slowloris") client and a 100 KB header block.

Against the real service on loopback (its own, with a 1 s header deadline): each
abusive connection is answered 408 or 431 and closed by the server, in bounded
time, while a well-behaved client keeps getting ready and classify answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import requests
from cloud_server import serve_app_in_thread
from rel_helpers import KEY

pytestmark = pytest.mark.reliability

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16 * 1024


@pytest.fixture(scope="module")
def guarded(quantized_bundle_session):
    with serve_app_in_thread([quantized_bundle_session], api_keys=[KEY], header_timeout_s=HEADER_TIMEOUT_S,
                             max_header_bytes=MAX_HEADER_BYTES) as s:
        yield s


def _addr(url: str) -> tuple[str, int]:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or ``limit_s``), and when it closed."""
    t0 = time.monotonic()
    sock.settimeout(0.2)
    got = b""
    while time.monotonic() - t0 < limit_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - t0


def trickle(url: str, stop: threading.Event, result: dict) -> None:
    """Send a request's headers one byte every 0.2 s: the server must give up on us, not wait for ever."""
    s = socket.create_connection(_addr(url), timeout=5)
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 500
    t0 = time.monotonic()
    try:
        for i in range(len(request)):
            if stop.is_set():
                break
            try:
                s.sendall(request[i : i + 1])
            except OSError:  # the server closed on us: what we wanted
                break
            s.settimeout(0.2)
            try:
                result["answer"] = s.recv(65536)  # an answer, or b"": closed
                break
            except TimeoutError:
                pass
        result["closed_after_s"] = time.monotonic() - t0
        rest, _ = read_until_closed(s, 3)
        result["answer"] = result.get("answer", b"") + rest
    finally:
        s.close()


def test_a_header_trickling_client_is_cut_off_and_the_service_stays_ready(guarded):
    stop = threading.Event()
    results = [dict() for _ in range(8)]
    threads = [threading.Thread(target=trickle, args=(guarded.url, stop, r)) for r in results]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < HEADER_TIMEOUT_S * 2:  # the trickling clients are connected all along
            r = requests.get(f"{guarded.url}/v2/health/ready", timeout=5)
            assert r.status_code == 200
            time.sleep(0.1)
        for t in threads:
            t.join(HEADER_TIMEOUT_S * 6)
    finally:
        stop.set()
    for r in results:
        assert r.get("closed_after_s") is not None, r
        assert r["closed_after_s"] <= HEADER_TIMEOUT_S + 2.0, r  # far fewer than the 500 bytes' 100 s
        assert r["answer"].startswith(b"HTTP/1.1 408"), r["answer"][:200]
    assert requests.get(f"{guarded.url}/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("how", ["one_header", "many_headers", "long_url"])
def test_100_kb_of_headers_get_a_431_and_the_service_stays_ready(guarded, digit_pngs, how):
    if how == "one_header":
        head = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    elif how == "many_headers":
        head = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: %s\r\n" % (i, b"b" * 90) for i in range(1000)) + b"\r\n"
    else:
        head = b"GET /v2/health/ready?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    s = socket.create_connection(_addr(guarded.url), timeout=5)
    try:
        with contextlib.suppress(OSError):  # cut off mid-send: also a refusal
            s.sendall(head)
        answer, took = read_until_closed(s, 5)
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:200]
    assert took < 5  # the server closed the connection, we did not have to
    assert requests.get(f"{guarded.url}/v2/health/ready", timeout=5).status_code == 200
    png, _ = digit_pngs[0]
    r = requests.post(f"{guarded.url}/v1/classify", data=png, timeout=10,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["label"]


def test_ordinary_requests_with_big_but_allowed_headers_still_work(guarded):
    headers = {"X-Note": "n" * 8000, "Authorization": f"Bearer {KEY}"}
    assert requests.get(f"{guarded.url}/v2/health/ready", headers=headers, timeout=5).status_code == 200
    with requests.Session() as s:  # keep-alive: the header clock restarts for every request on the connection
        for _ in range(3):
            assert s.get(f"{guarded.url}/v2/health/live", timeout=5).status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 0.6)
