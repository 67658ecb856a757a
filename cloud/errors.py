"""The service's one error shape: JSON ``{"error": "..."}`` with a status code, and the typed errors behind it."""

from __future__ import annotations

import json

from starlette.responses import Response

from edge_sdk.errors import HybridVisionError, InvalidImageError

# InvalidImageError.kind -> status code
IMAGE_ERROR_STATUS = {"too_large": 413, "unsupported": 415, "invalid": 422}


class ApiError(HybridVisionError):
    """A request the service refuses; ``status`` is the HTTP code, the message goes to the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def from_image_error(e: InvalidImageError) -> ApiError:
    return ApiError(IMAGE_ERROR_STATUS.get(e.kind, 422), str(e))


def describe(exc: BaseException) -> tuple[int, str, dict[str, str]] | None:
    """(status, message, headers) for an error a client caused or can retry; None for a bug (a 500)."""
    from .batching import BatcherClosedError, QueueFullError

    if isinstance(exc, ApiError):
        return exc.status, exc.message, exc.headers
    if isinstance(exc, InvalidImageError):
        e = from_image_error(exc)
        return e.status, e.message, {}
    if isinstance(exc, QueueFullError):
        return 503, str(exc), {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, BatcherClosedError):
        return 503, str(exc), {"Retry-After": "1", "Connection": "close"}
    return None
