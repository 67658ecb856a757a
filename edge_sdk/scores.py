"""Routing scores on the device, in numpy: the temperature, the learned deferral score, the out-of-distribution score.

What the edge model already computes (its logits, and optionally the pooled
features feeding its head) is turned into three things the router uses:

* calibrated probabilities: ``softmax(logits / T)`` with ``T`` fitted on
  validation data (temperature scaling, Guo et al. 2017, "On Calibration of
  Modern Neural Networks");
* a deferral score: a tiny model (logistic regression or a two-layer MLP)
  estimating the chance that the cloud would fix this image (the edge is wrong
  and the cloud right), in the spirit of learning to defer (Madras et al. 2018;
  Mozannar and Sontag 2020) but trained after the fact on frozen models;
* an out-of-distribution score: the energy of the logits (Liu et al. 2020,
  "Energy-based Out-of-distribution Detection"), the max logit (Hendrycks et al.
  2022), or the Mahalanobis distance of the pooled features to the nearest class
  mean under a shared covariance (Lee et al. 2018).

Everything here is a function of arrays the bundle holds; nothing imports
TensorFlow. Parameters live in the manifest (``routing``), so they travel and
are checked with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal, cast, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .policy import one_of

Feature = Literal["max_prob", "margin", "entropy", "energy", "max_logit", "probs", "logits", "predicted", "features"]
OODKind = Literal["energy", "max_logit", "mahalanobis"]
_EPS = 1e-12


# --- calibrated probabilities ---------------------------------------------------------


def logits_from_probs(probs: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Logits up to a constant (log p) for a model with no logits output.

    An int8 softmax output reads 0 below half a quantization step, so ``floor`` should be about that.

    Args:
        probs: probabilities [..., C].
        floor: p is clipped at this first.

    Returns:
        log p, float64, the shape of ``probs``.
    """
    return np.log(np.clip(np.asarray(probs, np.float64), floor, 1.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64.

    Args:
        logits: [..., C].
        temperature: T > 0 (Guo et al. 2017); 1 leaves the logits as they are.

    Returns:
        Probabilities, the shape of ``logits``.
    """
    z: np.ndarray = np.asarray(logits, np.float64) / temperature  # a new array: the rest works in place
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis, without overflow.

    Args:
        z: [..., C].

    Returns:
        [...]: one value per row.
    """
    m = z.max(axis=-1, keepdims=True)
    out: np.ndarray = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]
    return out


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """E(x) = -T log sum_c exp(z_c / T) (Liu et al. 2020): higher means less like the training data.

    Args:
        logits: [N, C].
        temperature: T.

    Returns:
        [N] energies.
    """
    z = np.asarray(logits, np.float64)
    return -temperature * logsumexp(z / temperature)


def summary_features(
    logits: np.ndarray, temperature: float, features: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every input the deferral model may use, from a batch of logits.

    Args:
        logits: [N, C] (or log p for a model without a logits output).
        temperature: the bundle's T.
        features: [N, D] pooled features, when the model has them.

    Returns:
        Each :data:`Feature` by name as an [N, k] float64 array.
    """
    z = np.atleast_2d(np.asarray(logits, np.float64))
    p = softmax(z, temperature)
    top2 = np.sort(p, axis=-1)[:, -2:]
    q = np.clip(p, _EPS, 1.0)
    out = {
        "max_prob": top2[:, 1:],
        "margin": (top2[:, 1] - top2[:, 0])[:, None],
        "entropy": -(q * np.log(q)).sum(axis=-1, keepdims=True),
        "energy": energy(z, temperature)[:, None],
        "max_logit": z.max(axis=-1, keepdims=True),
        "probs": p,
        "logits": z - z.mean(axis=-1, keepdims=True),  # a model without a logits output gives log p: same up to a shift
        "predicted": np.eye(z.shape[1])[p.argmax(axis=-1)],
    }
    if features is not None:
        out["features"] = np.atleast_2d(np.asarray(features, np.float64))
    return out


# --- the deferral model ------------------------------------------------------------------


class Layer(BaseModel):
    """One dense layer: ``x @ weights + bias``; weights are [inputs][outputs]."""

    model_config = ConfigDict(extra="forbid")
    weights: list[list[float]]
    bias: list[float]

    @model_validator(mode="after")
    def _shapes(self) -> Layer:
        widths = {len(r) for r in self.weights}
        if not self.weights or widths != {len(self.bias)}:
            raise ValueError(f"layer weights must be [in][out] with out = len(bias) = {len(self.bias)}")
        return self


class DeferralParams(BaseModel):
    """A logistic regression (one layer) or an MLP (ReLU between layers), then a sigmoid, on standardised inputs."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Feature] = Field(min_length=1)
    mean: list[float]
    std: list[float]
    layers: list[Layer] = Field(min_length=1)
    target: str = "cloud_fixes"  # what the score estimates: P(edge wrong and cloud right)

    @model_validator(mode="after")
    def _chain(self) -> DeferralParams:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std must be equally long and std > 0")
        width = len(self.mean)
        for i, layer in enumerate(self.layers):
            if len(layer.weights) != width:
                raise ValueError(f"layer {i} takes {len(layer.weights)} inputs, the one before gives {width}")
            width = len(layer.bias)
        if width != 1:
            raise ValueError(f"the last layer must have one output, not {width}")
        return self


class DeferralModel:
    """The deferral score of a batch: P(the cloud would fix this image), from the edge's own outputs."""

    def __init__(self, params: DeferralParams) -> None:
        """Args:
            params: the fitted model (the manifest's ``routing.deferral``).
        """
        self.params = params
        self.inputs: tuple[str, ...] = tuple(params.inputs)
        self.needs_features = "features" in self.inputs
        self._mean = np.asarray(params.mean, np.float64)
        self._std = np.asarray(params.std, np.float64)
        self._layers = [(np.asarray(la.weights, np.float64), np.asarray(la.bias, np.float64)) for la in params.layers]

    def design(self, logits: np.ndarray, temperature: float, features: np.ndarray | None = None) -> np.ndarray:
        """The standardised input matrix (what the layers see).

        Args:
            logits: [N, C].
            temperature: the bundle's T.
            features: [N, D], needed when the model reads ``features``.

        Returns:
            [N, k] float64.

        Raises:
            ValueError: the features are missing, or the inputs do not give as many values as the model takes.
        """
        if self.needs_features and features is None:
            raise ValueError("this deferral model reads the pooled features, but none were given")
        parts = summary_features(logits, temperature, features)
        x = np.concatenate([parts[name] for name in self.inputs], axis=1)
        if x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"deferral inputs {self.inputs} give {x.shape[1]} values; "
                             f"the model takes {self._mean.shape[0]}")
        out: np.ndarray = (x - self._mean) / self._std
        return out

    def __call__(self, logits: np.ndarray, temperature: float = 1.0, features: np.ndarray | None = None) -> np.ndarray:
        h = self.design(logits, temperature, features)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = h @ w + b
            if i < last:
                h = np.maximum(h, 0.0)
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(h[:, 0], -60.0, 60.0)))
        return out


