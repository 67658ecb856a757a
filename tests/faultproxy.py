"""A loopback TCP proxy that injects network faults between a client and a real server (tests only).

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        url = proxy.url                     # point the client here
        proxy.set("latency", latency_s=0.2) # or "drop", "reset", "stall", "garbage", "garbage_http"
        proxy.go_down(); proxy.come_back()  # refuse connections, then listen on the same port again
        proxy.heal()                        # back to a clean pass-through

Faults (the mode is read when a connection is accepted; changing it closes the
connections that are open, so a client's kept-alive connection meets it too):

* ``pass``: forward bytes both ways.
* ``latency``: hold each request ``latency_s`` before forwarding it.
* ``drop``: accept, then close at once.
* ``reset``: forward the request, then the first ``reset_after`` bytes of the
  response, then abort the connection with a TCP RST (SO_LINGER 0).
* ``stall``: forward the response's status line and headers, then nothing.
* ``drip``: forward the response's headers, then its body one byte every
  ``drip_s`` (too slow to finish, too steady for a per-read timeout to fire).
* ``garbage``: answer the request with bytes that are not HTTP.
* ``garbage_http``: answer with a well-formed HTTP 200 whose JSON body is junk.
* ``tamper``: forward everything, but flip one byte of each response body
  (at ``tamper_at``, or its last byte if shorter): a man in the middle.
* down (``go_down``): nobody listens on the port; connections are refused.

Threads and sockets are the proxy's own and all end at :meth:`close`; the
proxy listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("pass", "latency", "drop", "reset", "stall", "drip", "garbage", "garbage_http", "tamper")
GARBAGE = b"\x00\xffNOT-HTTP\x13\x37" + os.urandom(64) + b"\r\n\r\n"
JUNK_JSON = b'{"outputs": "nope", "model_name": 7}'


@dataclass
class Fault:
    mode: str = "pass"
    latency_s: float = 0.0
    reset_after: int = 40
    tamper_at: int = 1000
    drip_s: float = 0.05


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    thread: threading.Thread | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self, rst: bool = False) -> None:
        for s in (self.client, self.upstream):
            if s is None:
                continue
            try:
                if rst:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                s.close()
        self.closed.set()


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.fault = Fault()
        self.accepted = 0  # connections accepted, all modes
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    # --- control -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str, **params) -> None:
        """Switch fault; open connections are closed so the next request meets the new mode."""
        if mode not in MODES:
            raise ValueError(f"unknown fault {mode!r}; choose from {MODES}")
        with self._lock:
            self.fault = Fault(mode, **params)
        self._close_conns()

    def heal(self) -> None:
        self.set("pass")

    def go_down(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        self._stop_listening()
        self._close_conns()

    def come_back(self) -> None:
        """Listen again on the same port, healed."""
        with self._lock:
            self.fault = Fault()
        self._listen(self.port)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        self._stop.set()
        self._stop_listening()
        self._close_conns()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- listening -----------------------------------------------------------

    def _listen(self, port: int = 0) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self._listener = s
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(s,), name="faultproxy-accept",
                                               daemon=True)
        self._accept_thread.start()

    def _stop_listening(self) -> None:
        s, t = self._listener, self._accept_thread
        self._listener = self._accept_thread = None
        if s is not None:
            s.close()
        if t is not None:
            t.join(5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                fault = self.fault
                self.accepted += 1
            if fault.mode == "drop":
                _Conn(client).close()
                continue
            conn = _Conn(client)
            conn.thread = threading.Thread(target=self._serve, args=(conn, fault), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._conns.add(conn)
            conn.thread.start()

    def _close_conns(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        for c in conns:
            if c.thread is not None and c.thread is not threading.current_thread():
                c.thread.join(5)

    # --- one connection --------------------------------------------------------

    def _serve(self, conn: _Conn, fault: Fault) -> None:
        try:
            if fault.mode in ("garbage", "garbage_http"):
                self._answer_junk(conn, fault.mode)
            else:
                conn.upstream = socket.create_connection(self.upstream, timeout=5)
                self._pump(conn, fault)
        except OSError:
            pass
        finally:
            conn.close(rst=fault.mode == "reset")
            with self._lock:
                self._conns.discard(conn)

    def _answer_junk(self, conn: _Conn, mode: str) -> None:
        if not _read_request(conn.client, conn.closed):
            return
        if mode == "garbage":
            conn.client.sendall(GARBAGE)
        else:
            conn.client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(JUNK_JSON) + JUNK_JSON)
        conn.client.shutdown(socket.SHUT_WR)
        conn.closed.wait(2)  # let the client read it before the socket goes

    def _pump(self, conn: _Conn, fault: Fault) -> None:
        client, upstream = conn.client, conn.upstream
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        state = _PumpState(tamper=_Tamper(fault.tamper_at) if fault.mode == "tamper" else None)
        try:
            while not conn.closed.is_set() and not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    src = key.fileobj
                    data = src.recv(65536)
                    if not data:
                        return
                    done = (_client_to_upstream(conn, fault, state, data) if src is client
                            else _upstream_to_client(conn, fault, state, data))
                    if done:
                        return
        finally:
            sel.close()


@dataclass
class _PumpState:
    """Where one connection's exchange is: between requests, how much came back, whether the answer stalled."""

    tamper: _Tamper | None
    new_request: bool = True
    sent_back: int = 0
    stalled: bool = False
    in_body: bool = False


