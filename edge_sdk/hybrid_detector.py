"""HybridDetector: where and how big each object is, on the device first, the cloud for the unsure frames.

The same routing path as :class:`~edge_sdk.hybrid.HybridClassifier`
(:class:`edge_sdk.routing.Router`: capacity probes, deadline, circuit breaker,
never losing an answer); this module adds what is particular to detection: the
edge run (pixel table, int8 CenterNet, numpy decoding), the frame's routing
score (:func:`edge_sdk.detection.frame_uncertainty` against the bundle's
calibrated threshold), the cloud request (v2 infer, outputs ``boxes``,
``scores``, ``classes``, ``count``) and the :class:`DetectionResult`, whose
boxes are in the pixels of the frame the caller gave.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .bundle import Bundle, load_bundle
from .capacity import default_probes
from .client import CloudClient
from .detection import (
    DETECT_METRICS,
    SERVED_OUTPUTS,
    Detections,
    DetectionSpec,
    DetectMetric,
    frame_uncertainty,
    parse_served,
    to_original,
)
from .detector_runtime import DetectorModel
from .errors import BundleError, ModelLoadError
from .options import DetectorOptions, with_overrides
from .policy import Verdict
from .preprocess import ImageInput
from .reasons import Reason
from .routing import CloudReply, EdgeVersion, Observer, Outcome, Router, Source
from .runtime import PixelQuantizer
from .stats import ModelState, Stats
from .upload import Staged, build_request

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import DetectorOverrides

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: its box (x0, y0, x1, y1) in the caller's frame's pixels, label, class index and score."""

    box: tuple[float, float, float, float]
    label: str
    class_id: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """This detection, JSON-ready.

        Returns:
            box, label, class_id and score.
        """
        return {"box": list(self.box), "label": self.label, "class_id": self.class_id, "score": self.score}


@dataclass(slots=True)
class DetectionResult:
    """One frame's answer: the objects, where they came from and why, and what it cost.

    ``edge_score`` is the frame's routing score on the edge output (compared with the threshold);
    ``latency_ms`` has preprocess, edge, cloud (when asked) and total.
    """

    detections: list[Detection]
    source: Source
    reason: Reason
    image_size: tuple[int, int]  # (height, width) of the frame
    edge_score: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    cloud_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """This result, JSON-ready.

        Returns:
            Every field, the detections as dicts and the reason as its string.
        """
        return {"detections": [d.to_dict() for d in self.detections], "source": self.source,
                "reason": str(self.reason), "image_size": list(self.image_size), "edge_score": self.edge_score,
                "latency_ms": self.latency_ms, "bytes_sent": self.bytes_sent, "cloud_error": self.cloud_error}


class DetectorEdge:
    """One int8 detector ready to run: its pixel table and interpreter; gives detections in model pixels."""

    __slots__ = ("model", "pixels", "spec")

    def __init__(self, model: DetectorModel, bundle: Bundle) -> None:
        """Args:
            model: the int8 detector.
            bundle: its detect bundle.

        Raises:
            ModelLoadError: the model does not fit the bundle's input or labels.
            BundleError: the manifest has no detection section.
        """
        man = bundle.manifest
        want = (man.input.height, man.input.width, man.input.channels)
        if model.input_shape != want or model.num_classes != len(man.labels):
            raise ModelLoadError(f"edge detector input {model.input_shape} / {model.num_classes} classes does not "
                                 f"match the bundle's {want} / {len(man.labels)} labels")
        if man.detection is None:
            raise BundleError(f"{bundle.path}: a detect bundle's manifest has no 'detection' section")
        self.model, self.spec = model, man.detection
        self.pixels = PixelQuantizer(man.input, man.preprocess, model.input_quant)

    def __call__(self, staged: Staged) -> Detections:
        return self.model.detect_quantized(self.pixels(staged.resized), self.spec)


class FrameScorer:
    """A detector's scorer: the frame's uncertainty against a threshold (confident at or below it)."""

    __slots__ = ("metric", "threshold")

    def __init__(self, metric: DetectMetric, threshold: float) -> None:
        """Args:
            metric: the frame score (see :func:`~edge_sdk.detection.frame_uncertainty`).
            threshold: the highest score still answered on the edge.

        Raises:
            ValueError: an unknown metric.
        """
        if metric not in DETECT_METRICS:
            raise ValueError(f"unknown detection routing metric {metric!r}; choose from {', '.join(DETECT_METRICS)}")
        self.metric, self.threshold = metric, float(threshold)

    def __call__(self, dets: Detections) -> Verdict:
        u = frame_uncertainty(dets.scores, self.metric)
        return Verdict(u, u <= self.threshold)


