"""The cloud side of the SDK: a KServe v2 client that never outlives the caller's deadline.

Speaks ``POST {base}/v2/models/{name}/infer`` (so it also works against Triton
or KServe), keeps connections alive in one ``requests.Session``, verifies TLS
by default, and retries only what is safe to retry (connection errors and 503)
within the deadline. Every failure is a :class:`CloudError` whose ``reason`` is
one short word (see :data:`REASONS`); a malformed answer is a failure, never a
crash or a silent wrong answer.

Each HTTP attempt runs on a small worker pool and the caller waits for it at
most until the deadline: ``requests`` timeouts bound each socket operation,
not the whole exchange, so this is what makes the deadline hard.

Tensors go as binary data (``edge_sdk.binary``) to a server whose ``GET /v2``
lists the ``binary_tensor_data`` extension, else as JSON, which every v2 server
reads; ``wire=`` fixes the choice instead. The question is asked once per client,
in the background from its construction on, so no call waits for it: calls made
before the answer go as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import numpy as np
import requests

from . import binary
from .breaker import CircuitBreaker
from .errors import CloudError
from .protocol import Encoded, InferPayload, images_payload, parse_outputs, read_response, tensor_payload

log = logging.getLogger(__name__)

USER_AGENT = "hybrid-vision-edge/0.1"

Wire = Literal["auto", "binary", "json"]
WIRES: tuple[str, ...] = ("auto", "binary", "json")
PROBE_S = 5.0  # the most the background GET /v2 may take
PROBE_RETRY_S = 30.0  # after a GET /v2 that said nothing (down, 5xx, slow), ask again no sooner than this

REASONS = (
    "connection",    # refused, reset, DNS: the server could not be reached
    "tls",           # certificate verification or handshake failed
    "timeout",       # an attempt hit the client's own per-attempt limit
    "deadline",      # the caller's deadline ran out while waiting
    "overloaded",    # 503 after the allowed retries (or Retry-After too long for the deadline)
    "rate_limited",  # 429
    "bad_response",  # not JSON, wrong outputs, wrong shape, NaN, too large
    "circuit_open",  # the breaker refused to send
    # and "http_<status>" for any other status, e.g. http_401, http_404, http_500
)
# Client-side input problems: the server is healthy, so they do not trip the breaker.
_NOT_SERVER_FAULTS = {"http_400", "http_413", "http_415", "http_422"}


def counts_against_breaker(reason: str) -> bool:
    """Whether a failure says the server is unwell (and so counts towards opening the breaker).

    Args:
        reason: a :class:`CloudError`'s reason (see :data:`REASONS`).

    Returns:
        False for the client's own input problems (400, 413, 415, 422) and for the breaker's own refusal.
    """
    return reason not in _NOT_SERVER_FAULTS and reason != "circuit_open"


def deadline_after(ms: float) -> float:
    """An absolute deadline on the ``time.monotonic`` clock, ``ms`` from now.

    Args:
        ms: how long from now, in milliseconds.

    Returns:
        The deadline, in seconds on the ``time.monotonic`` clock.
    """
    return time.monotonic() + ms / 1000.0


@dataclass
class CloudResult:
    probs: np.ndarray  # [N, C] float32
    labels: list[str] | None
    bytes_sent: int
    attempts: int
    latency_ms: float


class Sink:
    """Where a streamed download goes: ``reset()`` before each attempt, ``write(chunk)`` per chunk."""

    max_bytes: int = 256 * 1024 * 1024

    def reset(self) -> None:
        """Forget what an earlier attempt wrote: the download starts again."""

    def write(self, chunk: bytes) -> None:
        """Take the next piece of the body.

        Args:
            chunk: the bytes, in order.
        """


@dataclass
class _Reply:
    status: int
    headers: Mapping[str, str]
    content: bytes
    parsed: Any = None  # what _call's ``parse`` made of it


Reply = _Reply  # the public name of what CloudClient.get returns


class CloudClient:
    """One model on one KServe v2 server. Thread-safe; share one per process."""

    def __init__(self, base_url: str, model_name: str, *, api_key: str | None = None, verify: bool = True,
                 ca_bundle: str | None = None, max_retries: int = 2, backoff_s: float = 0.05,
                 max_attempt_s: float = 30.0, breaker: CircuitBreaker | None = None,
                 max_response_bytes: int = 32 * 1024 * 1024, max_workers: int = 8,
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 wire: Wire = "auto"):
        """A client for ``model_name`` on ``base_url``; with ``wire="auto"`` it asks ``GET /v2`` in the background.

        Args:
            base_url: the server, ``http://`` or ``https://``.
            model_name: the model to ask.
            api_key: sent as ``Authorization: Bearer``; None sends none.
            verify: check the server's TLS certificate.
            ca_bundle: a CA file to check it against (implies verification).
            max_retries: retries after a connection error or a 503 (with backoff, within the deadline).
            backoff_s: the first retry's wait; it doubles after each.
            max_attempt_s: the longest one attempt may take, whatever the deadline.
            breaker: the circuit breaker to share; None makes one.
            max_response_bytes: a longer answer is a bad response.
            max_workers: threads for requests that run in the background.
            session: the ``requests`` session to use; None makes one.
            sleep: how to wait between retries (a test passes a fake).
            wire: ``auto`` (binary tensor data where ``GET /v2`` lists it, else JSON), ``binary`` or ``json``.

        Raises:
            ValueError: a URL without http(s):// or an unknown ``wire``.
        """
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"cloud URL must start with http:// or https://, not {base_url!r}")
        if wire not in WIRES:
            raise ValueError(f"unknown wire {wire!r}; choose from {', '.join(WIRES)}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = backoff_s
        self.max_attempt_s = max_attempt_s
        self.max_response_bytes = max_response_bytes
        self.breaker = breaker or CircuitBreaker()
        self._sleep = sleep
        self.session = session or requests.Session()
        self.verify = self._authenticate(api_key, verify, ca_bundle)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hv-cloud")
        self._bytes_lock = threading.Lock()
        self.bytes_sent = 0
        self._choose_wire(wire)

    def _authenticate(self, api_key: str | None, verify: bool, ca_bundle: str | None) -> bool | str:
        """The session's User-Agent and key; returns what to pass as ``verify=`` on every request (a
        session-level setting would lose to REQUESTS_CA_BUNDLE in the environment)."""
        if not verify and not ca_bundle:
            log.warning("TLS certificate verification is OFF for %s", self.base_url)
        self.session.headers["User-Agent"] = USER_AGENT
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        return ca_bundle if ca_bundle else verify

    def _choose_wire(self, wire: Wire) -> None:
        """Fix JSON or binary now, or (``auto``) start asking ``GET /v2`` in the background."""
        self.wire = wire
        self._speaks_binary: bool | None = None if wire == "auto" else wire == "binary"
        self._probe: Future[None] | None = None
        self._probe_lock = threading.Lock()
        self._next_probe = 0.0
        if self._speaks_binary is None:
            self._start_probe()

    def __repr__(self) -> str:  # never shows the key
        auth = "with key" if "Authorization" in self.session.headers else "no key"
        return f"CloudClient({self.base_url!r}, model={self.model_name!r}, {auth})"

    def close(self) -> None:
        """Stop the workers and close every pooled connection now.

        ``Session.close()`` alone only forgets the pools (urllib3 2.x); a pool kept
        alive by a failed request's traceback cycle then holds its sockets open
        until the garbage collector runs, so the pools are closed here explicitly.
        """
        self._pool.shutdown(wait=False, cancel_futures=True)
        for adapter in self.session.adapters.values():
            pools: Any = getattr(getattr(adapter, "poolmanager", None), "pools", None)
            for key in list(pools.keys()) if pools is not None else ():
                pool = pools.get(key)
                if pool is not None:
                    pool.close()
        self.session.close()

    # --- inference -----------------------------------------------------------

    @property
    def infer_url(self) -> str:
        return f"{self.base_url}/v2/models/{self.model_name}/infer"

    def infer_images(self, images: Sequence[bytes], num_classes: int, deadline: float) -> CloudResult:
        """Encoded images (JPEG/PNG bytes) -> probabilities [N, C].

        Args:
            images: the encoded files.
            num_classes: the probabilities' width.
            deadline: absolute, on the ``time.monotonic`` clock (see :func:`deadline_after`).

        Returns:
            The probabilities, labels (when sent), bytes sent, attempts and latency.

        Raises:
            CloudError: any failure; ``reason`` says which (see :data:`REASONS`).
        """
        return self.infer(images_payload(list(images)), len(images), num_classes, deadline)

    def infer_tensor(self, batch: np.ndarray, num_classes: int, deadline: float) -> CloudResult:
        """An NHWC uint8 (raw RGB pixels) or float32 (preprocessed) batch -> probabilities [N, C].

        Args:
            batch: the images, [N, H, W, C].
            num_classes: the probabilities' width.
            deadline: absolute, on the ``time.monotonic`` clock (see :func:`deadline_after`).

        Returns:
            The probabilities, labels (when sent), bytes sent, attempts and latency.

        Raises:
            CloudError: any failure; ``reason`` says which (see :data:`REASONS`).
            ValueError: a batch that is not NHWC uint8 or float32.
        """
        return self.infer(tensor_payload(batch), len(batch), num_classes, deadline)

    def infer(self, request: InferPayload | Mapping[str, Any], n: int, num_classes: int,
              deadline: float) -> CloudResult:
        """Send one v2 infer request for ``n`` images and validate the answer.

        Args:
            request: a payload (sent as binary tensors where the server speaks them, else JSON),
                or a ready JSON document, sent as it is.
            n: how many images it carries.
            num_classes: the probabilities' width.
            deadline: absolute, on the ``time.monotonic`` clock (see :func:`deadline_after`).

        Returns:
            The probabilities, labels (when sent), bytes sent, attempts and latency.

        Raises:
            CloudError: any failure; ``reason`` says which (see :data:`REASONS`).
        """
        t0 = time.perf_counter()
        if isinstance(request, InferPayload):
            if request.request_id is None:  # servers built from kserve's examples echo it, and fail without one
                request = dataclasses.replace(request, request_id=secrets.token_hex(8))
            enc = request.encode(self.speaks_binary)
        else:
            enc = Encoded(json.dumps(request, separators=(",", ":")).encode(), {"Content-Type": "application/json"})
        reply, attempts, sent = self._call("POST", self.infer_url, enc.body, dict(enc.headers), deadline,
                                           parse=lambda r: _parse_infer(r, n, num_classes))
        probs, labels = reply.parsed
        return CloudResult(probs, labels, sent, attempts, (time.perf_counter() - t0) * 1000)

    @property
    def speaks_binary(self) -> bool:
        """Whether requests go as binary tensor data now: fixed by ``wire=``, else what ``GET /v2`` said.

        Never waits. Until the server has answered, False (JSON), and a question is started if none is
        running. A server without ``GET /v2`` (404, 405, 501) or not listing the extension gets JSON from
        then on; one that could not answer (down, slow, 5xx, 401, 429) is asked again after ``PROBE_RETRY_S``.
        """
        known = self._speaks_binary
        if known is None:
            self._start_probe()
        return bool(known)

    def negotiate(self, timeout: float = PROBE_S) -> bool:
        """Wait up to ``timeout`` s for the server's answer to ``GET /v2``; then :attr:`speaks_binary`.

        Args:
            timeout: the most to wait, in seconds.

        Returns:
            Whether requests go as binary tensor data now.
        """
        probe = self._start_probe(now=True) if self._speaks_binary is None else None
        if probe is not None:
            with contextlib.suppress(FutureTimeout):
                probe.result(timeout)
        return self.speaks_binary

    def _start_probe(self, now: bool = False) -> Future[None] | None:
        with self._probe_lock:
            if self._probe is not None and not self._probe.done():
                return self._probe
            if not now and time.monotonic() < self._next_probe:
                return None
            try:
                self._probe = self._pool.submit(self._ask_server)
            except RuntimeError:  # closed
                return None
            return self._probe

    def _ask_server(self) -> None:
        """Runs on the pool: ``GET /v2``, and remember what it says (or when to ask again)."""
        answer: bool | None = None
        try:
            # a one-off: its connection closes after it, rather than idling in the pool beside the calls' own
            headers = {"Accept": "application/json", "Connection": "close"}
            answer = _lists_binary(self._send("GET", f"{self.base_url}/v2", None, headers, PROBE_S))
        except CloudError as e:
            log.debug("GET %s/v2 failed (%s); JSON until it answers", self.base_url, e)
        if answer is None:
            self._next_probe = time.monotonic() + PROBE_RETRY_S
        else:
            self._speaks_binary = answer
            log.debug("%s %s binary tensor data", self.base_url, "speaks" if answer else "does not speak")

    # --- over-the-air update ---------------------------------------------------

    def get(self, path: str, deadline: float, headers: Mapping[str, str] | None = None,
            sink: Sink | None = None) -> _Reply:
        """A GET through the same retries, breaker and deadline; any status is returned, errors raise.

        Args:
            path: the path on the server, e.g. ``/v2/models/x/edge``.
            deadline: absolute, on the ``time.monotonic`` clock.
            headers: extra request headers.
            sink: where a 200 body is streamed (reset before each attempt) instead of kept in memory.

        Returns:
            The reply: status, headers and content (empty when streamed into ``sink``).

        Raises:
            CloudError: no answer, or a status the breaker counts (5xx, 401, 403, 404, 429).
        """
        reply, _, _ = self._call("GET", f"{self.base_url}{path}", None, dict(headers or {}), deadline, sink)
        return reply

    # --- transport -------------------------------------------------------------

    def _call(self, method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: float,
              sink: Sink | None = None,
              parse: Callable[[_Reply], Any] | None = None) -> tuple[_Reply, int, int]:
        """Breaker, retries and deadline around one logical request; returns (reply, attempts, bytes sent).

        ``parse`` (its result lands in ``reply.parsed``) runs before the breaker hears of a success,
        so a server that answers 200 with garbage counts as failing, not as healthy.
        """
        if not self.breaker.allow():
            raise CloudError("circuit breaker is open: the cloud failed repeatedly; waiting for the cool-down",
                             "circuit_open")
        try:
            reply, attempts, sent = self._with_retries(method, url, body, headers, deadline, sink)
            if reply.status >= 500 or reply.status in (401, 403, 404, 429):
                raise _status_error(reply)
            if parse is not None:
                reply.parsed = parse(reply)
        except CloudError as e:
            if counts_against_breaker(e.reason):
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        self.breaker.record_success()
        return reply, attempts, sent

    def _with_retries(self, method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: float,
                      sink: Sink | None = None) -> tuple[_Reply, int, int]:
        attempts = sent = 0
        last: CloudError | None = None  # why the previous attempt failed
        while True:
            attempts += 1
            left = deadline - time.monotonic()
            if left <= 0:
                # a retry that found no time left: the real cause is the last failure, not the clock
                raise last or CloudError("the call's deadline ran out before the request could be sent", "deadline")
            sent += len(body or b"")
            self._count(len(body or b""))
            try:
                reply = self._attempt(method, url, body, headers, left, sink)
            except CloudError as e:
                if e.reason != "connection" or not self._wait_for_retry(attempts, None, deadline):
                    raise
                last = e
                continue
            if reply.status == 503:
                if self._wait_for_retry(attempts, reply.headers.get("Retry-After"), deadline):
                    last = _status_error(reply)
                    continue
                raise _status_error(reply)
            return reply, attempts, sent

    def _wait_for_retry(self, attempts: int, retry_after: str | None, deadline: float) -> bool:
        """Sleep before the next attempt if one is allowed and fits in the deadline."""
        if attempts > self.max_retries:
            return False
        wait = _parse_retry_after(retry_after)
        if wait is None:
            wait = self.backoff_s * (2 ** (attempts - 1)) * (0.5 + random.random())
        if time.monotonic() + wait >= deadline - 0.005:
            return False
        self._sleep(wait)
        return True

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str], left: float,
                 sink: Sink | None = None) -> _Reply:
        by_deadline = left <= self.max_attempt_s
        limit = min(left, self.max_attempt_s)
        started: list[requests.Response] = []  # _send's response, so that giving up can interrupt its read
        fut = self._pool.submit(self._send, method, url, body, headers, limit, sink, started)
        try:
            return fut.result(timeout=limit)
        except FutureTimeout:
            fut.cancel()
            _interrupt(started)
            raise _timeout_error(by_deadline, limit) from None

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str], limit: float,
              sink: Sink | None = None, started: list[requests.Response] | None = None) -> _Reply:
        """Runs on the pool: one HTTP exchange, body read with a size cap (or streamed into ``sink``)."""
        by_deadline = limit < self.max_attempt_s
        try:
            with self.session.request(method, url, data=body, headers=headers, timeout=(limit, limit), stream=True,
                                      verify=self.verify) as r:
                if started is not None:
                    started.append(r)
                chunks: list[bytes] = []
                size = 0
                into = sink if sink is not None and r.status_code == 200 else None  # stream only a 200
                cap = into.max_bytes if into is not None else self.max_response_bytes
                if into is not None:
                    into.reset()
                for chunk in r.iter_content(65536):
                    size += len(chunk)
                    if size > cap:
                        raise CloudError(f"response is over {cap} bytes", "bad_response", r.status_code)
                    if into is not None:
                        into.write(chunk)
                    else:
                        chunks.append(chunk)
                return _Reply(r.status_code, r.headers, b"".join(chunks))
        except requests.exceptions.SSLError as e:
            raise CloudError(f"TLS error talking to {self.base_url}: {_short(e)}", "tls") from None
        except (requests.exceptions.Timeout, TimeoutError):
            raise _timeout_error(by_deadline, limit) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, OSError) as e:
            raise CloudError(f"cannot reach {self.base_url}: {_short(e)}", "connection") from None
        except requests.exceptions.RequestException as e:
            raise CloudError(f"request to {self.base_url} failed: {_short(e)}", "connection") from None

    def _count(self, n: int) -> None:
        with self._bytes_lock:
            self.bytes_sent += n


def _interrupt(started: list[requests.Response]) -> None:
    """Stop a worker still reading an answer nobody waits for. A body that trickles in a byte at a
    time never trips the per-read timeout, so without this the worker and its socket stay busy."""
    for r in started:
        # urllib3 >= 2.3; the reader then fails and its connection is discarded. An error means it had
        # already finished (or an older urllib3: the per-read timeout ends it).
        with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError, ValueError, OSError):
            r.raw.shutdown()


def _parse_infer(reply: _Reply, n: int, num_classes: int) -> tuple[np.ndarray, list[str] | None]:
    if reply.status != 200:
        raise _status_error(reply)
    try:
        body, data = read_response(reply.content, reply.headers.get(binary.HEADER_LENGTH))
        return parse_outputs(body, n, num_classes, data)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, ProtocolError, pydantic's ValidationError
        raise CloudError(f"malformed infer response: {_short(e)}", "bad_response", reply.status) from None


def _lists_binary(reply: _Reply) -> bool | None:
    """Whether a ``GET /v2`` answer lists the binary extension; None when it cannot tell (ask again later).

    A 4xx that is about the route (404, 405, 400, ...) means a server without server metadata: JSON it is.
    Auth, rate limits, timeouts and 5xx (but 501, "no such method") say nothing yet.
    """
    if reply.status == 501 or (400 <= reply.status < 500 and reply.status not in (401, 403, 408, 429)):
        return False
    if reply.status != 200:
        return None
    try:
        meta = json.loads(reply.content)
    except (ValueError, UnicodeDecodeError):
        return False
    extensions = meta.get("extensions") if isinstance(meta, dict) else None
    return isinstance(extensions, list) and binary.EXTENSION in extensions


def _timeout_error(by_deadline: bool, limit: float) -> CloudError:
    if by_deadline:
        return CloudError(f"no answer within the call's deadline ({limit * 1000:.0f} ms left)", "deadline")
    return CloudError(f"no answer within {limit:.1f} s", "timeout")


def _status_error(reply: _Reply) -> CloudError:
    s = reply.status
    reason = {503: "overloaded", 429: "rate_limited"}.get(s, f"http_{s}")
    detail = ""
    try:
        err = json.loads(reply.content)
        if isinstance(err, dict) and isinstance(err.get("error"), str):
            detail = f": {err['error'][:200]}"
    except (ValueError, UnicodeDecodeError):
        pass
    return CloudError(f"server answered {s}{detail}", reason, s)


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(e: BaseException, n: int = 300) -> str:
    s = str(e) or type(e).__name__
    return s if len(s) <= n else s[:n] + "…"
