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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, ModelFile, Routing, load_bundle, update_bundle
from edge_sdk.detection import Detections
from edge_sdk.detector_runtime import DetectorModel
from edge_sdk.errors import HybridVisionError
from edge_sdk.preprocess import normalize
from edge_sdk.runtime import PixelQuantizer

from ..calibrate import plot_curves
from ..convert import Quantizer, convert_fp32, convert_int8, input_shape
from ..errors import AccuracyDropError, CalibrationDataError, FloatOpsError, QuantizeError
from ..ops import list_ops, non_int8_ops, op_counts
from ..tflite_eval import compare_latency
from . import cocoeval, datasets
from .annotations import DetectionSet
from .calibrate import DetectCalibration, calibrate
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


@dataclass
class Networks:
    """The detect bundle's Keras networks: the one to convert for the edge, and the cloud's."""

    role: str
    edge: Any
    cloud: Any


@dataclass
class Converted:
    fp32: bytes
    int8: bytes
    model: DetectorModel
    calib_images: int
    seconds: float


def open_detect_bundle(bundle_path: str | Path) -> Bundle:
    """Load the bundle, refusing one that is not a detect bundle."""
    try:
        bundle = load_bundle(bundle_path)
    except HybridVisionError as e:
        raise QuantizeError(str(e)) from None
    if bundle.manifest.task != "detect":
        raise QuantizeError(f"{bundle.path}: not a detect bundle (task {bundle.manifest.task!r})")
    return bundle


def load_networks(bundle: Bundle) -> Networks:
    """The edge network (edge_source for big/little, else the cloud's) and the cloud's, checked against the input."""
    from ..models import load_safe

    man, role = bundle.manifest, edge_role(bundle)
    edge = load_safe(bundle.model_path(role), QuantizeError)
    cloud = edge if role == "cloud" else load_safe(bundle.model_path("cloud"), QuantizeError)
    if input_shape(edge) != (man.input.height, man.input.width, man.input.channels):
        raise QuantizeError(f"the {role} model's input {input_shape(edge)} does not match the manifest's")
    return Networks(role, edge, cloud)


def convert(nets: Networks, bundle: Bundle, calib: Prepared, quantizer: Quantizer, progress: bool) -> Converted:
    """fp32 and full-integer TFLite files of the edge network, calibrated on the training images."""
    man = bundle.manifest
    calib_x = np.stack([normalize(im, man.input, man.preprocess) for im in calib.images])
    t0 = time.perf_counter()
    fp32_bytes = convert_fp32(nets.edge)
    int8_bytes = convert_int8(nets.edge, calib_x, "int8", quantizer=quantizer, progress=progress)
    seconds = time.perf_counter() - t0
    return Converted(fp32_bytes, int8_bytes, DetectorModel(int8_bytes, num_threads=1), len(calib_x), seconds)


def evaluate_parity(nets: Networks, conv: Converted, bundle: Bundle, parts: datasets.Parts,
                    test: Prepared) -> dict[str, cocoeval.DetectionScores]:
    """Test-split scores of the edge network in fp32 (Keras) and int8 (the device's path), and of the cloud's."""
    dets = {"edge_keras": _keras_dets(nets.edge, test, bundle),
            "edge_int8": int8_detections(conv.model, test.images, bundle)}
    dets["cloud_keras"] = dets["edge_keras"] if nets.role == "cloud" else _keras_dets(nets.cloud, test, bundle)
    return {k: _scores(v, parts.test, bundle) for k, v in dets.items()}


