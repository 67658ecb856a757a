"""A real local Ray cluster with Serve's HTTP proxy on a free loopback port, for the tests and the scale bench.

    with local_cluster(num_cpus=2) as cluster:                 # one per test session (tests/conftest.py)
        url = cluster.deploy(build_app(...), "hv")             # base URL once every replica is warm
        cluster.replica_pids("hv", "Model-digits")             # the replicas' processes, e.g. to kill one
        cluster.replica_states("hv", "Model-digits")           # {"RUNNING": 2}

Started fast and small: no dashboard, a small object store, no usage stats (``cloud.ray_serve``'s
settings); shut down, and its /tmp/ray session removed, at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class RayCluster:
    address: str  # the GCS address another process joins with (`--address`)
    url: str  # Serve's HTTP proxy

    def deploy(self, app, name: str) -> str:
        """``serve.run`` at route "/" (returns once every replica is up and warm); the proxy's base URL."""
        from ray import serve

        serve.run(app, name=name, route_prefix="/", blocking=False)
        return self.url

    @staticmethod
    def delete(name: str) -> None:
        from ray import serve

        serve.delete(name)

    @staticmethod
    def replica_states(app: str, deployment: str) -> dict[str, int]:
        """Replicas by state (RUNNING, STARTING, ...) as Serve's controller reports them; {} if not deployed."""
        from ray import serve

        a = serve.status().applications.get(app)
        d = a.deployments.get(deployment) if a else None
        return {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()} if d else {}

    @staticmethod
    def replica_pids(app: str, deployment: str) -> set[int]:
        """The live processes of a deployment's replicas (Ray titles each ``ray::ServeReplica:APP:DEPLOYMENT``)."""
        title = f"ray::ServeReplica:{app}:{deployment}"
        pids = set()
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0] == title and p.info["status"] != psutil.STATUS_ZOMBIE:
                pids.add(p.info["pid"])
        return pids

    def wait_for(self, app: str, deployment: str, running: int, timeout_s: float, exclude: set[int] = frozenset(),
                 ) -> float:
        """Seconds until ``running`` replicas are RUNNING and that many replica processes live, none of them in
        ``exclude`` (e.g. a killed one); TimeoutError past ``timeout_s``."""
        t0 = time.monotonic()
        while True:
            pids = self.replica_pids(app, deployment) - set(exclude)
            if self.replica_states(app, deployment).get("RUNNING", 0) == running and len(pids) == running:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{deployment}: not {running} running replicas after {timeout_s:g}s "
                                   f"(states {self.replica_states(app, deployment)}, pids {sorted(pids)})")
            time.sleep(0.1)


@contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[RayCluster]:
    import ray
    from ray import serve

    from cloud.ray_serve import start_ray, start_serve
    from cloud.settings import Settings

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    start_ray(None, num_cpus=num_cpus)
    node = getattr(ray._private.worker.global_worker, "node", None)  # where this session writes, under /tmp/ray
    session = Path(node.get_session_dir_path()) if node is not None else None
    try:
        url = start_serve(Settings(host="127.0.0.1", port=0, log_level="warning"))
        yield RayCluster(ray.get_runtime_context().gcs_address, url)
    finally:
        serve.shutdown()
        ray.shutdown()
        if session is not None:
            (os.environ.get("HV_KEEP_RAY_SESSION") or shutil.rmtree(session, ignore_errors=True))
