"""When to fall back: sweep a confidence threshold per routing metric on the validation split.

The hybrid answers with the edge model when it is confident and with the cloud
otherwise. For each metric and threshold we know, on held-out data, the share of
images sent to the cloud (offload) and the hybrid's accuracy; the chosen point
is read off that curve, never assumed. Everything here is pure numpy except
:func:`plot_curves`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.policy import METRICS, confidence, is_confident  # noqa: F401  (re-exported for callers)


def confidence_scores(probs: np.ndarray, metric: str) -> np.ndarray:
    """Scores of a batch [N, C], by the one definition the device uses (edge_sdk.policy)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, classes>=2), got shape {p.shape}")
    return np.asarray(confidence(p, metric), np.float64)


def candidate_thresholds(scores: np.ndarray, max_points: int = 256) -> np.ndarray:
    """Midpoints between distinct observed scores, plus one beyond each end.

    Midpoints keep the decision stable against float32/float64 rounding on the
    device; the two ends give "everything to the edge" and "everything to the cloud".
    """
    u = np.unique(np.asarray(scores, np.float64))
    if len(u) > max_points:
        u = np.unique(np.quantile(u, np.linspace(0, 1, max_points)))
    pad = max(1e-6, float(np.diff(u).min()) / 2 if len(u) > 1 else 1e-6)
    mids = (u[:-1] + u[1:]) / 2
    return np.concatenate([[u[0] - pad], mids, [u[-1] + pad]])


@dataclass
class Curve:
    metric: str
    thresholds: np.ndarray
    offload: np.ndarray  # share of images sent to the cloud
    accuracy: np.ndarray  # hybrid accuracy (fraction)

    def as_dict(self) -> dict[str, list[float]]:
        return {"threshold": [float(t) for t in self.thresholds], "offload": [float(o) for o in self.offload],
                "hybrid_accuracy": [float(a) for a in self.accuracy]}


def sweep(edge_probs: np.ndarray, cloud_probs: np.ndarray, y: np.ndarray, metric: str, max_points: int = 256) -> Curve:
    """Offload and hybrid accuracy at every candidate threshold of one metric."""
    y = np.asarray(y)
    if not (len(edge_probs) == len(cloud_probs) == len(y)) or len(y) == 0:
        raise ValueError("edge probabilities, cloud probabilities and labels must be equally long and non-empty")
    scores = confidence_scores(edge_probs, metric)
    edge_ok = np.asarray(edge_probs).argmax(1) == y
    cloud_ok = np.asarray(cloud_probs).argmax(1) == y
    ts = candidate_thresholds(scores, max_points)
    conf = is_confident(scores[None, :], ts[:, None], metric)  # (thresholds, images)
    acc = np.where(conf, edge_ok[None, :], cloud_ok[None, :]).mean(axis=1)
    return Curve(metric, ts, 1.0 - conf.mean(axis=1), acc)


@dataclass
class Choice:
    metric: str
    threshold: float
    offload: float
    accuracy: float
    index: int  # position of the point in its curve

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold, "offload": self.offload,
                "hybrid_accuracy": self.accuracy, "index": self.index}


def pick_point(curve: Curve, *, min_accuracy: float | None = None, max_offload: float | None = None) -> Choice:
    """Lowest offload reaching ``min_accuracy`` (ties: best accuracy), or best accuracy within ``max_offload``."""
    if (min_accuracy is None) == (max_offload is None):
        raise ValueError("give exactly one of min_accuracy and max_offload")
    eps = 1e-12
    idx = np.arange(len(curve.thresholds))
    if min_accuracy is not None:
        ok = idx[curve.accuracy >= min_accuracy - eps]
        if len(ok) == 0:  # cannot happen with the offload-everything end point, but be explicit
            ok = idx[curve.offload >= 1 - eps]
        best = min(ok, key=lambda i: (curve.offload[i], -curve.accuracy[i]))
    else:
        ok = idx[curve.offload <= max_offload + eps]
        best = min(ok, key=lambda i: (-curve.accuracy[i], curve.offload[i]))
    return Choice(curve.metric, float(curve.thresholds[best]), float(curve.offload[best]), float(curve.accuracy[best]),
                  int(best))


