"""`quantize` end to end: convert the edge network to int8, prove parity, calibrate routing, write the bundle.

Every check runs before anything is written: a float op, an accuracy drop over
``max_drop`` or unusable calibration data raises a :class:`QuantizeError` and
leaves the bundle byte-for-byte as it was. Success writes a new bundle version
atomically (edge_sdk.bundle.update_bundle).
"""

from __future__ import annotations

import logging
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, ModelFile, load_bundle, update_bundle
from edge_sdk.errors import HybridVisionError

from . import data as data_mod
from .agreement import agreement_report
from .convert import Quantizer, check_classifier, convert_fp32, convert_int8
from .errors import (  # noqa: F401  (re-exported: quantize.pipeline.QuantizeError is the public name)
    AccuracyDropError,
    CalibrationDataError,
    ConversionError,
    FloatOpsError,
    QuantizeError,
)
from .metrics import classification_summary, plot_confusion
from .ops import list_ops, non_int8_ops, op_counts
from .routing_calibration import RoutingConfig
from .routing_step import calibrate_routing, model_to_convert, plot_calibration, report_section
from .tflite_eval import compare_latency, io_quant, run_tflite

log = logging.getLogger(__name__)

EDGE_FILE = "edge_int8.tflite"
CURVE_PNG = "quantize_calibration.png"
CONFUSION_PNG = "quantize_confusion_int8.png"


def edge_role(bundle: Bundle) -> str:
    """The network that goes to the device: a separately trained small one if the bundle has it."""
    return "edge_source" if bundle.has("edge_source") else "cloud"


def _load_keras(path: Path):
    from .models import load_safe

    return load_safe(path, QuantizeError)


def calibration_items(calib_dir: str | Path, num: int) -> list[tuple[Path, int]]:
    """A stratified sample of an ImageFolder (one sub-folder per class, at least two classes)."""
    root = Path(calib_dir).expanduser()
    if not root.is_dir():
        raise CalibrationDataError(f"--calib {calib_dir}: no such folder")
    try:
        _classes, items = data_mod.list_folder(root)
    except data_mod.DataError as e:
        raise CalibrationDataError(f"--calib {calib_dir}: {e}") from None
    return data_mod.stratified_sample(items, num)


