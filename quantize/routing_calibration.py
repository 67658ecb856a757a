"""Routing at quantize time: fit the temperature, the deferral model and the out-of-distribution score, and choose a
threshold with a guarantee, from the int8 edge model's outputs and the cloud's answers on held-out data.

The validation split is cut in two, stratified by class: the *fit* part trains
what has parameters (temperature, deferral model) and fixes the grid of
thresholds; the *calibration* part, which none of that has seen, certifies the
threshold (quantize.threshold_bound). The out-of-distribution score is fitted
on training data and its threshold set on the whole validation split.
Everything here is numpy on arrays; the caller runs the models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_sdk.scores import (
    LOWER_IS_CONFIDENT,
    DeferralModel,
    DeferralParams,
    OODKind,
    OODParams,
    calibrated_probs,
    edge_logits,
    metric_scores,
)

from .errors import QuantizeError
from .routing_fit import cloud_fixes, expected_calibration_error, fit_deferral, fit_ood, fit_temperature
from .threshold_bound import Selection, Split, select_certified

Outputs = Mapping[str, np.ndarray]


@dataclass
class Labelled:
    """The edge model's named outputs, the cloud's probabilities and the labels, on one split."""

    outputs: Outputs
    cloud: np.ndarray
    y: np.ndarray

    def take(self, idx: np.ndarray) -> Labelled:
        return Labelled({k: v[idx] for k, v in self.outputs.items()}, self.cloud[idx], self.y[idx])

    @property
    def edge_ok(self) -> np.ndarray:
        return np.asarray(self.outputs["probabilities"]).argmax(1) == self.y

    @property
    def cloud_ok(self) -> np.ndarray:
        return self.cloud.argmax(1) == self.y


@dataclass(frozen=True)
class RoutingConfig:
    """How quantize fits the routing. Gaps are in percentage points."""

    target_gap: float = 0.5
    delta: float = 0.1
    max_offload: float | None = None
    fit_fraction: float = 0.5
    metrics: tuple[str, ...] = ("max_prob", "margin", "entropy", "deferral")
    deferral_hidden: int = 0
    min_fixes: int = 20
    ood: OODKind | None = "mahalanobis"
    ood_outputs: tuple[str, ...] | None = None  # None: every stage_k output (the feature ensemble), else features
    ood_rate: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [msg for bad, msg in (
            (self.target_gap < 0, f"--target-gap is in points and must be >= 0, not {self.target_gap}"),
            (not 0 < self.delta < 1, f"--delta must be within (0, 1), not {self.delta}"),
            (self.max_offload is not None and not 0 <= self.max_offload <= 1,
             f"--max-offload must be within [0, 1], not {self.max_offload}"),
            (not 0 < self.fit_fraction < 1, f"fit_fraction must be within (0, 1), not {self.fit_fraction}"),
            (not 0 < self.ood_rate < 1, f"ood_rate must be within (0, 1), not {self.ood_rate}"),
        ) if bad]
        if problems:
            raise QuantizeError("; ".join(problems))


@dataclass
class RoutingFit:
    """What goes into the manifest's ``routing`` section, and the record of how it was chosen."""

    metric: str
    threshold: float
    temperature: float
    deferral: DeferralParams | None
    ood: OODParams | None
    calibration: dict[str, Any]
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def split_fit_calibrate(y: np.ndarray, fit_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fit and calibration parts, stratified by class, seeded."""
    rng = np.random.default_rng(seed)
    fit, cal = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fit_fraction))
        fit += idx[:k].tolist()
        cal += idx[k:].tolist()
    return np.sort(np.array(fit, np.int64)), np.sort(np.array(cal, np.int64))


def fit_deferral_if_possible(fit: Labelled, temperature: float, prob_floor: float, cfg: RoutingConfig
                             ) -> tuple[DeferralParams | None, dict[str, Any]]:
    """A deferral model when the fit part has at least ``min_fixes`` images the cloud fixes (and as many others)."""
    target = cloud_fixes(fit.outputs["probabilities"].argmax(1), fit.cloud.argmax(1), fit.y)
    info: dict[str, Any] = {"n_fit": int(len(target)), "cloud_fixes": int(target.sum()), "target": "cloud_fixes",
                            "kind": "logistic" if cfg.deferral_hidden <= 0 else f"mlp{cfg.deferral_hidden}"}
    if min(target.sum(), len(target) - target.sum()) < cfg.min_fixes:
        info["skipped"] = f"fewer than {cfg.min_fixes} images the cloud fixes in the fit part: no deferral model"
        return None, info
    params = fit_deferral(edge_logits(fit.outputs, prob_floor), target, temperature=temperature,
                          hidden=cfg.deferral_hidden, seed=cfg.seed)
    return params, info


def temperature_record(fit: Labelled, cal: Labelled, prob_floor: float) -> tuple[float, dict[str, Any]]:
    """T fitted on the fit part; the ECE of the model's own probabilities and after T, on the calibration part."""
    t = fit_temperature(edge_logits(fit.outputs, prob_floor), fit.y)
    before = expected_calibration_error(calibrated_probs(cal.outputs, 1.0), cal.y)
    after = expected_calibration_error(calibrated_probs(cal.outputs, t, prob_floor), cal.y)
    has_logits = "logits" in fit.outputs
    return t, {"value": t, "ece_before": before, "ece_after": after, "n_fit": int(len(fit.y)), "n": int(len(cal.y)),
               "logits": "model output" if has_logits else "log of the int8 probabilities"}


def scores_for(data: Labelled, metric: str, temperature: float, deferral: DeferralParams | None,
               prob_floor: float) -> np.ndarray:
    model = DeferralModel(deferral) if deferral is not None else None
    return metric_scores(data.outputs, metric, temperature=temperature, deferral=model, prob_floor=prob_floor)


def fit_part_scores(fit: Labelled, metric: str, temperature: float, deferral: DeferralParams | None,
                    prob_floor: float, cfg: RoutingConfig) -> np.ndarray:
    """The fit part's scores, which choose the metric and fix the grid: out of fold for the deferral model,
    whose in-sample scores on the part it was fitted on would flatter it against the other metrics."""
    if metric != "deferral":
        return scores_for(fit, metric, temperature, deferral, prob_floor)
    return out_of_fold_deferral(fit, temperature, prob_floor, cfg)


def out_of_fold_deferral(data: Labelled, temperature: float, prob_floor: float, cfg: RoutingConfig,
                         folds: int = 5) -> np.ndarray:
    """Each image's deferral score from a model fitted on the other folds (stratified by the target)."""
    target = cloud_fixes(data.outputs["probabilities"].argmax(1), data.cloud.argmax(1), data.y)
    logits = edge_logits(data.outputs, prob_floor)
    rng = np.random.default_rng(cfg.seed)
    fold = np.empty(len(target), np.int64)
    for value in (0, 1):
        idx = rng.permutation(np.flatnonzero(target == value))
        fold[idx] = np.arange(len(idx)) % folds
    out = np.empty(len(target))
    for k in range(folds):
        held = fold == k
        params = fit_deferral(logits[~held], target[~held], temperature=temperature, hidden=cfg.deferral_hidden,
                              seed=cfg.seed)
        out[held] = DeferralModel(params)(logits[held], temperature)
    return out


def fit_routing(val: Labelled, train: Labelled | None, cfg: RoutingConfig = RoutingConfig(),
                prob_floor: float = 1e-4) -> RoutingFit:
    """Temperature, deferral model, threshold (with its bound) and OOD score, from held-out edge and cloud answers."""
    fit_idx, cal_idx = split_fit_calibrate(val.y, cfg.fit_fraction, cfg.seed)
    if len(fit_idx) == 0 or len(cal_idx) == 0:
        # Too few validation images to split (a few a class): both parts are all of them. The bound on so few
        # images certifies nothing, so everything is offloaded and the record says the set is too small.
        fit_idx = cal_idx = np.arange(len(val.y))
    fit, cal = val.take(fit_idx), val.take(cal_idx)
    t, t_info = temperature_record(fit, cal, prob_floor)
    deferral, d_info = (None, {"skipped": "not asked for"})
    if "deferral" in cfg.metrics:
        deferral, d_info = fit_deferral_if_possible(fit, t, prob_floor, cfg)
    metrics = [m for m in cfg.metrics if m != "deferral" or deferral is not None]
    scores = {m: (fit_part_scores(fit, m, t, deferral, prob_floor, cfg), scores_for(cal, m, t, deferral, prob_floor),
                  m in LOWER_IS_CONFIDENT) for m in metrics}
    curves = {m: tradeoff_curve(s[1], s[2], cal.edge_ok, cal.cloud_ok) for m, s in scores.items()}
    curves["oracle"] = oracle_curve(cal.edge_ok, cal.cloud_ok)
    record: dict[str, Any] = {
        "split": "val", "n_val": int(len(val.y)), "n_fit": int(len(fit_idx)), "n": int(len(cal_idx)),
        "edge_accuracy": float(cal.edge_ok.mean()), "cloud_accuracy": float(cal.cloud_ok.mean()),
        "temperature": t_info, "deferral": d_info,
    }
    if cfg.max_offload is not None:
        metric, threshold, chosen = _within_budget(scores, cal, cfg.max_offload)
    else:
        best, fit_offload = select_certified(
            Split({m: (s[0], s[2]) for m, s in scores.items()}, fit.edge_ok, fit.cloud_ok),
            Split({m: (s[1], s[2]) for m, s in scores.items()}, cal.edge_ok, cal.cloud_ok),
            target_gap=cfg.target_gap / 100.0, delta=cfg.delta, order=metrics)
        metric, threshold, chosen = best.metric, best.threshold, guarantee_record(best, fit_offload, cfg)
    record.update(chosen)
    ood = fit_ood_if_asked(val, train, cfg)
    if ood is not None:
        record["ood"] = {"kind": ood.kind, "outputs": [c.output for c in ood.components], "threshold": ood.threshold,
                         "in_distribution_rate": ood.in_distribution_rate, "n_val": int(len(val.y))}
    return RoutingFit(metric, threshold, t, deferral, ood, record, curves)


def guarantee_record(best: Selection, fit_offload: Mapping[str, float], cfg: RoutingConfig) -> dict[str, Any]:
    """The manifest's account of a certified threshold: estimate, bound, n, delta (gaps in points)."""
    note = (f"no threshold that keeps images on the edge could be certified within {cfg.target_gap:g} points of "
            f"the cloud at delta {cfg.delta:g} with {best.n} calibration images, so everything is offloaded: the "
            "calibration set is too small for the target, or the edge model too far behind the cloud; calibrate on "
            "more data (--calib) or allow a larger --target-gap") if best.too_small else None
    return {
        "mode": "target_gap", "method": "Clopper-Pearson bound, fixed-sequence testing (Learn then Test)",
        "metric": best.metric, "threshold": best.threshold, "offload": best.offload,
        "target_gap_points": cfg.target_gap, "delta": cfg.delta, "n_certified": best.n,
        "estimate_points": 100 * best.estimate, "bound_points": 100 * best.bound,
        "point_estimate": {"threshold": best.point_threshold, "offload": best.point_offload},
        "too_small": best.too_small, "note": note,
        "fit_offload_per_metric": dict(fit_offload),  # what chose the metric: the fit part's point estimates
    }


def _within_budget(scores: Mapping[str, tuple[np.ndarray, np.ndarray, bool]], cal: Labelled, max_offload: float
                   ) -> tuple[str, float, dict[str, Any]]:
    """--max-offload: the best calibration accuracy with at most that share offloaded (no guarantee on the gap)."""
    best: tuple[float, str, float, float] | None = None
    for m, (_, s, lower) in scores.items():
        order = np.sort(s)
        for t in np.unique(order):
            kept = s <= t if lower else s >= t
            off = 1.0 - kept.mean()
            if off <= max_offload + 1e-12:
                acc = float(np.where(kept, cal.edge_ok, cal.cloud_ok).mean())
                if best is None or acc > best[0]:
                    best = (acc, m, float(t), off)
    if best is None:  # cannot happen: keeping everything offloads nothing
        raise ValueError("no threshold keeps the offload within the budget")
    acc, m, t, off = best
    return m, t, {"mode": "max_offload", "metric": m, "threshold": t, "offload": off, "max_offload": max_offload,
                  "hybrid_accuracy": acc, "note": "best accuracy within the offload budget; no bound on the gap"}


def ood_outputs(cfg: RoutingConfig, outputs: Outputs) -> tuple[str, ...]:
    """The outputs the Mahalanobis score reads: as configured, else every ``stage_k`` output (the feature
    ensemble of Lee et al. 2018: early stages see colour and texture, late ones shape), else ``features``."""
    if cfg.ood_outputs is not None:
        return cfg.ood_outputs
    stages = tuple(sorted((k for k in outputs if k.startswith("stage_")), key=lambda k: int(k.split("_")[1])))
    return stages or ("features",)


def fit_ood_if_asked(val: Labelled, train: Labelled | None, cfg: RoutingConfig) -> OODParams | None:
    """The out-of-distribution score of ``cfg.ood``, or None when not asked for or the model lacks the outputs."""
    if cfg.ood is None:
        return None
    if cfg.ood == "mahalanobis":
        names = ood_outputs(cfg, val.outputs)
        if train is None or not all(o in train.outputs and o in val.outputs for o in names):
            return None
        return fit_ood("mahalanobis", val.outputs, train_outputs=train.outputs, train_y=train.y,
                       outputs=names, in_distribution_rate=cfg.ood_rate).params
    return fit_ood(cfg.ood, val.outputs, in_distribution_rate=cfg.ood_rate).params


# --- accuracy against offload ---------------------------------------------------------------------


def tradeoff_curve(scores: np.ndarray, lower_is_confident: bool, edge_ok: np.ndarray, cloud_ok: np.ndarray,
                   max_points: int = 256) -> dict[str, list[float]]:
    """Hybrid accuracy after offloading the k least confident images, k = 0..N (at most ``max_points`` points)."""
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s if lower_is_confident else s, kind="stable")  # least confident first
    return _cumulative(np.asarray(edge_ok, bool), np.asarray(cloud_ok, bool), order, max_points)


