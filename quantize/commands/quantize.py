"""`hybrid-vision quantize`: int8 edge model, parity proof and routing threshold, written into the bundle."""

from __future__ import annotations

import sys
from typing import Any

HELP = "convert the bundle's edge network to int8, prove parity on the test split, and calibrate when to fall back"


def add_arguments(p) -> None:
    p.add_argument("bundle", help="bundle directory (from `train` or `import`)")
    p.add_argument("--calib", metavar="DIR", help="image folder (one sub-folder per class) for int8 calibration "
                   "[default: the bundle's training split]")
    p.add_argument("--num-calib", type=int, default=300, help="calibration images, stratified [300]")
    p.add_argument("--io", choices=["int8", "uint8"], default="int8", help="input/output tensor type [int8]")
    p.add_argument("--max-drop", type=float, default=None,
                   help="fail (bundle untouched) if int8 accuracy (detection: mAP@0.5) is more than this many points "
                        "below float [1.0; 1.5 for detection]")
    p.add_argument("--allow-float-ops", action="store_true", help="accept operators that stay in float")
    p.add_argument("--target-gap", type=float, default=0.5,
                   help="routing: least offload whose hybrid accuracy is within this many points of the cloud's, "
                        "with probability 1 - --delta on new data [0.5]")
    p.add_argument("--delta", type=float, default=0.1,
                   help="routing: the chance the --target-gap may be missed on new data [0.1]")
    p.add_argument("--ood", choices=["mahalanobis", "energy", "max_logit", "none"], default="mahalanobis",
                   help="out-of-distribution score fitted on the training data [mahalanobis]")
    p.add_argument("--max-offload", type=float, metavar="F",
                   help="routing instead: best hybrid accuracy sending at most this fraction to the cloud")
    p.add_argument("--quantizer", choices=["tflite-converter", "ai-edge-quantizer"], default="tflite-converter",
                   help="int8 quantizer [tflite-converter]; ai-edge-quantizer needs `pip install ai-edge-quantizer`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def format_report(r: dict[str, Any]) -> str:
    """The quantize report as a plain-text table."""
    t, s = r["test"], r["size_bytes"]
    a = t["accuracy"]
    rows = [
        ("edge network", f"{r['edge_role']} ({r['quantizer']}, {r['io_dtype']} I/O)"),
        ("calibration images", f"{r['calibration_data']['images']} from {r['calibration_data']['source']}"),
        ("operators", f"{r['ops']['total']}, not int8: {len(r['ops']['non_int8'])}"),
        (f"test split (n={t['n']})", ""),
        ("  cloud Keras fp32", _pct(a["cloud_keras"])),
        ("  edge Keras fp32", _pct(a["edge_keras"])),
        ("  edge TFLite fp32", _pct(a["edge_tflite_fp32"])),
        ("  edge TFLite int8", _pct(a["edge_int8"])),
        ("  accuracy drop", f"{t['accuracy_drop_points']:.2f} points (max {t['max_drop_points']:g})"),
        ("  top-1 agreement int8 vs fp32", _pct(t["agreement_int8_vs_fp32"])),
        *_agreement_rows(t.get("agreement_int8_vs_fp32_by_class")),
        ("  mean |p_int8 - p_fp32|", f"{t['mean_abs_prob_diff']:.5f}"),
        ("size fp32 TFLite / int8", f"{s['tflite_fp32'] / 1024:.1f} KiB / {s['tflite_int8'] / 1024:.1f} KiB "
                                    f"({s['ratio_fp32_over_int8']:.2f}x smaller)"),
    ]
    if "latency" in r:
        lt = r["latency"]
        rows.append(("latency fp32 / int8 (1 thread)", f"{lt['tflite_fp32']['median_ms']:.3f} ms / "
                     f"{lt['tflite_int8']['median_ms']:.3f} ms ({lt['speedup_fp32_over_int8']:.2f}x faster)"))
    for o in r["ops"]["non_int8"]:
        rows.append(("  float op", f"#{o['index']} {o['op']}({', '.join(o['inputs'])}) -> {', '.join(o['outputs'])}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _agreement_rows(by_class: dict[str, Any] | None) -> list[tuple[str, str]]:
    """One row: the agreement of each class (true label), lowest first, so a class int8 hurts stands out."""
    if not by_class:
        return []
    pc = sorted(((v["agreement"], k) for k, v in by_class["per_class"].items() if v["agreement"] is not None))
    return [("    by class (lowest first)", ", ".join(f"{k} {_pct(a)}" for a, k in pc[:12])
             + (f", ... ({len(pc) - 12} more)" if len(pc) > 12 else ""))]


def format_calibration(c: dict[str, Any]) -> str:
    """The routing lines: the threshold and how sure it is, the temperature, the out-of-distribution score."""
    if c["mode"] == "max_offload":
        head = (f"routing (best accuracy with offload <= {c['max_offload']:g}, no bound): metric {c['metric']}, "
                f"threshold {c['threshold']:.6g} -> offload {_pct(c['offload'])}")
    else:
        head = (f"routing (within {c['target_gap_points']:g} points of the cloud with probability "
                f"{1 - c['delta']:g}): metric {c['metric']}, threshold {c['threshold']:.6g} -> offload "
                f"{_pct(c['offload'])}; gap estimate {c['estimate_points']:.2f} points, bound "
                f"{c['bound_points']:.2f} (n={c['n']}, delta={c['delta']:g}; cloud {_pct(c['cloud_accuracy'])}, "
                f"edge {_pct(c['edge_accuracy'])})")
    lines = [head, f"temperature {c['temperature']:.3f}: ECE {_pct(c['ece_before'])} -> {_pct(c['ece_after'])}"]
    if c.get("note"):
        lines.append(f"note: {c['note']}")
    if "ood" in c:
        o = c["ood"]
        lines.append(f"out of distribution: {o['kind']} on {', '.join(o['outputs']) or 'logits'}, threshold "
                     f"{o['threshold']:.4g} ({_pct(1 - o['in_distribution_rate'])} of validation images above it)")
    return "\n".join(lines)


def format_detect_report(r: dict[str, Any]) -> str:
    """The detection quantize report: mAP of each model on the test split, the drop, size and latency."""
    t, s = r["test"], r["size_bytes"]
    sc = t["scores"]
    rows = [("edge network", f"{r['edge_role']} ({r['quantizer']}, int8 I/O)"),
            ("calibration images", f"{r['calibration_data']['images']} from {r['calibration_data']['source']}"),
            ("operators", f"{r['ops']['total']}, not int8: {len(r['ops']['non_int8'])}"),
            (f"test split (n={t['n']}, {t['boxes']} boxes)", "mAP@0.5 / mAP@[.5:.95]")]
    for k, name in (("cloud_keras", "cloud Keras fp32"), ("edge_keras", "edge Keras fp32"), ("edge_int8", "edge int8")):
        rows.append((f"  {name}", f"{sc[k]['map50']:.4f} / {sc[k]['map']:.4f}"))
    rows += [("  mAP@0.5 drop", f"{t['map50_drop_points']:.2f} points (max {t['max_drop_points']:g})"),
             ("size fp32 TFLite / int8", f"{s['tflite_fp32'] / 1024:.1f} KiB / {s['tflite_int8'] / 1024:.1f} KiB")]
    if "latency" in r:
        lt = r["latency"]
        rows.append(("latency fp32 / int8 (1 thread)",
                     f"{lt['tflite_fp32']['median_ms']:.3f} ms / {lt['tflite_int8']['median_ms']:.3f} ms"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run_detect(args) -> int:
    from ..detect.pipeline import quantize_detector
    from ..errors import AccuracyDropError

    try:
        r = quantize_detector(args.bundle, num_calib=args.num_calib, max_drop=1.5 if args.max_drop is None else
                              args.max_drop, allow_float_ops=args.allow_float_ops, target_gap=args.target_gap,
                              max_offload=args.max_offload, progress=not args.quiet, quantizer=args.quantizer)
    except AccuracyDropError as e:
        if e.report:
            print(format_detect_report(e.report), file=sys.stderr)
        raise
    print(format_detect_report(r))
    c = r["calibration"]
    print(f"routing (validation split): metric {c['metric']}, offload when above {c['threshold']:.4g} -> offload "
          f"{_pct(c['offload'])}, hybrid mAP@0.5 {c['hybrid_map50']:.4f} (cloud {c['val_cloud_map50']:.4f}, "
          f"edge {c['val_edge_map50']:.4f})")
    print(f"bundle updated: {args.bundle} (edge_int8.tflite, routing, reports.quantize)")
    return 0


def run(args) -> int:
    from edge_sdk.bundle import load_bundle

    from ..pipeline import AccuracyDropError, QuantizeError, quantize_bundle
    from ..routing_calibration import RoutingConfig

    try:
        task = load_bundle(args.bundle, verify=False).manifest.task
    except Exception as e:  # the pipeline reports a bad bundle with its own error
        raise QuantizeError(str(e)) from None
    if task == "detect":
        return run_detect(args)
    try:
        report = quantize_bundle(
            args.bundle, calib_dir=args.calib, num_calib=args.num_calib, io_dtype=args.io,
            max_drop=1.0 if args.max_drop is None else args.max_drop,
            allow_float_ops=args.allow_float_ops, target_gap=args.target_gap, max_offload=args.max_offload,
            progress=not args.quiet, quantizer=args.quantizer,
            routing=RoutingConfig(target_gap=args.target_gap, max_offload=args.max_offload, delta=args.delta,
                                  ood=None if args.ood == "none" else args.ood),
        )
    except AccuracyDropError as e:
        if e.report:
            print(format_report(e.report), file=sys.stderr)
        raise
    print(format_report(report))
    print(format_calibration(report["calibration"]))
    print(f"bundle updated: {args.bundle} (edge_int8.tflite, routing, reports.quantize)")
    return 0
