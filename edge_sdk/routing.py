"""The one routing path every hybrid task shares: stage, probe, run the edge, decide, ask the cloud, answer.

:class:`Router` knows nothing of class probabilities or boxes. A task (the
classifier; a detector tomorrow) plugs in four things:

* an :class:`EdgeVersion`: *run the edge* on a staged image (``run``) and
  *score its output* (``score``, a :class:`Scorer` giving a
  :class:`~edge_sdk.policy.Verdict`); an update swaps the whole version at once;
* *ask the cloud* (``ask_cloud``): one request for a list of staged images,
  within the deadline, raising :class:`~edge_sdk.errors.CloudError` on failure;
* *build the answer* (``build``) from an :class:`Outcome`.

The router owns the rest, once for ``predict`` and ``predict_batch``: the
capacity probes, the deadline, the circuit breaker, the fallbacks that never
lose an answer (a cloud failure returns the edge's; a capacity probe's no is
overruled when nobody else can answer), the stats, and the observers: every
final answer passes through :meth:`Router.add_observer`'s callables, in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from .capacity import InflightProbe, Probe, first_failure
from .client import CloudClient
from .errors import CloudError, CloudUnavailableError, InvalidImageError, ModelLoadError
from .options import EdgeOptions, RoutingOptions
from .policy import Decision, Verdict, after_cloud_failure, cloud_blocker, decide, edge_skip_reason
from .preprocess import ImageInput, InputSpec, PreprocessSpec, load_image, resize
from .reasons import Reason
from .stats import StatsRecorder
from .upload import Staged

log = logging.getLogger(__name__)

Out = TypeVar("Out")  # what the edge model gives for one image (class probabilities, detections)
CloudOut = TypeVar("CloudOut")  # what the cloud gives for one image
Ans = TypeVar("Ans")  # the task's answer (Prediction, Detections)
Out_co = TypeVar("Out_co", covariant=True)
Out_contra = TypeVar("Out_contra", contravariant=True)
Ans_contra = TypeVar("Ans_contra", contravariant=True)
Source = Literal["edge", "cloud"]


class EdgeRunner(Protocol[Out_co]):
    """Runs the edge model on one staged image; raises if the interpreter fails."""

    def __call__(self, staged: Staged, /) -> Out_co: ...


class Scorer(Protocol[Out_contra]):
    """Judges one edge output: its score, and whether the edge may answer alone."""

    def __call__(self, out: Out_contra, /) -> Verdict: ...


@dataclass(frozen=True)
class CloudReply(Generic[CloudOut]):
    """The cloud's answers for the images asked about, in order, and the request's bytes."""

    outputs: Sequence[CloudOut]
    bytes_sent: int


class AskCloud(Protocol[CloudOut]):
    """One cloud request for ``items``, answered by ``deadline`` (time.monotonic) or a CloudError."""

    def __call__(self, items: Sequence[Staged], deadline: float, /) -> CloudReply[CloudOut]: ...


class Observer(Protocol[Ans_contra]):
    """Called with every final answer and the image it is for (after stats; its errors are logged, not raised)."""

    def __call__(self, staged: Staged, answer: Ans_contra, /) -> None: ...


@dataclass(frozen=True)
class EdgeVersion(Generic[Out]):
    """One consistent edge: the model (None when it did not load, ``error`` says why) and its scorer."""

    run: EdgeRunner[Out] | None
    score: Scorer[Out]
    error: str | None = None


class Outcome(Generic[Out, CloudOut]):
    """How one image was answered: what ``build`` makes the task's answer from."""

    __slots__ = ("staged", "index", "edge", "verdict", "skip", "decision", "source", "reason", "cloud",
                 "bytes_sent", "cloud_error", "latency_ms")

    def __init__(self, staged: Staged, index: int | None, edge: Out | None, verdict: Verdict | None,
                 skip: Reason | None, decision: Decision) -> None:
        """Args:
            staged: the image.
            index: its place in a batch (None for predict), for error messages.
            edge: the edge output, None when the edge did not run.
            verdict: the scorer's verdict on ``edge``.
            skip: why the edge did not run.
            decision: who the routing table chose.
        """
        self.staged = staged
        self.index = index  # its place in a batch (None for predict), for error messages
        self.edge = edge  # the edge output, None when the edge did not run
        self.verdict = verdict  # the scorer's verdict on ``edge``
        self.skip = skip  # why the edge did not run
        self.decision = decision
        self.source: Source = "edge"
        self.reason: Reason = decision.reason
        self.cloud: CloudOut | None = None
        self.bytes_sent = 0
        self.cloud_error: str | None = None
        self.latency_ms: dict[str, float] = {}


