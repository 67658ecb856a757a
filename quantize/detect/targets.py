"""CenterNet training targets and loss (Zhou et al. 2019, "Objects as Points"; CornerNet's Gaussian radius).

A target tensor is [H/4, W/4, classes + 5]: the per-class centre heatmaps
(a Gaussian splat per object, 1 at its centre cell), then at each centre cell
the box width and height in cells, the centre's sub-cell offset, and a 1 in the
last channel marking the cell.
"""

from __future__ import annotations

import numpy as np

from .model import STRIDE

SIZE_WEIGHT = 0.1  # the paper's lambda_size
OFFSET_WEIGHT = 1.0


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """The Gaussian radius of CornerNet (Law and Deng 2018) as CenterNet's code computes it (each root halved)."""
    r = []
    for a, b, c in ((1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)),
                    (4, 2 * (h + w), (1 - min_overlap) * w * h),
                    (4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h)):
        sq = np.sqrt(b * b - 4 * a * c)
        r.append((b + sq) / 2)
    return float(min(r))


def _splat(heat: np.ndarray, cx: int, cy: int, radius: int) -> None:
    d = 2 * radius + 1
    sigma = d / 6
    g1 = np.exp(-(np.arange(-radius, radius + 1, dtype=np.float32) ** 2) / (2 * sigma * sigma))
    g = np.outer(g1, g1)
    hgt, wid = heat.shape
    left, right = min(cx, radius), min(wid - cx, radius + 1)
    t, b = min(cy, radius), min(hgt - cy, radius + 1)
    region = heat[cy - t: cy + b, cx - left: cx + right]
    np.maximum(region, g[radius - t: radius + b, radius - left: radius + right], out=region)


def encode(boxes: np.ndarray, classes: np.ndarray, height: int, width: int, num_classes: int) -> np.ndarray:
    """Boxes (x0, y0, x1, y1 input pixels) and classes -> the [H/4, W/4, classes + 5] target."""
    oh, ow = height // STRIDE, width // STRIDE
    y = np.zeros((oh, ow, num_classes + 5), np.float32)
    for (x0, y0, x1, y1), c in zip(np.asarray(boxes, np.float32) / STRIDE, classes, strict=True):
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), ow - 1), min(int(cy), oh - 1)
        radius = max(0, int(gaussian_radius(h, w)))
        _splat(y[..., int(c)], ix, iy, radius)
        y[iy, ix, num_classes:] = (w, h, cx - ix, cy - iy, 1.0)
    return y


def centernet_loss(num_classes: int):
    """Focal loss on the heatmap (alpha 2, beta 4) + L1 on size and offset at centre cells, per object."""
    from keras import ops

    def loss(y_true, y_pred):
        gt, pred = y_true[..., :num_classes], ops.clip(y_pred[..., :num_classes], 1e-4, 1 - 1e-4)
        mask = y_true[..., -1:]
        pos = ops.cast(ops.equal(gt, 1.0), "float32")
        pos_loss = ops.log(pred) * ops.square(1 - pred) * pos
        neg_loss = ops.log(1 - pred) * ops.square(pred) * ops.power(1 - gt, 4) * (1 - pos)
        n = ops.maximum(ops.sum(mask), 1.0)
        focal = -(ops.sum(pos_loss) + ops.sum(neg_loss)) / n
        reg = ops.abs(y_pred[..., num_classes:] - y_true[..., num_classes:num_classes + 4]) * mask
        size_l1 = ops.sum(reg[..., :2]) / n
        off_l1 = ops.sum(reg[..., 2:]) / n
        return focal + SIZE_WEIGHT * size_l1 + OFFSET_WEIGHT * off_l1

    return loss
