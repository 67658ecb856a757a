"""Start the real cloud service on a free loopback port, for tests, the reliability suite and the demo.

    with serve_in_thread([bundle], max_batch_size=8) as url:      # in this process, a background thread
        requests.get(url + "/v2/health/ready")

    with serve_subprocess([bundle], "--max-batch-size", "8") as (url, proc):   # `hybrid-vision serve`
        ...

Both return only once the service is ready (models warmed up), and stop it
gracefully on exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.server import ThreadedServer

REPO = Path(__file__).resolve().parent.parent
BundlesArg = Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike]


@contextmanager
def serve_app_in_thread(bundles: BundlesArg, **settings_overrides) -> Iterator[ThreadedServer]:
    """Like :func:`serve_in_thread`, but yields the ThreadedServer (``.url``, ``.app``; ``.app.state.hv`` is
    the service state: models, batchers, metrics)."""
    from cloud.app import create_app
    from cloud.server import ThreadedServer
    from cloud.settings import Settings

    settings = Settings(**{"host": "127.0.0.1", "port": 0, "log_level": "warning", **settings_overrides})
    app = create_app(bundles, settings)
    server = ThreadedServer(app, settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serve_in_thread(bundles: BundlesArg, **settings_overrides) -> Iterator[str]:
    """uvicorn on 127.0.0.1, port 0, in a background thread; yields the base URL ("http://127.0.0.1:PORT").

    ``settings_overrides`` are cloud.settings.Settings fields, e.g. ``api_keys=["k" * 16]``,
    ``max_batch_size=1``, ``queue_size=4``, ``rate_limit_rps=5``, ``bench_endpoints=True``.
    """
    with serve_app_in_thread(bundles, **settings_overrides) as server:
        yield server.url


@contextmanager
def serve_subprocess(bundles: BundlesArg, *args: str, env: Mapping[str, str] | None = None,
                     timeout: float = 180.0, python: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m edge_sdk.cli serve BUNDLE... --port 0 --port-file F *args``; yields (base_url, Popen).

    ``python`` is this interpreter unless given (the interop tests run in a side environment and start the
    service with the main one). On exit the process gets SIGTERM (if it is still running) and is waited for;
    its combined output is at ``proc.log_path``.
    """
    items = [f"{k}={v}" for k, v in bundles.items()] if isinstance(bundles, Mapping) else [str(b) for b in bundles]
    tmp = Path(tempfile.mkdtemp(prefix="hv-serve-"))
    atexit.register(shutil.rmtree, tmp, True)  # callers may read the log after the block; clean up at exit
    port_file, log_path = tmp / "port", tmp / "serve.log"
    cmd = [python or sys.executable, "-m", "edge_sdk.cli", "serve", *items, "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), *args]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    scheme = "https" if "--ssl-certfile" in args else "http"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if proc.poll() is not None:
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"serve exited with {proc.returncode} before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready after {timeout:g}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        yield f"{scheme}://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
