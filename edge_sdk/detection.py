"""Turning a CenterNet detector's outputs into boxes, in numpy: what a detect bundle's models mean.

Decoding follows Zhou et al. 2019 ("Objects as Points"): a cell is a detection
when its centre score is the maximum of its 3x3 neighbourhood (the paper's
max-pool in place of NMS); the top-K such peaks become boxes from the size and
offset outputs at the same cell. Boxes come out in the model's input pixels and
:func:`to_original` maps them back through the resize the manifest names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

OUTPUT_NAMES: tuple[str, str, str] = ("heatmap", "size", "offset")  # the model's outputs
SERVED_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "classes", "count")  # what a server answers on v2 infer


class DetectionSpec(BaseModel):
    """How a detect bundle's outputs decode: the output stride, how many peaks to keep, and the lowest score kept."""

    model_config = ConfigDict(extra="forbid")
    stride: int = Field(4, ge=1, le=64)
    max_detections: int = Field(100, ge=1, le=1000)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    report_score: float = Field(0.3, ge=0.0, le=1.0)


@dataclass
class Detections:
    """Boxes float32 [n, 4] (x0, y0, x1, y1), scores float32 [n] (descending), classes int64 [n]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        """No objects.

        Returns:
            Detections with zero rows.
        """
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def above(self, score: float) -> Detections:
        """The detections scoring at least ``score``.

        Args:
            score: the lowest score kept.

        Returns:
            A new Detections, order kept.
        """
        keep = self.scores >= score
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


def local_peaks(heat: np.ndarray) -> np.ndarray:
    """The cells of a heatmap that equal the maximum of their 3x3 neighbourhood (CenterNet's max-pool NMS).

    Args:
        heat: a [H, W, C] map.

    Returns:
        A bool mask of the same shape.
    """
    h, w = heat.shape[:2]
    pad = np.pad(heat, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    pooled = heat.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                np.maximum(pooled, pad[dy: dy + h, dx: dx + w], out=pooled)
    peaks: np.ndarray = heat >= pooled
    return peaks


def peak_scores(heat: np.ndarray, k: int, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The best peaks of a heatmap.

    Args:
        heat: a [H, W, C] map.
        k: the most peaks to keep.
        min_score: the lowest score kept.

    Returns:
        Flat indices into ``heat`` and their scores, the top ``k`` peaks (descending) with score >= ``min_score``.
    """
    flat = np.where(local_peaks(heat), heat, -1.0).ravel()
    cand = np.flatnonzero(flat >= min_score) if min_score > 0 else np.flatnonzero(flat >= 0)
    if len(cand) > k:
        cand = cand[np.argpartition(-flat[cand], k - 1)[:k]]
    order = np.argsort(-flat[cand], kind="stable")
    idx = cand[order]
    return idx, flat[idx].astype(np.float32)


def decode(heat: np.ndarray, size: np.ndarray, offset: np.ndarray, spec: DetectionSpec) -> Detections:
    """One image's detector outputs -> its detections (centre = peak cell + offset, then +- size / 2).

    Args:
        heat: the centre heatmaps [H, W, C].
        size: box width and height in output cells [H, W, 2].
        offset: the centre's position from the cell's corner, in cells [H, W, 2].
        spec: the stride, how many peaks to keep and the lowest score.

    Returns:
        Detections in model-input pixels, best first.
    """
    c = heat.shape[2]
    idx, scores = peak_scores(heat, spec.max_detections, spec.min_score)
    if len(idx) == 0:
        return Detections.empty()
    cell, cls = np.divmod(idx, c)
    ys, xs = np.divmod(cell, heat.shape[1])
    wh = size[ys, xs].astype(np.float32)
    cx = (xs + offset[ys, xs, 0]) * spec.stride
    cy = (ys + offset[ys, xs, 1]) * spec.stride
    half_w, half_h = wh[:, 0] * (spec.stride / 2), wh[:, 1] * (spec.stride / 2)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).astype(np.float32)
    return Detections(boxes, scores, cls.astype(np.int64))


