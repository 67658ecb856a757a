"""`quantize` for a detect bundle: int8 edge detector, parity in mAP, calibrated routing, written into the bundle.

The same path as classification (quantize.convert, quantize.ops, the
``--max-drop`` guard, atomic update_bundle) with detection's measures: the
int8 model is run exactly as the device runs it (edge_sdk.detector_runtime:
the pixel table, LiteRT, numpy decoding), scored with pycocotools against its
fp32 Keras model, and refused when its mAP@0.5 falls more than ``max_drop``
points. Nothing is written unless every check passes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, ModelFile, Routing, load_bundle, update_bundle
from edge_sdk.detection import Detections
from edge_sdk.detector_runtime import DetectorModel
from edge_sdk.errors import HybridVisionError
from edge_sdk.runtime import PixelQuantizer

from ..calibrate import plot_curves
from ..convert import Quantizer, convert_fp32, convert_int8, input_shape
from ..errors import AccuracyDropError, CalibrationDataError, FloatOpsError, QuantizeError
from ..ops import list_ops, non_int8_ops, op_counts
from ..tflite_eval import compare_latency
from . import cocoeval, datasets
from .annotations import DetectionSet
from .calibrate import calibrate
from .train import Prepared, detect_batch, in_original, prepare

log = logging.getLogger(__name__)

EDGE_FILE = "edge_int8.tflite"
CURVE_PNG = "quantize_calibration.png"


def edge_role(bundle: Bundle) -> str:
    return "edge_source" if bundle.has("edge_source") else "cloud"


def int8_detections(model: DetectorModel, images: np.ndarray, bundle: Bundle) -> list[Detections]:
    """Resized uint8 images through the device's own path: pixel table, LiteRT int8, numpy decoding."""
    man = bundle.manifest
    pixels = PixelQuantizer(man.input, man.preprocess, model.input_quant)
    return [model.detect_quantized(pixels(im), man.detection) for im in images]  # type: ignore[arg-type]


def _scores(dets: list[Detections], ds: DetectionSet, bundle: Bundle) -> cocoeval.DetectionScores:
    gt = cocoeval.ground_truth_from(ds.records, ds.labels)
    return cocoeval.score(gt, in_original(dets, ds, bundle.manifest.input, bundle.manifest.preprocess))


def _keras_dets(model, data: Prepared, bundle: Bundle) -> list[Detections]:
    man = bundle.manifest
    return detect_batch(model, data.images, man.input, man.preprocess, man.detection)  # type: ignore[arg-type]


def _load_data(bundle: Bundle, num_calib: int, progress: bool) -> tuple[datasets.Parts, dict[str, Prepared]]:
    if bundle.manifest.data is None:
        raise QuantizeError(f"{bundle.path}: the bundle records no training data to calibrate and test on")
    try:
        parts = datasets.split_from_info(bundle.manifest.data, progress=progress, max_train=num_calib)
    except datasets.DataError as e:
        raise QuantizeError(f"{bundle.path}: cannot rebuild the training data split ({e})") from None
    if parts.labels != bundle.labels:
        raise QuantizeError(f"the data's classes {parts.labels} do not match the bundle's labels {bundle.labels}")
    if not parts.val.records or not parts.test.records or not parts.train.records:
        raise CalibrationDataError("the split needs training, validation and test images")
    man = bundle.manifest
    prep = {k: prepare(getattr(parts, k), man.input, man.preprocess, progress) for k in ("train", "val", "test")}
    return parts, prep


def _check_ops(int8_bytes: bytes, allow_float_ops: bool) -> dict[str, Any]:
    ops = list_ops(int8_bytes)
    bad = non_int8_ops(ops)
    if bad and not allow_float_ops:
        names = sorted({o.op for o in bad if o.op not in ("QUANTIZE", "DEQUANTIZE")} or {o.op for o in bad})
        raise FloatOpsError(f"{len(bad)} operator(s) of the int8 detector are not int8: {', '.join(names)}; "
                            "pass --allow-float-ops to accept a mixed model", [o.as_dict() for o in bad])
    return {"total": len(ops), "counts": op_counts(ops), "non_int8": [o.as_dict() for o in bad],
            "allowed_float_ops": bool(allow_float_ops)}


