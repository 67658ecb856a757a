"""The cloud service under load, against its two ceilings, measured in one run. Prints one JSON object.

    python benchmarks/cloud_bench.py [--model digits|mobilenetv2|resnet50|BUNDLE] [--backend tensorflow|jax|torch]
                                     [--concurrency 1,8,32,64] [--duration 8] [--client auto|wrk|python]

* model ceiling: the service's own compiled model (cloud.model.CloudModel) with no HTTP, before the
  servers start, at every batch size up to --scan-max-batch, in each threading layout that could be
  best (one caller with every core per op; the server's plan, e.g. two callers x half the cores), each
  in its own process; the best images/s of them all.
* HTTP ceiling: the same server (started with --bench-endpoints) and the same client and image bodies
  at the top concurrency, on POST /v1/noop: auth, limits, routing and the body read, no decode, no model.
* served: POST /v1/classify with encoded images (PNG for digits, JPEG otherwise) at each concurrency,
  with batching on (--max-batch-size: 32, or auto = the model's sweet spot from the scan) and off
  (max_batch_size=1), two `hybrid-vision serve` processes measured alternately. At the top concurrency
  each round re-measures the model ceiling first, so "served_fraction_same_load" compares like with like
  on a machine whose other load changes.

Targets (issue 7), at the top concurrency: served with batching on >= 80% of the lower ceiling; batching
on never slower than off. The load generator is `wrk` (C, epoll) when installed, else separate Python
processes; on a small machine it shares the CPUs with the server, which the JSON reports.

--model digits uses bundles/digits if it exists, else trains one into a temp dir (~1 min).
mobilenetv2 / resnet50 are keras.applications at 224x224, weights=None, wrapped in a temp bundle.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several JAX processes share one GPU here
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cloud_server.serve_subprocess

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)

APPS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}


# --- what runs where ---------------------------------------------------------------


def machine(backend: str) -> dict:
    return machine_info(backend=backend)


# --- the model and the images ---------------------------------------------------------


def make_bundle(model: str, work: Path) -> Path:
    """A bundle for --model: an existing path, digits (trained if needed), or a keras.applications net at 224."""
    p = Path(model)
    if p.is_dir():
        return p
    if model == "digits":
        if (REPO / "bundles" / "digits" / "manifest.json").exists():
            return REPO / "bundles" / "digits"
        from quantize.train import TrainConfig, train

        out = work / "digits"
        train(TrainConfig(data="digits", out=str(out), epochs=12, patience=4, progress=False))
        return out
    if model in APPS:
        import keras

        from edge_sdk.bundle import Manifest, ModelFile, write_bundle
        from edge_sdk.preprocess import InputSpec, PreprocessSpec

        net = getattr(keras.applications, APPS[model])(input_shape=(224, 224, 3), weights=None, classes=1000)
        net.save(work / "cloud.keras")
        manifest = Manifest(
            name=model, labels=[f"class_{i:04d}" for i in range(1000)],
            input=InputSpec(height=224, width=224, channels=3, color="RGB"),
            preprocess=PreprocessSpec(resize="center_crop", scale=1 / 127.5, mean=[1.0], std=[1.0]),
            models={"cloud": ModelFile(file="cloud.keras", format="keras")},
        )
        write_bundle(work / model, manifest, {"cloud.keras": work / "cloud.keras"})
        return work / model
    raise SystemExit(f"--model {model!r}: not a bundle directory, 'digits', or one of {sorted(APPS)}")


def make_images(bundle: Path, work: Path, n: int = 32) -> tuple[list[Path], str]:
    """n encoded images to send: digits PNGs for a digits-sized model, else camera-like JPEGs at 1.5x the input."""
    from edge_sdk.bundle import load_bundle
    from edge_sdk.preprocess import encode_jpeg

    inp = load_bundle(bundle, verify=False).manifest.input
    out = work / "images"
    out.mkdir(exist_ok=True)
    if inp.height <= 64:
        from quantize.data import resolve

        files = sorted(resolve("digits").rglob("*.png"))[:: 37][:n]
        for i, f in enumerate(files):
            shutil.copyfile(f, out / f"{i:03d}.png")
        return sorted(out.glob("*.png")), "image/png"
    rng = np.random.default_rng(0)
    h, w = int(inp.height * 1.5), int(inp.width * 1.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):  # smooth gradients and blobs plus a little noise: JPEG sizes like a photo's
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            a, b, ph = rng.uniform(0.005, 0.05, 3)
            img[..., c] = 127 + 100 * np.sin(a * xx + b * yy + ph * 50)
        for _ in range(6):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, h / 4)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        (out / f"{i:03d}.jpg").write_bytes(encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), 90))
    return sorted(out.glob("*.jpg")), "image/jpeg"


def _ceiling_child(conn, bundle: str, backend: str, instances: int, threads: int, max_batch: int) -> None:
    """One threading layout of the model in its own process (TensorFlow fixes its threads per process)."""
    import threading

    from cloud.model import CloudModel, configure_threads, select_backend

    configure_threads(select_backend(backend), threads)
    m = CloudModel.from_path(bundle, max_batch_size=max_batch, backend=backend)
    m.warmup()
    x = np.random.default_rng(0).random((max_batch,) + m.input_shape, dtype=np.float32)

    def rate(batch: int, seconds: float) -> float:
        """Images/s with ``instances`` threads each calling predict on its own batch, as the server's workers do."""
        xb = x[:batch]
        m.predict(xb)
        counts = [0] * instances
        t0 = time.perf_counter()
        stop = t0 + seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop or counts[i] < 3:
                m.predict(xb)
                counts[i] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return round(sum(counts) * batch / (time.perf_counter() - t0), 1)

    conn.send({"buckets": m.buckets})
    while (msg := conn.recv()) is not None:
        conn.send(rate(*msg))


