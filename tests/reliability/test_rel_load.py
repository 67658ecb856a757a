"""Load: 20,000 classify requests at concurrency 64 against `hybrid-vision serve` on loopback.

The service runs in its own process (so its memory can be measured alone); the
client is 64 keep-alive connections on one asyncio loop, writing raw HTTP/1.1,
so the client costs little of the 2 CPUs the service needs. Every answer must be
a 200 with the label the service gave for that image before the run; the
server's RSS in the last quarter of the run must be within 10% of the first
quarter's. p99 latency and throughput are printed and written to load.json in
the test's tmp dir. The run is bounded: it stops after the requests, or fails
after ``TIME_CAP_S`` saying how far it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest
import requests
from cloud_server import serve_subprocess

pytestmark = pytest.mark.reliability

REQUESTS = 20_000
CONCURRENCY = 64
TIME_CAP_S = 240.0


class Load:
    """Counts and latencies of one run; ``done`` is read by the RSS sampler."""

    def __init__(self, n: int):
        self.latency = np.full(n, np.nan)
        self.done = 0
        self.errors: list[str] = []


async def _worker(host: str, port: int, requests_: list[bytes], expected: list[str], next_i, load: Load) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in next_i:
            if i >= len(load.latency):
                return
            k = i % len(requests_)
            t0 = time.perf_counter()
            writer.write(requests_[k])
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            load.latency[i] = time.perf_counter() - t0
            load.done += 1
            if not status.startswith(b"HTTP/1.1 200") or json.loads(body)["label"] != expected[k]:
                load.errors.append(f"{status.strip().decode(errors='replace')} {body[:120]!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def _sample_rss(pid: int, load: Load, out: list[tuple[int, int]], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append((load.done, proc.memory_info().rss))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def run_load(url: str, pid: int, bodies: list[bytes], expected: list[str], n: int, concurrency: int):
    u = urlsplit(url)
    reqs = [(f"POST /v1/classify HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: image/png\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    load, rss, stop = Load(n), [], asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, load, rss, stop))
    next_i = itertools.count()
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*[_worker(u.hostname, u.port, reqs, expected, next_i, load)
                                                for _ in range(concurrency)]), TIME_CAP_S)
    except asyncio.TimeoutError:
        elapsed = time.perf_counter() - t0
        pytest.fail(f"load did not finish in {TIME_CAP_S:.0f}s: {load.done} requests done, {load.done / elapsed:.0f}/s")
    finally:
        stop.set()
        await sampler
    return load, rss, time.perf_counter() - t0


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_20000_requests_at_concurrency_64_no_errors_no_memory_growth(quantized_bundle_session, digit_pngs, tmp_path):
    bodies = [b for b, _ in digit_pngs[::5]][:4]
    with serve_subprocess([quantized_bundle_session]) as (url, proc):
        with requests.Session() as s:  # the answers every later request must repeat
            png = {"Content-Type": "image/png"}
            expected = [s.post(url + "/v1/classify", data=b, headers=png, timeout=30).json()["label"]
                        for b in bodies]
        load, rss, elapsed = asyncio.run(run_load(url, proc.pid, bodies, expected, REQUESTS, CONCURRENCY))
        metrics = requests.get(url + "/metrics", timeout=10).text
    q = REQUESTS // 4
    first = [r for done, r in rss if done <= q]
    last = [r for done, r in rss if done >= REQUESTS - q]
    growth = float(np.mean(last)) / float(np.mean(first)) - 1.0
    lat_ms = load.latency * 1000
    batches = _metric(metrics, "hv_batch_size_count")
    report = {
        "requests": REQUESTS, "concurrency": CONCURRENCY, "errors": len(load.errors),
        "seconds": round(elapsed, 2), "throughput_rps": round(REQUESTS / elapsed, 1),
        "latency_ms": {p: round(float(np.nanpercentile(lat_ms, int(p[1:]))), 2) for p in ("p50", "p90", "p99")}
        | {"max": round(float(np.nanmax(lat_ms)), 2)},
        "server_rss_mb": {"first_quarter_mean": round(np.mean(first) / 2**20, 1),
                          "last_quarter_mean": round(np.mean(last) / 2**20, 1),
                          "growth_pct": round(growth * 100, 2), "samples": len(rss)},
        "mean_batch_size": round(_metric(metrics, "hv_batch_size_sum") / batches, 2) if batches else None,
    }
    (tmp_path / "load.json").write_text(json.dumps(report, indent=2))
    print("\nload:", json.dumps(report))
    assert load.errors == [], load.errors[:5]
    assert load.done == REQUESTS and not np.isnan(load.latency).any()
    assert len(first) >= 3 and len(last) >= 3
    assert growth < 0.10, report["server_rss_mb"]