def _client_to_upstream(conn: _Conn, fault: Fault, st: _PumpState, data: bytes) -> bool:
    """Pass a request on (after the fault's latency); True when the connection is done."""
    if st.new_request:
        if fault.mode == "latency" and conn.closed.wait(fault.latency_s):
            return True
        if st.tamper is not None:
            st.tamper.next_response()
        st.in_body = False
    st.new_request = False
    conn.upstream.sendall(data)
    return False


def _upstream_to_client(conn: _Conn, fault: Fault, st: _PumpState, data: bytes) -> bool:
    """Pass an answer back, broken as the fault says; True when the connection is done."""
    client = conn.client
    st.new_request = True
    if st.tamper is not None:
        data = st.tamper.feed(data)
    if st.stalled:
        return False  # swallow the rest of the response
    if fault.mode == "reset":
        client.sendall(data[: max(0, fault.reset_after - st.sent_back)])
        st.sent_back += len(data)
        return st.sent_back >= fault.reset_after  # _serve closes with SO_LINGER 0: a reset
    if fault.mode == "drip":
        if not st.in_body:
            end = data.find(b"\r\n\r\n")
            head, data = (data, b"") if end < 0 else (data[: end + 4], data[end + 4 :])
            client.sendall(head)
            st.in_body = end >= 0
        for b in data:
            if conn.closed.wait(fault.drip_s):
                return True
            client.sendall(bytes([b]))
        return False
    if fault.mode == "stall":
        end = data.find(b"\r\n\r\n")
        client.sendall(data if end < 0 else data[: end + 4])
        st.stalled = end >= 0
        return False
    client.sendall(data)
    return False


class _Tamper:
    """Flips one body byte per response; responses are framed by Content-Length (what the service sends)."""

    def __init__(self, at: int):
        self.at = at
        self.next_response()

    def next_response(self) -> None:
        self.head, self.body_pos, self.length, self.done = b"", None, 0, False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        if self.body_pos is None:  # still in the headers
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return data
            for line in self.head[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.length = int(value.strip() or 0)
            self.body_pos = (len(self.head) - len(data)) - (end + 4)  # where data starts, relative to the body
        target = min(self.at, self.length - 1)
        i = target - self.body_pos
        self.body_pos += len(data)
        if target < 0 or not 0 <= i < len(data):
            return data
        self.done = True
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def _recv_until(s: socket.socket, closed: threading.Event, buf: bytes, done) -> bytes | None:
    """Receive into ``buf`` until ``done(buf)``; None if the client went away or the proxy closed first."""
    while not done(buf):
        if closed.is_set():
            return None
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_request(s: socket.socket, closed: threading.Event) -> bool:
    """Read one request's headers and (Content-Length) body; False if the client went away first."""
    s.settimeout(0.05)
    buf = _recv_until(s, closed, b"", lambda b: b"\r\n\r\n" in b)
    if buf is None:
        return False
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    return _recv_until(s, closed, body, lambda b: len(b) >= length) is not None
