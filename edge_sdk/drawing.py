"""Boxes on a picture: what the camera example, `evaluate` and the demo draw (OpenCV, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195)]


def color_of(cls: int) -> tuple[int, int, int]:
    """A fixed colour per class index.

    Args:
        cls: the class index.

    Returns:
        An RGB triple.
    """
    return _PALETTE[int(cls) % len(_PALETTE)]


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, classes: Sequence[int], labels: Sequence[str],
               scores: Sequence[float] | None = None, *, bgr: bool = False, thickness: int = 1) -> np.ndarray:
    """A copy of ``rgb`` (or a BGR frame with ``bgr=True``) with each box outlined and captioned.

    Args:
        rgb: the picture (HxWx3 uint8).
        boxes: [n, 4] (x0, y0, x1, y1) in its pixels.
        classes: each box's class index.
        labels: the class names.
        scores: each box's score, added to its caption (None: labels only).
        bgr: the picture is in OpenCV's BGR order.
        thickness: the outline's width in pixels.

    Returns:
        The picture with the boxes drawn.
    """
    out: np.ndarray = np.ascontiguousarray(rgb).copy()
    h = out.shape[0]
    scale = max(0.3, min(1.0, h / 640))
    for k, (b, c) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), classes, strict=True)):
        col = color_of(int(c))
        col = col[::-1] if bgr else col
        x0, y0, x1, y1 = (int(round(float(v))) for v in b)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), col, thickness, cv2.LINE_AA)
        text = labels[int(c)] if scores is None else f"{labels[int(c)]} {float(scores[k]):.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, 1)
        ty = y0 - 2 if y0 - th - 2 >= 0 else min(h - 1, y1 + th + 2)
        cv2.rectangle(out, (x0, ty - th - 1), (x0 + tw + 1, ty + 1), col, -1)
        cv2.putText(out, text, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