# --- out of distribution ------------------------------------------------------------------


class OODComponent(BaseModel):
    """A Mahalanobis distance on one named output of the edge model (``features``, ``stage_k``):
    min over the rows of ``means`` [K][D] of (f - mu)^T P (f - mu), then standardised by ``center`` and ``scale``."""

    model_config = ConfigDict(extra="forbid")
    output: str
    means: list[list[float]] = Field(min_length=1)
    precision: list[list[float]] = Field(min_length=1)
    center: float = 0.0
    scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _square(self) -> OODComponent:
        d = len(self.means[0])
        square = len(self.precision) == d and all(len(r) == d for r in self.precision)
        if any(len(m) != d for m in self.means) or not square:
            raise ValueError(f"means must be [K][D] and precision [D][D] with D = {d}")
        return self


class OODParams(BaseModel):
    """An out-of-distribution score and its threshold: a frame scoring above it is out of distribution.

    ``energy`` and ``max_logit`` read the logits; ``mahalanobis`` sums its standardised components
    (one component: Lee et al. 2018 on the pooled features; several: their feature ensemble).
    """

    model_config = ConfigDict(extra="forbid")
    kind: OODKind
    threshold: float
    components: list[OODComponent] = Field(default_factory=list)
    in_distribution_rate: float | None = None  # share of held-out in-distribution images at or under the threshold

    @model_validator(mode="after")
    def _complete(self) -> OODParams:
        if self.kind == "mahalanobis" and not self.components:
            raise ValueError("a mahalanobis score needs at least one component")
        return self


