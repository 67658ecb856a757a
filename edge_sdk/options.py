"""Options as frozen, typed dataclasses, split by concern (as LitServe splits model and server options).

* :class:`RoutingOptions`: when to ask the cloud and how long to wait (mode,
  deadline, capacity probes): the same for every hybrid task.
* :class:`CloudOptions`: how to reach the cloud (URL, key, TLS, retries,
  breaker) and what to upload.
* :class:`EdgeOptions`: how to run the edge model here (interpreter threads,
  backend) and which inputs to refuse.
* :class:`HybridOptions`: all three, plus the classifier's own (threshold,
  metric, top_k). A detector's options would be
  ``class DetectorOptions(RoutingOptions, CloudOptions, EdgeOptions)`` plus its own.

Every field is keyword-only and checked when the options are made, so a typo
fails at construction, not on the thousandth call. :class:`HybridOverrides`
names the same fields for ``HybridClassifier.from_bundle(path, **overrides)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TypedDict

from .breaker import CircuitBreaker
from .capacity import Probe
from .client import CloudClient
from .policy import Mode, check_mode
from .preprocess import DEFAULT_LIMITS, ImageLimits
from .scores import OODAction, RoutingMetric, check_ood_action, check_routing_metric
from .upload import Upload, check_upload


@dataclass(frozen=True, kw_only=True)
class _Options:
    """The root of the option groups: each group checks its fields, then hands on along the MRO."""

    def __post_init__(self) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class RoutingOptions(_Options):
    """When to ask the cloud, and how long a call may take.

    Attributes:
        mode: ``auto`` (edge first, cloud for the unsure), ``edge_only`` (offline) or ``cloud_only``.
        deadline_ms: the whole call's time limit; a cloud call never outlives it.
        min_time_for_cloud_ms: a cloud call is not started with less than this left of the deadline.
        probes: capacity probes asked before each edge inference in auto mode (None: memory, CPU load and
            in-flight; ``()``: none).
    """

    mode: Mode = "auto"
    deadline_ms: float = 2000.0
    min_time_for_cloud_ms: float = 5.0
    probes: Sequence[Probe] | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not self.deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0, not {self.deadline_ms}")
        if self.min_time_for_cloud_ms < 0:
            raise ValueError(f"min_time_for_cloud_ms must be >= 0, not {self.min_time_for_cloud_ms}")
        if self.probes is not None:
            object.__setattr__(self, "probes", tuple(self.probes))
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class CloudOptions(_Options):
    """How to reach the cloud, and what to send it.

    Attributes:
        cloud_url: the KServe v2 server (http or https); None: no cloud.
        api_key: sent as ``Authorization: Bearer``; never shown in a repr.
        cloud_model: the served model's name (default: the bundle's name).
        verify: verify the server's TLS certificate (leave it on).
        ca_bundle: a CA file to verify it with (a private CA).
        max_retries: retries of connection errors and 503s, within the deadline.
        breaker: the circuit breaker (default: opens after 5 failures for 10 s); share one to share its state.
        upload: what is sent for an image (edge_sdk.upload): ``auto`` (the caller's file when it is small for
            the model's input, else the resized pixels, losslessly for small inputs), ``lossless``, ``jpeg``
            (resized, quality 90: costs accuracy on photos that already were JPEGs), ``original`` or ``tensor``.
    """

    cloud_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    cloud_model: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    max_retries: int = 2
    breaker: CircuitBreaker | None = None
    upload: Upload = "auto"

    def __post_init__(self) -> None:
        check_upload(self.upload)
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")
        super().__post_init__()

    def make_client(self, default_model: str) -> CloudClient | None:
        """The cloud client these options describe, or None without a cloud_url.

        Args:
            default_model: the served model's name when ``cloud_model`` is not set (the bundle's name).

        Returns:
            A client (close it when done), or None.

        Raises:
            ValueError: a cloud_url that is not http(s).
        """
        if not self.cloud_url:
            return None
        return CloudClient(
            self.cloud_url, self.cloud_model or default_model, api_key=self.api_key, verify=self.verify,
            ca_bundle=self.ca_bundle, max_retries=self.max_retries, breaker=self.breaker,
        )


@dataclass(frozen=True, kw_only=True)
class EdgeOptions(_Options):
    """How the edge model runs on this device, and which inputs it refuses.

    Attributes:
        num_threads: interpreter threads (None: the runtime's default).
        backend: interpreter backend(s) to try, in order (default: ai_edge_litert, tflite_runtime, tensorflow).
        limits: inputs over these sizes are refused before they are decoded.
    """

    num_threads: int | None = None
    backend: str | Sequence[str] | None = None
    limits: ImageLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, not {self.num_threads}")
        if self.backend is not None and not isinstance(self.backend, str):
            object.__setattr__(self, "backend", tuple(self.backend))
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class HybridOptions(RoutingOptions, CloudOptions, EdgeOptions):
    """Everything :class:`~edge_sdk.hybrid.HybridClassifier` takes: routing, cloud and edge options, plus:

    Attributes:
        threshold: the routing threshold (None: the bundle's calibrated one, which an update may replace;
            a threshold given here always wins).
        metric: the routing metric (None: the bundle's): max_prob, margin, entropy, or ``deferral`` (the bundle's
            learned "the cloud would fix this" score); another metric than the bundle's needs a threshold.
        out_of_distribution: what a frame the bundle's out-of-distribution score flags gets: ``cloud`` (ask
            the cloud, reason ``out_of_distribution``), ``unknown`` (answer "unknown" on the device), or
            ``ignore`` (route it like any other frame).
        top_k: how many labels each answer lists.
    """

    threshold: float | None = None
    metric: RoutingMetric | None = None
    out_of_distribution: OODAction = "cloud"
    top_k: int = 3

    def __post_init__(self) -> None:
        if self.metric is not None:
            check_routing_metric(self.metric)
        check_ood_action(self.out_of_distribution)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {self.top_k}")
        super().__post_init__()


class HybridOverrides(TypedDict, total=False):
    """The fields of :class:`HybridOptions`, as keyword arguments (``from_bundle(path, **overrides)``)."""

    mode: Mode
    deadline_ms: float
    min_time_for_cloud_ms: float
    probes: Sequence[Probe] | None
    cloud_url: str | None
    api_key: str | None
    cloud_model: str | None
    verify: bool
    ca_bundle: str | None
    max_retries: int
    breaker: CircuitBreaker | None
    upload: Upload
    num_threads: int | None
    backend: str | Sequence[str] | None
    limits: ImageLimits
    threshold: float | None
    metric: RoutingMetric | None
    out_of_distribution: OODAction
    top_k: int


def option_names(options: type[_Options]) -> frozenset[str]:
    """The field names of an options class.

    Args:
        options: an options class (HybridOptions, RoutingOptions, ...).

    Returns:
        What ``**overrides`` may name.
    """
    return frozenset(f.name for f in fields(options))