def _model_to_image(mode: str, model_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[float, ...]:
    """(sx, sy, ox, oy) with x_image = x_model * sx + ox (and so for y): the inverse of the manifest's resize."""
    mh, mw = model_hw
    h, w = image_hw
    if mode == "stretch":
        return w / mw, h / mh, 0.0, 0.0
    if mode == "letterbox":
        s = min(mh / h, mw / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        sx, sy = w / nw, h / nh
        return sx, sy, -((mw - nw) // 2) * sx, -((mh - nh) // 2) * sy
    if mode == "center_crop":
        s = max(mh / h, mw / w)
        nh, nw = max(mh, round(h * s)), max(mw, round(w * s))
        sx, sy = w / nw, h / nh
        return sx, sy, ((nw - mw) // 2) * sx, ((nh - mh) // 2) * sy
    raise ValueError(f"unknown resize mode {mode!r}")


def to_original(boxes: np.ndarray, mode: str, model_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Boxes in model-input pixels -> pixels of the original image, undoing ``edge_sdk.preprocess.resize``.

    Args:
        boxes: [n, 4] (x0, y0, x1, y1) in model-input pixels.
        mode: the resize (stretch, letterbox, center_crop).
        model_hw: the model input's (height, width).
        image_hw: the original image's (height, width).

    Returns:
        float32 [n, 4] in the original image's pixels, clipped to it.
    """
    sx, sy, ox, oy = _model_to_image(mode, model_hw, image_hw)
    b: np.ndarray = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = (b[:, [0, 2]] * sx + ox).clip(0, image_hw[1])
    b[:, [1, 3]] = (b[:, [1, 3]] * sy + oy).clip(0, image_hw[0])
    return b


def to_model(boxes: np.ndarray, mode: str, model_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Original-image pixels -> model-input pixels (training targets): the inverse of :func:`to_original`.

    Args:
        boxes: [n, 4] (x0, y0, x1, y1) in the original image's pixels.
        mode: the resize (stretch, letterbox, center_crop).
        model_hw: the model input's (height, width).
        image_hw: the original image's (height, width).

    Returns:
        float32 [n, 4] in model-input pixels.
    """
    sx, sy, ox, oy = _model_to_image(mode, model_hw, image_hw)
    b: np.ndarray = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = (b[:, [0, 2]] - ox) / sx
    b[:, [1, 3]] = (b[:, [1, 3]] - oy) / sy
    return b


# --- how unsure a frame is: the routing scores of a detect bundle ---------------------------------

DetectMetric = Literal["band_mass", "band_count", "top_entropy"]
DETECT_METRICS: tuple[str, ...] = ("band_mass", "band_count", "top_entropy")
BAND = (0.1, 0.5)  # a peak scoring here might be an object or not; above it the edge is sure, below it is background


def frame_uncertainty(scores: np.ndarray, metric: str = "band_mass", band: tuple[float, float] = BAND) -> float:
    """How unsure the edge is about one frame, from its candidate peaks' scores; higher is less sure.

    A CenterNet peak's score estimates the probability that an object of that
    class is centred there. Peaks above the band are confident detections, peaks
    below it confident background; a peak inside the band is a coin toss the edge
    may get wrong either way (a missed object, a false box, or the right box
    with the wrong class, which splits its score across two class maps and so
    lands two peaks in the band). The frame's score adds up that doubt:

    * ``band_mass``: the sum of in-band scores (an expected count of unsure objects);
    * ``band_count``: the number of in-band peaks;
    * ``top_entropy``: the sum of the binary entropies (bits) of all candidate peaks.

    Args:
        scores: the frame's candidate peak scores.
        metric: band_mass, band_count or top_entropy.
        band: the unsure score range [lo, hi).

    Returns:
        The frame's uncertainty (0 for a frame the edge is sure of).

    Raises:
        ValueError: an unknown metric.
    """
    s = np.asarray(scores, np.float64)
    lo, hi = band
    if metric == "band_mass":
        return float(s[(s >= lo) & (s < hi)].sum())
    if metric == "band_count":
        return float(((s >= lo) & (s < hi)).sum())
    if metric == "top_entropy":
        p = np.clip(s, 1e-6, 1 - 1e-6)
        return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)).sum())
    raise ValueError(f"unknown detection routing metric {metric!r}; choose from {', '.join(DETECT_METRICS)}")


# --- the service's /v1/detect answer ----------------------------------------------------------------


class DetectedObject(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in the image's pixels", min_length=4, max_length=4)
    label: str
    class_id: int
    score: float


class ImageSize(BaseModel):
    height: int
    width: int


class DetectResponse(BaseModel):
    """``POST /v1/detect``: the objects found in the image, best first."""

    model_name: str
    image_size: ImageSize
    detections: list[DetectedObject]


def parse_served(body: Any, n: int, num_classes: int) -> list[Detections]:
    """A v2 infer answer of a detect model (outputs boxes, scores, classes, count) -> one Detections per image.

    Args:
        body: the decoded JSON answer.
        n: how many images the request carried.
        num_classes: how many classes the model has.

    Returns:
        One Detections per image, boxes in the pixels of each image as sent.

    Raises:
        ValueError: anything malformed (a bad answer, never a crash).
    """
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise ValueError("response is not a v2 infer answer (no 'outputs' list)")
    by_name = {o.get("name"): o for o in body["outputs"] if isinstance(o, dict)}
    missing = [k for k in SERVED_OUTPUTS if k not in by_name]
    if missing:
        raise ValueError(f"response lacks output(s) {missing} (has: {sorted(map(str, by_name))})")
    arrays = {k: _served_array(by_name[k], k) for k in SERVED_OUTPUTS}
    boxes, scores, classes, count = (arrays[k] for k in SERVED_OUTPUTS)
    k = scores.shape[1] if scores.ndim == 2 else -1
    if boxes.shape != (n, k, 4) or scores.shape != (n, k) or classes.shape != (n, k) or count.shape != (n,):
        raise ValueError(f"detection outputs have shapes {boxes.shape}, {scores.shape}, {classes.shape}, "
                         f"{count.shape}; expected [{n}, K, 4], [{n}, K], [{n}, K], [{n}]")
    out = []
    for i in range(n):
        c = int(count[i])
        if not 0 <= c <= k:
            raise ValueError(f"count {c} for image {i} is outside 0..{k}")
        cls = classes[i, :c].astype(np.int64)
        if ((cls < 0) | (cls >= num_classes)).any():
            raise ValueError(f"image {i}: class index out of range 0..{num_classes - 1}")
        out.append(Detections(boxes[i, :c].astype(np.float32), scores[i, :c].astype(np.float32), cls))
    return out


def _served_array(t: dict[str, Any], name: str) -> np.ndarray:
    try:
        a = np.asarray(t["data"], np.float64).reshape([int(d) for d in t["shape"]])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"output {name!r} has no data matching its shape") from None
    if not np.isfinite(a).all():
        raise ValueError(f"output {name!r} holds NaN or Inf")
    return a
