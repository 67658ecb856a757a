"""`hybrid-vision serve --engine ray` as a real process joining the session's Ray cluster (`--address`), with
autoscaling: 1 model replica idle, 2 under load, back to 1 when the load stops; SIGTERM deletes the application."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from cloud_server import serve_subprocess

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'hybrid-vision[scale]'")

from ray import serve  # noqa: E402

from cloud.ray_serve import APP_NAME  # noqa: E402
from edge_sdk.bundle import load_bundle  # noqa: E402


def _wait(what, predicate, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s:g}s"
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.mark.extended  # `make test-all`
@pytest.mark.slow  # 101 s at load 17 on 2 cores: a second replica starts, then the scale-down delay
def test_cli_on_ray_autoscales_1_to_2_under_load_and_back(ray_cluster, trained_bundle_session, digits_dir):
    deployment = f"Model-{load_bundle(trained_bundle_session).manifest.name}"
    pngs = [p.read_bytes() for d in sorted(digits_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:3]]
    args = ["--engine", "ray", "--address", ray_cluster.address, "--min-replicas", "1", "--max-replicas", "2",
            "--target-ongoing-requests", "2", "--upscale-delay-s", "0", "--downscale-delay-s", "3",
            "--max-batch-size", "4", "--log-level", "warning"]
    with serve_subprocess([trained_bundle_session], *args, timeout=240) as (url, proc):
        assert url == ray_cluster.url  # the cluster's own Serve proxy: --address joins, it does not start one
        assert "on Ray Serve, 1-2 replica(s)" in proc.log_path.read_text()
        states = lambda: ray_cluster.replica_states(APP_NAME, deployment).get("RUNNING", 0)  # noqa: E731
        assert states() == 1
        stop = threading.Event()

        def client(k: int) -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    r = s.post(url + "/v1/classify", data=pngs[k % len(pngs)], headers={"Content-Type": "image/png"},
                               timeout=60)
                    assert r.status_code == 200, r.text

        load = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(16)]
        for t in load:
            t.start()
        try:
            up_s = _wait("scale up to 2 replicas", lambda: states() == 2, 120)
        finally:
            stop.set()
            for t in load:
                t.join(60)
        down_s = _wait("scale down to 1 replica", lambda: states() == 1 and len(
            ray_cluster.replica_pids(APP_NAME, deployment)) == 1, 120)
        print(f"\nautoscaling: 1 -> 2 replicas {up_s:.1f}s into the load, back to 1 {down_s:.1f}s after it stopped")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.log_path.read_text()[-3000:]
    assert APP_NAME not in serve.status().applications  # deleted on stop; the cluster it joined goes on


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "--replicas only apply with --engine ray"),
    (["--engine", "ray", "--replicas", "2", "--max-replicas", "3"], "either replicas"),
    (["--engine", "ray", "--gpus-per-replica", "-1"], "--gpus-per-replica"),
])
def test_cli_refuses_bad_scale_flags_cleanly(trained_bundle_session, args, message):
    r = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "serve", str(trained_bundle_session), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
