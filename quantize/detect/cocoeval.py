"""Detection accuracy with pycocotools (the COCO reference implementation), not a home-made mAP.

``mAP@0.5`` is COCO's AP at IoU 0.5, ``mAP`` the mean over IoU 0.50:0.95; both
average over the classes present in the ground truth, up to 100 detections per
image. The per-image matches of two models can be mixed (image i answered by
the edge or by the cloud) and re-accumulated without re-matching, which is
what makes an mAP-versus-offload curve cheap.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_sdk.detection import Detections


@dataclass
class GroundTruth:
    """Boxes (x0, y0, x1, y1 pixels) and classes per image, in the frame the predictions will be in."""

    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    sizes: list[tuple[int, int]]  # (height, width)
    labels: list[str]


def _coco_gt(gt: GroundTruth):
    from pycocotools.coco import COCO

    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(gt.sizes)]
    anns = []
    for i, (bs, cs) in enumerate(zip(gt.boxes, gt.classes, strict=True)):
        for b, c in zip(np.asarray(bs, np.float64).reshape(-1, 4), cs, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], w, h], "area": w * h})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(gt.labels)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_dt(coco_gt, preds: Sequence[Detections]):
    rows = []
    for i, d in enumerate(preds):
        for b, s, c in zip(np.asarray(d.boxes, np.float64), d.scores, d.classes, strict=True):
            rows.append([i + 1, b[0], b[1], b[2] - b[0], b[3] - b[1], float(s), int(c) + 1])
    if not rows:  # loadRes refuses an empty list; a far-away zero-score box changes no AP
        rows.append([1, -10.0, -10.0, 1.0, 1.0, 0.0, 1])
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(np.asarray(rows, np.float64))


class Matched:
    """One model's predictions matched to the ground truth (COCOeval.evaluate), ready to accumulate."""

    def __init__(self, gt: GroundTruth, preds: Sequence[Detections], coco_gt=None):
        from pycocotools.cocoeval import COCOeval

        if len(preds) != len(gt.boxes):
            raise ValueError(f"{len(preds)} predictions for {len(gt.boxes)} images")
        self.gt = gt
        self.coco_gt = coco_gt or _coco_gt(gt)
        self.e = COCOeval(self.coco_gt, _coco_dt(self.coco_gt, preds), "bbox")
        with contextlib.redirect_stdout(io.StringIO()):
            self.e.evaluate()
        self.eval_imgs = list(self.e.evalImgs)  # this model's own matches; accumulate() reads e.evalImgs
        self.n_images = len(gt.boxes)


@dataclass
class DetectionScores:
    map50: float  # AP at IoU 0.5
    map: float  # AP averaged over IoU 0.50:0.95
    per_class_ap50: dict[str, float]  # NaN-free: classes absent from the ground truth are left out
    per_class_ap: dict[str, float]
    n_images: int
    n_boxes: int

    def as_dict(self) -> dict:
        return {"map50": self.map50, "map": self.map, "per_class_ap50": self.per_class_ap50,
                "per_class_ap": self.per_class_ap, "n_images": self.n_images, "n_boxes": self.n_boxes}


def _accumulate(m: Matched, eval_imgs: list) -> DetectionScores:
    e = m.e
    e.evalImgs = eval_imgs
    with contextlib.redirect_stdout(io.StringIO()):
        e.accumulate()
    prec = e.eval["precision"]  # [iou T, recall R, class K, area A, maxDets M]
    p = prec[:, :, :, 0, -1]  # all areas, 100 detections

    def mean_ap(x: np.ndarray) -> float:
        v = x[x > -1]
        return float(v.mean()) if v.size else float("nan")

    labels = m.gt.labels
    cat_ids = e.params.catIds
    per50, per = {}, {}
    for k, cid in enumerate(cat_ids):
        ap50 = mean_ap(p[0, :, k])
        if not np.isnan(ap50):
            per50[labels[cid - 1]] = ap50
            per[labels[cid - 1]] = mean_ap(p[:, :, k])
    return DetectionScores(mean_ap(p[0]), mean_ap(p), per50, per, m.n_images,
                           int(sum(len(c) for c in m.gt.classes)))


def score(gt: GroundTruth, preds: Sequence[Detections]) -> DetectionScores:
    """mAP@0.5, mAP@[.5:.95] and per-class AP of one set of predictions."""
    m = Matched(gt, preds)
    return _accumulate(m, m.eval_imgs)


def mixed(edge: Matched, cloud: Matched, use_cloud: np.ndarray) -> DetectionScores:
    """The scores when image i is answered by the cloud where ``use_cloud[i]``, else by the edge."""
    use_cloud = np.asarray(use_cloud, bool)
    n = edge.n_images
    if use_cloud.shape != (n,) or cloud.n_images != n:
        raise ValueError("edge, cloud and use_cloud must cover the same images")
    # evalImgs is ordered [category][area range][image]; image ids are 1..n in order
    picks = np.tile(use_cloud, len(edge.eval_imgs) // n)
    eval_imgs = [c if pick else e for e, c, pick in zip(edge.eval_imgs, cloud.eval_imgs, picks, strict=True)]
    return _accumulate(edge, eval_imgs)


def ground_truth_from(records, labels: list[str]) -> GroundTruth:
    """GroundTruth in original-image pixels from quantize.detect.annotations.ImageRecord items."""
    return GroundTruth([r.boxes for r in records], [r.classes for r in records],
                       [(r.height, r.width) for r in records], list(labels))
