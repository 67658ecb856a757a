"""Running the app under uvicorn: binding, TLS, readiness, header limits, and a graceful drain.

On SIGTERM/SIGINT uvicorn stops accepting, lets the requests in flight finish
(they wait on the batcher, which keeps running), and only then runs the app's
shutdown, which drains the batcher's queue. ``/v2/health/ready`` says 503 from
the moment the signal arrives, so a load balancer stops sending work.

uvicorn's httptools protocol bounds neither the time a client may take to send
its headers nor their size (it accepted 100 KB), so a slow-header
("slowloris") client holds a connection for ever. :class:`HeaderGuard` adds
both: ``header_timeout_s`` to receive a request's headers (then 408 and a
close) and ``max_header_bytes`` for them (then 431 and a close).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge_sdk.errors import HybridVisionError

from .settings import Settings

log = logging.getLogger("hybrid_vision.cloud")


CLOSE_GRACE_S = 1.0  # how long a stopping server waits for a closed TLS connection's close_notify


class ServeError(HybridVisionError):
    """The server could not start: the address is taken, TLS files are unreadable, or warm-up failed."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also marks the app as draining as soon as it is told to stop."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.hv_app = app

    def handle_exit(self, sig, frame) -> None:
        self.hv_app.state.hv.begin_drain()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Ask for a graceful stop from any thread (what SIGTERM does)."""
        self.hv_app.state.hv.begin_drain()
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        reaper = asyncio.get_running_loop().create_task(self._abort_stuck_closes())
        try:
            await super().shutdown(sockets)
        finally:
            reaper.cancel()

    async def _abort_stuck_closes(self) -> None:
        """Closing a TLS connection waits for the client's close_notify, up to 30 s, and an idle
        keep-alive client never sends one: the stop would hang that long. A connection that is
        closing with nothing left to send has had its answer; after a grace period it is aborted."""
        closing_since: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            for conn in list(self.server_state.connections):
                t = getattr(conn, "transport", None)
                if t is None or not t.is_closing() or t.get_write_buffer_size():
                    continue
                if loop.time() - closing_since.setdefault(id(conn), loop.time()) >= CLOSE_GRACE_S:
                    t.abort()


class HeaderGuard(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for a request's headers and a cap on their size.

    The clock starts when the connection opens and at the first byte of each request, and stops when the
    headers are complete; the size counts the request line and headers both as parsed and as received
    (a block still incomplete after a read counts whole), so neither one huge read nor many small ones
    get past it. Subclassed per server by :func:`header_guard` with the limits as class attributes.
    """

    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self._awaiting_headers, self._header_bytes, self._refused = True, 0, False
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._awaiting_headers and not self._refused:  # all of this read was headers
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers are over {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers, self._header_bytes = True, 0
        self._start_header_clock()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._stop_header_clock()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _parsed_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self._refuse(431, f"request headers are over {self.max_header_bytes} bytes")

    def _start_header_clock(self) -> None:
        if self._header_timer is None and not self._refused:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self._refused and not self.transport.is_closing():
            self._refuse(408, f"the request headers took over {self.header_timeout_s:g} s")

    def _refuse(self, status: int, why: str) -> None:
        """Answer ``status`` with a JSON error and close; nothing more is read from this connection."""
        self._refused = True
        self._stop_header_clock()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("refused %s: %s", client, why)
        if self.transport.is_closing():
            return
        body = json.dumps({"error": why}).encode()
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode() + body
        )
        self.transport.close()


def header_guard(settings: Settings) -> type[HeaderGuard]:
    """:class:`HeaderGuard` with this server's limits."""
    return type("HeaderGuard", (HeaderGuard,), {
        "max_header_bytes": settings.max_header_bytes, "header_timeout_s": settings.header_timeout_s,
    })