class ModelCeiling:
    """The compiled model alone (the service's own CloudModel.predict), no HTTP: its best images/s.

    Measured for each threading layout that could be best, each in its own process: one caller with
    every core per op (the classic layout), and the server's own plan (cloud.model.plan_instances: on a
    CPU, two callers at once with half the cores each). The ceiling is the best of them all.
    """

    def __init__(self, bundle: Path, backend: str, max_batch: int, server_plan: tuple[int, int]):
        cpus = os.cpu_count() or 1
        layouts = [(1, cpus)] + ([server_plan] if tuple(server_plan) != (1, cpus) else [])
        ctx = mp.get_context("spawn")
        self.children = {}
        for inst, thr in layouts:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_ceiling_child, args=(child, str(bundle), backend, inst, thr, max_batch),
                               daemon=True)
            proc.start()
            self.children[f"{inst}x{thr}"] = (proc, parent)
        self.buckets = {k: conn.recv()["buckets"] for k, (_, conn) in self.children.items()}
        self.best = (next(iter(self.children)), max_batch)  # (layout, batch), set by scan()

    def rate(self, batch: int | None = None, seconds: float = 2.0, layout: str | None = None) -> float:
        layout, best_batch = layout or self.best[0], self.best[1]
        _, conn = self.children[layout]
        conn.send((batch or best_batch, seconds))
        return conn.recv()

    def scan(self, seconds: float = 2.0) -> dict:
        """Images/s for every layout at every bucket size; the best (layout, batch) is kept for :meth:`rate`.

        ``sweet_spot`` is the smallest batch within 5% of the best, in the best layout: what
        max_batch_size should be (bigger batches only add latency there).
        """
        by_layout = {k: {b: self.rate(b, seconds, k) for b in self.buckets[k]} for k in self.children}
        layout, batch = max(((k, b) for k, r in by_layout.items() for b in r), key=lambda kb: by_layout[kb[0]][kb[1]])
        self.best = (layout, batch)
        top = by_layout[layout][batch]
        sweet = min(b for b, r in by_layout[layout].items() if r >= 0.95 * top)
        return {"best_layout": layout, "best_batch": batch, "images_per_s": top, "sweet_spot": sweet,
                "layouts": "instances x threads per op", "by_layout_and_batch": by_layout}

    def close(self) -> None:
        for proc, conn in self.children.values():
            conn.send(None)
            proc.join(30)