class HybridDetector:
    """Detect objects on the device, asking the cloud only for the frames the edge is unsure of (or cannot run)."""

    def __init__(self, bundle: Bundle, *, model: DetectorModel | None, options: DetectorOptions | None = None,
                 model_error: str | None = None, cloud: CloudClient | None = None) -> None:
        """Prefer :meth:`from_bundle`.

        Args:
            bundle: a loaded detect bundle.
            model: its int8 detector, or None when it did not load.
            options: the options (default: DetectorOptions' defaults).
            model_error: why the model did not load.
            cloud: the cloud client, or None.

        Raises:
            BundleError: not a detect bundle.
            ValueError: options that do not fit the bundle.
            ModelLoadError: a model that does not fit the bundle.
        """
        man = bundle.manifest
        if man.task != "detect" or man.detection is None:
            raise BundleError(f"{bundle.path}: not a detect bundle (task {man.task!r}); use HybridClassifier")
        opts = options or DetectorOptions()
        routing = man.routing
        bundle_metric = cast(DetectMetric, routing.metric) if routing.metric in DETECT_METRICS else "band_mass"
        metric = opts.metric or bundle_metric
        if opts.metric is not None and opts.metric != routing.metric and opts.threshold is None:
            raise ValueError(f"the bundle's threshold is for {routing.metric}; "
                             f"give a threshold for metric {opts.metric!r}")
        self.options, self.bundle, self.cloud = opts, bundle, cloud
        self.labels = list(man.labels)
        self.spec: DetectionSpec = man.detection
        self.min_score = self.spec.report_score if opts.min_score is None else opts.min_score
        self._hw = (man.input.height, man.input.width)
        self._resize = man.preprocess.resize
        self._router: Router[Detections, Detections, DetectionResult] = Router(
            routing=opts, edge_options=opts, input_spec=man.input, preprocess_spec=man.preprocess,
            edge=EdgeVersion(DetectorEdge(model, bundle) if model is not None else None,
                             FrameScorer(metric, opts.threshold if opts.threshold is not None else routing.threshold),
                             model_error),
            probes=default_probes() if opts.probes is None else opts.probes,
            cloud=cloud, ask_cloud=self._ask_cloud, build=self._result,
        )

    @classmethod
    def from_bundle(cls, path: str | Path | Bundle, options: DetectorOptions | None = None,
                    **overrides: Unpack[DetectorOverrides]) -> HybridDetector:
        """Load a detect bundle (checksums verified) and its int8 detector; connect to the cloud if one is given.

        Args:
            path: the bundle directory, or a loaded Bundle.
            options: the options (default: :class:`DetectorOptions`'s defaults).
            **overrides: any field of DetectorOptions (``cloud_url=``, ``api_key=``, ``mode=``, ``deadline_ms=``, ...).

        Returns:
            The detector; close it (or use it as a context manager) to release the cloud connections.

        Raises:
            BundleError: the bundle is missing, malformed, fails a checksum, or is not a detect bundle.
            ModelLoadError: the edge detector cannot load and there is no cloud to fall back to.
            ValueError: an option out of range, or ``cloud_only`` without a cloud_url.
            TypeError: an override that is not an option.
        """
        opts = with_overrides(DetectorOptions, options, overrides)
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        if bundle.manifest.task != "detect":
            raise BundleError(f"{bundle.path}: not a detect bundle (task {bundle.manifest.task!r}); "
                              "use HybridClassifier")
        model, error = None, None
        if opts.mode != "cloud_only":
            try:
                model = DetectorModel.from_bundle(bundle, num_threads=opts.num_threads, backend=opts.backend)
            except ModelLoadError as e:
                error = str(e)
                log.warning("edge detector unavailable: %s", e)
                if opts.mode == "edge_only" or not opts.cloud_url:
                    raise
        if opts.mode == "cloud_only" and not opts.cloud_url:
            raise ValueError("mode cloud_only needs a cloud_url")
        return cls(bundle, model=model, options=opts, model_error=error, cloud=opts.make_client(bundle.manifest.name))

    def predict(self, image: ImageInput, color: str = "bgr", deadline_ms: float | None = None) -> DetectionResult:
        """Detect the objects in one frame.

        Args:
            image: a path, encoded bytes (PNG, JPEG, BMP, WebP), or a uint8 array (HxW, HxWx3, HxWx4).
            color: how to read a 3/4-channel array: ``bgr`` (OpenCV's order) or ``rgb``.
            deadline_ms: this call's time limit (default: the options' deadline_ms).

        Returns:
            The detections (boxes in this frame's pixels), with source, reason, latencies and bytes sent.

        Raises:
            InvalidImageError: the input is not an image this SDK accepts.
            CloudUnavailableError: the cloud was needed and failed, and there is no edge answer.
            ModelLoadError: mode edge_only (or no cloud) and the edge detector is unavailable.
        """
        return self._router.predict(image, color, deadline_ms)

    def predict_batch(self, images: Sequence[ImageInput], color: str = "bgr",
                      deadline_ms: float | None = None) -> list[DetectionResult]:
        """Several frames: the edge on every one, the unsure ones to the cloud in ONE request.

        Args:
            images: as for :meth:`predict`.
            color: as for :meth:`predict`.
            deadline_ms: the whole batch's limit.

        Returns:
            One result per frame, in order.

        Raises:
            InvalidImageError: an input is bad (the message names its index); raised before any inference.
            CloudUnavailableError: a frame got no answer from either side (the message names its index).
        """
        return self._router.predict_batch(images, color, deadline_ms)

    def add_observer(self, observer: Observer[DetectionResult]) -> None:
        """Call ``observer(staged, result)`` after every final answer, in the caller's thread.

        Args:
            observer: gets the staged frame and the result; an exception it raises is logged and counted in
                ``stats().errors["observer"]``, never passed to the caller.
        """
        self._router.add_observer(observer)

    def remove_observer(self, observer: Observer[DetectionResult]) -> None:
        """Stop calling ``observer``.

        Args:
            observer: one added with :meth:`add_observer`.
        """
        self._router.remove_observer(observer)

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def model(self) -> DetectorModel | None:
        run = self._router.edge.run
        return run.model if isinstance(run, DetectorEdge) else None

    @property
    def metric(self) -> DetectMetric:
        return self._scorer().metric

    @property
    def threshold(self) -> float:
        return self._scorer().threshold

    def stats(self) -> Stats:
        """What this detector has done.

        Returns:
            Counts by source and reason, latency percentiles (last 10k calls), bytes, breaker and model state.
        """
        m = self.model
        return self._router.stats.snapshot(
            mode=self.mode, metric=self.metric, threshold=self.threshold, upload=self.options.upload,
            breaker=self.cloud.breaker.snapshot() if self.cloud else None,
            model=ModelState(m is not None, m.backend if m else None, m.sha256 if m else None,
                             self._router.edge.error),
        )

    def close(self) -> None:
        """Release the cloud client's connections and workers."""
        if self.cloud is not None:
            self.cloud.close()

    def __enter__(self) -> HybridDetector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- what the routing path calls ------------------------------------------------------------

    def _scorer(self) -> FrameScorer:
        scorer = self._router.edge.score
        assert isinstance(scorer, FrameScorer)
        return scorer

    def _ask_cloud(self, items: Sequence[Staged], deadline: float) -> CloudReply[Detections]:
        assert self.cloud is not None
        # JSON both ways (the detection outputs are small; binary tensors are the classifier's for now)
        request = dataclasses.replace(build_request(items, self.options.upload, 3), outputs=SERVED_OUTPUTS)
        dets, sent = self.cloud.infer_parsed(request.json_doc(), deadline,
                                             lambda doc: parse_served(doc, len(items), len(self.labels)))
        return CloudReply(dets, sent)

    def _result(self, o: Outcome[Detections, Detections]) -> DetectionResult:
        h, w = o.staged.rgb.shape[:2]
        d = o.cloud if o.source == "cloud" else o.edge
        assert d is not None  # an outcome always has the answer of its source
        if o.source == "cloud" and self.options.upload == "original":  # the server answered in the frame's pixels
            boxes = to_original(d.boxes, "stretch", (h, w), (h, w))
        else:  # in the model input's pixels: undo the resize
            boxes = to_original(d.boxes, self._resize, self._hw, (h, w))
        keep = d.scores >= self.min_score
        dets = [Detection(tuple(float(v) for v in b), self.labels[int(c)], int(c), float(s))  # type: ignore[arg-type]
                for b, c, s in zip(boxes[keep], d.classes[keep], d.scores[keep], strict=True)]
        return DetectionResult(dets, o.source, o.reason, (h, w), o.verdict.score if o.verdict is not None else None,
                               o.latency_ms, o.bytes_sent, o.cloud_error)
