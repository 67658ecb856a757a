"""Fixtures of the interop suite (``make interop``), which runs in the side environment (.venv-interop).

The official clients (tritonclient, kserve) cannot share the main environment with TensorFlow, so these tests
run in their own, and start what needs TensorFlow with the main one (``HV_MAIN_PYTHON``): the assets script and
``hybrid-vision serve``. Anything missing is an error here, never a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from cloud_server import serve_subprocess
from interop_helpers import HERE, MODEL, REPO, Assets, main_env, main_python, run_main


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("interop") / "assets"
    run_main(str(HERE / "make_assets.py"), str(root))
    return Assets(root)


@pytest.fixture(scope="session")
def serve(assets) -> Iterator[str]:
    """``hybrid-vision serve`` (main environment) on a loopback port 0; yields its base URL."""
    with serve_subprocess([assets.bundle], "--max-delay-ms", "2", python=main_python(), env=main_env()) as (url, _):
        yield url


@pytest.fixture(scope="session")
def reference(serve, assets) -> np.ndarray:
    """Each image's probabilities from ``POST /v1/classify`` (all ten, from top_k=10): what every client must get."""
    out = np.zeros((len(assets.pngs), 10), np.float32)
    with requests.Session() as s:
        for i, png in enumerate(assets.pngs):
            r = s.post(f"{serve}/v1/classify?top_k=10", data=png, headers={"Content-Type": "image/png"}, timeout=60)
            r.raise_for_status()
            for t in r.json()["top_k"]:
                out[i, int(t["label"])] = t["confidence"]
    assert np.allclose(out.sum(1), 1, atol=1e-4)
    return out


@pytest.fixture(scope="session")
def kserve_url(assets) -> Iterator[str]:
    """A real kserve ModelServer (this environment: Keras 3 on JAX) serving the bundle's cloud model."""
    log_path = assets.root / "kserve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "kserve_server.py"), str(assets.bundle), MODEL],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    try:
        yield _wait_for_port(proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if m:
            url = m.group(1)
            if requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=5).status_code == 200:
                return url
        if proc.poll() is not None:
            raise RuntimeError(f"the kserve ModelServer exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the kserve ModelServer was not ready after {timeout:g}s:\n{log_path.read_text()[-4000:]}")
