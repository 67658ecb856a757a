"""Helpers of the reliability suite: the service's key, and accounting of threads, fds and sockets."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

KEY = "reliability-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Threads the in-process service starts on demand and keeps (its decode pool, model worker, loop helpers).
SERVER_THREADS = ("decode", "model-", "asyncio_", "hv-server", "AnyIO")


@dataclass
class Resources:
    threads: set
    fds: int
    tcp: int


def snapshot(ports: tuple[int, ...]) -> Resources:
    """This process's threads, open fds, and TCP connections (not listeners) touching ``ports``."""
    proc = psutil.Process()
    conns = [c for c in proc.net_connections("tcp") if c.status != psutil.CONN_LISTEN
             and ((c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports))]
    return Resources(set(threading.enumerate()), proc.num_fds(), len(conns))


def sockets_to(port: int, wait_s: float = 0.0) -> int:
    """This process's client sockets connected to ``port``, once they stop closing (polls up to ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        n = sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def leaks(before: Resources, ports: tuple[int, ...], wait_s: float = 5.0) -> dict:
    """What is still open that was not before (polls up to ``wait_s`` for things that are closing)."""
    deadline = time.monotonic() + wait_s
    while True:
        now = snapshot(ports)
        extra = [t.name for t in now.threads - before.threads if t.is_alive() and not t.name.startswith(SERVER_THREADS)]
        found = {k: v for k, v in {"threads": extra, "fds": max(0, now.fds - before.fds),
                                   "tcp": max(0, now.tcp - before.tcp)}.items() if v}
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