def base_report(nets: Networks, conv: Converted, scores: dict[str, cocoeval.DetectionScores], parts: datasets.Parts,
                bundle: Bundle, quantizer: Quantizer, ops_report: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """The quantize report before the latency and routing are measured."""
    int8 = conv.model
    return {
        "task": "detect", "edge_role": nets.role, "quantizer": quantizer, "io_dtype": "int8",
        "calibration_data": {"source": "train split", "images": conv.calib_images},
        "input_quant": int8.input_quant.model_dump(), "output_quant": [q.model_dump() for q in int8.output_quant],
        "ops": ops_report,
        "test": {"n": len(parts.test.records), "boxes": parts.test.num_boxes,
                 "scores": {k: s.as_dict() for k, s in scores.items()},
                 "map50_drop_points": 100.0 * (scores["edge_keras"].map50 - scores["edge_int8"].map50),
                 "map_drop_points": 100.0 * (scores["edge_keras"].map - scores["edge_int8"].map),
                 "max_drop_points": float(max_drop)},
        "size_bytes": {"keras": bundle.model_path(nets.role).stat().st_size, "tflite_fp32": len(conv.fp32),
                       "tflite_int8": len(conv.int8), "ratio_fp32_over_int8": len(conv.fp32) / len(conv.int8)},
        "seconds": {"convert": round(conv.seconds, 2)},
    }


def refuse_accuracy_drop(report: dict[str, Any], scores: dict[str, cocoeval.DetectionScores], max_drop: float) -> None:
    """The ``--max-drop`` guard: AccuracyDropError (the bundle untouched) when int8 loses too much mAP@0.5."""
    drop = report["test"]["map50_drop_points"]
    if drop > max_drop:
        report["passed"] = False
        raise AccuracyDropError(f"int8 mAP@0.5 {scores['edge_int8'].map50:.4f} is {drop:.2f} points below the float "
                                f"model's {scores['edge_keras'].map50:.4f} (allowed: --max-drop {max_drop:g}); "
                                "the bundle was not changed", report)


def measure_latency(conv: Converted, bundle: Bundle, test: Prepared, runs: int, progress: bool) -> dict[str, Any]:
    """fp32 against int8 TFLite inference time, batch 1, one thread."""
    man = bundle.manifest
    x_lat = np.stack([normalize(im, man.input, man.preprocess) for im in test.images[:32]])
    lat = compare_latency({"fp32": conv.fp32, "int8": conv.int8}, x_lat, runs=runs, progress=progress)
    return {"what": "set_tensor + invoke + get_tensor, batch 1, 1 thread",
            "tflite_fp32": lat["fp32"].as_dict(), "tflite_int8": lat["int8"].as_dict()}


def calibrate_routing(nets: Networks, conv: Converted, bundle: Bundle, parts: datasets.Parts, val: Prepared,
                      target_gap: float, max_offload: float | None) -> DetectCalibration:
    """The mAP-versus-offload curves on the validation split, and the chosen metric and threshold."""
    man = bundle.manifest
    val_edge = int8_detections(conv.model, val.images, bundle)
    val_cloud = _keras_dets(nets.cloud, val, bundle)
    gt = cocoeval.ground_truth_from(parts.val.records, parts.val.labels)
    m_edge = cocoeval.Matched(gt, in_original(val_edge, parts.val, man.input, man.preprocess))
    m_cloud = cocoeval.Matched(gt, in_original(val_cloud, parts.val, man.input, man.preprocess), m_edge.coco_gt)
    return calibrate(val_edge, m_edge, m_cloud, target_gap=target_gap, max_offload=max_offload)


def routing_report(cal: DetectCalibration, target_gap: float, max_offload: float | None) -> dict[str, Any]:
    ch = cal.chosen
    return {"metric": ch.metric, "threshold": ch.threshold, "offload": ch.offload, "hybrid_map50": ch.accuracy,
            "val_cloud_map50": cal.cloud_accuracy, "val_edge_map50": cal.edge_accuracy,
            "mode": cal.as_dict()["mode"], "target_gap_points": target_gap, "max_offload": max_offload}


def write_quantized(bundle: Bundle, conv: Converted, cal: DetectCalibration, report: dict[str, Any]) -> None:
    """The int8 file, the routing, the report and the curve plot into the bundle, atomically."""
    ch = cal.chosen
    new = bundle.manifest.model_copy(deep=True)
    new.models["edge"] = ModelFile(file=EDGE_FILE, format="tflite-int8", input_quant=conv.model.input_quant)
    new.routing = Routing(metric=ch.metric, threshold=ch.threshold, calibration=cal.as_dict())  # type: ignore[arg-type]
    new.reports["quantize"] = report
    with tempfile.TemporaryDirectory() as td:
        png = plot_curves(cal, Path(td) / CURVE_PNG, "hybrid mAP@0.5 vs offload (validation split)",  # type: ignore[arg-type]
                          ylabel="hybrid mAP@0.5 (%)")
        update_bundle(bundle, new, {EDGE_FILE: conv.int8, CURVE_PNG: png})


def quantize_detector(
    bundle_path: str | Path, *, num_calib: int = 300, max_drop: float = 1.5, allow_float_ops: bool = False,
    target_gap: float = 0.5, max_offload: float | None = None, progress: bool = True,
    quantizer: Quantizer = "tflite-converter", latency_runs: int = 100,
) -> dict[str, Any]:
    """Add the int8 edge detector, its mAP parity report and the calibrated routing to a detect bundle."""
    t_start = time.perf_counter()
    bundle = open_detect_bundle(bundle_path)
    parts, prep = _load_data(bundle, num_calib, progress)
    nets = load_networks(bundle)
    conv = convert(nets, bundle, prep["train"], quantizer, progress)
    ops_report = _check_ops(conv.int8, allow_float_ops)
    scores = evaluate_parity(nets, conv, bundle, parts, prep["test"])
    report = base_report(nets, conv, scores, parts, bundle, quantizer, ops_report, max_drop)
    refuse_accuracy_drop(report, scores, max_drop)
    report["latency"] = measure_latency(conv, bundle, prep["test"], latency_runs, progress)
    cal = calibrate_routing(nets, conv, bundle, parts, prep["val"], target_gap, max_offload)
    report["calibration"] = routing_report(cal, target_gap, max_offload)
    report["passed"] = True
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    write_quantized(bundle, conv, cal, report)
    return report
