"""Run `hybrid-vision serve` as a child process on a free loopback port, and always stop it.

The child gets its own session, so a Ctrl-C in the terminal reaches only the
parent, which then stops the server in order: SIGTERM (the server drains what
is in flight), then SIGKILL if it does not exit in time. ``quantize`` does not
import ``cloud``; it starts the service the way a user would, through the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_sdk.errors import HybridVisionError


class ServiceError(HybridVisionError):
    """The cloud service did not start (it exited, or was not ready in time); the message has its log tail."""


class CloudService:
    """``with CloudService([bundle_a, bundle_b]) as svc: svc.url`` -- a started, warmed-up service."""

    def __init__(self, bundles: Sequence[str | os.PathLike], *, log_path: str | os.PathLike | None = None,
                 api_key: str | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 start_timeout_s: float = 180.0, stop_timeout_s: float = 20.0, progress: bool = True):
        self.bundles = [str(b) for b in bundles]
        self._tmp = Path(tempfile.mkdtemp(prefix="hv-service-"))
        self.log_path = Path(log_path) if log_path else self._tmp / "serve.log"
        self.api_key = api_key
        self.args = list(args)
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.progress = progress
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> str:
        """Start the child and wait until it has written its port (it does so only once warmed up)."""
        from tqdm.auto import tqdm

        port_file = self._tmp / "port"
        cmd = [sys.executable, "-m", "edge_sdk.cli", "serve", *self.bundles, "--host", "127.0.0.1", "--port", "0",
               "--port-file", str(port_file), "--log-level", "warning", *self.args]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("HV_API_KEYS", None)
        if self.api_key:
            env["HV_API_KEYS"] = self.api_key  # through the environment, never on the command line
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        t0 = time.monotonic()
        with tqdm(desc="start cloud service", unit="s", total=None, disable=not self.progress, leave=False,
                  bar_format="{desc}: {elapsed}") as bar:
            while not port_file.exists() or not port_file.read_text().strip():
                if self.proc.poll() is not None:
                    raise ServiceError(f"the cloud service exited with status {self.proc.returncode} before it was "
                                       f"ready; its log ({self.log_path}):\n{self._log_tail()}")
                if time.monotonic() - t0 > self.start_timeout_s:
                    self.stop()
                    raise ServiceError(f"the cloud service was not ready after {self.start_timeout_s:g}s; "
                                       f"its log ({self.log_path}):\n{self._log_tail()}")
                time.sleep(0.05)
                bar.update(0)
        self.url = f"http://127.0.0.1:{int(port_file.read_text().strip())}"
        return self.url

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL. Safe to call twice, and a second Ctrl-C while waiting kills at once."""
        p = self.proc
        if p is None:
            return None
        try:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        except KeyboardInterrupt:
            p.kill()
            p.wait(10)
            raise
        finally:
            if p.poll() is None:  # anything above failed: never leave it running
                p.kill()
        return p.returncode

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> CloudService:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