@dataclass
class Calibration:
    curves: dict[str, Curve]
    chosen: Choice
    per_metric: dict[str, Choice]
    edge_accuracy: float
    cloud_accuracy: float
    n: int
    target_gap_points: float
    max_offload: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": "val", "n": self.n,
            "mode": "max_offload" if self.max_offload is not None else "target_gap",
            "target_gap_points": self.target_gap_points, "max_offload": self.max_offload,
            "edge_accuracy": self.edge_accuracy, "cloud_accuracy": self.cloud_accuracy,
            "min_hybrid_accuracy": None if self.max_offload is not None
            else self.cloud_accuracy - self.target_gap_points / 100.0,
            "chosen": self.chosen.as_dict(),
            "per_metric": {m: c.as_dict() for m, c in self.per_metric.items()},
            "curves": {m: c.as_dict() for m, c in self.curves.items()},
        }


def calibrate(
    edge_probs: np.ndarray,
    cloud_probs: np.ndarray,
    y: np.ndarray,
    *,
    target_gap: float = 0.5,
    max_offload: float | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> Calibration:
    """Sweep every metric and choose one point.

    Default: for each metric the lowest offload whose hybrid accuracy is at least
    cloud accuracy - ``target_gap`` points; the metric with the lowest offload wins
    (ties: higher accuracy, then the order of ``metrics``). With ``max_offload``:
    the best hybrid accuracy within that offload; the most accurate metric wins
    (ties: lower offload).
    """
    if max_offload is not None and not 0.0 <= max_offload <= 1.0:
        raise ValueError(f"max_offload must be within [0, 1], not {max_offload}")
    if target_gap < 0:
        raise ValueError(f"target_gap must be >= 0 points, not {target_gap}")
    y = np.asarray(y)
    cloud_acc = float((np.asarray(cloud_probs).argmax(1) == y).mean())
    edge_acc = float((np.asarray(edge_probs).argmax(1) == y).mean())
    curves = {m: sweep(edge_probs, cloud_probs, y, m) for m in metrics}
    if max_offload is None:
        floor = cloud_acc - target_gap / 100.0
        per = {m: pick_point(c, min_accuracy=floor) for m, c in curves.items()}
        key = lambda m: (per[m].offload, -per[m].accuracy, metrics.index(m))  # noqa: E731
    else:
        per = {m: pick_point(c, max_offload=max_offload) for m, c in curves.items()}
        key = lambda m: (-per[m].accuracy, per[m].offload, metrics.index(m))  # noqa: E731
    chosen = per[min(metrics, key=key)]
    return Calibration(curves, chosen, per, edge_acc, cloud_acc, int(len(y)), float(target_gap), max_offload)


def plot_curves(cal: Calibration, path: Path, title: str = "hybrid accuracy vs offload (validation split)") -> Path:
    """Accuracy against offload fraction per metric; the chosen point and the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for m, c in cal.curves.items():
        order = np.argsort(c.offload, kind="stable")
        ax.plot(c.offload[order], 100 * c.accuracy[order], marker=".", ms=3, lw=1.2, label=m)
    ax.axhline(100 * cal.cloud_accuracy, color="grey", ls="--", lw=1,
               label=f"cloud only {100 * cal.cloud_accuracy:.2f}%")
    ax.axhline(100 * cal.edge_accuracy, color="grey", ls=":", lw=1, label=f"edge only {100 * cal.edge_accuracy:.2f}%")
    if cal.max_offload is None:
        ax.axhline(100 * cal.cloud_accuracy - cal.target_gap_points, color="tab:red", ls="-.", lw=0.8,
                   label=f"target (cloud - {cal.target_gap_points:g} pt)")
    else:
        ax.axvline(cal.max_offload, color="tab:red", ls="-.", lw=0.8, label=f"max offload {cal.max_offload:g}")
    ch = cal.chosen
    ax.plot([ch.offload], [100 * ch.accuracy], marker="*", ms=16, color="black", zorder=5, ls="none",
            label=f"chosen: {ch.metric} t={ch.threshold:.4g} ({100 * ch.offload:.1f}% offload)")
    ax.set_xlabel("offload fraction (share sent to the cloud)")
    ax.set_ylabel("hybrid accuracy (%)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
