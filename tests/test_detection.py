"""Numpy decoding of CenterNet outputs, box mapping back to the original image, routing scores, pycocotools mAP."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.bundle import Manifest
from edge_sdk.detection import (
    Detections,
    DetectionSpec,
    decode,
    frame_uncertainty,
    local_peaks,
    to_model,
    to_original,
)
from edge_sdk.preprocess import InputSpec, resize
from quantize.detect import cocoeval, synth
from quantize.detect.targets import encode, gaussian_radius


def perfect_outputs(boxes, classes, size=160, num_classes=14):
    """The outputs a perfect detector would give: the training target itself."""
    y = encode(boxes, classes, size, size, num_classes)
    return y[..., :num_classes], y[..., num_classes:num_classes + 2], y[..., num_classes + 2:num_classes + 4]


def test_decoding_the_target_gives_back_the_boxes():
    rgb, boxes, classes = synth.Generator("test").image(7)
    d = decode(*perfect_outputs(boxes, classes), DetectionSpec(min_score=0.5))
    assert len(d) == len(boxes)
    order = np.lexsort((d.boxes[:, 0], d.classes))
    want = np.lexsort((boxes[:, 0], classes))
    np.testing.assert_allclose(d.boxes[order], boxes[want], atol=1e-4)
    assert np.array_equal(d.classes[order], classes[want]) and (d.scores == 1).all()


def test_peaks_are_3x3_maxima_and_top_k_is_kept():
    heat = np.zeros((10, 10, 2), np.float32)
    heat[2, 2, 0], heat[2, 3, 0], heat[7, 7, 1], heat[5, 5, 0] = 0.9, 0.5, 0.7, 0.3
    peaks = local_peaks(heat) & (heat > 0)
    assert set(zip(*np.nonzero(peaks), strict=True)) == {(2, 2, 0), (7, 7, 1), (5, 5, 0)}
    d = decode(heat, np.ones((10, 10, 2), np.float32), np.zeros((10, 10, 2), np.float32),
               DetectionSpec(max_detections=2, min_score=0.1))
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    assert d.classes.tolist() == [0, 1]
    np.testing.assert_allclose(d.boxes[0], [6, 6, 10, 10])  # centre (2*4, 2*4), size 1 cell = 4 px


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
def test_boxes_map_back_through_each_resize(mode):
    h, w = 90, 200
    img = np.zeros((h, w, 3), np.uint8)
    img[30:60, 90:120] = 255  # inside the centre crop too
    small = resize(img, 160, 160, mode)
    ys, xs = np.nonzero(small[..., 0] > 127)
    in_model = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = to_original(in_model, mode, (160, 160), (h, w))
    np.testing.assert_allclose(back[0], [90, 30, 120, 60], atol=2.5)
    np.testing.assert_allclose(to_model(back, mode, (160, 160), (h, w)), in_model, atol=1e-3)


def test_gaussian_radius_grows_with_the_box():
    assert 0 < gaussian_radius(2, 2) < gaussian_radius(10, 10) < gaussian_radius(20, 20)


def test_frame_uncertainty_scores():
    sure = np.array([0.95, 0.9, 0.02, 0.01])
    unsure = np.array([0.95, 0.45, 0.3, 0.02])
    for m in ("band_mass", "band_count", "top_entropy"):
        assert frame_uncertainty(unsure, m) > frame_uncertainty(sure, m)
    assert frame_uncertainty(sure, "band_count") == 0 and frame_uncertainty(unsure, "band_mass") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown detection routing metric"):
        frame_uncertainty(sure, "max_prob")


def _gt_and_preds(n=6):
    gen = synth.Generator("val")
    images = [gen.image(i) for i in range(n)]
    gt = cocoeval.GroundTruth([b for _, b, _ in images], [c for _, _, c in images], [(160, 160)] * n, synth.LABELS)
    perfect = [Detections(b, np.ones(len(b), np.float32), c) for _, b, c in images]
    return gt, perfect


def test_cocoeval_perfect_and_shifted_predictions():
    gt, perfect = _gt_and_preds()
    s = cocoeval.score(gt, perfect)
    assert s.map50 == pytest.approx(1.0) and s.map == pytest.approx(1.0)
    shifted = [Detections(d.boxes + np.array([3, 3, 3, 3], np.float32), d.scores, d.classes) for d in perfect]
    t = cocoeval.score(gt, shifted)
    assert t.map < s.map and t.map50 > 0.5
    empty = cocoeval.score(gt, [Detections.empty() for _ in perfect])
    assert empty.map50 == 0.0


def test_mixed_equals_scoring_the_mixed_answers():
    gt, perfect = _gt_and_preds()
    wrong = [Detections(d.boxes, d.scores, (d.classes + 1) % 14) for d in perfect]
    use_cloud = np.array([1, 0, 1, 0, 0, 1], bool)
    m_edge, m_cloud = cocoeval.Matched(gt, wrong), cocoeval.Matched(gt, perfect)
    mixed = cocoeval.mixed(m_edge, m_cloud, use_cloud)
    direct = cocoeval.score(gt, [p if u else w for p, w, u in zip(perfect, wrong, use_cloud, strict=True)])
    assert mixed.map50 == pytest.approx(direct.map50) and mixed.map == pytest.approx(direct.map)
    assert 0 < mixed.map50 < 1
    # mixing again (in any order) reads each model's own matches, never the last mix
    all_cloud = cocoeval.mixed(m_edge, m_cloud, np.ones(6, bool))
    all_edge = cocoeval.mixed(m_edge, m_cloud, np.zeros(6, bool))
    assert all_cloud.map50 == pytest.approx(1.0) and all_edge.map50 == pytest.approx(cocoeval.score(gt, wrong).map50)
    assert cocoeval.mixed(m_edge, m_cloud, use_cloud).map50 == pytest.approx(direct.map50)


def test_manifest_task_is_backward_compatible():
    base = {"name": "x", "labels": ["a", "b"], "input": InputSpec(height=8, width=8).model_dump(), "models": {}}
    assert Manifest.model_validate(base).task == "classify"
    det = Manifest.model_validate({**base, "labels": ["only"], "task": "detect"})
    assert det.detection == DetectionSpec()
    with pytest.raises(ValueError, match="at least 2 labels"):
        Manifest.model_validate({**base, "labels": ["only"]})
    with pytest.raises(ValueError, match="only for task 'detect'"):
        Manifest.model_validate({**base, "detection": {"stride": 4}})


def test_parse_served_answer_and_refuse_malformed_ones():
    from edge_sdk.detection import parse_served

    body = {"outputs": [
        {"name": "boxes", "datatype": "FP32", "shape": [2, 2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8] + [0] * 8},
        {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.9, 0.4, 0, 0]},
        {"name": "classes", "datatype": "INT64", "shape": [2, 2], "data": [3, 13, -1, -1]},
        {"name": "count", "datatype": "INT32", "shape": [2], "data": [2, 0]}]}
    a, b = parse_served(body, 2, 14)
    assert a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and a.classes.tolist() == [3, 13] and len(b) == 0
    with pytest.raises(ValueError, match="shapes"):
        parse_served(body, 3, 14)
    with pytest.raises(ValueError, match="class index"):
        parse_served(body, 2, 5)
    broken = {"outputs": [o if o["name"] != "count" else {**o, "data": [3, 0]} for o in body["outputs"]]}
    with pytest.raises(ValueError, match="count 3"):
        parse_served(broken, 2, 14)
    with pytest.raises(ValueError, match="lacks"):
        parse_served({"outputs": body["outputs"][:3]}, 2, 14)
