"""int8 against fp32 TFLite: accuracy and agreement on digits; size and 1-thread latency on MobileNetV2 224.

Prints one JSON object. Targets (issue 3): digits int8 drop <= 0.5 points and
agreement >= 99%; MobileNetV2 1.0 at 224 int8 >= 3.5x smaller and >= 1.8x
faster than fp32 TFLite, 1 thread, LiteRT interpreter. Every quantizer that is
installed is measured (ai-edge-quantizer only if importable).

    python benchmarks/quantize_bench.py [--bundle BUNDLE] [--runs 50] [--skip-mobilenet]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)


def quantizers() -> list[str]:
    out = ["tflite-converter"]
    if importlib.util.find_spec("ai_edge_quantizer") is not None:
        out.append("ai-edge-quantizer")
    return out


def machine() -> dict:
    return machine_info()


def bench_digits(bundle: str | None, work: Path, runs: int) -> dict:
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    if bundle is None:
        t0 = time.perf_counter()
        src = work / "digits-trained"
        train(TrainConfig(data="digits", out=str(src), epochs=15, patience=5, progress=False))
        trained_s = time.perf_counter() - t0
    else:
        src, trained_s = Path(bundle), None
    out: dict = {"bundle": str(bundle) if bundle else "trained now (15 epochs)", "train_seconds": trained_s}
    for q in quantizers():
        dst = work / f"digits-{q}"
        shutil.copytree(src, dst)
        try:
            r = quantize_bundle(dst, progress=False, quantizer=q, max_drop=100, latency_runs=runs * 4)
        except Exception as e:  # report, do not hide, a quantizer that fails here
            out[q] = {"error": f"{type(e).__name__}: {e}"}
            continue
        t = r["test"]
        out[q] = {
            "accuracy": t["accuracy"], "drop_points": round(t["accuracy_drop_points"], 3),
            "agreement_int8_vs_fp32": t["agreement_int8_vs_fp32"], "mean_abs_prob_diff": t["mean_abs_prob_diff"],
            "size_bytes": r["size_bytes"],
            "latency_ms": {k: r["latency"][k]["median_ms"] for k in ("tflite_fp32", "tflite_int8")},
            "speedup": round(r["latency"]["speedup_fp32_over_int8"], 3), "convert_seconds": r["seconds"]["convert"],
            "targets_met": {"drop_le_0.5": t["accuracy_drop_points"] <= 0.5,
                            "agreement_ge_99": t["agreement_int8_vs_fp32"] >= 0.99},
        }
    return out


def bench_mobilenet(runs: int) -> dict:
    import keras

    from quantize.convert import convert_fp32, convert_int8
    from quantize.tflite_eval import compare_latency

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3), weights=None)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 224, 224, 3)).astype(np.float32)  # MobileNet's [-1, 1] input range
    t0 = time.perf_counter()
    fp32 = convert_fp32(model)
    res: dict = {"model": "keras.applications.MobileNetV2(alpha=1.0, 224x224x3, weights=None)",
                 "params": int(model.count_params()), "fp32_convert_seconds": round(time.perf_counter() - t0, 2)}
    models = {"fp32": fp32}
    for q in quantizers():
        t0 = time.perf_counter()
        try:
            models[q] = convert_int8(model, x[:16], quantizer=q)
        except Exception as e:
            res[q] = {"error": f"{type(e).__name__}: {e}"}
            continue
        res[q] = {"convert_seconds": round(time.perf_counter() - t0, 2)}
    # all models take turns (interleaved rounds), so machine noise hits them alike
    lat = compare_latency(models, x, runs=runs, rounds=10, warmup=5, max_seconds=60)
    res["fp32"] = {"size_bytes": len(fp32), "latency": lat["fp32"].as_dict()}
    for q, int8 in models.items():
        if q == "fp32":
            continue
        ratio, speed = len(fp32) / len(int8), lat["fp32"].median_ms / lat[q].median_ms
        res[q].update({
            "size_bytes": len(int8), "latency": lat[q].as_dict(), "size_ratio": round(ratio, 3),
            "speedup": round(speed, 3),
            "targets_met": {"smaller_ge_3.5x": ratio >= 3.5, "faster_ge_1.8x": speed >= 1.8},
        })
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a trained digits bundle (copied, never changed); default: train one now")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per MobileNetV2 model [50]")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--skip-mobilenet", action="store_true")
    args = ap.parse_args()

    from ai_edge_litert import __version__ as litert_version  # noqa: F401  (fails early if LiteRT is missing)

    out: dict = {"benchmark": "quantize", "machine": machine(), "quantizers": quantizers(), "num_threads": 1,
                 "runtime": "ai_edge_litert.interpreter.Interpreter, default XNNPACK delegate"}
    with tempfile.TemporaryDirectory(prefix="hv-qbench-") as td:
        if not args.skip_digits:
            out["digits"] = bench_digits(args.bundle, Path(td), args.runs)
        if not args.skip_mobilenet:
            out["mobilenetv2_224"] = bench_mobilenet(args.runs)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
