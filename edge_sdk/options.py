"""Options as frozen, typed dataclasses, split by concern (as LitServe splits model and server options).

* :class:`RoutingOptions`: when to ask the cloud and how long to wait (mode,
  deadline, capacity probes): the same for every hybrid task.
* :class:`CloudOptions`: how to reach the cloud (URL, key, TLS, retries,
  breaker) and what to upload.
* :class:`EdgeOptions`: how to run the edge model here (interpreter threads,
  backend) and which inputs to refuse.
* :class:`CollectOptions`: what the device keeps for ``hybrid-vision distill``
  (opt-in collection, the offline queue); nothing is written unless set.
* :class:`HybridOptions`: all four, plus the classifier's own (threshold,
  metric, top_k).
* :class:`DetectorOptions`: routing, cloud and edge options, plus the
  detector's own (threshold, metric, min_score).

Every field is keyword-only and checked when the options are made, so a typo
fails at construction, not on the thousandth call. :class:`HybridOverrides`
and :class:`DetectorOverrides` name the same fields for
``HybridClassifier.from_bundle(path, **overrides)`` and
``HybridDetector.from_bundle(path, **overrides)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from os import PathLike
from typing import Any, TypedDict, TypeVar

from .breaker import CircuitBreaker
from .capacity import Probe
from .client import CloudClient
from .detection import DETECT_METRICS, DetectMetric
from .policy import Mode, check_mode
from .preprocess import DEFAULT_LIMITS, ImageLimits
from .samples import LateAnswer
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
class CollectConfig(_Options):
    """Collect the hard images (and an audit share of the easy ones) for ``hybrid-vision distill``.

    Attributes:
        dir: the folder to store samples in (made if missing; one folder per model's labels).
        max_mb: the folder's size bound; past it the oldest samples are deleted.
        audit_rate: the share of confident edge answers also sent to the cloud, off the hot path (0: none).
        queue_size: samples waiting for the background worker; past it new ones are dropped (and counted).
        audit_deadline_ms: the time limit of one audit's cloud call.
        fsync: make each sample durable before it counts as stored (leave it on).
        seed: seeds the audit draw (None: random).
    """

    dir: str | PathLike[str]
    max_mb: float = 200.0
    audit_rate: float = 0.02
    queue_size: int = 256
    audit_deadline_ms: float = 10_000.0
    fsync: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.max_mb > 0:
            raise ValueError(f"max_mb must be > 0, not {self.max_mb}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(f"audit_rate must be within [0, 1], not {self.audit_rate}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {self.queue_size}")
        if not self.audit_deadline_ms > 0:
            raise ValueError(f"audit_deadline_ms must be > 0, not {self.audit_deadline_ms}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class OfflineQueueConfig(_Options):
    """Keep the hard images the cloud could not be reached for, and send them when it returns.

    Attributes:
        dir: the folder to queue in (made if missing).
        max_items: the most images queued; past it the oldest is dropped.
        max_mb: the queue's size bound on disk; past it the oldest is dropped.
        retry_s: how often to try the cloud while images wait.
        batch: images per request when the queue is sent.
        deadline_ms: the time limit of one such request.
        on_answer: called with each :class:`LateAnswer`, in order, in the queue's thread (its errors are logged).
        fsync: make each queued image durable before it counts as queued (leave it on).
    """

    dir: str | PathLike[str]
    max_items: int = 1000
    max_mb: float = 50.0
    retry_s: float = 5.0
    batch: int = 8
    deadline_ms: float = 10_000.0
    on_answer: Callable[[LateAnswer], None] | None = None
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.max_items < 1 or not self.max_mb > 0:
            raise ValueError(f"max_items must be >= 1 and max_mb > 0, not {self.max_items} and {self.max_mb}")
        if not self.retry_s > 0 or self.batch < 1 or not self.deadline_ms > 0:
            raise ValueError("retry_s and deadline_ms must be > 0, batch >= 1")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class CollectOptions(_Options):
    """What the device keeps to learn from (edge_sdk.collect, edge_sdk.offline_queue); nothing unless set.

    Attributes:
        collect: keep the offloaded images with the cloud's answers, and an audit share of confident ones.
        offline_queue: queue the hard images on disk while the cloud is unreachable; send them when it returns.
    """

    collect: CollectConfig | None = None
    offline_queue: OfflineQueueConfig | None = None

    def __post_init__(self) -> None:
        for name, want in (("collect", CollectConfig), ("offline_queue", OfflineQueueConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, want):
                raise TypeError(f"{name} must be a {want.__name__}, not {type(value).__name__}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class HybridOptions(RoutingOptions, CloudOptions, EdgeOptions, CollectOptions):
    """Everything :class:`~edge_sdk.hybrid.HybridClassifier` takes: routing, cloud, edge and collection options,
    plus:

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
        if self.offline_queue is not None and not self.cloud_url:
            raise ValueError("offline_queue needs a cloud_url: there is nowhere to send the queue")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class DetectorOptions(RoutingOptions, CloudOptions, EdgeOptions):
    """Everything :class:`~edge_sdk.hybrid_detector.HybridDetector` takes: routing, cloud and edge options, plus:

    Attributes:
        threshold: offload a frame whose uncertainty is above this (None: the bundle's calibrated one).
        metric: the frame's routing score (None: the bundle's); another than the bundle's needs a threshold.
        min_score: detections scoring below this are left out of answers (None: the bundle's report_score).
    """

    threshold: float | None = None
    metric: DetectMetric | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in DETECT_METRICS:
            raise ValueError(f"unknown detection routing metric {self.metric!r}; "
                             f"choose from {', '.join(DETECT_METRICS)}")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be within [0, 1], not {self.min_score}")
        super().__post_init__()


class _SharedOverrides(TypedDict, total=False):
    """The routing, cloud and edge fields every task's options have, as keyword arguments."""

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


class HybridOverrides(_SharedOverrides, total=False):
    """The fields of :class:`HybridOptions`, as keyword arguments (``from_bundle(path, **overrides)``)."""

    threshold: float | None
    metric: RoutingMetric | None
    out_of_distribution: OODAction
    top_k: int
    collect: CollectConfig | None
    offline_queue: OfflineQueueConfig | None


class DetectorOverrides(_SharedOverrides, total=False):
    """The fields of :class:`DetectorOptions`, as keyword arguments (``from_bundle(path, **overrides)``)."""

    threshold: float | None
    metric: DetectMetric | None
    min_score: float | None


def option_names(options: type[_Options]) -> frozenset[str]:
    """The field names of an options class.

    Args:
        options: an options class (HybridOptions, RoutingOptions, ...).

    Returns:
        What ``**overrides`` may name.
    """
    return frozenset(f.name for f in fields(options))


OptionsT = TypeVar("OptionsT", bound=_Options)


def with_overrides(kind: type[OptionsT], options: OptionsT | None, overrides: Mapping[str, Any]) -> OptionsT:
    """Options with some fields replaced (``from_bundle(path, options, **overrides)``).

    Args:
        kind: the options class (HybridOptions, DetectorOptions).
        options: the base options (None: ``kind``'s defaults).
        overrides: field name -> value.

    Returns:
        New options (checked again), or ``options`` itself when there is nothing to replace.

    Raises:
        TypeError: an override that is not a field of ``kind``.
        ValueError: a value out of range.
    """
    base = options or kind()
    unknown = set(overrides) - option_names(kind)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; "
                        f"{kind.__name__} has {', '.join(sorted(option_names(kind)))}")
    return dataclasses.replace(base, **overrides) if overrides else base
