"""Typed errors: every failure a user can cause or meet has its own class."""


class HybridVisionError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidImageError(HybridVisionError, ValueError):
    """The input is not an image we accept; the message says what was wrong.

    ``kind`` lets a server map the failure to a status code without parsing text:
    "too_large" (bytes or pixels over a limit), "unsupported" (a format we do not
    decode), or "invalid" (undecodable, wrong type or shape).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        """Args:
        message: what was wrong, for people.
        kind: too_large, unsupported or invalid, for programs.
        """
        super().__init__(message)
        self.kind = kind


class BundleError(HybridVisionError):
    """A model bundle is missing a file, fails its checksum, or has a bad manifest."""


class ModelLoadError(HybridVisionError):
    """No interpreter could load the edge model."""


class CloudError(HybridVisionError):
    """One cloud call failed; ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, reason: str = "cloud_error", status: int | None = None) -> None:
        """Args:
        message: what happened, for people.
        reason: one short word for programs (connection, timeout, http_500, ...).
        status: the HTTP status, when there was one.
        """
        super().__init__(message)
        self.reason = reason
        self.status = status


class CloudUnavailableError(CloudError):
    """Neither side could answer: the cloud failed and there was no edge result."""


class UpdateError(HybridVisionError):
    """An over-the-air model update was refused (bad checksum, unloadable model, server error); the old model stays."""


class ProtocolError(HybridVisionError, ValueError):
    """A KServe v2 message that does not frame: a bad ``Inference-Header-Content-Length``, a binary size past
    the end of the body, a cut BYTES element. A server answers it with 400; the SDK treats it as a bad answer."""
