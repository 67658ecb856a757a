"""``hybrid-vision serve --engine ray``: deploy ``cloud.ray_app`` on a Ray cluster and serve until stopped.

With ``--address`` the command joins that cluster (its Serve HTTP proxy, if already started, keeps its own
host and port); without it a local cluster starts here, with no dashboard and a small object store (the
service sends encoded images and probabilities, not big tensors). On SIGTERM/SIGINT the application is
deleted, which lets Ray drain its replicas; a cluster started here is then shut down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from .ray_app import ScaleOptions, build_app
from .server import ServeError
from .settings import Settings

log = logging.getLogger("hybrid_vision.cloud")

APP_NAME = "hybrid-vision"
OBJECT_STORE_BYTES = 128 * 2**20
# Ray's own settings for a quick, quiet local start (each only where the environment does not set it).
FAST_START_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start a local one; True when it was started here."""
    import ray

    for k, v in FAST_START_ENV.items():
        os.environ.setdefault(k, v)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             logging_level=logging.WARNING)
    return True


def free_port(host: str) -> int:
    """A port nothing listens on now (Ray's proxy cannot bind port 0 and report it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_serve(settings: Settings) -> str:
    """Start Serve's HTTP proxy as the settings say (or find the running one); its base URL."""
    from ray import serve
    from ray.serve.context import _get_global_client

    port = settings.port or free_port(settings.host)
    tls = {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)} \
        if settings.ssl_certfile else {}
    serve.start(http_options={"host": settings.host, "port": port, **tls},
                logging_config={"log_level": settings.log_level.upper(), "enable_access_log": settings.access_log})
    http = _get_global_client().http_config  # the proxy's own, when it was already running
    host = settings.host if http.host in ("0.0.0.0", "::") else http.host
    scheme = "https" if http.ssl_certfile else "http"
    return f"{scheme}://[{host}]:{http.port}" if ":" in host else f"{scheme}://{host}:{http.port}"


def run_on_ray(bundles: list[str] | dict[str, str], settings: Settings, scale: ScaleOptions, address: str | None,
               on_ready: Callable[[str], None] | None = None) -> int:
    """Deploy, serve until SIGTERM/SIGINT, then delete the application; 0 after a graceful stop."""
    from ray import serve

    app = build_app(bundles, settings, scale)  # verifies the bundles before any cluster starts
    started = start_ray(address)
    stop = threading.Event()
    # after ray.init, which sets a SIGTERM handler of its own for the driver
    previous = {s: signal.signal(s, lambda sig, frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        url = start_serve(settings)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as e:  # e.g. a replica that cannot load its model fails the deployment
            raise ServeError(f"the Ray Serve application did not deploy: {type(e).__name__}: {e}") from None
        if on_ready is not None:
            on_ready(url)
        stop.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _stop(started, settings.drain_timeout_s + 30)
    return 0


def _stop(started: bool, timeout_s: float) -> None:
    """Delete the application (its replicas drain), and shut down a cluster started here; bounded in time, so
    a cluster that is already gone (its processes signalled with ours) cannot hang the exit."""

    def stop() -> None:
        import ray
        from ray import serve

        try:
            log.info("stopping: deleting the application (Ray drains its replicas)")
            serve.delete(APP_NAME)
        finally:
            if started:
                serve.shutdown()
                ray.shutdown()

    t = threading.Thread(target=stop, name="ray-stop", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("Ray did not stop within %.0f s; exiting anyway", timeout_s)
