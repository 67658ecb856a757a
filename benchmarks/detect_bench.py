"""Object detection on the built-in ``shapes`` set's own test split: cloud, int8 edge, per-frame time, hybrid.

Prints one JSON object. Targets (issue 15):

* cloud detector mAP@0.5 >= 0.90 and mAP@[.5:.95] >= 0.60 (pycocotools);
* edge int8 file <= 1 MB and within 1.5 points mAP@0.5 of its fp32 model;
* edge per-frame time (decode a JPEG, resize, int8 inference, box decoding) <= 15 ms, 1 thread, 160x160 input;
* the hybrid (the bundle's calibrated routing) within 1 point mAP@0.5 of the cloud with <= 30% of frames offloaded.

    python benchmarks/detect_bench.py --bundle BUNDLE      # a quantized detect bundle trained on shapes
    python benchmarks/detect_bench.py --epochs 24           # train and quantize one first (slow on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)

TARGETS = {"cloud_map50": 0.90, "cloud_map": 0.60, "edge_int8_bytes": 1_000_000, "edge_drop_points": 1.5,
           "frame_ms": 15.0, "hybrid_gap_points": 1.0, "hybrid_offload": 0.30}


def make_bundle(work: Path, epochs: int, model: str, edge_model: str | None) -> tuple[Path, float]:
    from quantize.detect.pipeline import quantize_detector
    from quantize.detect.train import DetectTrainConfig, train_detector

    t0 = time.perf_counter()
    out = work / "shapes"
    train_detector(DetectTrainConfig(out=str(out), model=model, edge_model=edge_model, epochs=epochs, progress=False))
    quantize_detector(out, progress=False)
    return out, time.perf_counter() - t0


def frame_times(bundle, jpegs: list[bytes], runs: int) -> dict:
    """Wall time of the device path for one encoded frame: decode, resize, int8 invoke, decode boxes to pixels."""
    from edge_sdk.detection import to_original
    from edge_sdk.detector_runtime import DetectorModel
    from edge_sdk.preprocess import load_image, resize
    from edge_sdk.runtime import PixelQuantizer

    man = bundle.manifest
    model = DetectorModel.from_bundle(bundle, num_threads=1)
    pixels = PixelQuantizer(man.input, man.preprocess, model.input_quant)
    hw = (man.input.height, man.input.width)

    def one(data: bytes) -> None:
        rgb = load_image(data)
        d = model.detect_quantized(pixels(resize(rgb, *hw, man.preprocess.resize)), man.detection)
        to_original(d.boxes, man.preprocess.resize, hw, rgb.shape[:2])

    for data in jpegs[:10]:
        one(data)
    ts = []
    for i in range(runs):
        t0 = time.perf_counter()
        one(jpegs[i % len(jpegs)])
        ts.append((time.perf_counter() - t0) * 1000)
    a = np.asarray(ts)
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "min_ms": float(a.min()),
            "runs": runs, "threads": 1, "input": f"{hw[0]}x{hw[1]}", "frame": "JPEG bytes, quality 90"}


def hybrid_on_test(bundle, parts, prep) -> dict:
    """The bundle's routing (metric, threshold from validation) applied to the test split's int8 and cloud answers."""
    from edge_sdk.detection import frame_uncertainty
    from edge_sdk.detector_runtime import DetectorModel
    from quantize.detect import cocoeval
    from quantize.detect.pipeline import int8_detections
    from quantize.detect.train import detect_batch, in_original
    from quantize.models import load_safe

    man = bundle.manifest
    inp, pp = man.input, man.preprocess
    edge = int8_detections(DetectorModel.from_bundle(bundle, num_threads=1), prep.images, bundle)
    cloud_keras = load_safe(bundle.model_path("cloud"), RuntimeError)
    cloud = detect_batch(cloud_keras, prep.images, inp, pp, man.detection)
    gt = cocoeval.ground_truth_from(parts.test.records, parts.test.labels)
    m_edge = cocoeval.Matched(gt, in_original(edge, parts.test, inp, pp))
    m_cloud = cocoeval.Matched(gt, in_original(cloud, parts.test, inp, pp), m_edge.coco_gt)
    r = man.routing
    u = np.array([frame_uncertainty(d.scores, r.metric) for d in edge])
    use_cloud = u > r.threshold
    s_cloud = cocoeval.mixed(m_edge, m_cloud, np.ones(len(u), bool))
    s_edge = cocoeval.mixed(m_edge, m_cloud, np.zeros(len(u), bool))
    s_hybrid = cocoeval.mixed(m_edge, m_cloud, use_cloud)
    return {"routing": {"metric": r.metric, "threshold": r.threshold},
            "cloud": s_cloud.as_dict(), "edge_int8": s_edge.as_dict(), "hybrid": s_hybrid.as_dict(),
            "hybrid_offload": float(use_cloud.mean()),
            "hybrid_gap_points": 100 * (s_cloud.map50 - s_hybrid.map50)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="a quantized detect bundle trained on the built-in shapes set")
    ap.add_argument("--epochs", type=int, default=24, help="training epochs when no --bundle is given [24]")
    ap.add_argument("--model", default="small", choices=["small", "large"], help="cloud detector when training")
    ap.add_argument("--edge-model", choices=["small"], help="also train a small edge detector (big/little)")
    ap.add_argument("--runs", type=int, default=300, help="timed frames [300]")
    args = ap.parse_args()

    from edge_sdk.bundle import load_bundle
    from edge_sdk.preprocess import encode_jpeg
    from quantize.detect import datasets
    from quantize.detect.train import prepare

    load_start = machine_info()["load_avg_1m"]
    with tempfile.TemporaryDirectory() as td:
        path, train_s = (Path(args.bundle), None) if args.bundle else make_bundle(Path(td), args.epochs, args.model,
                                                                                  args.edge_model)
        bundle = load_bundle(path)
        if bundle.manifest.task != "detect" or not bundle.has("edge") or bundle.manifest.data is None:
            print(json.dumps({"error": f"{path}: not a quantized detect bundle"}))
            return 2
        if bundle.manifest.data.source != "shapes":
            print(json.dumps({"error": f"{path}: trained on {bundle.manifest.data.source!r}, not the built-in shapes"}))
            return 2
        parts = datasets.split_from_info(bundle.manifest.data, max_train=0)
        prep = prepare(parts.test, bundle.manifest.input, bundle.manifest.preprocess)
        q = bundle.manifest.reports.get("quantize", {})
        hybrid = hybrid_on_test(bundle, parts, prep)
        jpegs = [encode_jpeg(r.load()) for r in parts.test.records[:100]]
        frame = frame_times(bundle, jpegs, args.runs)
        size = bundle.model_path("edge").stat().st_size
        scores = q.get("test", {}).get("scores", {})
        fp32_map50 = scores.get("edge_keras", {}).get("map50")
        drop = 100 * (fp32_map50 - hybrid["edge_int8"]["map50"]) if fp32_map50 is not None else None
        out = {
            "bench": "detect", "bundle": str(path), "train_seconds": train_s,
            "test_split": {"images": len(parts.test.records), "boxes": parts.test.num_boxes},
            "cloud": {"map50": hybrid["cloud"]["map50"], "map": hybrid["cloud"]["map"],
                      "per_class_ap50": hybrid["cloud"]["per_class_ap50"]},
            "edge": {"int8_bytes": size, "int8_map50": hybrid["edge_int8"]["map50"],
                     "int8_map": hybrid["edge_int8"]["map"], "fp32_map50": fp32_map50, "drop_points": drop},
            "frame": frame,
            "hybrid": {"map50": hybrid["hybrid"]["map50"], "map": hybrid["hybrid"]["map"],
                       "offload": hybrid["hybrid_offload"], "gap_points": hybrid["hybrid_gap_points"],
                       "routing": hybrid["routing"]},
            "targets": TARGETS,
        }
        out["met"] = {
            "cloud_map50": out["cloud"]["map50"] >= TARGETS["cloud_map50"],
            "cloud_map": out["cloud"]["map"] >= TARGETS["cloud_map"],
            "edge_int8_bytes": size <= TARGETS["edge_int8_bytes"],
            "edge_drop_points": drop is not None and drop <= TARGETS["edge_drop_points"],
            "frame_ms": frame["median_ms"] <= TARGETS["frame_ms"],
            "hybrid": (out["hybrid"]["gap_points"] <= TARGETS["hybrid_gap_points"]
                       and out["hybrid"]["offload"] <= TARGETS["hybrid_offload"]),
        }
        out["machine"] = machine_info(load_avg_1m_start=load_start)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
