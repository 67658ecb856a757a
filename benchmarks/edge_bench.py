"""The edge SDK: its per-call overhead over the bare interpreter, and edge / cloud / hybrid on digits.

Prints one JSON object. Targets (issues 4 and 18):

* the SDK's path for a confident array costs <= 30 us a call more than the
  bare interpreter's set_tensor + invoke + get_tensor on the same input, in
  the same run (issue 4 asked <= 100 us);
* against a local server on the digits test split, hybrid accuracy >= cloud-only
  accuracy - 0.5 points while offloading <= 20% of images;
* opt-in collection (``CollectConfig``, issue 17) adds <= 20 us to a confident
  ``predict`` (the observer that draws the audit share and hands it off).

    python benchmarks/edge_bench.py [--bundle QUANTIZED_BUNDLE] [--calls 300] [--rounds 41] [--skip-server]

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


def _per_call_us(fn, calls: int) -> float:
    """CPU time of this thread per call, in microseconds. The interpreter runs with one thread, in the
    caller's, so thread CPU time is its cost even on a machine other processes are busy on."""
    c = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - c) / calls * 1e6


def _paired_rounds(cases: dict, calls: int, rounds: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-call CPU us of every case, ``rounds`` x ``calls``, the cases in a fresh random order each round.

    Short interleaved rounds put every case under the same drift (another tenant's job, the clock), so the
    difference of two cases within one round is a paired sample; its median over rounds is the estimate.
    """
    rng = np.random.default_rng(seed)
    names = list(cases)
    out = {k: np.empty(rounds) for k in names}
    for r in range(rounds):
        for i in rng.permutation(len(names)):
            out[names[i]][r] = _per_call_us(cases[names[i]], calls)
    return out


def _diff_summary(a: np.ndarray, b: np.ndarray) -> dict:
    """Median and interquartile range of the paired per-round differences a - b, in us."""
    d = a - b
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    return {"median": round(float(med), 2), "q1": round(float(q1), 2), "q3": round(float(q3), 2)}


def overhead(bundle: Path, calls: int, work: Path, rounds: int = 41) -> dict:
    """Per-call cost of each SDK layer against the bare interpreter: interleaved rounds, paired differences."""
    import cv2

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
    own = mk()  # the same path with its interpreter's invoke stubbed: the SDK's own work per call
    # the same, collecting: the observer runs on every answer; audit_rate 0.02 (the default) hands 2% of the
    # confident answers to the background worker, 0.0 only looks at the answer
    collect = mk(collect=CollectConfig(dir=work / "collect", audit_rate=0.02, seed=0))
    collect_no_audit = mk(collect=CollectConfig(dir=work / "collect0", audit_rate=0.0))
    model = edge.model
    interp = model.bare_interpreter()
    i_in, i_out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    # a model with several outputs (a routing bundle's logits and features) names its probabilities
    i_probs = (i_out if len(interp.get_output_details()) == 1
               else interp.get_signature_runner().get_output_details()["probabilities"]["index"])
    xq = quantize(normalize(rgb, m.input, m.preprocess), model.input_quant)[None]  # the same input, pre-quantized
    qp, pp = model.input_quant, m.preprocess
    grey = m.input.channels == 1
    mean, std = np.asarray(pp.mean, np.float32), np.asarray(pp.std, np.float32)
    lo, hi = (-128, 127) if qp.dtype == "int8" else (0, 255)
    deq_scale, deq_zero = model.output_quant.scale, model.output_quant.zero_point
    # the fastest an app can do by hand: its own 256-entry pixel table (as the SDK builds one) and the top class
    # read off the int8 output (dequantizing is monotonic)
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1x256x3, R=G=B
    table = quantize(normalize(ramp, m.input, pp), qp)[0]  # 256 x C
    lut = np.ascontiguousarray(table[:, 0] if grey else table.reshape(256, 1, 3))
    batch_shape = (1, m.input.height, m.input.width, m.input.channels)

    def bare():
        interp.set_tensor(i_in, xq)
        interp.invoke()
        interp.get_tensor(i_out)

    def by_hand():
        """What an app calling the interpreter itself must add: BGR frame -> model input, top class out."""
        x = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None] if grey else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x = (x * pp.scale - mean) / std
        x = np.clip(np.round(x / qp.scale) + qp.zero_point, lo, hi).astype(qp.dtype)
        interp.set_tensor(i_in, x[None])
        interp.invoke()
        q = interp.get_tensor(i_probs)[0]
        probs = (q.astype(np.float32) - deq_zero) * deq_scale
        return int(np.argmax(probs)), float(probs.max())

    def by_hand_fastest():
        """The least an app calling the interpreter itself can add: one colour conversion, one table look-up."""
        x = cv2.LUT(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if grey else cv2.COLOR_BGR2RGB), lut)
        interp.set_tensor(i_in, x.reshape(batch_shape))
        interp.invoke()
        return int(interp.get_tensor(i_probs)[0].argmax())

    assert own.predict(bgr).reason == "confident"  # binds its interpreter in this thread
    # its interpreter's invoke stubbed, so the case times the SDK's own work (set_tensor and get_tensor still run:
    # the output is the last real one); benchmark only
    own.model._slot()[0].invoke = lambda: None
    x0 = xq[0]
    cases = {
        "bare_interpreter": bare,
        "bare_interpreter_again": bare,  # the same loop twice: what a difference of zero looks like here
        "by_hand_bgr_array": by_hand,
        "by_hand_fastest_bgr_array": by_hand_fastest,
        "local_model_predict_quantized": lambda: model.predict_quantized(x0),
        "hybrid_edge_only_array": lambda: edge.predict(bgr),
        "hybrid_auto_confident_array": lambda: auto.predict(bgr),
        "hybrid_edge_only_png_bytes": lambda: edge.predict(png),
        "sdk_own_work_no_invoke": lambda: own.predict(bgr),
    }
    # collection is compared with the same path without it, in rounds of their own (fewer cases between two
    # blocks of one case: less of the cache churn that widens every difference)
    collect_cases = {
        "hybrid_auto_confident_array": lambda: auto.predict(bgr),
        "collect": lambda: collect.predict(bgr),
        "collect_no_audit": lambda: collect_no_audit.predict(bgr),
    }
    assert auto.predict(bgr).reason == "confident"
    # the same answer as the bare model (a routing bundle's probabilities are shown after its temperature)
    assert int(np.argmax(edge.predict(bgr).probabilities)) == int(np.argmax(model.predict_quantized(x0)))
    assert by_hand()[0] == int(np.argmax(model.predict_quantized(x0))) == by_hand_fastest()
    for fn in (*cases.values(), *collect_cases.values()):  # warm up every path (per-thread interpreters, caches)
        _per_call_us(fn, 200)
    cpu = _paired_rounds(cases, calls, rounds)
    bare_cpu = cpu["bare_interpreter"]
    not_sdk = ("bare_interpreter", "sdk_own_work_no_invoke")
    over = {k: _diff_summary(v, bare_cpu) for k, v in cpu.items() if k not in not_sdk}
    base = cpu["hybrid_auto_confident_array"]
    with_collect = _paired_rounds(collect_cases, calls, rounds, seed=1)
    collect_cpu = {k: _diff_summary(with_collect[k], with_collect["hybrid_auto_confident_array"])
                   for k in ("collect", "collect_no_audit")}
    audits = collect.stats().collection
    for c in (collect, collect_no_audit, own, auto, edge):
        c.close()
    sdk = ("hybrid_edge_only_array", "hybrid_auto_confident_array")
    return {
        "collect_adds_us_cpu": collect_cpu, "collect_target_us": 20,
        "collect_audits_asked": audits.audits_asked if audits is not None else None,
        "collect_meets_target": collect_cpu["collect"]["median"] <= 20,
        "model_input": [m.input.height, m.input.width, m.input.channels], "backend": model.backend,
        "num_threads": 1, "calls_per_round": calls, "rounds": rounds,
        "per_call_us_cpu_median": {k: round(float(np.median(v)), 2) for k, v in cpu.items()},
        "overhead_us_over_bare_cpu": over,
        "sdk_own_work_us_cpu": round(float(np.median(cpu["sdk_own_work_no_invoke"])), 2),
        "auto_over_by_hand_us_cpu": _diff_summary(base, cpu["by_hand_bgr_array"]),
        "auto_over_by_hand_fastest_us_cpu": _diff_summary(base, cpu["by_hand_fastest_bgr_array"]),
        "note": "CPU time of the calling thread. Each round runs every case `calls` times, in a random order; "
                "an overhead is the median over rounds of the paired difference (q1..q3 its spread). "
                "array cases: BGR->RGB, resize, pixel table, capacity probes, routing, top-k, stats. "
                "png_bytes adds a PNG decode. sdk_own_work_no_invoke is the auto path with its interpreter's "
                "invoke stubbed. by_hand is the bare call plus what an app must add itself (colour conversion, "
                "quantizing the input with numpy, reading the top class); by_hand_fastest the least it can add "
                "(one colour conversion and one table look-up in OpenCV, argmax of the int8 output). "
                "The interpreter's invoke runs slower when any code runs between invokes (its weights leave "
                "the CPU's caches), which the bare loop never pays.",
        "target_us": TARGET_US,
        "meets_target": all(over[k]["median"] <= TARGET_US for k in sdk),
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
    ap.add_argument("--calls", type=int, default=300, help="calls per case in each timing round")
    ap.add_argument("--rounds", type=int, default=41, help="interleaved timing rounds")
    ap.add_argument("--skip-server", action="store_true", help="only the overhead measurement")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hv-edge-bench-"))
    try:
        t0 = time.perf_counter()
        bundle = Path(args.bundle) if args.bundle else make_bundle(work)
        result = {"machine": machine(), "bundle": str(bundle), "bundle_build_s": round(time.perf_counter() - t0, 1)}
        result["edge_overhead"] = overhead(bundle, args.calls, work, args.rounds)
        if not args.skip_server:
            result["digits"] = against_server(bundle)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