def make_server(app: FastAPI, settings: Settings) -> DrainingServer:
    ssl = {}
    if settings.ssl_certfile is not None:
        for p in (settings.ssl_certfile, settings.ssl_keyfile):
            if not Path(p).is_file():
                raise ServeError(f"{p}: TLS file not found")
        ssl = {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)}
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_level=settings.log_level,
        access_log=settings.access_log, timeout_graceful_shutdown=settings.drain_timeout_s,
        server_header=False, proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips, http=header_guard(settings), **ssl,
    )
    if ssl:
        try:
            config.load()  # builds the SSL context now, so a bad certificate is a clean error
        except (OSError, ValueError) as e:
            raise ServeError(f"cannot load the TLS certificate/key: {e}") from None
    return DrainingServer(config, app)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for ``host:port`` (port 0: a free one), or a ServeError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def base_url(settings: Settings, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if settings.ssl_certfile else "http"
    shown = settings.host if settings.host not in ("0.0.0.0", "::") else host
    return f"{scheme}://[{shown}]:{port}" if ":" in shown else f"{scheme}://{shown}:{port}"


async def wait_ready(app: FastAPI, serve_task: asyncio.Task, timeout: float | None = None) -> None:
    """Return once the server listens and every model is warm; ServeError if it stopped or warm-up failed."""
    state = app.state.hv
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not state.ready:
        if serve_task.done():
            exc = serve_task.exception() if not serve_task.cancelled() else None
            raise ServeError(f"the server stopped before it was ready{f': {exc}' if exc else ''}")
        if state.warmup_error:
            raise ServeError(f"warm-up failed: {state.warmup_error}")
        if deadline is not None and loop.time() > deadline:
            raise ServeError(f"not ready after {timeout:g}s")
        await asyncio.sleep(0.02)


def write_port_file(path: str | os.PathLike, port: int) -> None:
    """Atomically, so a process polling for the file never reads half of it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, p)


def run_server(app: FastAPI, settings: Settings, on_ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns 0 after a graceful stop. Main thread only."""
    server = make_server(app, settings)
    sock = bind(settings.host, settings.port)
    url = base_url(settings, sock)
    stopped_by: list[int] = []

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await wait_ready(app, task)
        except ServeError:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            raise
        if on_ready is not None:
            on_ready(url)
        await task

    # uvicorn re-raises the signal it stopped on once it is done; with these handlers
    # in place that re-raise is a no-op and a graceful stop exits with status 0.
    previous = {s: signal.signal(s, lambda sig, frame: stopped_by.append(sig)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run(main(), server.config.get_loop_factory())
    except SystemExit as e:  # uvicorn exits this way when start-up fails
        raise ServeError(f"the server failed to start (status {e.code})") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    log.info("stopped%s", f" on signal {stopped_by[0]}" if stopped_by else "")
    return 0


def _run(coro, loop_factory) -> None:
    if hasattr(asyncio, "Runner"):  # Python 3.11+: uvloop where uvicorn picks it
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(coro)
    else:
        asyncio.run(coro)


class ThreadedServer:
    """The app on a loopback port in a background thread (tests, notebooks): ``start()``, ``url``, ``stop()``."""

    def __init__(self, app: FastAPI, settings: Settings):
        self.app, self.settings = app, settings
        self.server = make_server(app, settings)
        self.sock = bind(settings.host, settings.port)
        self.url = base_url(settings, self.sock)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 120.0) -> str:
        def target():
            async def main():
                task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
                try:
                    await wait_ready(self.app, task, timeout)
                except BaseException as e:
                    self._error = e
                    self.server.should_exit = True
                    self._ready.set()
                    await asyncio.gather(task, return_exceptions=True)
                    return
                self._ready.set()
                await task

            try:
                _run(main(), self.server.config.get_loop_factory())
            except BaseException as e:  # noqa: BLE001 - surfaced to the caller of start()
                self._error = self._error or e
                self._ready.set()

        self._thread = threading.Thread(target=target, name="hv-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout + 5) or self._error is not None:
            self.stop()
            raise ServeError(f"server did not become ready: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