class OODScorer:
    """Higher is less like the training data."""

    def __init__(self, params: OODParams) -> None:
        """Args:
            params: the fitted score (the manifest's ``routing.ood``).
        """
        self.params = params
        self.kind = params.kind
        self.threshold = float(params.threshold)
        self.needs: tuple[str, ...] = tuple(c.output for c in params.components) or ("logits",)
        self._parts = [(c.output, Mahalanobis(np.asarray(c.means), np.asarray(c.precision), c.center, c.scale))
                       for c in params.components]

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.kind != "mahalanobis":
            z = edge_logits(outputs)
            return energy(z) if self.kind == "energy" else -z.max(axis=-1)
        total: np.ndarray | None = None
        for standardised_distance, f in self._components(outputs):
            part = standardised_distance(f)
            total = part if total is None else total + part
        assert total is not None
        return total

    def score_one(self, outputs: Mapping[str, np.ndarray]) -> float:
        """The score of one frame (the routing path's per-call form of ``self(outputs)[0]``).

        Args:
            outputs: one frame's named outputs, each [D] (or [1, D]).

        Returns:
            Its score; higher is less like the training data.

        Raises:
            ValueError: an output the score reads is missing.
        """
        if self.kind != "mahalanobis":
            return float(self(outputs)[0])
        return sum((distance.one(f.reshape(-1)) for distance, f in self._components(outputs)), 0.0)

    def _components(self, outputs: Mapping[str, np.ndarray]) -> Iterator[tuple[Mahalanobis, np.ndarray]]:
        """Each Mahalanobis component with the output it reads; ValueError for one the outputs lack."""
        for name, standardised_distance in self._parts:
            if name not in outputs:
                raise ValueError(f"the out-of-distribution score reads the model's {name!r} output, which it lacks")
            yield standardised_distance, outputs[name]

    def is_out(self, score: np.ndarray | float) -> np.ndarray | bool:
        """Whether a score is over the threshold.

        Args:
            score: what this scorer returned.

        Returns:
            True (per element) for out of distribution.
        """
        return np.asarray(score) > self.threshold


class Mahalanobis:
    """min over class means of (f - mu)^T P (f - mu) (Lee et al. 2018), optionally standardised as
    (distance - center) / scale, with all that does not depend on f computed once.

    Expanded as f^T P f - 2 f . (P mu) + mu^T P mu, one call is a single [D, D + K] matrix product (P beside
    -2 P mu), a row-wise dot and a min: the per-call path of a routing bundle's out-of-distribution score.
    """

    __slots__ = ("_dim", "_product", "_mean_terms")

    def __init__(self, means: np.ndarray, precision: np.ndarray, center: float = 0.0, scale: float = 1.0) -> None:
        """Args:
            means: [K, D] class means.
            precision: [D, D] the shared covariance's inverse (made symmetric here: a quadratic form only sees
                (P + P^T) / 2, and the expansion needs it).
            center: subtracted from the distance.
            scale: then divided into it (> 0, so the nearest mean stays the nearest).
        """
        means = np.asarray(means, np.float64)
        p = np.asarray(precision, np.float64)
        p = (p + p.T) / (2.0 * scale)
        p_means = means @ p  # [K, D]: P mu_k (over scale)
        self._dim = p.shape[0]
        self._product = np.ascontiguousarray(np.concatenate([p, -2.0 * p_means.T], axis=1))  # [D, D + K]
        self._mean_terms = np.einsum("kd,kd->k", means, p_means) - center / scale  # [K]

    def __call__(self, f: np.ndarray) -> np.ndarray:
        """Args:
            f: [N, D] or [D] features.

        Returns:
            [N] (squared distance to the nearest mean - center) / scale.
        """
        f = np.asarray(f, np.float64)
        if f.ndim == 1:
            return np.array([self.one(f)])
        d = self._dim
        y = f @ self._product  # [N, D + K]: f^T P and -2 f . P mu_k
        own = np.einsum("nd,nd->n", y[:, :d], f)  # f^T P f
        out: np.ndarray = (y[:, d:] + self._mean_terms).min(axis=1) + own
        return out

    def one(self, f: np.ndarray) -> float:
        """The per-call path for one frame: a vector product, a dot and a min (float32 features are widened
        exactly, inside the products).

        Args:
            f: [D] features.

        Returns:
            (squared distance to the nearest mean - center) / scale.
        """
        y = f @ self._product
        d = self._dim
        return float((y[d:] + self._mean_terms).min()) + float(y[:d] @ f)


