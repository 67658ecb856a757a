"""The edge SDK: its per-call overhead over the bare interpreter, and edge / cloud / hybrid on digits.

Prints one JSON object. Targets (issues 4 and 18):

* the SDK's path for a confident array costs <= 30 us a call more than the
  bare interpreter's set_tensor + invoke + get_tensor on the same input, in
  the same run (issue 4 asked <= 100 us);
* against a local server on the digits test split, hybrid accuracy >= cloud-only
  accuracy - 0.5 points while offloading <= 20% of images;
* opt-in collection (``CollectConfig``, issue 17) adds <= 20 us to a confident
  ``predict`` (the observer that draws the audit share and hands it off).

    python benchmarks/edge_bench.py [--bundle QUANTIZED_BUNDLE] [--calls 3000] [--skip-server]

Without --bundle a digits bundle is trained and quantized into a temp dir first (~1-2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cloud_server.serve_subprocess

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)

TARGET_US = 30  # SDK overhead over the bare interpreter call, confident array (issue 18)


def machine() -> dict:
    return machine_info()


def make_bundle(work: Path) -> Path:
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    out = work / "digits"
    train(TrainConfig(data="digits", out=str(out), epochs=15, patience=5, progress=False))
    quantize_bundle(out, progress=False)
    return out


def _per_call_us(fn, calls: int) -> tuple[float, float]:
    """(CPU time of this thread, wall time) per call, in microseconds. The interpreter runs with one thread,
    in the caller's, so thread CPU time is its cost even on a machine other processes are busy on."""
    c, w = time.thread_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.thread_time() - c) / calls * 1e6, (time.perf_counter() - w) / calls * 1e6


def overhead(bundle: Path, calls: int, work: Path, rounds: int = 7) -> dict:
    """Per-call cost of each SDK layer against the bare interpreter, interleaved rounds, median of rounds."""
    from edge_sdk.breaker import CircuitBreaker
    from edge_sdk.bundle import load_bundle
    from edge_sdk.capacity import default_probes
    from edge_sdk.hybrid import HybridClassifier
    from edge_sdk.options import CollectConfig
    from edge_sdk.preprocess import load_image, normalize, quantize, resize
    from quantize.data import split_from_info

    b = load_bundle(bundle)
    m = b.manifest
    item = split_from_info(m.data).test[0][0]
    png = Path(item).read_bytes()
    rgb = resize(load_image(png), m.input.height, m.input.width, m.preprocess.resize)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    # the default probes are part of the hot path; the CPU probe's limit is lifted so that a machine busy with
    # other jobs measures the same confident path instead of tripping it (the probe still runs every call)
    probes = default_probes(max_load_per_core=1e9)
    edge = HybridClassifier.from_bundle(b, mode="edge_only", num_threads=1, probes=probes)
    # auto mode with a cloud configured but a confident image: routing, probes, breaker peek, no network
    # (a breaker that never opens: the collecting classifiers' audits fail against this URL, and an open breaker
    # would change the routing path being compared)
    mk = lambda **kw: HybridClassifier.from_bundle(  # noqa: E731
        b, cloud_url="http://127.0.0.1:9", threshold=0.0, num_threads=1,
        breaker=CircuitBreaker(failure_threshold=10**9), probes=probes, **kw)
    auto = mk()
    # the same, collecting: the observer runs on every answer; audit_rate 0.02 (the default) hands 2% of the
    # confident answers to the background worker, 0.0 only looks at the answer
    collect = mk(collect=CollectConfig(dir=work / "collect", audit_rate=0.02, seed=0))
    collect_no_audit = mk(collect=CollectConfig(dir=work / "collect0", audit_rate=0.0))
    model = edge.model
    interp = model.bare_interpreter()
    i_in, i_out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    xq = quantize(normalize(rgb, m.input, m.preprocess), model.input_quant)[None]  # the same input, pre-quantized

    def bare():
        interp.set_tensor(i_in, xq)
        interp.invoke()
        interp.get_tensor(i_out)

    x0 = xq[0]
    cases = {
        "bare_interpreter": bare,
        "local_model_predict_quantized": lambda: model.predict_quantized(x0),
        "hybrid_edge_only_array": lambda: edge.predict(bgr),
        "hybrid_auto_confident_array": lambda: auto.predict(bgr),
        "hybrid_auto_confident_array_collect": lambda: collect.predict(bgr),
        "hybrid_auto_confident_array_collect_no_audit": lambda: collect_no_audit.predict(bgr),
        "hybrid_edge_only_png_bytes": lambda: edge.predict(png),
    }
    assert auto.predict(bgr).reason == "confident"
    # the same answer as the bare model (a routing bundle's probabilities are shown after its temperature)
    assert int(np.argmax(edge.predict(bgr).probabilities)) == int(np.argmax(model.predict_quantized(x0)))
    for fn in cases.values():  # warm up every path (per-thread interpreters, caches)
        _per_call_us(fn, 200)
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    wall: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            c, w = _per_call_us(fn, calls)
            cpu[k].append(c)
            wall[k].append(w)
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    med_wall = {k: float(np.median(v)) for k, v in wall.items()}
    bc, bw = med_cpu["bare_interpreter"], med_wall["bare_interpreter"]
    sdk = ("hybrid_edge_only_array", "hybrid_auto_confident_array")
    collect_cpu = {k.removeprefix("hybrid_auto_confident_array_"): round(med_cpu[k] - med_cpu[
        "hybrid_auto_confident_array"], 2) for k in med_cpu if k.startswith("hybrid_auto_confident_array_collect")}
    for c in (collect, collect_no_audit):
        c.close()
    return {
        "collect_adds_us_cpu": collect_cpu, "collect_target_us": 20,
        "collect_meets_target": collect_cpu["collect"] <= 20,
        "model_input": [m.input.height, m.input.width, m.input.channels], "backend": model.backend,
        "num_threads": 1, "calls_per_round": calls, "rounds": rounds,
        "per_call_us_cpu_median": {k: round(v, 2) for k, v in med_cpu.items()},
        "per_call_us_wall_median": {k: round(v, 2) for k, v in med_wall.items()},
        "overhead_us_over_bare_cpu": {k: round(v - bc, 2) for k, v in med_cpu.items() if k != "bare_interpreter"},
        "overhead_us_over_bare_wall": {k: round(v - bw, 2) for k, v in med_wall.items() if k != "bare_interpreter"},
        "note": "array cases: load_image (BGR->RGB), resize, pixel quantization, capacity probes, routing, "
                "top-k, stats. png_bytes adds a PNG decode, which the bare interpreter never does. "
                "CPU time is the measure of record; wall time also counts waiting for a shared CPU.",
        "target_us": TARGET_US,
        "meets_target": all(med_cpu[k] - bc <= TARGET_US for k in sdk),
    }


