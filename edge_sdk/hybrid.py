"""HybridClassifier: the int8 model on the device first, the cloud for the hard images.

One call: decode and resize (edge_sdk.preprocess) -> capacity probes -> the
edge model -> :func:`edge_sdk.policy.route` -> maybe the cloud, within what is
left of the call's deadline. A cloud failure never loses the edge answer; only
when neither side can answer does ``predict`` raise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .breaker import CircuitBreaker
from .bundle import Bundle, load_bundle
from .capacity import InflightProbe, ModelLoadProbe, Probe, default_probes, first_failure
from .client import CloudClient
from .errors import CloudError, CloudUnavailableError, InvalidImageError, ModelLoadError
from .policy import METRICS, MODES, after_cloud_failure, confidence, edge_skip_reason, route
from .preprocess import DEFAULT_LIMITS, ImageInput, ImageLimits, load_image, resize
from .runtime import LocalModel, PixelQuantizer
from .upload import Staged, build_request, check_upload

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One answer. ``confidence`` and ``*_confidence`` are top-1 probabilities; ``edge_score`` is the
    routing metric's value on the edge output (what was compared with the threshold)."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: str  # "edge" or "cloud"
    reason: str  # see edge_sdk.policy
    edge_confidence: float | None = None
    cloud_confidence: float | None = None
    edge_score: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # preprocess, edge, cloud, total
    bytes_sent: int = 0
    cloud_error: str | None = None
    probabilities: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("probabilities")
        d["top_k"] = [{"label": lb, "score": s} for lb, s in self.top_k]
        return d


class _Stats:
    """Counts and a window of recent latencies; one lock, a few operations per call."""

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.by_source: Counter = Counter()
        self.by_reason: Counter = Counter()
        self.bytes_sent = 0
        self.calls = 0
        self.errors: Counter = Counter()
        self._lat = {k: deque(maxlen=window) for k in ("total", "edge", "cloud")}

    def record(self, p: Prediction) -> None:
        lat = p.latency_ms
        with self._lock:
            self.calls += 1
            self.by_source[p.source] += 1
            self.by_reason[p.reason] += 1
            self.bytes_sent += p.bytes_sent
            for k, q in self._lat.items():
                v = lat.get(k)
                if v is not None:
                    q.append(v)

    def record_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lats = {k: np.fromiter(q, float, len(q)) for k, q in self._lat.items()}
            out = {
                "calls": self.calls, "by_source": dict(self.by_source), "by_reason": dict(self.by_reason),
                "bytes_sent": self.bytes_sent, "errors": dict(self.errors),
            }
        out["latency_ms"] = {
            k: ({"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                 "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99))} if a.size else {"n": 0})
            for k, a in lats.items()
        }
        out["offload_fraction"] = out["by_source"].get("cloud", 0) / self.calls if self.calls else 0.0
        return out


class HybridClassifier:
    """Classify images on the device, asking the cloud only when the edge is unsure or cannot run."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        model: LocalModel | None,
        model_error: str | None = None,
        cloud: CloudClient | None = None,
        mode: str = "auto",
        deadline_ms: float = 2000.0,
        threshold: float | None = None,
        metric: str | None = None,
        upload: str = "jpeg",
        probes: Sequence[Probe] | None = None,
        top_k: int = 3,
        min_cloud_ms: float = 5.0,
        limits: ImageLimits = DEFAULT_LIMITS,
        num_threads: int | None = None,
        backend: str | Sequence[str] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        routing = bundle.manifest.routing
        if metric is not None and metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if metric is not None and metric != routing.metric and threshold is None:
            raise ValueError(f"the bundle's threshold is for {routing.metric}; give a threshold for metric {metric!r}")
        if deadline_ms <= 0:
            raise ValueError("deadline_ms must be > 0")
        self.bundle = bundle
        self.labels = list(bundle.labels)
        self.input = bundle.manifest.input
        self.pp = bundle.manifest.preprocess
        self.mode = mode
        # (metric, threshold) in one attribute, so an update swaps both at once for readers in other threads
        self._routing = (metric or routing.metric, float(threshold if threshold is not None else routing.threshold))
        self._threshold_from_bundle = threshold is None and metric in (None, routing.metric)
        self.deadline_ms = float(deadline_ms)
        self.upload = check_upload(upload)
        self.top_k = max(1, int(top_k))
        self.min_cloud_s = min_cloud_ms / 1000.0
        self.limits = limits
        self.cloud = cloud
        self.num_threads, self.backend = num_threads, backend
        # (model, its pixel quantizer) in one attribute: an update swaps both at once
        self._edge: tuple[LocalModel, PixelQuantizer] | None = self._prepare(model) if model is not None else None
        self.model_error = model_error
        self._swap_lock = threading.Lock()
        user = list(default_probes() if probes is None else probes)
        self.probes: list[Probe] = [ModelLoadProbe(lambda: self._edge is not None, lambda: self.model_error), *user]
        self._inflight = next((p for p in user if isinstance(p, InflightProbe)), None)
        self._stats = _Stats()

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | Bundle,
        cloud_url: str | None = None,
        api_key: str | None = None,
        mode: str = "auto",
        deadline_ms: float = 2000.0,
        threshold: float | None = None,
        metric: str | None = None,
        num_threads: int | None = None,
        upload: str = "jpeg",
        ca_bundle: str | None = None,
        probes: Sequence[Probe] | None = None,
        *,
        verify: bool = True,
        backend: str | Sequence[str] | None = None,
        cloud_model: str | None = None,
        max_retries: int = 2,
        breaker: CircuitBreaker | None = None,
        **kw: Any,
    ) -> HybridClassifier:
        """Load a bundle (checksums verified) and its int8 model; a model that fails to load is not fatal
        while a cloud can answer: predictions then go to the cloud with reason ``model_unavailable``."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        model, err = None, None
        if mode != "cloud_only":
            try:
                model = LocalModel.from_bundle(bundle, num_threads=num_threads, backend=backend)
            except ModelLoadError as e:
                err = str(e)
                log.warning("edge model unavailable: %s", e)
                if mode == "edge_only" or not cloud_url:
                    raise
        cloud = None
        if cloud_url:
            cloud = CloudClient(
                cloud_url, cloud_model or bundle.manifest.name, api_key=api_key, verify=verify, ca_bundle=ca_bundle,
                max_retries=max_retries, breaker=breaker,
            )
        elif mode == "cloud_only":
            raise ValueError("mode cloud_only needs a cloud_url")
        return cls(
            bundle, model=model, model_error=err, cloud=cloud, mode=mode, deadline_ms=deadline_ms,
            threshold=threshold, metric=metric, upload=upload, probes=probes, num_threads=num_threads,
            backend=backend, **kw,
        )

    # --- public API ------------------------------------------------------------------

    @property
    def model(self) -> LocalModel | None:
        edge = self._edge
        return edge[0] if edge is not None else None

    @property
    def metric(self) -> str:
        return self._routing[0]

    @property
    def threshold(self) -> float:
        return self._routing[1]

    def predict(self, image: ImageInput, color: str = "bgr", deadline_ms: float | None = None) -> Prediction:
        """Classify one image: a path, encoded bytes, or a uint8 array (BGR unless ``color="rgb"``)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + (deadline_ms or self.deadline_ms) / 1000.0
        metric, threshold = self._routing  # one consistent pair even if an update swaps it mid-call
        try:
            staged = self._stage(image, color)
        except InvalidImageError:
            self._stats.record_error("invalid_image")
            raise
        t1 = time.perf_counter()
        model = self._edge  # one snapshot: an update mid-call does not mix models
        probs, skip = self._run_edge(model, staged.resized, self._cloud_usable())
        t2 = time.perf_counter()
        lat = {"preprocess": (t1 - t0) * 1000, "edge": (t2 - t1) * 1000}
        score = confidence(probs, metric) if probs is not None else None
        d = route(
            mode=self.mode, edge_score=score, threshold=threshold, metric=metric, edge_skip=skip,
            cloud_configured=self.cloud is not None,
            breaker_allows=self.cloud is None or self.cloud.breaker.state != "open",
            time_left_s=deadline - time.monotonic(), min_cloud_s=self.min_cloud_s,
        )
        if d.action == "edge":
            return self._done(self._answer(probs, "edge", d.reason, probs, score), lat, t0)
        if d.action == "fail" and probs is None and skip and skip.startswith("no_capacity"):
            probs, _ = self._run_edge(model, staged.resized, False)  # the cloud is out of reach after all
            if probs is not None:
                score = confidence(probs, metric)
                lat["edge"] = (time.perf_counter() - t1) * 1000
                return self._done(self._answer(probs, "edge", d.reason, probs, score), lat, t0)
        if d.action == "fail":
            raise self._unavailable(d.reason, None)
        t3 = time.perf_counter()
        try:
            req = build_request([staged], self.upload, self.input.channels)
            res = self.cloud.infer(req, 1, len(self.labels), deadline)
        except CloudError as e:
            lat["cloud"] = (time.perf_counter() - t3) * 1000
            if probs is None and skip and skip.startswith("no_capacity"):
                probs, _ = self._run_edge(model, staged.resized, False)  # short of capacity beats no answer
                score = confidence(probs, metric) if probs is not None else None
            fb = after_cloud_failure(self.mode, probs is not None, e.reason)
            if fb.action == "fail":
                raise self._unavailable(fb.reason, e) from e
            p = self._answer(probs, "edge", fb.reason, probs, score)
            p.cloud_error = str(e)
            return self._done(p, lat, t0)
        lat["cloud"] = (time.perf_counter() - t3) * 1000
        p = self._answer(res.probs[0], "cloud", d.reason, probs, score)
        p.bytes_sent = res.bytes_sent
        return self._done(p, lat, t0)

    def predict_batch(
        self, images: Sequence[ImageInput], color: str = "bgr", deadline_ms: float | None = None
    ) -> list[Prediction]:
        """Edge on every image, then the unsure ones to the cloud in ONE request. Raises InvalidImageError
        (naming the index) if any input is bad, before any inference."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + (deadline_ms or self.deadline_ms) / 1000.0
        metric, threshold = self._routing  # one consistent pair even if an update swaps it mid-call
        staged = []
        for i, im in enumerate(images):
            try:
                staged.append(self._stage(im, color))
            except InvalidImageError as e:
                self._stats.record_error("invalid_image")
                raise InvalidImageError(f"image {i}: {e}", e.kind) from e
        if not staged:
            return []
        t1 = time.perf_counter()
        model = self._edge
        usable = self._cloud_usable()
        edge = [self._run_edge(model, s.resized, usable) for s in staged]
        t2 = time.perf_counter()
        scores = [confidence(p, metric) if p is not None else None for p, _ in edge]
        allows = self.cloud is None or self.cloud.breaker.state != "open"
        left = deadline - time.monotonic()
        decisions = [
            route(mode=self.mode, edge_score=sc, threshold=threshold, metric=metric, edge_skip=skip,
                  cloud_configured=self.cloud is not None, breaker_allows=allows, time_left_s=left,
                  min_cloud_s=self.min_cloud_s)
            for (_, skip), sc in zip(edge, scores)
        ]
        lat = {"preprocess": (t1 - t0) * 1000, "edge": (t2 - t1) * 1000}
        out: list[Prediction | None] = [None] * len(staged)
        for i, d in enumerate(decisions):
            if d.action == "edge":
                out[i] = self._answer(edge[i][0], "edge", d.reason, edge[i][0], scores[i])
            elif d.action == "fail":
                raise self._unavailable(d.reason, None, index=i)
        ask = [i for i, d in enumerate(decisions) if d.action == "cloud"]
        if ask:
            t3 = time.perf_counter()
            try:
                req = build_request([staged[i] for i in ask], self.upload, self.input.channels)
                res = self.cloud.infer(req, len(ask), len(self.labels), deadline)
            except CloudError as e:
                for i in ask:
                    if edge[i][0] is None and edge[i][1] and edge[i][1].startswith("no_capacity"):
                        edge[i] = self._run_edge(model, staged[i].resized, False)
                        scores[i] = confidence(edge[i][0], metric) if edge[i][0] is not None else None
                    fb = after_cloud_failure(self.mode, edge[i][0] is not None, e.reason)
                    if fb.action == "fail":
                        raise self._unavailable(fb.reason, e, index=i) from e
                    out[i] = self._answer(edge[i][0], "edge", fb.reason, edge[i][0], scores[i])
                    out[i].cloud_error = str(e)
            else:
                share, extra = divmod(res.bytes_sent, len(ask))  # the request's bytes, split so they sum exactly
                for j, i in enumerate(ask):
                    out[i] = self._answer(res.probs[j], "cloud", decisions[i].reason, edge[i][0], scores[i])
                    out[i].bytes_sent = share + (j < extra)
            lat["cloud"] = (time.perf_counter() - t3) * 1000
        return [self._done(p, dict(lat), t0) for p in out]  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        """Counts by source and reason, latency percentiles (last 10k calls), bytes, breaker and model state."""
        s = self._stats.snapshot()
        m = self.model
        s.update(
            mode=self.mode, metric=self.metric, threshold=self.threshold, upload=self.upload,
            breaker=self.cloud.breaker.snapshot() if self.cloud else None,
            model={"loaded": m is not None, "backend": m.backend if m else None,
                   "sha256": m.sha256 if m else None, "error": self.model_error},
        )
        return s

    def check_for_update(self, deadline_ms: float = 60_000.0, **kw: Any):
        """Ask the cloud for a newer edge model; swap it in if there is one. See edge_sdk.ota."""
        from .ota import check_for_update

        return check_for_update(self, deadline_ms=deadline_ms, **kw)

    def swap_model(
        self, model: LocalModel, *, threshold: float | None = None, metric: str | None = None
    ) -> LocalModel | None:
        """Atomically replace the edge model; calls already running finish on the old one. Returns the old model."""
        edge = self._prepare(model)
        with self._swap_lock:
            old = self.model
            if threshold is not None and self._threshold_from_bundle:  # the user's override always wins
                self._routing = (metric or self.metric, float(threshold))
            self._edge = edge
            self.model_error = None
        return old

    def close(self) -> None:
        if self.cloud is not None:
            self.cloud.close()

    def __enter__(self) -> HybridClassifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _prepare(self, model: LocalModel) -> tuple[LocalModel, PixelQuantizer]:
        """Check that the model fits this bundle and build its input table, before anyone can use it."""
        self._check_model(model)
        return model, PixelQuantizer(self.input, self.pp, model.input_quant)

    def _check_model(self, model: LocalModel) -> None:
        want = (self.input.height, self.input.width, self.input.channels)
        if model.input_shape != want:
            raise ModelLoadError(f"edge model input {model.input_shape} does not match the bundle's input {want}")
        if model.num_classes != len(self.labels):
            raise ModelLoadError(f"edge model has {model.num_classes} outputs for {len(self.labels)} labels")

    def _stage(self, image: ImageInput, color: str) -> Staged:
        rgb = load_image(image, color=color, limits=self.limits)
        return Staged(image, rgb, resize(rgb, self.input.height, self.input.width, self.pp.resize))

    def _cloud_usable(self) -> bool:
        return self.mode == "auto" and self.cloud is not None and self.cloud.breaker.state != "open"

    def _run_edge(self, edge: tuple[LocalModel, PixelQuantizer] | None, resized: np.ndarray,
                  may_skip: bool) -> tuple[np.ndarray | None, str | None]:
        """Edge probabilities, or (None, why it did not run). A capacity probe's no is obeyed only when
        ``may_skip`` (the cloud could take the image): short of capacity still beats no answer."""
        if self.mode == "cloud_only":
            return None, None
        if edge is None:
            return None, "model_unavailable"
        if may_skip:
            failed = first_failure(self.probes)
            skip = edge_skip_reason(failed[0] if failed else None, True)
            if skip is not None:
                return None, skip
        try:
            model, pixels = edge
            xq = pixels(resized)
            inflight = self._inflight
            if inflight is None:
                return model.predict_quantized(xq), None
            inflight.enter()
            try:
                return model.predict_quantized(xq), None
            finally:
                inflight.exit()
        except Exception as e:  # an interpreter failing at run time: treat as no model, keep answering
            log.warning("edge inference failed: %s: %s", type(e).__name__, e)
            self._stats.record_error("edge_inference")
            return None, "model_unavailable"

    def _answer(
        self, probs: np.ndarray, source: str, reason: str, edge_probs: np.ndarray | None, score: float | None
    ) -> Prediction:
        k = min(self.top_k, len(probs))
        order = np.argsort(-probs, kind="stable")[:k]
        top = [(self.labels[i], float(probs[i])) for i in order]
        return Prediction(
            label=top[0][0], confidence=top[0][1], top_k=top, source=source, reason=reason,
            edge_confidence=float(edge_probs.max()) if edge_probs is not None else None,
            cloud_confidence=top[0][1] if source == "cloud" else None,
            edge_score=score, probabilities=probs,
        )

    def _done(self, p: Prediction, lat: dict[str, float], t0: float) -> Prediction:
        lat["total"] = (time.perf_counter() - t0) * 1000
        p.latency_ms = lat
        self._stats.record(p)
        return p

    def _unavailable(self, reason: str, cause: CloudError | None, index: int | None = None) -> Exception:
        self._stats.record_error(reason)
        where = f"image {index}: " if index is not None else ""
        if self.mode == "edge_only" or (reason == "model_unavailable" and self.cloud is None):
            return ModelLoadError(f"{where}the edge model is unavailable ({self.model_error or reason})")
        detail = f": {cause}" if cause else ""
        return CloudUnavailableError(f"{where}no answer from the edge or the cloud ({reason}{detail})", reason=reason,
                                     status=cause.status if cause else None)