def oracle_curve(edge_ok: np.ndarray, cloud_ok: np.ndarray, max_points: int = 256) -> dict[str, list[float]]:
    """The limit: offload the images the cloud fixes first, then those where both agree, the cloud's mistakes last."""
    e, c = np.asarray(edge_ok, bool), np.asarray(cloud_ok, bool)
    order = np.argsort(-(c.astype(int) - e.astype(int)), kind="stable")
    return _cumulative(e, c, order, max_points)


def _cumulative(e: np.ndarray, c: np.ndarray, order: np.ndarray, max_points: int) -> dict[str, list[float]]:
    n = len(e)
    gain = (c.astype(int) - e.astype(int))[order]
    acc = e.mean() + np.concatenate([[0], np.cumsum(gain)]) / n
    ks = np.unique(np.linspace(0, n, min(n + 1, max_points)).round().astype(int))
    return {"offload": (ks / n).tolist(), "hybrid_accuracy": acc[ks].tolist()}


def offload_to_reach(curve: Mapping[str, Sequence[float]], accuracy: float) -> float:
    """The smallest offload on ``curve`` whose accuracy is at least ``accuracy`` (1.0 if none)."""
    ok = [o for o, a in zip(curve["offload"], curve["hybrid_accuracy"], strict=True) if a >= accuracy - 1e-12]
    return min(ok) if ok else 1.0