class Router(Generic[Out, CloudOut, Ans]):
    """The per-image routing path (see the module docstring). Thread-safe: share one per model."""

    def __init__(
        self,
        *,
        routing: RoutingOptions,
        edge_options: EdgeOptions,
        input_spec: InputSpec,
        preprocess_spec: PreprocessSpec,
        edge: EdgeVersion[Out],
        probes: Sequence[Probe],
        cloud: CloudClient | None,
        ask_cloud: AskCloud[CloudOut],
        build: Callable[[Outcome[Out, CloudOut]], Ans],
    ) -> None:
        """Args:
            routing: mode, deadline, probes (the probes come separately, made).
            edge_options: the input limits (threads and backend are the task's business).
            input_spec: the model's input size, to stage images for.
            preprocess_spec: how to resize them.
            edge: the first edge version (its ``run`` None when the model did not load).
            probes: capacity probes asked before each edge inference while the cloud could answer.
            cloud: the cloud client, or None (its breaker is peeked at, never driven, here).
            ask_cloud: the task's cloud request (see :class:`AskCloud`).
            build: the task's answer from an :class:`Outcome`.
        """
        self.mode = routing.mode
        self.deadline_ms = routing.deadline_ms
        self.min_time_for_cloud_s = routing.min_time_for_cloud_ms / 1000.0
        self.limits = edge_options.limits
        self._size = (input_spec.height, input_spec.width, preprocess_spec.resize)
        self.edge = edge  # read once per call; an update assigns a whole new version
        self.probes = tuple(probes)
        self._inflight = next((p for p in self.probes if isinstance(p, InflightProbe)), None)
        self.cloud = cloud
        self._ask_cloud = ask_cloud
        self._build = build
        self._auto_with_cloud = self.mode == "auto" and cloud is not None
        self._observers: tuple[Observer[Ans], ...] = ()
        self.stats = StatsRecorder()

    # --- the two entry points ------------------------------------------------------------------

    def predict(self, image: ImageInput, color: str = "bgr", deadline_ms: float | None = None) -> Ans:
        """One image through the routing path.

        Args:
            image: a path, encoded bytes, or a uint8 array.
            color: how to read a 3/4-channel array: bgr or rgb.
            deadline_ms: this call's limit (default: the options').

        Returns:
            The task's answer.

        Raises:
            InvalidImageError: the input is not an accepted image.
            CloudUnavailableError: the cloud was needed and failed, and there is no edge answer.
            ModelLoadError: edge_only (or no cloud) and no edge model.
        """
        t0 = time.perf_counter()
        deadline = time.monotonic() + (deadline_ms or self.deadline_ms) / 1000.0
        try:
            staged = self.stage(image, color)
        except InvalidImageError:
            self.stats.record_error("invalid_image")
            raise
        return self._answer([staged], None, t0, deadline)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], color: str = "bgr", deadline_ms: float | None = None
    ) -> list[Ans]:
        """Every image through the same path, the ones for the cloud in ONE request.

        Args:
            images: as for :meth:`predict`.
            color: as for :meth:`predict`.
            deadline_ms: the whole batch's limit.

        Returns:
            One answer per image, in order.

        Raises:
            InvalidImageError: a bad input (the message names its index), before any inference.
            CloudUnavailableError: an image nobody could answer (named by index).
            ModelLoadError: as for :meth:`predict`.
        """
        t0 = time.perf_counter()
        deadline = time.monotonic() + (deadline_ms or self.deadline_ms) / 1000.0
        staged = []
        for i, image in enumerate(images):
            try:
                staged.append(self.stage(image, color))
            except InvalidImageError as e:
                self.stats.record_error("invalid_image")
                raise InvalidImageError(f"image {i}: {e}", e.kind) from e
        if not staged:
            return []
        return self._answer(staged, range(len(staged)), t0, deadline)

    def stage(self, image: ImageInput, color: str = "bgr") -> Staged:
        """Decode and resize (edge_sdk.preprocess): what the edge runs on and an upload is made from.

        Args:
            image: a path, encoded bytes, or a uint8 array.
            color: how to read a 3/4-channel array.

        Returns:
            The image, full size and model size.

        Raises:
            InvalidImageError: the input is not an accepted image.
        """
        rgb = load_image(image, color=color, limits=self.limits)
        height, width, how = self._size
        return Staged(image, rgb, resize(rgb, height, width, how))

    # --- observers ----------------------------------------------------------------------------------

    def add_observer(self, observer: Observer[Ans]) -> None:
        """Call ``observer(staged, answer)`` after every final answer, in the calling thread.

        Args:
            observer: called after stats; an exception it raises is logged and counted, never passed on.
        """
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: Observer[Ans]) -> None:
        """Stop calling ``observer``.

        Args:
            observer: one added with :meth:`add_observer` (anything else is ignored).
        """
        self._observers = tuple(o for o in self._observers if o is not observer)

    # --- the path -----------------------------------------------------------------------------------

    def _answer(self, staged: list[Staged], indices: Sequence[int] | None, t0: float, deadline: float) -> list[Ans]:
        edge = self.edge  # one snapshot: an update mid-call does not mix versions
        t1 = time.perf_counter()
        may_skip = self._auto_with_cloud and not self._breaker_open()
        plan = [self._plan(s, None if indices is None else indices[k], edge, may_skip, deadline)
                for k, s in enumerate(staged)]
        t2 = time.perf_counter()
        latency = {"preprocess": (t1 - t0) * 1000, "edge": (t2 - t1) * 1000}
        ask = [o for o in plan if o.decision.action == "cloud"]
        if ask:
            self._ask(ask, edge, deadline)
            latency["cloud"] = (time.perf_counter() - t2) * 1000
        if indices is None:
            return [self._finish(plan[0], latency, t0)]
        return [self._finish(o, dict(latency), t0) for o in plan]

    def _plan(self, staged: Staged, index: int | None, edge: EdgeVersion[Out], may_skip: bool,
              deadline: float) -> Outcome[Out, CloudOut]:
        """Run the edge (unless a probe says no), score it and decide; rescue or raise if nobody can answer."""
        out, skip = self._run_edge(edge, staged, may_skip)
        verdict = edge.score(out) if out is not None else None
        decision = decide(self.mode, verdict, skip, lambda: self._why_not_cloud(deadline))
        o: Outcome[Out, CloudOut] = Outcome(staged, index, out, verdict, skip, decision)
        if decision.action == "fail":
            self._rerun_if_short_of_capacity(o, edge)  # the cloud is out of reach after all
            if o.edge is None:
                raise self._unavailable(decision.reason, None, index)
        return o

    def _ask(self, ask: list[Outcome[Out, CloudOut]], edge: EdgeVersion[Out], deadline: float) -> None:
        """One cloud request for ``ask``; on failure each falls back to its edge output, or raises."""
        try:
            reply = self._ask_cloud([o.staged for o in ask], deadline)
        except CloudError as e:
            for o in ask:
                self._rerun_if_short_of_capacity(o, edge)  # short of capacity beats no answer
                fallback = after_cloud_failure(self.mode, o.edge is not None, e.reason)
                if fallback.action == "fail":
                    raise self._unavailable(fallback.reason, e, o.index) from e
                o.reason, o.cloud_error = fallback.reason, str(e)
            return
        share, extra = divmod(reply.bytes_sent, len(ask))  # the request's bytes, split so they sum exactly
        for j, o in enumerate(ask):
            o.source, o.cloud, o.bytes_sent = "cloud", reply.outputs[j], share + (j < extra)

    def _finish(self, o: Outcome[Out, CloudOut], latency: dict[str, float], t0: float) -> Ans:
        latency["total"] = (time.perf_counter() - t0) * 1000
        o.latency_ms = latency
        answer = self._build(o)
        self.stats.record(o.source, o.reason, o.bytes_sent, latency)
        if self._observers:
            self._notify(o.staged, answer)
        return answer

    def _notify(self, staged: Staged, answer: Ans) -> None:
        for observer in self._observers:
            try:
                observer(staged, answer)
            except Exception as e:  # an observer must never cost the caller its answer
                log.warning("observer %r failed: %s: %s", observer, type(e).__name__, e)
                self.stats.record_error("observer")

    # --- the edge -----------------------------------------------------------------------------------

    def _run_edge(self, edge: EdgeVersion[Out], staged: Staged, may_skip: bool) -> tuple[Out | None, Reason | None]:
        """The edge output, or (None, why it did not run). A capacity probe's no is obeyed only when
        ``may_skip`` (the cloud could take the image): short of capacity still beats no answer."""
        if self.mode == "cloud_only":
            return None, None
        if edge.run is None:
            return None, Reason.MODEL_UNAVAILABLE
        if may_skip and self.probes:
            failed = first_failure(self.probes)
            if failed is not None:
                return None, edge_skip_reason(failed[0], True)
        inflight = self._inflight
        try:
            if inflight is None:
                return edge.run(staged), None
            inflight.enter()
            try:
                return edge.run(staged), None
            finally:
                inflight.exit()
        except Exception as e:  # an interpreter failing at run time: treat as no model, keep answering
            log.warning("edge inference failed: %s: %s", type(e).__name__, e)
            self.stats.record_error("edge_inference")
            return None, Reason.MODEL_UNAVAILABLE

    def _rerun_if_short_of_capacity(self, o: Outcome[Out, CloudOut], edge: EdgeVersion[Out]) -> None:
        if o.edge is None and o.skip is not None and o.skip.is_no_capacity:
            o.edge, _ = self._run_edge(edge, o.staged, False)
            o.verdict = edge.score(o.edge) if o.edge is not None else None

    # --- the cloud ----------------------------------------------------------------------------------

    def _breaker_open(self) -> bool:
        return self.cloud is not None and self.cloud.breaker.is_open

    def _why_not_cloud(self, deadline: float) -> Reason | None:
        return cloud_blocker(self.cloud is not None, not self._breaker_open(), deadline - time.monotonic(),
                             self.min_time_for_cloud_s)

    def _unavailable(self, reason: Reason, cause: CloudError | None, index: int | None) -> Exception:
        self.stats.record_error(reason)
        where = f"image {index}: " if index is not None else ""
        if self.mode == "edge_only" or (reason == Reason.MODEL_UNAVAILABLE and self.cloud is None):
            return ModelLoadError(f"{where}the edge model is unavailable ({self.edge.error or reason})")
        detail = f": {cause}" if cause else ""
        return CloudUnavailableError(f"{where}no answer from the edge or the cloud ({reason}{detail})", reason=reason,
                                     status=cause.status if cause else None)