def quantize_detector(
    bundle_path: str | Path, *, num_calib: int = 300, max_drop: float = 1.5, allow_float_ops: bool = False,
    target_gap: float = 0.5, max_offload: float | None = None, progress: bool = True,
    quantizer: Quantizer = "tflite-converter", latency_runs: int = 100,
) -> dict[str, Any]:
    """Add the int8 edge detector, its mAP parity report and the calibrated routing to a detect bundle."""
    from ..models import load_safe

    t_start = time.perf_counter()
    try:
        bundle = load_bundle(bundle_path)
    except HybridVisionError as e:
        raise QuantizeError(str(e)) from None
    if bundle.manifest.task != "detect":
        raise QuantizeError(f"{bundle.path}: not a detect bundle (task {bundle.manifest.task!r})")
    man, role = bundle.manifest, edge_role(bundle)
    parts, prep = _load_data(bundle, num_calib, progress)
    edge_keras = load_safe(bundle.model_path(role), QuantizeError)
    cloud_keras = edge_keras if role == "cloud" else load_safe(bundle.model_path("cloud"), QuantizeError)
    if input_shape(edge_keras) != (man.input.height, man.input.width, man.input.channels):
        raise QuantizeError(f"the {role} model's input {input_shape(edge_keras)} does not match the manifest's")
    from edge_sdk.preprocess import normalize

    calib_x = np.stack([normalize(im, man.input, man.preprocess) for im in prep["train"].images])
    t0 = time.perf_counter()
    fp32_bytes = convert_fp32(edge_keras)
    int8_bytes = convert_int8(edge_keras, calib_x, "int8", quantizer=quantizer, progress=progress)
    convert_s = time.perf_counter() - t0
    ops_report = _check_ops(int8_bytes, allow_float_ops)
    int8 = DetectorModel(int8_bytes, num_threads=1)

    test = {"edge_keras": _keras_dets(edge_keras, prep["test"], bundle),
            "edge_int8": int8_detections(int8, prep["test"].images, bundle)}
    test["cloud_keras"] = test["edge_keras"] if role == "cloud" else _keras_dets(cloud_keras, prep["test"], bundle)
    scores = {k: _scores(v, parts.test, bundle) for k, v in test.items()}
    drop = 100.0 * (scores["edge_keras"].map50 - scores["edge_int8"].map50)
    report: dict[str, Any] = {
        "task": "detect", "edge_role": role, "quantizer": quantizer, "io_dtype": "int8",
        "calibration_data": {"source": "train split", "images": len(calib_x)},
        "input_quant": int8.input_quant.model_dump(), "output_quant": [q.model_dump() for q in int8.output_quant],
        "ops": ops_report,
        "test": {"n": len(parts.test.records), "boxes": parts.test.num_boxes,
                 "scores": {k: s.as_dict() for k, s in scores.items()},
                 "map50_drop_points": drop,
                 "map_drop_points": 100.0 * (scores["edge_keras"].map - scores["edge_int8"].map),
                 "max_drop_points": float(max_drop)},
        "size_bytes": {"keras": bundle.model_path(role).stat().st_size, "tflite_fp32": len(fp32_bytes),
                       "tflite_int8": len(int8_bytes), "ratio_fp32_over_int8": len(fp32_bytes) / len(int8_bytes)},
        "seconds": {"convert": round(convert_s, 2)},
    }
    if drop > max_drop:
        report["passed"] = False
        raise AccuracyDropError(f"int8 mAP@0.5 {scores['edge_int8'].map50:.4f} is {drop:.2f} points below the float "
                                f"model's {scores['edge_keras'].map50:.4f} (allowed: --max-drop {max_drop:g}); "
                                "the bundle was not changed", report)
    x_lat = np.stack([normalize(im, man.input, man.preprocess) for im in prep["test"].images[:32]])
    lat = compare_latency({"fp32": fp32_bytes, "int8": int8_bytes}, x_lat, runs=latency_runs, progress=progress)
    report["latency"] = {"what": "set_tensor + invoke + get_tensor, batch 1, 1 thread",
                         "tflite_fp32": lat["fp32"].as_dict(), "tflite_int8": lat["int8"].as_dict()}

    val_edge = int8_detections(int8, prep["val"].images, bundle)
    val_cloud = _keras_dets(cloud_keras, prep["val"], bundle)
    gt = cocoeval.ground_truth_from(parts.val.records, parts.val.labels)
    inp, pp = man.input, man.preprocess
    m_edge = cocoeval.Matched(gt, in_original(val_edge, parts.val, inp, pp))
    m_cloud = cocoeval.Matched(gt, in_original(val_cloud, parts.val, inp, pp), m_edge.coco_gt)
    cal = calibrate(val_edge, m_edge, m_cloud, target_gap=target_gap, max_offload=max_offload)
    ch = cal.chosen
    report["calibration"] = {"metric": ch.metric, "threshold": ch.threshold, "offload": ch.offload,
                             "hybrid_map50": ch.accuracy, "val_cloud_map50": cal.cloud_accuracy,
                             "val_edge_map50": cal.edge_accuracy, "mode": cal.as_dict()["mode"],
                             "target_gap_points": target_gap, "max_offload": max_offload}
    report["passed"] = True
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)

    new = man.model_copy(deep=True)
    new.models["edge"] = ModelFile(file=EDGE_FILE, format="tflite-int8", input_quant=int8.input_quant)
    new.routing = Routing(metric=ch.metric, threshold=ch.threshold, calibration=cal.as_dict())  # type: ignore[arg-type]
    new.reports["quantize"] = report
    with tempfile.TemporaryDirectory() as td:
        png = plot_curves(cal, Path(td) / CURVE_PNG, "hybrid mAP@0.5 vs offload (validation split)",  # type: ignore[arg-type]
                          ylabel="hybrid mAP@0.5 (%)")
        update_bundle(bundle, new, {EDGE_FILE: int8_bytes, CURVE_PNG: png})
    return report