def _run_split(clf, paths, labels, batch: bool = False) -> dict:
    t = time.perf_counter()
    preds = clf.predict_batch(paths) if batch else [clf.predict(p) for p in paths]
    wall = time.perf_counter() - t
    # in a batch every image shares the batch's latency; report the amortized per-image figure instead
    lat = np.full(len(preds), wall * 1000 / len(preds)) if batch else np.array([p.latency_ms["total"] for p in preds])
    by_reason: dict[str, int] = {}
    for p in preds:
        by_reason[p.reason] = by_reason.get(p.reason, 0) + 1
    return {
        "n": len(preds), "accuracy": float(np.mean([p.label == y for p, y in zip(preds, labels, strict=False)])),
        "offload_fraction": float(np.mean([p.source == "cloud" for p in preds])),
        "latency_ms": {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                       "p95": float(np.percentile(lat, 95))},
        "wall_s": round(wall, 3),
        "mode": "one predict_batch call, latency amortized per image" if batch else "predict per image",
        "bytes_sent_per_image": float(sum(p.bytes_sent for p in preds) / len(preds)),
        "bytes_sent_per_offloaded_image": float(
            sum(p.bytes_sent for p in preds) / max(1, sum(p.source == "cloud" for p in preds))),
        "by_reason": by_reason,
    }


def against_server(bundle: Path) -> dict:
    from cloud_server import serve_subprocess

    from edge_sdk.bundle import load_bundle
    from edge_sdk.hybrid import HybridClassifier
    from quantize.data import split_from_info

    m = load_bundle(bundle).manifest
    test = split_from_info(m.data).test
    paths, labels = [p for p, _ in test], [m.labels[y] for _, y in test]
    out: dict = {"n_test": len(paths), "threshold": m.routing.threshold, "metric": m.routing.metric}
    t0 = time.perf_counter()
    with serve_subprocess([bundle], "--log-level", "warning") as (url, _proc):
        out["server_start_s"] = round(time.perf_counter() - t0, 1)
        mk = lambda **kw: HybridClassifier.from_bundle(bundle, cloud_url=url, probes=[], deadline_ms=10_000, **kw)  # noqa: E731
        _run_split(mk(mode="cloud_only"), paths[:20], labels[:20])  # warm the server and connection
        out["edge_only"] = _run_split(HybridClassifier.from_bundle(bundle, mode="edge_only", probes=[]), paths, labels)
        uploads = ("jpeg", "original", "tensor")
        out["cloud_only"] = {u: _run_split(mk(mode="cloud_only", upload=u), paths, labels) for u in uploads}
        out["hybrid"] = {u: _run_split(mk(upload=u), paths, labels) for u in uploads}
        out["hybrid_batch_jpeg"] = _run_split(mk(upload="jpeg"), paths, labels, batch=True)
    h, c = out["hybrid"]["jpeg"], out["cloud_only"]["jpeg"]
    out["targets"] = {
        "hybrid_minus_cloud_points": round(100 * (h["accuracy"] - c["accuracy"]), 2),
        "offload_fraction": h["offload_fraction"],
        "meets_accuracy": h["accuracy"] >= c["accuracy"] - 0.005,
        "meets_offload": h["offload_fraction"] <= 0.20,
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a quantized bundle (default: train and quantize digits in a temp dir)")
    ap.add_argument("--calls", type=int, default=3000, help="calls per timing round")
    ap.add_argument("--skip-server", action="store_true", help="only the overhead measurement")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hv-edge-bench-"))
    try:
        t0 = time.perf_counter()
        bundle = Path(args.bundle) if args.bundle else make_bundle(work)
        result = {"machine": machine(), "bundle": str(bundle), "bundle_build_s": round(time.perf_counter() - t0, 1)}
        result["edge_overhead"] = overhead(bundle, args.calls, work)
        if not args.skip_server:
            result["digits"] = against_server(bundle)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
