"""HybridClassifier: the int8 model on the device first, the cloud for the hard images.

One call goes through :class:`edge_sdk.routing.Router`, the routing path every
hybrid task shares: decode and resize (edge_sdk.preprocess) -> capacity probes
-> the edge model -> its confidence against the threshold
(:class:`edge_sdk.classifier_routing.ClassifierScorer`: the bundle's metric, temperature and
out-of-distribution score) -> maybe the cloud, within what is
left of the call's deadline. A cloud failure never loses the edge answer; only
when neither side can answer does ``predict`` raise. This module adds what is
particular to classification: the edge run (pixel table + int8 interpreter),
the cloud request, and the :class:`Prediction`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import Bundle, Routing, load_bundle
from .capacity import Probe, default_probes
from .classifier_routing import UNKNOWN, ClassifierEdge, ClassifierScorer, EdgeOutput, RoutingPlan
from .client import CloudClient, deadline_after
from .errors import BundleError, ModelLoadError, UpdateError
from .flywheel import Flywheel
from .options import HybridOptions, with_overrides
from .ota import DEFAULT_MAX_BYTES, UpdateResult, VerifiedUpdate, fetch_update, persist_update
from .policy import Mode
from .preprocess import ImageInput
from .reasons import Reason
from .routing import CloudReply, EdgeVersion, Observer, Outcome, Router, Source
from .runtime import LocalModel
from .scores import RoutingMetric
from .stats import ModelState, Stats
from .upload import Staged, Upload, build_request

if TYPE_CHECKING:
    import os

    from typing_extensions import Unpack

    from .options import HybridOverrides

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Prediction:
    """One answer. ``confidence`` and ``*_confidence`` are top-1 probabilities (the edge's after the bundle's
    temperature); ``edge_score`` is the routing metric's value on the edge output (what was compared with the
    threshold); ``out_of_distribution`` says the bundle's out-of-distribution score flagged the frame
    (``ood_score``, higher is less like the training data). A frame answered "unknown" on the device has
    label "unknown" and confidence 0."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: Source  # "edge" or "cloud"
    reason: Reason  # a str enum: compares equal to "confident", "no_capacity:memory", ...
    edge_confidence: float | None = None
    cloud_confidence: float | None = None
    edge_score: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # preprocess, edge, cloud, total
    bytes_sent: int = 0
    cloud_error: str | None = None
    probabilities: np.ndarray | None = field(default=None, repr=False)
    out_of_distribution: bool = False
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field but the probabilities.

        Returns:
            A JSON-ready dict (top_k as label/score objects).
        """
        d = asdict(self)
        d.pop("probabilities")
        d["reason"] = str(self.reason)
        d["top_k"] = [{"label": lb, "score": s} for lb, s in self.top_k]
        return d


class HybridClassifier:
    """Classify images on the device, asking the cloud only when the edge is unsure or cannot run."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        model: LocalModel | None,
        options: HybridOptions | None = None,
        model_error: str | None = None,
        cloud: CloudClient | None = None,
    ) -> None:
        """Prefer :meth:`from_bundle`, which loads the model and makes the cloud client from the options.

        Args:
            bundle: the loaded bundle.
            model: its edge model, or None when it could not load (``model_error`` says why).
            options: see :class:`~edge_sdk.options.HybridOptions` (default: its defaults).
            model_error: why ``model`` is None.
            cloud: the cloud client (None: no cloud).

        Raises:
            ValueError: options that do not fit the bundle (another metric without a threshold).
            ModelLoadError: a model that does not fit the bundle's input or labels.
        """
        opts = options or HybridOptions()
        routing = bundle.manifest.routing
        if opts.metric is not None and opts.metric != routing.metric and opts.threshold is None:
            raise ValueError(
                f"the bundle's threshold is for {routing.metric}; give a threshold for metric {opts.metric!r}"
            )
        plan = RoutingPlan.from_routing(routing, metric=opts.metric, threshold=opts.threshold,
                                        ood_action=opts.out_of_distribution)
        self.options = opts
        self._bundle = bundle
        self.labels = list(bundle.labels)
        self.input_spec = bundle.manifest.input
        self.preprocess_spec = bundle.manifest.preprocess
        self.cloud = cloud
        self._lock = threading.Lock()  # swaps and updates; predict never takes it
        self._threshold_from_bundle = opts.threshold is None and opts.metric in (None, routing.metric)
        self._router: Router[EdgeOutput, np.ndarray, Prediction] = Router(
            routing=opts, edge_options=opts, input_spec=self.input_spec, preprocess_spec=self.preprocess_spec,
            edge=EdgeVersion(self._edge_for(model, plan) if model is not None else None, ClassifierScorer(plan),
                             model_error),
            probes=default_probes() if opts.probes is None else opts.probes,
            cloud=cloud, ask_cloud=self._ask_cloud, build=self._prediction,
        )
        self.flywheel = self._start_flywheel(opts, bundle.manifest.name)

    @classmethod
    def from_bundle(
        cls, path: str | Path | Bundle, options: HybridOptions | None = None, **overrides: Unpack[HybridOverrides]
    ) -> HybridClassifier:
        """Load a bundle (checksums verified) and its int8 model, and connect to the cloud if one is given.

        A model that fails to load is not fatal while a cloud can answer: predictions then go to the cloud
        with reason ``model_unavailable``.

        Args:
            path: the bundle directory, or a loaded Bundle.
            options: the options (default: :class:`~edge_sdk.options.HybridOptions`'s defaults).
            **overrides: any field of HybridOptions, replacing the one in ``options``
                (``cloud_url=``, ``api_key=``, ``mode=``, ``deadline_ms=``, ``threshold=``, ...).

        Returns:
            The classifier; close it (or use it as a context manager) to release the cloud connections.

        Raises:
            BundleError: the bundle is missing, malformed or fails a checksum.
            ModelLoadError: the edge model cannot load and there is no cloud to fall back to.
            ValueError: an option out of range, or ``cloud_only`` without a cloud_url.
            TypeError: an override that is not an option.
        """
        opts = with_overrides(HybridOptions, options, overrides)
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        model, error = None, None
        if opts.mode != "cloud_only":
            try:
                model = LocalModel.from_bundle(bundle, num_threads=opts.num_threads, backend=opts.backend)
            except ModelLoadError as e:
                error = str(e)
                log.warning("edge model unavailable: %s", e)
                if opts.mode == "edge_only" or not opts.cloud_url:
                    raise
        if opts.mode == "cloud_only" and not opts.cloud_url:
            raise ValueError("mode cloud_only needs a cloud_url")
        return cls(bundle, model=model, options=opts, model_error=error,
                   cloud=opts.make_client(bundle.manifest.name))

    # --- classifying ---------------------------------------------------------------------------

    def predict(self, image: ImageInput, color: str = "bgr", deadline_ms: float | None = None) -> Prediction:
        """Classify one image.

        Args:
            image: a path, encoded bytes (PNG, JPEG, BMP, WebP), or a uint8 array (HxW, HxWx3, HxWx4).
            color: how to read a 3/4-channel array: ``bgr`` (OpenCV's order) or ``rgb``.
            deadline_ms: this call's time limit (default: the options' deadline_ms).

        Returns:
            The answer, with its source, reason, latencies and bytes sent.

        Raises:
            InvalidImageError: the input is not an image this SDK accepts.
            CloudUnavailableError: the cloud was needed and failed, and there is no edge answer.
            ModelLoadError: mode edge_only (or no cloud) and the edge model is unavailable.
        """
        return self._router.predict(image, color, deadline_ms)

    def predict_batch(
        self, images: Sequence[ImageInput], color: str = "bgr", deadline_ms: float | None = None
    ) -> list[Prediction]:
        """Classify several images: the edge on every one, the unsure ones to the cloud in ONE request.

        Args:
            images: as for :meth:`predict`.
            color: as for :meth:`predict`.
            deadline_ms: the whole batch's time limit.

        Returns:
            One answer per image, in order.

        Raises:
            InvalidImageError: an input is bad (the message names its index); raised before any inference.
            CloudUnavailableError: an image got no answer from either side (the message names its index).
            ModelLoadError: as for :meth:`predict`.
        """
        return self._router.predict_batch(images, color, deadline_ms)

    def add_observer(self, observer: Observer[Prediction]) -> None:
        """Call ``observer(staged, prediction)`` after every final answer, in the caller's thread.

        Args:
            observer: gets the staged image and the prediction; an exception it raises is logged and
                counted in ``stats().errors["observer"]``, never passed to the caller.
        """
        self._router.add_observer(observer)

    def remove_observer(self, observer: Observer[Prediction]) -> None:
        """Stop calling ``observer``.

        Args:
            observer: one added with :meth:`add_observer`.
        """
        self._router.remove_observer(observer)

    # --- state ------------------------------------------------------------------------------------

    @property
    def bundle(self) -> Bundle:
        """The bundle as it is on disk now (an update that was persisted replaces it)."""
        return self._bundle

    @property
    def mode(self) -> Mode:
        return self.options.mode

    @property
    def upload(self) -> Upload:
        return self.options.upload

    @property
    def model(self) -> LocalModel | None:
        """The edge model serving now, or None when it did not load."""
        run = self._router.edge.run
        return run.model if isinstance(run, ClassifierEdge) else None

    @property
    def model_error(self) -> str | None:
        """Why there is no edge model, or None."""
        return self._router.edge.error

    @property
    def metric(self) -> RoutingMetric:
        return self._scorer().metric

    @property
    def threshold(self) -> float:
        return self._scorer().threshold

    @property
    def probes(self) -> tuple[Probe, ...]:
        """The capacity probes asked before each edge inference (auto mode with a cloud)."""
        return self._router.probes

    def stats(self) -> Stats:
        """What this classifier has done.

        Returns:
            Counts by source and reason, latency percentiles (last 10k calls), bytes, breaker and model state.
        """
        m = self.model
        return self._router.stats.snapshot(
            mode=self.mode, metric=self.metric, threshold=self.threshold, upload=self.upload,
            breaker=self.cloud.breaker.snapshot() if self.cloud else None,
            model=ModelState(m is not None, m.backend if m else None, m.sha256 if m else None, self.model_error),
            **self._flywheel_stats(),
        )

    # --- updates ----------------------------------------------------------------------------------

    def check_for_update(
        self,
        deadline_ms: float = 60_000.0,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tmp_dir: str | os.PathLike[str] | None = None,
        persist: bool = True,
    ) -> UpdateResult:
        """Ask the cloud for a newer edge model; verify it and swap it in (see edge_sdk.ota).

        Args:
            deadline_ms: for the whole check, downloads included.
            max_bytes: a larger model is refused.
            tmp_dir: where the download is verified (default: the system's temp dir).
            persist: also write it into the bundle on disk, so a restart keeps it.

        Returns:
            What happened: updated or not, the sha256 serving now, whether it was persisted (and if not, why).

        Raises:
            UpdateError: no cloud is configured, the server failed, or the download was refused;
                the old model keeps serving.
        """
        if self.cloud is None:
            raise UpdateError("no cloud_url configured: nowhere to check for updates")
        current = self.model.sha256 if self.model is not None else None
        with fetch_update(self.cloud, self.bundle.manifest, current, deadline_ms=deadline_ms, max_bytes=max_bytes,
                          tmp_dir=tmp_dir, num_threads=self.options.num_threads,
                          backend=self.options.backend) as update:
            if update is None:
                return UpdateResult(False, current or "", current)
            return self.apply_update(update, persist=persist)

    def apply_update(self, update: VerifiedUpdate, *, persist: bool = True) -> UpdateResult:
        """Swap in a verified update (and write it into the bundle on disk), under this classifier's lock.

        Args:
            update: from :func:`edge_sdk.ota.fetch_update`, while its context is open.
            persist: write it into the bundle on disk; if the disk refuses, it still serves from memory
                and the result's ``persist_error`` says why.

        Returns:
            What happened.

        Raises:
            UpdateError: the model does not fit this bundle; the old model keeps serving.
        """
        try:
            plan = self._plan_for(update.manifest.routing)
            edge = self._edge_for(update.model, plan)
        except (ModelLoadError, ValueError) as e:
            raise UpdateError(f"the downloaded model was refused: {e}") from e
        with self._lock:
            current = self.model.sha256 if self.model is not None else None
            if update.sha256 == current:
                return UpdateResult(False, current, current, update.bytes_downloaded)
            persist_error = self._persist(update) if persist else None
            self._install(edge, plan)
        log.info("edge model updated %s -> %s", current[:12] if current else None, update.sha256[:12])
        return UpdateResult(True, update.sha256, current, update.bytes_downloaded, self.threshold,
                            persisted=persist and persist_error is None, persist_error=persist_error)

    def swap_model(
        self, model: LocalModel, *, threshold: float | None = None, metric: RoutingMetric | None = None
    ) -> LocalModel | None:
        """Atomically replace the edge model; calls already running finish on the old one.

        Args:
            model: the new edge model.
            threshold: its calibrated threshold (ignored when the options set one: the user's wins).
            metric: the threshold's metric (default: the current one).

        Returns:
            The model it replaced (None if there was none).

        Raises:
            ModelLoadError: the model does not fit the bundle's input or labels; the old one stays.
        """
        plan = self._scorer().plan
        if threshold is not None and self._threshold_from_bundle:  # the user's threshold always wins
            routing = self._bundle.manifest.routing.model_copy(update={"metric": metric or self.metric,
                                                                       "threshold": threshold})
            plan = RoutingPlan.from_routing(routing, ood_action=self.options.out_of_distribution)
        edge = self._edge_for(model, plan)
        with self._lock:
            old = self.model
            self._install(edge, plan)
        return old

    def close(self) -> None:
        """Store what the collection holds, stop the offline queue, release the cloud client's connections."""
        if self.flywheel is not None:
            self.flywheel.close()
        if self.cloud is not None:
            self.cloud.close()

    def __enter__(self) -> HybridClassifier:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- collection and the offline queue (opt-in) ----------------------------------------------

    def _start_flywheel(self, opts: HybridOptions, name: str) -> Flywheel | None:
        """Collection and the offline queue when configured (nothing is written otherwise), as observers."""
        if opts.collect is None and opts.offline_queue is None:
            return None
        flywheel = Flywheel(opts.collect, opts.offline_queue, labels=self.labels, name=name,
                            ask=self._ask_images if self.cloud is not None else None,
                            model_id=lambda: self.model.sha256 if self.model is not None else None)
        for observer in flywheel.observers:
            self._router.add_observer(observer)
        return flywheel

    def _flywheel_stats(self) -> dict[str, Any]:
        if self.flywheel is None:
            return {}
        collection, offline_queue = self.flywheel.stats()
        return {"collection": collection, "offline_queue": offline_queue}

    def _ask_images(self, images: Sequence[np.ndarray], deadline_ms: float) -> tuple[list[np.ndarray], int]:
        """The cloud's probabilities for model-size RGB images (audits, the offline queue), and the bytes sent."""
        reply = self._ask_cloud([Staged(im, im, im) for im in images], deadline_after(deadline_ms))
        return list(reply.outputs), reply.bytes_sent

    # --- what the routing path calls ------------------------------------------------------------

    def _ask_cloud(self, items: Sequence[Staged], deadline: float) -> CloudReply[np.ndarray]:
        assert self.cloud is not None  # the router asks only when a cloud is configured
        request = build_request(items, self.options.upload, self.input_spec.channels)
        result = self.cloud.infer(request, len(items), len(self.labels), deadline)
        return CloudReply(list(result.probs), result.bytes_sent)

    def _prediction(self, o: Outcome[EdgeOutput, np.ndarray]) -> Prediction:
        from_cloud = o.source == "cloud"
        edge = o.edge
        probs = o.cloud if from_cloud else (edge.probs if edge is not None else None)
        assert probs is not None  # an outcome always has the answer of its source
        labels = self.labels
        top = [(labels[i], p) for i, p in top_k(probs, self.options.top_k)]
        edge_confidence = None
        if edge is not None:
            edge_confidence = float(edge.probs.max()) if from_cloud else top[0][1]
        label, confidence = top[0]
        ood = edge is not None and edge.out_of_distribution
        if ood and not from_cloud and self.options.out_of_distribution == "unknown":
            label, confidence = UNKNOWN, 0.0
            if o.reason == Reason.CONFIDENT:  # the scorer let the device answer; say why it answers "unknown"
                o.reason = Reason.OUT_OF_DISTRIBUTION
        return Prediction(
            label, confidence, top, o.source, o.reason, edge_confidence, top[0][1] if from_cloud else None,
            o.verdict.score if o.verdict is not None else None, o.latency_ms, o.bytes_sent, o.cloud_error, probs,
            ood, edge.ood_score if edge is not None else None,
        )

    # --- internals ------------------------------------------------------------------------------

    def _edge_for(self, model: LocalModel, plan: RoutingPlan) -> ClassifierEdge:
        return ClassifierEdge(model, self.input_spec, self.preprocess_spec, len(self.labels), plan)

    def _scorer(self) -> ClassifierScorer:
        scorer = self._router.edge.score
        assert isinstance(scorer, ClassifierScorer)
        return scorer

    def _plan_for(self, routing: Routing) -> RoutingPlan:
        """How a new model's bundle routing is scored here: its temperature, deferral model and
        out-of-distribution score always; its metric and threshold unless the options set them."""
        o = self.options
        threshold = o.threshold
        if threshold is None and o.metric is not None and o.metric != routing.metric:
            threshold = self.threshold  # the user's metric keeps the threshold it had
        return RoutingPlan.from_routing(routing, metric=o.metric, threshold=threshold,
                                        ood_action=o.out_of_distribution)

    def _install(self, edge: ClassifierEdge, plan: RoutingPlan) -> None:
        """Swap in a new edge version (the lock is held): the model and its routing plan, at once."""
        self._router.edge = EdgeVersion(edge, ClassifierScorer(plan), None)

    def _persist(self, update: VerifiedUpdate) -> str | None:
        """Write the update into the bundle on disk (the lock is held); None, or why it could not."""
        try:
            self._bundle = persist_update(self._bundle, update)
        except (OSError, BundleError) as e:
            log.warning("edge model updated in memory only: cannot write it into %s: %s", self._bundle.path, e)
            return f"{type(e).__name__}: {e}"
        return None


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The most probable classes.

    Args:
        probs: probabilities [C].
        k: how many.

    Returns:
        The ``k`` largest (index, probability) pairs, largest first, ties in index order.
    """
    if probs.shape[0] <= 64:  # small: plain Python on a list beats numpy's per-call overhead
        values: list[float] = probs.tolist()
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]
        return [(i, values[i]) for i in order]
    idx = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in idx]
