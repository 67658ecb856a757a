"""The classifier's edge run and score step for the routing path (edge_sdk.routing), from the bundle's ``routing``.

:class:`ClassifierEdge` runs the int8 model on a staged image and returns an
:class:`EdgeOutput`: the probabilities the answer shows (after the bundle's
temperature, Guo et al. 2017), the model's other named outputs when a score
reads them, and the out-of-distribution score with its flag.
:class:`ClassifierScorer` judges it: the routing metric (max_prob, margin,
entropy, or the learned ``deferral`` score) against the threshold, and a frame
flagged out of distribution is not answered as confident: the cloud is asked
(``Reason.OUT_OF_DISTRIBUTION``), or, with ``out_of_distribution="unknown"``,
the device answers "unknown" itself. Both are built together from one
:class:`RoutingPlan`, so an update swaps them at once.

A bundle written before these scores (T = 1, a probability metric, no
out-of-distribution score) runs exactly the old path: probabilities only, one
output read per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .bundle import Routing
from .policy import ConfidenceScorer, Verdict
from .preprocess import InputSpec, PreprocessSpec
from .reasons import Reason
from .runtime import LocalModel, PixelQuantizer
from .scores import (
    DeferralModel,
    OODAction,
    OODScorer,
    RoutingMetric,
    check_ood_action,
    check_routing_metric,
    edge_logits,
    softmax,
)
from .upload import Staged

UNKNOWN = "unknown"  # the label of a frame answered "unknown" on the device


class EdgeOutput:
    """What the edge says about one image."""

    __slots__ = ("probs", "raw", "logits", "ood_score", "out_of_distribution")

    def __init__(self, probs: np.ndarray, raw: Mapping[str, np.ndarray] | None = None,
                 logits: np.ndarray | None = None, ood_score: float | None = None,
                 out_of_distribution: bool = False) -> None:
        """Args:
            probs: [C], after the temperature.
            raw: the model's named outputs, when a score reads them.
            logits: [1, C], the logits output or log p.
            ood_score: the out-of-distribution score, when the bundle has one.
            out_of_distribution: the score is over its threshold.
        """
        self.probs = probs  # [C], after the temperature: what the answer shows
        self.raw = raw  # the model's named outputs (logits, features, ...) when a score reads them
        self.logits = logits  # [1, C]: the logits output, or log p when the model has none
        self.ood_score = ood_score
        self.out_of_distribution = out_of_distribution


@dataclass(frozen=True)
class RoutingPlan:
    """How one edge model is scored: the bundle's routing with the caller's overrides applied."""

    metric: RoutingMetric
    threshold: float
    temperature: float = 1.0
    deferral: DeferralModel | None = None
    ood: OODScorer | None = None
    ood_action: OODAction = "cloud"

    @classmethod
    def from_routing(cls, routing: Routing, *, metric: str | None = None, threshold: float | None = None,
                     ood_action: OODAction = "cloud") -> RoutingPlan:
        """The plan for a bundle's routing.

        Args:
            routing: the manifest's ``routing``.
            metric: the caller's metric, if it overrides the bundle's.
            threshold: the caller's threshold, if it overrides the bundle's.
            ood_action: what a frame flagged out of distribution gets: ``cloud``, ``unknown`` or ``ignore``.

        Returns:
            The plan.

        Raises:
            ValueError: an unknown metric or action, or ``deferral`` asked of a bundle without a deferral model.
        """
        chosen = check_routing_metric(metric or routing.metric)
        check_ood_action(ood_action)
        if chosen == "deferral" and routing.deferral is None:
            raise ValueError("metric 'deferral' needs a bundle with a deferral model (quantize fits one)")
        return cls(
            chosen, float(threshold if threshold is not None else routing.threshold), routing.temperature,
            DeferralModel(routing.deferral) if routing.deferral is not None else None,
            OODScorer(routing.ood) if routing.ood is not None and ood_action != "ignore" else None, ood_action,
        )

    @property
    def reads_outputs(self) -> bool:
        """Whether a score needs more than the probabilities (then the outputs it names are read per call)."""
        return self.temperature != 1.0 or self.metric == "deferral" or self.ood is not None

    @property
    def outputs_read(self) -> frozenset[str]:
        """The model outputs beside the probabilities that the scores read (one the model lacks is ignored)."""
        names = {"logits"}  # the temperature, the deferral model and the logit OOD scores start from the logits
        if self.metric == "deferral":
            names.add("features")
        if self.ood is not None:
            names.update(self.ood.needs)
        return frozenset(names)


class ClassifierEdge:
    """One edge model ready to run: its pixel table, interpreter and routing plan. An update builds a new one."""

    __slots__ = ("model", "pixels", "plan", "_floor", "_reads")

    def __init__(self, model: LocalModel, input_spec: InputSpec, preprocess_spec: PreprocessSpec,
                 num_classes: int, plan: RoutingPlan) -> None:
        """Args:
            model: the edge model.
            input_spec: the bundle's input.
            preprocess_spec: the bundle's preprocessing.
            num_classes: how many labels the bundle has.
            plan: how its outputs are scored.

        Raises:
            ModelLoadError: the model does not fit the bundle's input or labels.
        """
        model.check_fits(input_spec, num_classes)
        self.model = model
        self.pixels = PixelQuantizer(input_spec, preprocess_spec, model.input_quant)
        self.plan = plan
        self._floor = model.output_quant.scale / 2  # what an int8 zero probability stands for in log p
        self._reads = plan.outputs_read  # only these are read and dequantized per call

    def __call__(self, staged: Staged) -> EdgeOutput:
        xq = self.pixels(staged.resized)
        plan = self.plan
        if not plan.reads_outputs:
            return EdgeOutput(self.model.predict_quantized(xq))
        raw = self.model.predict_outputs(xq, self._reads)
        logits = edge_logits(raw, self._floor)
        probs = softmax(logits, plan.temperature)[0] if plan.temperature != 1.0 else raw["probabilities"]
        if plan.ood is None:
            return EdgeOutput(probs, raw, logits)
        score = plan.ood.score_one(raw)
        return EdgeOutput(probs, raw, logits, score, score > plan.ood.threshold)


class ClassifierScorer:
    """The score step: the routing metric against the threshold; out-of-distribution frames are never confident
    (unless the plan answers them "unknown" on the device)."""

    __slots__ = ("plan", "_by_probs")

    def __init__(self, plan: RoutingPlan) -> None:
        """Args:
            plan: the metric, threshold and scores to judge by.
        """
        self.plan = plan
        self._by_probs = ConfidenceScorer(plan.metric, plan.threshold) if plan.metric != "deferral" else None

    @property
    def metric(self) -> RoutingMetric:
        return self.plan.metric

    @property
    def threshold(self) -> float:
        return self.plan.threshold

    def __call__(self, out: EdgeOutput) -> Verdict:
        if self._by_probs is not None:
            verdict = self._by_probs(out.probs)
        else:
            assert self.plan.deferral is not None and out.raw is not None and out.logits is not None
            score = float(self.plan.deferral(out.logits, self.plan.temperature, out.raw.get("features"))[0])
            verdict = Verdict(score, score <= self.plan.threshold)
        if out.out_of_distribution:
            answer_here = self.plan.ood_action == "unknown"
            return Verdict(verdict.score, answer_here, Reason.OUT_OF_DISTRIBUTION)
        return verdict

    def __repr__(self) -> str:
        return f"ClassifierScorer({self.plan.metric!r}, {self.plan.threshold!r})"
