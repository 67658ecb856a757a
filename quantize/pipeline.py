"""`quantize` end to end: convert the edge network to int8, prove parity, calibrate routing, write the bundle.

:func:`quantize_bundle` runs named steps, one function each: check the
settings, open the bundle, load the data, load the networks, convert, check the
operators, evaluate parity, refuse an accuracy drop, measure latency, calibrate
the routing (temperature, deferral score, certified threshold and
out-of-distribution score: quantize.routing_step), write the bundle. Every check runs before anything is
written: a float op, an accuracy drop over ``max_drop`` or unusable calibration
data raises a :class:`QuantizeError` and leaves the bundle byte-for-byte as it
was. Success writes a new bundle version atomically (edge_sdk.bundle.update_bundle).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, ModelFile, Routing, load_bundle, update_bundle
from edge_sdk.errors import HybridVisionError
from edge_sdk.nativelog import native_stderr_silenced
from edge_sdk.preprocess import QuantParams

from . import data as data_mod
from . import routing_step
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
from .models import load_safe
from .ops import list_ops, non_int8_ops, op_counts
from .routing_calibration import RoutingConfig, RoutingFit
from .tflite_eval import compare_latency, io_quant, run_tflite
from .train import predict_probs

log = logging.getLogger(__name__)

EDGE_FILE = "edge_int8.tflite"
CURVE_PNG = "quantize_calibration.png"
CONFUSION_PNG = "quantize_confusion_int8.png"


def edge_role(bundle: Bundle) -> str:
    """The network that goes to the device: a separately trained small one if the bundle has it."""
    return "edge_source" if bundle.has("edge_source") else "cloud"


def _load_keras(path: Path) -> Any:
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
            split = data_mod.split_from_info(bundle.manifest.data)
        except data_mod.DataError as e:
            raise QuantizeError(f"{bundle.path}: cannot rebuild the training data split ({e})") from None
        where = f"the bundle's data source {bundle.manifest.data.source!r}"
    elif calib_dir is not None:
        try:
            split = data_mod.split(str(calib_dir))
        except data_mod.DataError as e:
            raise CalibrationDataError(f"--calib {calib_dir}: {e}") from None
        where = f"--calib {calib_dir}"
    else:
        raise QuantizeError(
            f"{bundle.path}: the bundle records no training data (imported?); pass --calib DIR, an image folder "
            "with one sub-folder per label, to calibrate and test on"
        )
    if split.labels != labels:
        raise QuantizeError(f"{where}: classes {split.labels} do not match the bundle's labels {labels}")
    if not split.val or not split.test:
        raise QuantizeError(
            f"{where}: the split has {len(split.val)} validation and {len(split.test)} test images; need both"
        )
    return split


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tensorflow", "tensorflow-cpu", "ai-edge-litert", "keras"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


# --- what the steps hand on ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeSettings:
    """The knobs of one run (see :func:`quantize_bundle`)."""

    calib_dir: str | Path | None
    num_calib: int
    io_dtype: str
    max_drop: float
    allow_float_ops: bool
    target_gap: float
    max_offload: float | None
    progress: bool
    quantizer: Quantizer
    latency_runs: int
    routing: RoutingConfig
    num_ood_train: int


@dataclass(frozen=True)
class QuantizeData:
    """Calibration images, the test and validation splits, and the training sample the out-of-distribution
    score is fitted on, as model-ready arrays."""

    calib: data_mod.Arrays
    test: data_mod.Arrays
    val: data_mod.Arrays
    calib_source: str
    ood_train: data_mod.Arrays


@dataclass(frozen=True)
class Networks:
    """The Keras networks: the one that goes to the device (``edge``) and the one the cloud serves."""

    role: str  # "cloud" or "edge_source"
    edge: Any
    cloud: Any


@dataclass(frozen=True)
class Converted:
    fp32: bytes
    int8: bytes
    seconds: float


@dataclass(frozen=True)
class Parity:
    """The int8 model against its float network and the cloud, on the test split."""

    accuracy: dict[str, float]
    drop_points: float
    input_quant: QuantParams
    output_quant: QuantParams
    int8_summary: dict[str, Any]
    test: dict[str, Any]


# --- the steps -----------------------------------------------------------------------------------


def check_settings(settings: QuantizeSettings) -> None:
    """Refuse out-of-range knobs before any work."""
    if settings.num_calib < 1:
        raise CalibrationDataError(f"--num-calib must be at least 1, not {settings.num_calib}")
    if settings.io_dtype not in ("int8", "uint8"):
        raise QuantizeError(f"--io must be int8 or uint8, not {settings.io_dtype!r}")
    if settings.max_offload is not None and not 0.0 <= settings.max_offload <= 1.0:
        raise QuantizeError(f"--max-offload must be within [0, 1], not {settings.max_offload}")
    if settings.target_gap < 0 or settings.max_drop < 0:
        raise QuantizeError("--target-gap and --max-drop are in percentage points and must be >= 0")


def open_bundle(path: str | Path) -> Bundle:
    try:
        return load_bundle(path)
    except HybridVisionError as e:
        raise QuantizeError(str(e)) from None


def load_data(bundle: Bundle, settings: QuantizeSettings) -> QuantizeData:
    """Data first: a bad --calib folder should fail before minutes of work."""
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    calib_items = calibration_items(settings.calib_dir, settings.num_calib) if settings.calib_dir is not None else None
    split = evaluation_split(bundle, settings.calib_dir)
    if calib_items is None:
        calib_items = data_mod.stratified_sample(split.train, settings.num_calib)

    def load(items: list[tuple[Path, int]], desc: str) -> data_mod.Arrays:
        return data_mod.load_arrays(items, inp, pp, desc=desc, progress=settings.progress)

    calib = load(calib_items, "load calibration")
    if len(calib.x) == 0:
        first = calib.skipped[0][1] if calib.skipped else "none"
        raise CalibrationDataError(
            f"none of the {len(calib_items)} calibration images could be read (first error: {first})"
        )
    if len(calib.x) < 50:
        log.warning("only %d calibration images: int8 ranges may not cover real inputs (100-500 recommended)",
                    len(calib.x))
    test, val = load(split.test, "load test"), load(split.val, "load val")
    if len(test.x) == 0 or len(val.x) == 0:
        raise QuantizeError("no readable test or validation images")
    source = str(settings.calib_dir) if settings.calib_dir is not None else "train split"
    ood_n = settings.num_ood_train if settings.routing.ood == "mahalanobis" else 0
    ood_train = load(data_mod.stratified_sample(split.train, ood_n), "load train sample")
    return QuantizeData(calib, test, val, source, ood_train)


def load_networks(bundle: Bundle) -> Networks:
    """The edge network (checked against the manifest's input) and the cloud's."""
    role = edge_role(bundle)
    log.info("loading the %s model (edge network) and converting it", role)
    edge = _load_keras(bundle.model_path(role))
    cloud = edge if role == "cloud" else _load_keras(bundle.model_path("cloud"))
    inp = bundle.manifest.input
    h, w, c = check_classifier(edge, len(bundle.labels))
    if (h, w, c) != (inp.height, inp.width, inp.channels):
        raise QuantizeError(f"the {role} model takes {h}x{w}x{c} but the manifest says "
                            f"{inp.height}x{inp.width}x{inp.channels}")
    return Networks(role, edge, cloud)


def convert(nets: Networks, calib: data_mod.Arrays, settings: QuantizeSettings) -> Converted:
    """fp32 and full-integer int8 TFLite (the converter's own log lines kept out unless -v)."""
    t0 = time.perf_counter()
    with native_stderr_silenced():
        fp32 = convert_fp32(nets.edge)
        # the edge network with its routing outputs (logits, features), so one int8 file answers and scores
        int8 = convert_int8(routing_step.model_to_convert(nets.edge), calib.x, settings.io_dtype,
                            quantizer=settings.quantizer, progress=settings.progress)  # type: ignore[arg-type]
    return Converted(fp32, int8, time.perf_counter() - t0)


def check_ops(int8: bytes, allow_float_ops: bool) -> dict[str, Any]:
    """The operator report; FloatOpsError if any op is not int8 (unless allowed)."""
    ops = list_ops(int8)
    bad = non_int8_ops(ops)
    report = {"total": len(ops), "counts": op_counts(ops), "non_int8": [o.as_dict() for o in bad],
              "allowed_float_ops": bool(allow_float_ops)}
    if bad and not allow_float_ops:
        names = sorted({o.op for o in bad if o.op not in ("QUANTIZE", "DEQUANTIZE")} or {o.op for o in bad})
        raise FloatOpsError(
            f"{len(bad)} operator(s) of the int8 model are not int8: {', '.join(names)} "
            f"[{'; '.join(o.describe() for o in bad[:12])}]. They have no int8 kernel here; change the model "
            "(e.g. use ReLU/ReLU6 instead) or pass --allow-float-ops to accept a mixed model",
            [o.as_dict() for o in bad],
        )
    return report


def evaluate_parity(nets: Networks, converted: Converted, test: data_mod.Arrays, labels: list[str],
                    progress: bool) -> Parity:
    """Accuracy of every stage (Keras, fp32 TFLite, int8) and how far int8 moved from its float network."""
    log.info("evaluating on the test split (%d images)", len(test.y))
    y = test.y
    p_edge_keras = predict_probs(nets.edge, test.x)
    p_cloud_keras = p_edge_keras if nets.role == "cloud" else predict_probs(nets.cloud, test.x)
    with native_stderr_silenced():
        p_fp32 = run_tflite(converted.fp32, test.x, progress=progress, desc="fp32 tflite (test)")
    p_int8 = run_tflite(converted.int8, test.x, progress=progress, desc="int8 tflite (test)")
    accuracy = {"cloud_keras": _accuracy(p_cloud_keras, y), "edge_keras": _accuracy(p_edge_keras, y),
                "edge_tflite_fp32": _accuracy(p_fp32, y), "edge_int8": _accuracy(p_int8, y)}
    in_q, out_q = io_quant(converted.int8)
    if in_q is None or out_q is None:
        raise QuantizeError("the converted model does not have integer input and output tensors")
    summary = classification_summary(y, p_int8.argmax(1), labels)
    diff = np.abs(p_int8 - p_edge_keras)
    agree = lambda a, b: float((a.argmax(1) == b.argmax(1)).mean())  # noqa: E731
    drop = 100.0 * (accuracy["edge_keras"] - accuracy["edge_int8"])
    test_report = {
        "n": int(len(y)), "accuracy": accuracy, "accuracy_drop_points": drop,
        "agreement_int8_vs_fp32": agree(p_int8, p_edge_keras), "agreement_int8_vs_tflite_fp32": agree(p_int8, p_fp32),
        "agreement_tflite_fp32_vs_keras": agree(p_fp32, p_edge_keras),
        "mean_abs_prob_diff": float(diff.mean()), "max_abs_prob_diff": float(diff.max()),
        "int8": {k: summary[k] for k in ("macro_f1", "confusion_matrix")},
        "agreement_int8_vs_fp32_by_class": agreement_report(p_int8, p_edge_keras, y, labels),
    }
    return Parity(accuracy, drop, in_q, out_q, summary, test_report)


def base_report(bundle: Bundle, nets: Networks, data: QuantizeData, converted: Converted, ops: dict[str, Any],
                parity: Parity, settings: QuantizeSettings) -> dict[str, Any]:
    """The parity report, before latency and calibration are added."""
    return {
        "edge_role": nets.role, "quantizer": settings.quantizer, "io_dtype": settings.io_dtype, "versions": _versions(),
        "calibration_data": {"source": data.calib_source, "images": int(len(data.calib.x)),
                             "skipped": len(data.calib.skipped)},
        "input_quant": parity.input_quant.model_dump(), "output_quant": parity.output_quant.model_dump(),
        "ops": ops,
        "test": {**parity.test, "max_drop_points": float(settings.max_drop)},
        "size_bytes": {"keras": bundle.model_path(nets.role).stat().st_size, "tflite_fp32": len(converted.fp32),
                       "tflite_int8": len(converted.int8),
                       "ratio_fp32_over_int8": len(converted.fp32) / len(converted.int8)},
        "seconds": {"convert": round(converted.seconds, 2)},
    }


def refuse_accuracy_drop(parity: Parity, max_drop: float, report: dict[str, Any]) -> None:
    """AccuracyDropError (carrying the report) when int8 lost more than ``max_drop`` points."""
    if parity.drop_points > max_drop:
        report["passed"] = False
        acc = parity.accuracy
        raise AccuracyDropError(
            f"int8 accuracy {100 * acc['edge_int8']:.2f}% is {parity.drop_points:.2f} points below the float "
            f"model's {100 * acc['edge_keras']:.2f}% (allowed: --max-drop {max_drop:g}); the bundle was not changed",
            report,
        )


def measure_latency(converted: Converted, x: np.ndarray, settings: QuantizeSettings) -> dict[str, Any]:
    """fp32 against int8 TFLite, one thread, on the test images."""
    log.info("measuring latency (1 thread) and calibrating the routing threshold")
    lat = compare_latency({"fp32": converted.fp32, "int8": converted.int8}, x, runs=settings.latency_runs,
                          progress=settings.progress, desc="latency fp32 vs int8")
    lat32, lat8 = lat["fp32"], lat["int8"]
    return {"runtime": "ai_edge_litert.interpreter.Interpreter (default XNNPACK delegate)",
            "tflite_fp32": lat32.as_dict(), "tflite_int8": lat8.as_dict(),
            "speedup_fp32_over_int8": lat32.median_ms / lat8.median_ms}


def calibrate_routing(converted: Converted, nets: Networks, data: QuantizeData,
                      settings: QuantizeSettings) -> tuple[Routing, RoutingFit]:
    """Temperature, deferral model, certified threshold and out-of-distribution score (quantize.routing_step),
    from the int8 outputs and the cloud's answers on the validation split."""
    val, train = data.val, data.ood_train
    return routing_step.calibrate_routing(
        converted.int8, val.x, val.y, predict_probs(nets.cloud, val.x), train.x if len(train.y) else None,
        train.y if len(train.y) else None, settings.routing, progress=settings.progress)


def write_quantized(bundle: Bundle, converted: Converted, parity: Parity, routing: Routing, fit: RoutingFit,
                    report: dict[str, Any]) -> None:
    """The new bundle version: int8 model, routing, report and plots, written atomically."""
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.models["edge"] = ModelFile(file=EDGE_FILE, format="tflite-int8", input_quant=parity.input_quant,
                                        output_quant=parity.output_quant)
    manifest.routing = routing
    manifest.reports["quantize"] = report
    with tempfile.TemporaryDirectory() as td:
        curve_png = routing_step.plot_calibration(fit, Path(td) / CURVE_PNG)
        cm_png = plot_confusion(parity.int8_summary["confusion_matrix"], manifest.labels, Path(td) / CONFUSION_PNG,
                                "int8 edge model, test split")
        update_bundle(bundle, manifest, {EDGE_FILE: converted.int8, CURVE_PNG: curve_png, CONFUSION_PNG: cm_png})


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

    ``routing`` says how the routing is fitted (default: a threshold within ``target_gap`` points of the cloud
    with probability 1 - 0.1, or the best within ``max_offload``); ``num_ood_train`` training images fit the
    out-of-distribution score.
    """
    t_start = time.perf_counter()
    settings = QuantizeSettings(calib_dir, num_calib, io_dtype, max_drop, allow_float_ops, target_gap, max_offload,
                                progress, quantizer, latency_runs,
                                routing or RoutingConfig(target_gap=target_gap, max_offload=max_offload),
                                num_ood_train)
    check_settings(settings)
    bundle = open_bundle(bundle_path)
    data = load_data(bundle, settings)
    nets = load_networks(bundle)
    converted = convert(nets, data.calib, settings)
    ops = check_ops(converted.int8, settings.allow_float_ops)
    parity = evaluate_parity(nets, converted, data.test, bundle.labels, settings.progress)
    report = base_report(bundle, nets, data, converted, ops, parity, settings)
    refuse_accuracy_drop(parity, settings.max_drop, report)
    report["latency"] = measure_latency(converted, data.test.x, settings)
    routing, fit = calibrate_routing(converted, nets, data, settings)
    report["calibration"] = routing_step.report_section(fit)
    report["passed"] = True
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    write_quantized(bundle, converted, parity, routing, fit, report)
    return report
