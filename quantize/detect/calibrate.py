"""When a frame goes to the cloud: an mAP-versus-offload curve per routing score, on validation frames.

For a threshold t, frames whose uncertainty (edge_sdk.detection.frame_uncertainty)
is above t are answered by the cloud detector and the rest by the int8 edge
detector; the hybrid's mAP@0.5 is measured with pycocotools on that mix (the
per-image matches of both models are computed once and re-accumulated per
point). The chosen point is read off the curve exactly as for classification
(quantize.calibrate.pick_point): the lowest offload within ``target_gap``
points of the cloud's mAP@0.5, or the best mAP within ``max_offload``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_sdk.detection import DETECT_METRICS, Detections, frame_uncertainty

from ..calibrate import Choice, Curve, candidate_thresholds, pick_point
from .cocoeval import Matched, mixed


def uncertainties(dets: Sequence[Detections], metric: str) -> np.ndarray:
    return np.array([frame_uncertainty(d.scores, metric) for d in dets], np.float64)


def sweep(edge: Matched, cloud: Matched, u: np.ndarray, metric: str, max_points: int = 30) -> tuple[Curve, np.ndarray]:
    """(curve of mAP@0.5 against offload, mAP@[.5:.95] at the same points) for one routing score."""
    ts = candidate_thresholds(u, max_points)
    off, m50, m = [], [], []
    for t in ts:
        use_cloud = u > t
        s = mixed(edge, cloud, use_cloud)
        off.append(use_cloud.mean())
        m50.append(s.map50)
        m.append(s.map)
    return Curve(metric, ts, np.asarray(off), np.asarray(m50)), np.asarray(m)


@dataclass
class DetectCalibration:
    """Field names follow quantize.calibrate.Calibration, so its plot draws this too; 'accuracy' is mAP@0.5."""

    curves: dict[str, Curve]
    map_curves: dict[str, np.ndarray]
    chosen: Choice
    per_metric: dict[str, Choice]
    edge_accuracy: float
    cloud_accuracy: float
    n: int
    target_gap_points: float
    max_offload: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": "val", "n": self.n, "score": "map50",
            "mode": "max_offload" if self.max_offload is not None else "target_gap",
            "target_gap_points": self.target_gap_points, "max_offload": self.max_offload,
            "edge_map50": self.edge_accuracy, "cloud_map50": self.cloud_accuracy,
            "min_hybrid_map50": None if self.max_offload is not None
            else self.cloud_accuracy - self.target_gap_points / 100.0,
            "chosen": self.chosen.as_dict(),
            "per_metric": {m: c.as_dict() for m, c in self.per_metric.items()},
            "curves": {m: {"threshold": c.thresholds.tolist(), "offload": c.offload.tolist(),
                           "hybrid_map50": c.accuracy.tolist(), "hybrid_map": self.map_curves[m].tolist()}
                       for m, c in self.curves.items()},
        }


def calibrate(edge_dets: Sequence[Detections], edge: Matched, cloud: Matched, *, target_gap: float = 0.5,
              max_offload: float | None = None, metrics: Sequence[str] = DETECT_METRICS) -> DetectCalibration:
    """Sweep each routing score on validation frames and choose one (metric, threshold)."""
    if max_offload is not None and not 0.0 <= max_offload <= 1.0:
        raise ValueError(f"max_offload must be within [0, 1], not {max_offload}")
    if target_gap < 0:
        raise ValueError(f"target_gap must be >= 0 points, not {target_gap}")
    n = edge.n_images
    cloud_map50 = mixed(edge, cloud, np.ones(n, bool)).map50
    edge_map50 = mixed(edge, cloud, np.zeros(n, bool)).map50
    curves, map_curves = {}, {}
    for m in metrics:
        curves[m], map_curves[m] = sweep(edge, cloud, uncertainties(edge_dets, m), m)
    if max_offload is None:
        per = {m: pick_point(c, min_accuracy=cloud_map50 - target_gap / 100.0) for m, c in curves.items()}
        key = lambda m: (per[m].offload, -per[m].accuracy, list(metrics).index(m))  # noqa: E731
    else:
        per = {m: pick_point(c, max_offload=max_offload) for m, c in curves.items()}
        key = lambda m: (-per[m].accuracy, per[m].offload, list(metrics).index(m))  # noqa: E731
    chosen = per[min(metrics, key=key)]
    return DetectCalibration(curves, map_curves, chosen, per, edge_map50, cloud_map50, n, float(target_gap),
                             max_offload)
