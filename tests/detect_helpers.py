"""A small detect bundle for tests: an untrained 64x64 CenterNet (arbitrary but deterministic boxes), every
peak kept, optionally with its int8 edge model. Seconds to build, not minutes to train."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_sdk.bundle import Manifest, ModelFile, Routing, write_bundle
from edge_sdk.detection import DetectionSpec
from edge_sdk.preprocess import InputSpec, PreprocessSpec
from quantize.detect import synth

SIZE = 64


def make_detect_bundle(root: Path, *, int8: bool, threshold: float = 1e9) -> Path:
    """``threshold``: the routing threshold on top_entropy (1e9: the edge is always sure; -1: never)."""
    import keras

    from quantize.convert import convert_int8
    from quantize.detect.model import EDGE_SPEC, build_detector

    keras.utils.set_random_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    model = build_detector((SIZE, SIZE, 3), len(synth.LABELS), EDGE_SPEC)
    model.save(root / "cloud.keras")
    files: dict = {"cloud.keras": root / "cloud.keras"}
    models = {"cloud": ModelFile(file="cloud.keras", format="keras")}
    if int8:
        rep = np.random.default_rng(0).random((8, SIZE, SIZE, 3), dtype=np.float32)
        files["edge_int8.tflite"] = convert_int8(model, rep)
        models["edge"] = ModelFile(file="edge_int8.tflite", format="tflite-int8")
    man = Manifest(task="detect", name="shapes_det", labels=synth.LABELS, input=InputSpec(height=SIZE, width=SIZE),
                   preprocess=PreprocessSpec(), models=models,
                   detection=DetectionSpec(max_detections=10, min_score=0.0, report_score=0.0),
                   routing=Routing(metric="top_entropy", threshold=threshold))
    return write_bundle(root / "bundle", man, files).path