def evaluation_split(bundle: Bundle, calib_dir: str | Path | None) -> data_mod.Split:
    """The bundle's own train/val/test split; a bundle without one (imported) splits --calib instead."""
    labels = bundle.labels
    if bundle.manifest.data is not None:
        try:
            sp = data_mod.split_from_info(bundle.manifest.data)
        except data_mod.DataError as e:
            raise QuantizeError(f"{bundle.path}: cannot rebuild the training data split ({e})") from None
        where = f"the bundle's data source {bundle.manifest.data.source!r}"
    elif calib_dir is not None:
        try:
            sp = data_mod.split(str(calib_dir))
        except data_mod.DataError as e:
            raise CalibrationDataError(f"--calib {calib_dir}: {e}") from None
        where = f"--calib {calib_dir}"
    else:
        raise QuantizeError(
            f"{bundle.path}: the bundle records no training data (imported?); pass --calib DIR, an image folder "
            "with one sub-folder per label, to calibrate and test on"
        )
    if sp.labels != labels:
        raise QuantizeError(f"{where}: classes {sp.labels} do not match the bundle's labels {labels}")
    if not sp.val or not sp.test:
        raise QuantizeError(f"{where}: the split has {len(sp.val)} validation and {len(sp.test)} test images; need both")
    return sp


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tensorflow", "tensorflow-cpu", "ai-edge-litert", "keras"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def quantize_bundle(
    bundle_path: str | Path,
    *,
    calib_dir: str | Path | None = None,
    num_calib: int = 300,
    io_dtype: str = "int8",
    max_drop: float = 1.0,
    allow_float_ops: bool = False,
    target_gap: float = 0.5,
    max_offload: float | None = None,
    progress: bool = True,
    quantizer: Quantizer = "tflite-converter",
    latency_runs: int = 200,
    routing: RoutingConfig | None = None,
    num_ood_train: int = 2000,
) -> dict[str, Any]:
    """Add the int8 edge model, the parity report and the calibrated routing to a bundle; return the report.

    ``routing`` says how the threshold is chosen (default: within ``target_gap`` points of the cloud with
    probability 1 - 0.1, or ``max_offload``); ``num_ood_train`` training images fit the out-of-distribution score.
    """
    from .train import predict_probs

    t_start = time.perf_counter()
    if num_calib < 1:
        raise CalibrationDataError(f"--num-calib must be at least 1, not {num_calib}")
    if io_dtype not in ("int8", "uint8"):
        raise QuantizeError(f"--io must be int8 or uint8, not {io_dtype!r}")
    if max_offload is not None and not 0.0 <= max_offload <= 1.0:
        raise QuantizeError(f"--max-offload must be within [0, 1], not {max_offload}")
    if target_gap < 0 or max_drop < 0:
        raise QuantizeError("--target-gap and --max-drop are in percentage points and must be >= 0")
    try:
        bundle = load_bundle(bundle_path)
    except HybridVisionError as e:
        raise QuantizeError(str(e)) from None
    man = bundle.manifest
    inp, pp = man.input, man.preprocess
    role = edge_role(bundle)

    # Data first: a bad --calib folder should fail before minutes of work.
    calib_src = calibration_items(calib_dir, num_calib) if calib_dir is not None else None
    sp = evaluation_split(bundle, calib_dir)
    if calib_src is None:
        calib_src = data_mod.stratified_sample(sp.train, num_calib)
    load = lambda items, desc: data_mod.load_arrays(items, inp, pp, desc=desc, progress=progress)  # noqa: E731
    calib = load(calib_src, "load calibration")
    if len(calib.x) == 0:
        raise CalibrationDataError(f"none of the {len(calib_src)} calibration images could be read "
                                   f"(first error: {calib.skipped[0][1] if calib.skipped else 'none'})")
    if len(calib.x) < 50:
        log.warning("only %d calibration images: int8 ranges may not cover real inputs (100-500 recommended)", len(calib.x))
    test, val = load(sp.test, "load test"), load(sp.val, "load val")
    if len(test.x) == 0 or len(val.x) == 0:
        raise QuantizeError("no readable test or validation images")

    log.info("loading the %s model (edge network) and converting it", role)
    edge_keras = _load_keras(bundle.model_path(role))
    cloud_keras = edge_keras if role == "cloud" else _load_keras(bundle.model_path("cloud"))
    h, w, c = check_classifier(edge_keras, len(man.labels))
    if (h, w, c) != (inp.height, inp.width, inp.channels):
        raise QuantizeError(f"the {role} model takes {h}x{w}x{c} but the manifest says "
                            f"{inp.height}x{inp.width}x{inp.channels}")
    t0 = time.perf_counter()
    fp32_bytes = convert_fp32(edge_keras)
    int8_bytes = convert_int8(model_to_convert(edge_keras), calib.x, io_dtype, quantizer=quantizer,  # type: ignore[arg-type]
                              progress=progress)
    convert_s = time.perf_counter() - t0

    ops = list_ops(int8_bytes)
    bad = non_int8_ops(ops)
    ops_report = {"total": len(ops), "counts": op_counts(ops), "non_int8": [o.as_dict() for o in bad],
                  "allowed_float_ops": bool(allow_float_ops)}
    if bad and not allow_float_ops:
        names = sorted({o.op for o in bad if o.op not in ("QUANTIZE", "DEQUANTIZE")} or {o.op for o in bad})
        raise FloatOpsError(
            f"{len(bad)} operator(s) of the int8 model are not int8: {', '.join(names)} "
            f"[{'; '.join(o.describe() for o in bad[:12])}]. They have no int8 kernel here; change the model "
            "(e.g. use ReLU/ReLU6 instead) or pass --allow-float-ops to accept a mixed model", [o.as_dict() for o in bad]
        )

    log.info("evaluating on the test split (%d images)", len(test.y))
    y = test.y
    p_edge_keras = predict_probs(edge_keras, test.x)
    p_cloud_keras = p_edge_keras if role == "cloud" else predict_probs(cloud_keras, test.x)
    p_fp32 = run_tflite(fp32_bytes, test.x, progress=progress, desc="fp32 tflite (test)")
    p_int8 = run_tflite(int8_bytes, test.x, progress=progress, desc="int8 tflite (test)")
    acc = {
        "cloud_keras": _accuracy(p_cloud_keras, y), "edge_keras": _accuracy(p_edge_keras, y),
        "edge_tflite_fp32": _accuracy(p_fp32, y), "edge_int8": _accuracy(p_int8, y),
    }
    drop = 100.0 * (acc["edge_keras"] - acc["edge_int8"])
    diff = np.abs(p_int8 - p_edge_keras)
    in_q, out_q = io_quant(int8_bytes)
    if in_q is None or out_q is None:
        raise QuantizeError("the converted model does not have integer input and output tensors")
    int8_summary = classification_summary(y, p_int8.argmax(1), man.labels)
    report: dict[str, Any] = {
        "edge_role": role, "quantizer": quantizer, "io_dtype": io_dtype, "versions": _versions(),
        "calibration_data": {"source": str(calib_dir) if calib_dir is not None else "train split",
                             "images": int(len(calib.x)), "skipped": len(calib.skipped)},
        "input_quant": in_q.model_dump(), "output_quant": out_q.model_dump(),
        "ops": ops_report,
        "test": {
            "n": int(len(y)), "accuracy": acc, "accuracy_drop_points": drop, "max_drop_points": float(max_drop),
            "agreement_int8_vs_fp32": float((p_int8.argmax(1) == p_edge_keras.argmax(1)).mean()),
            "agreement_int8_vs_tflite_fp32": float((p_int8.argmax(1) == p_fp32.argmax(1)).mean()),
            "agreement_tflite_fp32_vs_keras": float((p_fp32.argmax(1) == p_edge_keras.argmax(1)).mean()),
            "mean_abs_prob_diff": float(diff.mean()), "max_abs_prob_diff": float(diff.max()),
            "int8": {k: int8_summary[k] for k in ("macro_f1", "confusion_matrix")},
            "agreement_int8_vs_fp32_by_class": agreement_report(p_int8, p_edge_keras, y, man.labels),
        },
        "size_bytes": {"keras": bundle.model_path(role).stat().st_size, "tflite_fp32": len(fp32_bytes),
                       "tflite_int8": len(int8_bytes), "ratio_fp32_over_int8": len(fp32_bytes) / len(int8_bytes)},
        "seconds": {"convert": round(convert_s, 2)},
    }
    if drop > max_drop:
        report["passed"] = False
        raise AccuracyDropError(
            f"int8 accuracy {100 * acc['edge_int8']:.2f}% is {drop:.2f} points below the float model's "
            f"{100 * acc['edge_keras']:.2f}% (allowed: --max-drop {max_drop:g}); the bundle was not changed", report
        )

    log.info("measuring latency (1 thread) and calibrating the routing threshold")
    lat = compare_latency({"fp32": fp32_bytes, "int8": int8_bytes}, test.x, runs=latency_runs, progress=progress,
                          desc="latency fp32 vs int8")
    lat32, lat8 = lat["fp32"], lat["int8"]
    report["latency"] = {"runtime": "ai_edge_litert.interpreter.Interpreter (default XNNPACK delegate)",
                         "tflite_fp32": lat32.as_dict(), "tflite_int8": lat8.as_dict(),
                         "speedup_fp32_over_int8": lat32.median_ms / lat8.median_ms}

    cfg = routing or RoutingConfig(target_gap=target_gap, max_offload=max_offload)
    ood_train = load(data_mod.stratified_sample(sp.train, num_ood_train if cfg.ood else 0), "load train sample")
    new_routing, fit = calibrate_routing(int8_bytes, val.x, val.y, predict_probs(cloud_keras, val.x), ood_train.x,
                                         ood_train.y, cfg, progress=progress)
    report["calibration"] = report_section(fit)
    report["passed"] = True
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)

    new = man.model_copy(deep=True)
    new.models["edge"] = ModelFile(file=EDGE_FILE, format="tflite-int8", input_quant=in_q, output_quant=out_q)
    new.routing = new_routing
    new.reports["quantize"] = report
    with tempfile.TemporaryDirectory() as td:
        curve_png = plot_calibration(fit, Path(td) / CURVE_PNG)
        cm_png = plot_confusion(int8_summary["confusion_matrix"], man.labels, Path(td) / CONFUSION_PNG,
                                "int8 edge model, test split")
        update_bundle(bundle, new, {EDGE_FILE: int8_bytes, CURVE_PNG: curve_png, CONFUSION_PNG: cm_png})
    return report
