"""Fitting what the device's routing scores need (edge_sdk.scores), from held-out edge and cloud answers.

* :func:`fit_temperature` and :func:`expected_calibration_error`: temperature scaling
  (Guo et al. 2017) by minimising the negative log-likelihood, and the ECE with
  equal-width confidence bins that shows what it did.
* :func:`fit_deferral`: a logistic regression or a two-layer MLP over the edge's own
  outputs, predicting "the cloud would fix this image" (edge wrong, cloud right).
* :func:`fit_ood`: the out-of-distribution score, fitted on training data (class means
  and a shared covariance of the pooled features for Mahalanobis, Lee et al. 2018) with
  its threshold set on held-out in-distribution data.

All numpy, scipy and scikit-learn; the fitted parameters are the pydantic models the
device reads (edge_sdk.scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_sdk.scores import (
    DeferralModel,
    DeferralParams,
    Feature,
    Layer,
    OODComponent,
    OODKind,
    OODParams,
    OODScorer,
    softmax,
    summary_features,
)

# --- temperature and calibration error -------------------------------------------------------


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on held-out labels (Guo et al. 2017).

    The NLL is convex in 1/T, so a bounded scalar search on log T finds the optimum.
    """
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, np.float64), np.asarray(y)
    if len(y) == 0 or z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"need logits [N, C] and N labels, got {z.shape} and {len(y)}")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda s: negative_log_likelihood(z, y, float(np.exp(s))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """sum over equal-width confidence bins of |accuracy - mean confidence| x the bin's share (Naeini et al. 2015)."""
    p = np.asarray(probs, np.float64)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == np.asarray(y))
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # bin b holds (b/bins, (b+1)/bins]
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


# --- the deferral model ----------------------------------------------------------------------

DEFAULT_INPUTS: tuple[Feature, ...] = ("max_prob", "margin", "entropy", "energy", "max_logit", "logits", "predicted")


def cloud_fixes(edge_pred: np.ndarray, cloud_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 where the edge is wrong and the cloud right: the images worth sending."""
    return ((np.asarray(edge_pred) != y) & (np.asarray(cloud_pred) == y)).astype(np.int64)


def fit_deferral(
    logits: np.ndarray,
    target: np.ndarray,
    *,
    temperature: float = 1.0,
    features: np.ndarray | None = None,
    inputs: Sequence[Feature] = DEFAULT_INPUTS,
    hidden: int = 0,
    l2: float = 1.0,
    seed: int = 0,
) -> DeferralParams:
    """Fit P(target = 1 | edge outputs): a logistic regression (``hidden=0``) or a ReLU MLP with ``hidden`` units.

    ``l2`` is the penalty on the weights (the inverse of scikit-learn's C for the logistic regression,
    its alpha for the MLP). Inputs are standardised with the mean and std of this data.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    t = np.asarray(target)
    if t.min() == t.max():
        raise ValueError("the deferral target has one class only; it needs images the cloud fixes and ones it does not")
    parts = summary_features(logits, temperature, features)
    x = np.concatenate([parts[name] for name in inputs], axis=1)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    xs = (x - mean) / std
    if hidden <= 0:
        lr = LogisticRegression(C=1.0 / l2, max_iter=2000).fit(xs, t)
        layers = [Layer(weights=compact(lr.coef_.T), bias=compact(lr.intercept_))]
    else:
        mlp = MLPClassifier((hidden,), alpha=l2, max_iter=2000, random_state=seed, early_stopping=False).fit(xs, t)
        layers = [Layer(weights=compact(w), bias=compact(b)) for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True)]
    return DeferralParams(inputs=list(inputs), mean=compact(mean), std=compact(std), layers=layers)


def compact(a: np.ndarray) -> list:
    """Nested lists of floats with 7 significant digits (float32's precision): half the manifest's bytes, and the
    device computes with exactly the numbers the fit was checked with."""
    return np.vectorize(lambda v: float(f"{v:.7g}"), otypes=[float])(np.asarray(a, np.float64)).tolist()


def deferral_scores(params: DeferralParams, logits: np.ndarray, temperature: float = 1.0,
                    features: np.ndarray | None = None) -> np.ndarray:
    return DeferralModel(params)(logits, temperature, features)


# --- out of distribution ----------------------------------------------------------------------


@dataclass
class OODFit:
    params: OODParams
    val_scores: np.ndarray


def class_gaussians(features: np.ndarray, y: np.ndarray, shrinkage: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, D] and the precision of the shared covariance (ridge: ``shrinkage`` x the mean variance)."""
    f, y = np.asarray(features, np.float64), np.asarray(y)
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / len(f)
    cov += shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov)


def fit_ood(
    kind: OODKind,
    val_outputs: Mapping[str, np.ndarray],
    *,
    train_outputs: Mapping[str, np.ndarray] | None = None,
    train_y: np.ndarray | None = None,
    outputs: Sequence[str] = ("features",),
    class_conditional: bool = True,
    in_distribution_rate: float = 0.99,
) -> OODFit:
    """Fit an out-of-distribution score; its threshold lets ``in_distribution_rate`` of held-out in-distribution
    images through (the rest are the extra offload it costs).

    ``mahalanobis``: for each named output, class means (or one mean) and a shared covariance from the
    training data (Lee et al. 2018), standardised on the held-out data and summed.
    """
    components: list[OODComponent] = []
    if kind == "mahalanobis":
        if train_outputs is None or train_y is None:
            raise ValueError("mahalanobis needs the training data's outputs and labels")
        for name in outputs:
            groups = train_y if class_conditional else np.zeros(len(train_y), np.int64)
            means, precision = class_gaussians(train_outputs[name], groups)
            raw = OODScorer(OODParams(kind=kind, threshold=0.0, components=[
                OODComponent(output=name, means=compact(means), precision=compact(precision))]))(val_outputs)
            components.append(OODComponent(output=name, means=compact(means), precision=compact(precision),
                                           center=float(raw.mean()), scale=float(raw.std()) or 1.0))
    probe = OODParams(kind=kind, threshold=0.0, components=components)
    scores = OODScorer(probe)(val_outputs)
    threshold = float(np.quantile(scores, in_distribution_rate))
    rate = float((scores <= threshold).mean())
    return OODFit(probe.model_copy(update={"threshold": threshold, "in_distribution_rate": rate}), scores)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling outliers (higher score) from in-distribution images; ties count half."""
    from scipy.stats import rankdata

    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    ranks = rankdata(np.concatenate([a, b]))  # ties get their average rank (Mann-Whitney U)
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))
