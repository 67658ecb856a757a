"""API keys, per-key rate limits and body-size limits, checked before any routing or parsing.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs a task
per request): a refused request never reaches a handler, a JSON parser or the
model. Keys are compared with ``hmac.compare_digest`` against every configured
key, so timing reveals neither which key nor how much of one matched. Keys are
never logged; a client is named by the key's index ("key0") in logs and limits.
A declared Content-Length over the limit is refused here; a body without one
is cut off while it is read (``cloud.image_endpoints.read_body``).
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class KeyChecker:
    """Which configured key (if any) a request carries: ``Authorization: Bearer K`` or ``X-API-Key: K``."""

    def __init__(self, keys: Iterable[str]):
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: bytes | None) -> str | None:
        """The matching key's id ("key0", ...), or None. Every key is compared, in constant time each."""
        if not presented:
            return None
        found = None
        for i, k in enumerate(self._keys):
            if hmac.compare_digest(presented, k) and found is None:
                found = f"key{i}"
        return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request presents, from either header; None when it carries none."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


@dataclass
class _Bucket:
    tokens: float
    last: float


class RateLimiter:
    """A token bucket per client: ``rate`` requests a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000, clock=time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, client: str) -> float:
        """0.0 when the request may go ahead (a token is spent), else seconds until one is free."""
        now = self.clock()
        b = self._buckets.get(client)
        if b is None:
            b = self._buckets[client] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_clients:  # forget the least recently seen client
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            b.tokens = min(float(self.burst), b.tokens + (now - b.last) * self.rate)
            b.last = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate


class SecurityMiddleware:
    """401 without a valid key, 429 over the rate limit, 413 when Content-Length is over the limit."""

    def __init__(self, app: ASGIApp, keys: KeyChecker, limiter: RateLimiter | None, max_body_bytes: int):
        self.app, self.keys, self.limiter, self.max_body_bytes = app, keys, limiter, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        client = None
        if self.keys.enabled:
            client = self.keys.identify(presented_key(headers))
            if client is None:
                await error_response(
                    401, "missing or invalid API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    {"WWW-Authenticate": 'Bearer realm="hybrid-vision"'})(scope, receive, send)
                return
            scope.setdefault("state", {})["client"] = client
        if self.limiter is not None:
            who = client or "addr:" + (scope.get("client") or ("?", 0))[0]
            wait = self.limiter.acquire(who)
            if wait > 0:
                await error_response(429, f"rate limit exceeded ({self.limiter.rate:g} requests/s); retry later",
                                     {"Retry-After": str(max(1, math.ceil(wait)))})(scope, receive, send)
                return
        for name, value in headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0:
                    await error_response(400, "Content-Length is not a non-negative integer")(scope, receive, send)
                    return
                if length > self.max_body_bytes:
                    why = f"request body is {length} bytes, over the limit of {self.max_body_bytes}"
                    await error_response(413, why)(scope, receive, send)
                    return
                break
        await self.app(scope, receive, send)
