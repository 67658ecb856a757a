"""Service settings: environment variables (prefix ``HV_``), then command-line overrides.

API keys are ``SecretStr`` so they never appear in a repr, a log line or an
error message; only their count is ever shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edge_sdk.errors import HybridVisionError
from edge_sdk.preprocess import ImageLimits

Backend = Literal["tensorflow", "jax", "torch"]


class SettingsError(HybridVisionError):
    """A setting is invalid or a file it names cannot be read."""


def _default_decode_threads() -> int:
    return max(2, min(8, os.cpu_count() or 2))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HV_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: Backend | None = None  # None: KERAS_BACKEND, else tensorflow
    # batching
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(5.0, ge=0, le=10_000)
    queue_size: int = Field(256, ge=1, le=1_000_000)  # requests waiting for the model, per model
    # model worker threads per model; 0 = auto (cloud.model.plan_instances)
    model_instances: int = Field(0, ge=0, le=64)
    model_threads: int = Field(0, ge=0, le=1024)  # the backend's threads within one op; 0 = auto (CPUs / instances)
    decode_threads: int = Field(default_factory=_default_decode_threads, ge=1, le=256)
    inline_decode_max_pixels: int = Field(4096, ge=0)  # tinier images decode on the event loop (cheaper than a hop)
    # limits
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=64)
    max_pixels: int = Field(40_000_000, ge=1)
    max_request_images: int = Field(256, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers; more gets a 431
    header_timeout_s: float = Field(10.0, gt=0)  # to receive a request's headers; slower gets a 408 and a close
    # security
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    rate_limit_rps: float = Field(0.0, ge=0)  # per key (or per client address without keys); 0 = off
    rate_limit_burst: int = Field(0, ge=0)  # 0 = max(1, 2 x rps)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # proxies whose X-Forwarded-For/-Proto are believed (uvicorn's list: "10.0.0.1,10.0.0.2" or "*");
    # None: such headers are ignored and the client is the TCP peer
    forwarded_allow_ips: str | None = None
    # operations
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False
    drain_timeout_s: float = Field(30.0, gt=0)
    opentelemetry: bool = False  # FastAPI's native OpenTelemetry spans/metrics (needs a configured provider)
    bench_endpoints: bool = False  # adds POST /v1/noop: same HTTP path, no decode or model work

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if v is None:
            return ()
        if isinstance(v, str):
            v = v.split(",")
        keys = tuple(k.get_secret_value() if isinstance(k, SecretStr) else str(k) for k in v)
        keys = tuple(k.strip() for k in keys if k.strip())
        if any(len(k) < 8 or any(c.isspace() for c in k) for k in keys):
            raise ValueError("each API key must be at least 8 characters with no spaces")
        return keys

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        return self

    @property
    def burst(self) -> int:
        return self.rate_limit_burst or max(1, int(round(2 * self.rate_limit_rps)))

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=min(self.max_image_bytes, self.max_body_bytes), max_pixels=self.max_pixels)

    def key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys]

    def __repr_args__(self):  # keep keys out of any repr, even masked
        for name, value in super().__repr_args__():
            yield (name, f"<{len(value)} key(s)>") if name == "api_keys" else (name, value)


def read_api_key_file(path: str | os.PathLike) -> list[str]:
    """One key a line; blank lines and lines starting with # are ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{p}: cannot read the API key file ({e.strerror or e})") from None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise SettingsError(f"{p}: the API key file holds no keys")
    return keys


def load_settings(**overrides) -> Settings:
    """Environment first, then ``overrides`` (None values are ignored); errors are SettingsError."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"invalid setting '{where}': {first['msg']}") from None