# --- load generators ---------------------------------------------------------------------

WRK_LUA = r"""
local bodies, reqs, idx = {}, {}, 0
init = function(args)
  local ctype = args[1]
  for i = 2, #args do
    local f = io.open(args[i], "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
  end
  for i, b in ipairs(bodies) do
    reqs[i] = wrk.format("POST", nil, {["Content-Type"] = ctype}, b)
  end
  idx = math.random(#reqs)
end
request = function()
  idx = idx % #reqs + 1
  return reqs[idx]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
"""


def run_wrk(url: str, files: list[Path], ctype: str, conc: int, seconds: float, work: Path) -> dict:
    script = work / "post.lua"
    script.write_text(WRK_LUA)
    threads = max(1, min(conc, os.cpu_count() or 1))
    cmd = ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{seconds:g}s", "--timeout", "30s", "-s", str(script),
           url, "--", ctype, *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    dur = r["duration_us"] / 1e6
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {"rps": round((r["requests"] - r["non2xx"]) / dur, 1), "requests": r["requests"], "errors": errors,
            "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000, "p99_ms": r["p99_us"] / 1000}


def _py_client(args) -> tuple[int, int, list[float]]:
    url, bodies, ctype, threads, seconds = args
    import threading

    import requests

    lat: list[float] = []
    counts = [0, 0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(k: int):
        local, ok, bad = [], 0, 0
        with requests.Session() as s:
            i = k
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = s.post(url, data=body, headers={"Content-Type": ctype}, timeout=30)
                    good = r.status_code == 200
                except requests.RequestException:
                    good = False
                local.append(time.perf_counter() - t0)
                ok, bad = ok + good, bad + (not good)
        with lock:
            lat.extend(local)
            counts[0] += ok
            counts[1] += bad

    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts[0], counts[1], lat


def run_python(url: str, files: list[Path], ctype: str, conc: int, seconds: float) -> dict:
    """Separate processes (so the client's GIL is not the server's), a few threads each, keep-alive sessions."""
    bodies = [f.read_bytes() for f in files]
    procs = max(1, min(conc, (os.cpu_count() or 2) * 2))
    per = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(procs) as pool:
        parts = pool.map(_py_client, [(url, bodies, ctype, n, seconds) for n in per if n])
    dur = time.perf_counter() - t0
    ok = sum(p[0] for p in parts)
    bad = sum(p[1] for p in parts)
    lat = np.array(sum((p[2] for p in parts), [])) * 1000
    q = np.percentile(lat, [50, 95, 99]) if len(lat) else [math.nan] * 3
    # the pool's start-up is not load: rate over the clients' own measuring window
    return {"rps": round(ok / seconds, 1), "requests": ok + bad, "errors": bad, "wall_s": round(dur, 1),
            "p50_ms": round(float(q[0]), 2), "p95_ms": round(float(q[1]), 2), "p99_ms": round(float(q[2]), 2)}


def load(client: str, url: str, files, ctype, conc, seconds, work) -> dict:
    if client == "wrk":
        return run_wrk(url, files, ctype, conc, seconds, work)
    return run_python(url, files, ctype, conc, seconds)


def batch_stats(base: str) -> tuple[float, float]:
    import requests

    text = requests.get(base + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("hv_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("hv_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


# --- the run ---------------------------------------------------------------------------------


def measure_point(client, base, files, ctype, c, seconds, work) -> dict:
    s0, n0 = batch_stats(base)
    r = load(client, base + "/v1/classify", files, ctype, c, seconds, work)
    s1, n1 = batch_stats(base)
    r["mean_batch"] = round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None
    r["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return r


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (all runs' images/s kept alongside)."""
    best = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
    return {**best, "rps_runs": [r["rps"] for r in runs]}


def serve_both(bundle, backend, args, files, ctype, work, concs, ceiling: ModelCeiling) -> dict:
    """Batching on and off served side by side (the idle one costs nothing), measured alternately at each
    concurrency, so a change in the machine's other load hits both alike. At the top concurrency each
    round also re-measures the model ceiling, so served and ceiling are compared under the same load."""
    from contextlib import ExitStack

    from cloud_server import serve_subprocess

    common = ["--backend", backend, "--max-delay-ms", str(args.max_delay_ms), "--bench-endpoints",
              "--log-level", "warning", "--queue-size", "4096"]
    if args.decode_threads:
        common += ["--decode-threads", str(args.decode_threads)]
    if args.model_instances:
        common += ["--model-instances", str(args.model_instances)]
    configs = {"on": args.max_batch_size} if args.skip_off else {"on": args.max_batch_size, "off": 1}
    out: dict = {k: {} for k in configs}
    with ExitStack() as stack:
        bases = {k: stack.enter_context(serve_subprocess([bundle], *common, "--max-batch-size", str(mb)))[0]
                 for k, mb in configs.items()}
        for base in bases.values():  # warm each path end to end
            load(args.client, base + "/v1/classify", files, ctype, max(concs), args.warmup, work)
        http = load(args.client, bases["on"] + "/v1/noop", files, ctype, max(concs), args.duration, work)
        print(f"  HTTP ceiling (c={max(concs)}): {http['rps']} req/s", file=sys.stderr)
        rounds = []
        for c in concs:
            runs: dict[str, list] = {k: [] for k in configs}
            for rep in range(args.repeats):
                model_now = ceiling.rate(seconds=args.duration / 2) if c == max(concs) else None
                order = list(bases) if rep % 2 == 0 else list(bases)[::-1]  # no side always goes first
                for k in order:
                    runs[k].append(measure_point(args.client, bases[k], files, ctype, c, args.duration, work))
                if model_now is not None:
                    lower = min(model_now, http["rps"])
                    rounds.append({"model_ceiling": model_now, "served_on": runs["on"][-1]["rps"],
                                   "fraction": round(runs["on"][-1]["rps"] / lower, 3)})
                    print(f"  round at c={c}: model ceiling now {model_now} img/s, served {runs['on'][-1]['rps']}"
                          f" -> {rounds[-1]['fraction']:.0%}", file=sys.stderr)
            for k in configs:
                out[k][c] = median_run(runs[k])
                r = out[k][c]
                print(f"  batching {k:3s} c={c:3d}: {r['rps']} img/s (runs {r['rps_runs']}) p50 {r['p50_ms']} ms "
                      f"p99 {r['p99_ms']} ms, mean batch {r['mean_batch']}, errors {r['errors']}", file=sys.stderr)
    return {"http_ceiling": {"concurrency": max(concs), **http}, "rounds": rounds, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits", help="digits, mobilenetv2, resnet50, or a bundle directory")
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                    choices=["tensorflow", "jax", "torch"])
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-batch-size", default="32",
                    help="the server's max_batch_size with batching on [32, the server's default]; "
                         "auto: the model's sweet spot from the scan (e.g. on a GPU)")
    ap.add_argument("--scan-max-batch", type=int, default=0,
                    help="largest batch the model scan tries [128; 256 on a GPU]")
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--decode-threads", type=int, default=0, help="0: the server's default")
    ap.add_argument("--model-instances", type=int, default=0, help="0: the server's default (auto)")
    ap.add_argument("--client", default="auto", choices=["auto", "wrk", "python"])
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per point; the median is kept")
    ap.add_argument("--skip-off", action="store_true", help="skip the batching-off server")
    args = ap.parse_args(argv)
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    concs = [int(c) for c in args.concurrency.split(",")]

    from cloud.model import select_backend

    backend = select_backend(args.backend)  # before anything imports keras
    t_start = time.perf_counter()
    where = machine(backend)
    with tempfile.TemporaryDirectory(prefix="hv-cloud-bench-") as td:
        work = Path(td)
        bundle = make_bundle(args.model, work)
        files, ctype = make_images(bundle, work)
        image_info = {"type": ctype, "count": len(files), "mean_bytes": int(np.mean([f.stat().st_size for f in files]))}
        print(f"model ceiling for {args.model} on {backend}...", file=sys.stderr)
        scan_max = args.scan_max_batch or (256 if "gpu" in where else 128)
        from cloud.model import plan_instances

        server_plan = plan_instances(backend, args.model_instances)
        ceiling = ModelCeiling(bundle, backend, scan_max, server_plan)
        scan = ceiling.scan()
        args.max_batch_size = scan["sweet_spot"] if args.max_batch_size == "auto" else int(args.max_batch_size)
        print(f"  model ceiling: {scan['images_per_s']} img/s at batch {scan['best_batch']} "
              f"(layout {scan['best_layout']}); serving with max_batch_size={args.max_batch_size}, "
              f"{server_plan[0]} instance(s) x {server_plan[1]} thread(s)", file=sys.stderr)
        try:
            served = serve_both(bundle, backend, args, files, ctype, work, concs, ceiling)
        finally:
            ceiling.close()

    top = max(concs)
    http = served["http_ceiling"]["rps"]
    rounds = served["rounds"]
    model_rates = [scan["images_per_s"]] + [r["model_ceiling"] for r in rounds]
    lower = min(http, max(model_rates))
    on = served["on"]
    fractions = sorted(r["fraction"] for r in rounds)
    same_load = fractions[(len(fractions) - 1) // 2] if fractions else None
    result = {
        "benchmark": "cloud_bench", "model": args.model, "conditions": {
            **where, "server_instances_x_threads": list(server_plan),
            "client": args.client, "duration_s": args.duration, "repeats": args.repeats, "image": image_info,
            "max_delay_ms": args.max_delay_ms, "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "note": ("client, server and model share the same CPUs (and other users' jobs); each ceiling is "
                     "measured alone on the whole machine") if "gpu" not in where else
                    "model on the GPU; client and server share the CPUs",
        },
        "model_ceiling": {**scan, "rechecked_at_top_concurrency": [r["model_ceiling"] for r in rounds]},
        "http_ceiling": served["http_ceiling"],
        "lower_ceiling": {"which": "http" if http < max(model_rates) else "model", "images_per_s": lower,
                          "note": "the best model rate seen in this run"},
        "batching_on": {"max_batch_size": args.max_batch_size, "by_concurrency": on},
        "served_fraction_of_lower_ceiling": {c: round(r["rps"] / lower, 3) for c, r in on.items()},
        "served_fraction_same_load": {"concurrency": top, "median": same_load, "rounds": rounds,
                                      "note": "served / min(HTTP ceiling, model ceiling re-measured just before)"},
        "targets": {f"served_c{top}_ge_80pct_of_lower_ceiling": on[top]["rps"] >= 0.8 * lower,
                    f"served_c{top}_ge_80pct_same_load": same_load is not None and same_load >= 0.8},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if "off" in served:
        off = served["off"]
        result["batching_off"] = {"max_batch_size": 1, "by_concurrency": off}
        gain = {c: round(on[c]["rps"] / off[c]["rps"], 2) if off[c]["rps"] else None for c in concs}
        result["batching_gain"] = gain
        result["targets"]["batching_on_never_slower"] = all(g is not None and g >= 1.0 for g in gain.values())
        result["targets"]["batching_on_never_slower_beyond_5pct_noise"] = all(
            g is not None and g >= 0.95 for g in gain.values())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