def mahalanobis_min(f: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over the rows of ``means`` of (f - mu)^T P (f - mu) (Lee et al. 2018).

    Args:
        f: [N, D] features.
        means: [K, D] class means.
        precision: [D, D] the shared covariance's inverse.

    Returns:
        [N] squared distances to the nearest mean.
    """
    return Mahalanobis(means, precision)(f)


# --- all of it for one call ------------------------------------------------------------------


class EdgeScores(BaseModel):
    """What routing needs from one batch of edge outputs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    probs: np.ndarray  # calibrated probabilities [N, C]
    score: np.ndarray  # the routing metric [N]
    ood_score: np.ndarray | None = None  # [N], higher is less like the training data
    out_of_distribution: np.ndarray | None = None  # [N] bool


def edge_logits(outputs: Mapping[str, np.ndarray], prob_floor: float = 1e-4) -> np.ndarray:
    """The model's logits output when it has one, else log p of its probabilities.

    Args:
        outputs: the model's named outputs (``probabilities``, maybe ``logits``).
        prob_floor: where log p clips a probability of 0 (half the int8 output's step).

    Returns:
        [N, C] float64.
    """
    if "logits" in outputs:
        return np.atleast_2d(np.asarray(outputs["logits"], np.float64))
    return logits_from_probs(np.atleast_2d(outputs["probabilities"]), prob_floor)


# --- the routing metric of a batch ------------------------------------------------------------

RoutingMetric = Literal["max_prob", "margin", "entropy", "deferral"]
ROUTING_METRICS: tuple[str, ...] = get_args(RoutingMetric)
LOWER_IS_CONFIDENT = frozenset({"entropy", "deferral"})
OODAction = Literal["cloud", "unknown", "ignore"]  # what the device does with a frame flagged out of distribution
OOD_ACTIONS: tuple[str, ...] = get_args(OODAction)


def check_routing_metric(metric: str) -> RoutingMetric:
    """Args:
        metric: a routing metric's name.

    Returns:
        ``metric``, typed as a :data:`RoutingMetric`.

    Raises:
        ValueError: it is not one of :data:`ROUTING_METRICS` (the message names them).
    """
    return cast(RoutingMetric, one_of(metric, ROUTING_METRICS, "routing metric"))


def check_ood_action(action: str) -> OODAction:
    """Args:
        action: what to do with a frame flagged out of distribution.

    Returns:
        ``action``, typed as an :data:`OODAction`.

    Raises:
        ValueError: it is not one of :data:`OOD_ACTIONS` (the message names them).
    """
    return cast(OODAction, one_of(action, OOD_ACTIONS, "out_of_distribution"))


def calibrated_probs(
    outputs: Mapping[str, np.ndarray], temperature: float = 1.0, prob_floor: float = 1e-4
) -> np.ndarray:
    """The probabilities the router and the caller see: the model's own at T = 1, else softmax(logits / T).

    Args:
        outputs: the model's named outputs.
        temperature: the bundle's T.
        prob_floor: see :func:`edge_logits`.

    Returns:
        [N, C] float64.
    """
    if temperature == 1.0:
        return np.atleast_2d(np.asarray(outputs["probabilities"], np.float64))
    return softmax(edge_logits(outputs, prob_floor), temperature)


def metric_scores(
    outputs: Mapping[str, np.ndarray],
    metric: str,
    *,
    temperature: float = 1.0,
    deferral: DeferralModel | None = None,
    prob_floor: float = 1e-4,
) -> np.ndarray:
    """The routing metric of a batch of edge outputs.

    Confident is at or above the threshold, or at or below it for the metrics in :data:`LOWER_IS_CONFIDENT`.

    Args:
        outputs: the model's named outputs.
        metric: one of :data:`ROUTING_METRICS`.
        temperature: the bundle's T.
        deferral: the bundle's deferral model (for ``deferral``).
        prob_floor: see :func:`edge_logits`.

    Returns:
        [N] scores.

    Raises:
        ValueError: an unknown metric, or ``deferral`` without a deferral model.
    """
    if metric == "deferral":
        if deferral is None:
            raise ValueError("metric 'deferral' needs the bundle's deferral model")
        return deferral(edge_logits(outputs, prob_floor), temperature, outputs.get("features"))
    p = calibrated_probs(outputs, temperature, prob_floor)
    if metric == "max_prob":
        out: np.ndarray = p.max(axis=-1)
    elif metric == "margin":
        top2 = np.sort(p, axis=-1)[:, -2:]
        out = top2[:, 1] - top2[:, 0]
    elif metric == "entropy":
        q = np.clip(p, _EPS, 1.0)
        out = -(q * np.log(q)).sum(axis=-1)
    else:
        raise ValueError(f"unknown routing metric {metric!r}; choose from {', '.join(ROUTING_METRICS)}")
    return out
