"""The service on Ray Serve beside the plain service, same load, same run; a replica killed under load; and a
model of scaling out to N machines from what was measured. Prints one JSON object.

    python benchmarks/scale_bench.py [--model digits|mobilenetv2|BUNDLE] [--concurrency 32] [--duration 8]
                                     [--repeats 3] [--kills 3] [--kill-rate 0]

* throughput: POST /v1/classify with encoded images (cloud_bench's images and load generator), the plain
  service (`hybrid-vision serve`, its defaults) and the same bundle and settings on a local Ray cluster
  (cloud.ray_app) with 1 replica (all the machine's CPUs), then 2 replicas (half each), measured in
  alternating rounds so a change in the machine's other load hits both alike. Each round gives the Ray / plain
  ratio; the median and spread of the rounds are reported.
* overhead: the same at one client (latency added per request), and the CPU seconds per request each process
  spent (psutil) during the rounds: plain server; Ray's proxy, ingress and model replicas.
* faults: under load (--concurrency SDK clients, cloud_only, so every answer must come from the service), one
  model replica is SIGKILLed; lost answers at the SDK, failed requests at the HTTP level (the ingress's own
  counts of non-200 answers), and the time until Ray has the replica back, each --kills times.
* scaling: expected images/s on N machines from the measured per-image replica cost, ingress cost and
  network bytes per image.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import cloud_bench  # noqa: E402  (benchmarks/cloud_bench.py: bundles, images, load generators)
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from machine import machine_info  # noqa: E402

APP = "hv-bench"
KEY_SETTINGS = {"max_delay_ms": 5.0, "queue_size": 4096, "log_level": "warning"}


# --- CPU accounting ---------------------------------------------------------------------------------


def ray_processes(app: str) -> dict[str, list[psutil.Process]]:
    """Ray's serving processes by role, from the titles Ray gives them."""
    roles: dict[str, list[psutil.Process]] = {"proxy": [], "ingress": [], "replicas": [], "ray_system": []}
    for p in psutil.process_iter(["cmdline", "name"]):
        cmd = (p.info["cmdline"] or [""])[0]
        if cmd == "ray::ProxyActor":
            roles["proxy"].append(p)
        elif cmd == f"ray::ServeReplica:{app}:Ingress":
            roles["ingress"].append(p)
        elif cmd.startswith(f"ray::ServeReplica:{app}:Model-"):
            roles["replicas"].append(p)
        elif cmd.startswith("ray::") or p.info["name"] in ("raylet", "gcs_server"):
            roles["ray_system"].append(p)
    return roles


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """CPU seconds each role spent between start() and stop()."""

    def __init__(self, roles: dict[str, list[psutil.Process]]):
        self.roles = roles

    def __enter__(self):
        self.t0 = {k: cpu_seconds(v) for k, v in self.roles.items()}
        return self

    def __exit__(self, *exc):
        self.spent = {k: cpu_seconds(v) - self.t0[k] for k, v in self.roles.items()}


# --- the two services ------------------------------------------------------------------------------------


def ray_app(bundle: Path, replicas: int, cores: int, max_batch_size: int):
    from cloud.ray_app import ScaleOptions, build_app
    from cloud.settings import Settings

    settings = Settings(max_batch_size=max_batch_size, bench_endpoints=True, **KEY_SETTINGS)
    return build_app([str(bundle)], settings, ScaleOptions(replicas=replicas, cpus_per_replica=cores / replicas))


def measure(args, url: str, files, ctype, conc: int, work: Path, roles) -> dict:
    with CpuMeter(roles) as m:
        r = cloud_bench.load(args.client, url + "/v1/classify", files, ctype, conc, args.duration, work)
    n = max(1, r["rps"] * args.duration)
    r["cpu_ms_per_request"] = {k: round(1000 * v / n, 3) for k, v in m.spent.items()}
    r["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return r


def interleaved(args, urls: dict[str, str], roles: dict[str, dict], files, ctype, conc: int, work: Path) -> dict:
    """Rounds of every service at the same load, alternating which goes first."""
    runs: dict[str, list[dict]] = {k: [] for k in urls}
    for rep in range(args.repeats):
        order = list(urls) if rep % 2 == 0 else list(urls)[::-1]
        for k in order:
            runs[k].append(measure(args, urls[k], files, ctype, conc, work, roles[k]))
        print(f"  c={conc} round {rep + 1}: " + ", ".join(f"{k} {runs[k][-1]['rps']}" for k in urls), file=sys.stderr)
    return runs


def summary(runs: list[dict]) -> dict:
    rps = [r["rps"] for r in runs]
    med = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
    return {"images_per_s_median": med["rps"], "images_per_s_runs": rps, "p50_ms": med["p50_ms"],
            "p99_ms": med["p99_ms"], "errors": sum(r["errors"] for r in runs),
            "cpu_ms_per_request": med["cpu_ms_per_request"], "load_avg_1m": [r["load_avg_1m"] for r in runs]}


def ratio(ray: list[dict], plain: list[dict]) -> dict:
    rounds = [round(a["rps"] / b["rps"], 3) for a, b in zip(ray, plain, strict=True) if b["rps"]]
    return {"median": statistics.median(rounds), "min": min(rounds), "max": max(rounds), "rounds": rounds}


# --- the replica kill ---------------------------------------------------------------------------------------


def _sdk_clients(args) -> list[tuple[float, float, bool, str]]:
    """``threads`` SDK clients (cloud_only) in this process until ``stop`` is set: (start, end, ok, why);
    ``answered`` counts the answers of all processes (the kill waits for the load to be running)."""
    url, bundle, images, threads, rate, stop, answered = args
    from edge_sdk.hybrid import HybridClassifier

    out: list[tuple[float, float, bool, str]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        local = []
        with HybridClassifier.from_bundle(bundle, mode="cloud_only", cloud_url=url, deadline_ms=30_000) as clf:
            i = k
            while not stop.is_set():
                t0 = time.time()
                try:
                    p = clf.predict(images[i % len(images)])
                    local.append((t0, time.time(), p.source == "cloud", str(p.reason)))
                    answered.value += 1  # racy across processes; only a threshold is read from it
                except Exception as e:  # noqa: BLE001 - a lost answer, whatever the cause
                    local.append((t0, time.time(), False, f"{type(e).__name__}: {e}"[:200]))
                i += 1
                if rate > 0:
                    time.sleep(max(0.0, 1.0 / rate - (time.time() - t0)))
        with lock:
            out.extend(local)

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def non_200(url: str) -> int:
    import requests

    total = 0
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("hv_requests_total{") and ("/infer" in line or "/v1/classify" in line) \
                and 'status="200"' not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def kill_once(args, cluster, url: str, bundle: Path, images: list[bytes], deployment: str) -> dict:
    """SDK clients for a while, one replica SIGKILLed, until Ray has it back (and 2 s more)."""
    procs = max(1, min(4, args.concurrency))
    per = [args.concurrency // procs + (1 if i < args.concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    stop, answered = manager.Event(), manager.Value("i", 0)
    failed_before = non_200(url)
    with ctx.Pool(procs) as pool:
        res = pool.map_async(_sdk_clients, [(url, str(bundle), images, n, args.kill_rate, stop, answered)
                                            for n in per])
        while answered.value < args.concurrency:  # every client has answered at least once, on average
            time.sleep(0.1)
        time.sleep(args.kill_after)
        victim = min(cluster.replica_pids(APP, deployment))
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        try:
            back_s = round(cluster.wait_for(APP, deployment, running=2, timeout_s=180, exclude={victim}), 1)
        except TimeoutError:
            back_s = None
        time.sleep(2)
        stop.set()
        calls = [c for part in res.get(600) for c in part]
    return kill_figures(calls, t_kill, back_s, non_200(url) - failed_before)


def kill_figures(calls: list[tuple[float, float, bool, str]], t_kill: float, back_s: float | None,
                 http_failed: int) -> dict:
    lost = [c for c in calls if not c[2]]
    before = [c for c in calls if c[1] < t_kill]
    after = [c for c in calls if c[0] >= t_kill]
    around = [c for c in calls if c[0] <= t_kill <= c[1]]  # in flight when the replica died
    window = (t_kill, t_kill + (back_s or 0))
    during = [c for c in calls if window[0] <= c[1] <= window[1]]

    def rate(cs, span):
        return round(len(cs) / span, 1) if span > 0 else None

    span_before = t_kill - min((c[0] for c in calls), default=t_kill)
    lat = [1000 * (c[1] - c[0]) for c in calls]
    first_after = min((c[1] for c in after if c[2]), default=None)
    return {
        "answers": len(calls) - len(lost), "lost_answers_at_sdk": len(lost),
        "lost_examples": sorted({c[3] for c in lost})[:3],
        "failed_at_http_level": http_failed, "in_flight_at_kill": len(around),
        "in_flight_answered": sum(1 for c in around if c[2]),
        "replica_back_s": back_s, "first_answer_after_kill_s": round(first_after - t_kill, 2) if first_after else None,
        "answers_per_s_before": rate(before, span_before), "answers_per_s_while_recovering": rate(during, back_s or 0),
        "latency_ms_max": round(max(lat), 1) if lat else None,
        "latency_ms_p99_while_recovering": round(float(np.percentile(
            [1000 * (c[1] - c[0]) for c in during], 99)), 1) if during else None,
    }


# --- the scaling model ----------------------------------------------------------------------------------


def network_bytes(bundle: Path, image: bytes) -> dict:
    """Bytes on the wire per image: the HTTP body in, the ingress -> replica Job and the replica's Reply back."""
    from cloud.inputs import Job
    from cloud.ray_app import BatchInfo, Reply
    from edge_sdk.bundle import load_bundle

    classes = len(load_bundle(bundle, verify=False).manifest.labels)
    job = len(pickle.dumps(Job(image, inline=False)))
    reply = len(pickle.dumps(Reply(np.zeros((1, classes), np.float32), None, BatchInfo(1, 0.01))))
    answer = 120 + 60 * min(5, classes)  # /v1/classify's JSON with the top 5
    return {"http_request": len(image) + 200, "ingress_to_replica": job, "replica_to_ingress": reply,
            "http_answer": answer}


def scaling_model(cpu: dict, net: dict, cores: int, nic_gbps: float, ns=(1, 2, 4, 8, 16)) -> dict:
    """Images/s on N machines of ``cores`` cores: the replicas' CPU per image, the proxy+ingress CPU per request
    (on every node, behind a load balancer, or one ingress for all), and each node's network bytes per image."""
    replica = cpu["replicas"]
    front = cpu["proxy"] + cpu["ingress"]
    per_node_cpu = cores * 1000.0 / (replica + front)  # images/s a node's cores give, front on every node
    one_front = 1000.0 / front  # one ingress (one core) for the whole cluster
    wire = net["http_request"] + net["http_answer"] + net["ingress_to_replica"] + net["replica_to_ingress"]
    per_node_net = nic_gbps * 1e9 / 8 / wire
    rows = []
    for n in ns:
        spread = n * min(per_node_cpu, per_node_net)
        rows.append({"machines": n, "replicas": n * cores, "images_per_s_ingress_on_every_node": round(spread),
                     "images_per_s_one_ingress": round(min(spread, one_front)),
                     "network_MB_per_s_per_node": round(min(per_node_cpu, per_node_net) * wire / 1e6, 1)})
    assumptions = {"cores_per_machine": cores, "nic_gbps": nic_gbps, "replica_cpu_ms_per_image": round(replica, 3),
                   "ingress_cpu_ms_per_request": round(front, 3), "bytes_per_image": wire, "bytes": net}
    return {"assumptions": assumptions,
            "rows": rows, "note": ("linear in machines while each node runs its own proxy and ingress; one ingress "
                                   "caps the cluster at 1000 / ingress_cpu_ms_per_request images/s")}


# --- the run ---------------------------------------------------------------------------------------------------


def throughput_phase(args, cluster, plain_url, bundle, files, ctype, work, replicas: int, cores: int) -> dict:
    cluster.delete(APP)  # a rolling update could not start replicas while the old ones hold every CPU
    url = cluster.deploy(ray_app(bundle, replicas, cores, args.max_batch_size), APP)
    roles = ray_processes(APP)
    plain_roles = {"server": [psutil.Process(args.plain_pid)]}
    for u in (plain_url, url):  # warm each path end to end
        cloud_bench.load(args.client, u + "/v1/classify", files, ctype, args.concurrency, args.warmup, work)
    out = {}
    for conc in sorted({1, args.concurrency}):
        runs = interleaved(args, {"plain": plain_url, "ray": url}, {"plain": plain_roles, "ray": roles},
                           files, ctype, conc, work)
        out[conc] = {"plain": summary(runs["plain"]), "ray": summary(runs["ray"]),
                     "ray_over_plain": ratio(runs["ray"], runs["plain"])}
    return out


def overhead(t: dict, conc: int) -> dict:
    one = t[1]
    cpu_ray = sum(t[conc]["ray"]["cpu_ms_per_request"].values())
    cpu_plain = sum(t[conc]["plain"]["cpu_ms_per_request"].values())
    return {"latency_ms_added_at_1_client": round(one["ray"]["p50_ms"] - one["plain"]["p50_ms"], 2),
            "cpu_ms_per_request_ray": round(cpu_ray, 3), "cpu_ms_per_request_plain": round(cpu_plain, 3),
            "cpu_ms_per_request_added": round(cpu_ray - cpu_plain, 3),
            "ray_cpu_ms_per_request_by_role": t[conc]["ray"]["cpu_ms_per_request"]}


def main(argv=None) -> int:
    # Ray's driver and subprocesses print to stdout; the JSON must be stdout's only content, so everything
    # else written to fd 1 goes to stderr, and the result goes to a copy of the original stdout.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits", help="digits, mobilenetv2, resnet50, or a bundle directory")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds per point")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--kills", type=int, default=3, help="replica kills under load (0: none)")
    ap.add_argument("--kill-after", type=float, default=5.0, help="seconds of load before the kill")
    ap.add_argument("--kill-rate", type=float, default=0.0, help="requests/s per SDK client (0: as fast as answered)")
    ap.add_argument("--nic-gbps", type=float, default=10.0, help="network of each machine in the scaling model")
    ap.add_argument("--client", default="python", choices=["auto", "wrk", "python"])
    args = ap.parse_args(argv)
    if args.client == "auto":
        args.client = "wrk" if cloud_bench.shutil.which("wrk") else "python"
    from cloud.model import select_backend

    select_backend("tensorflow")
    from cloud_server import serve_subprocess
    from ray_cluster import local_cluster

    cores = os.cpu_count() or 2
    t_start, where = time.perf_counter(), machine_info(backend="tensorflow")
    with tempfile.TemporaryDirectory(prefix="hv-scale-bench-") as td, local_cluster(num_cpus=cores) as cluster:
        work = Path(td)
        bundle = cloud_bench.make_bundle(args.model, work)
        files, ctype = cloud_bench.make_images(bundle, work)
        from edge_sdk.bundle import load_bundle

        deployment = f"Model-{load_bundle(bundle, verify=False).manifest.name}"
        plain_args = ["--max-batch-size", str(args.max_batch_size), "--max-delay-ms", "5", "--queue-size", "4096",
                      "--log-level", "warning", "--bench-endpoints"]
        with serve_subprocess([bundle], *plain_args) as (plain_url, proc):
            args.plain_pid = proc.pid
            print(f"1 replica (all {cores} CPUs) vs plain...", file=sys.stderr)
            one = throughput_phase(args, cluster, plain_url, bundle, files, ctype, work, 1, cores)
            print("2 replicas (half the CPUs each) vs plain...", file=sys.stderr)
            two = throughput_phase(args, cluster, plain_url, bundle, files, ctype, work, 2, cores)
        images = [f.read_bytes() for f in files]
        kills = []
        for i in range(args.kills):
            kills.append(kill_once(args, cluster, cluster.url, bundle, images, deployment))
            print(f"  kill {i + 1}: {kills[-1]}", file=sys.stderr)
        net = network_bytes(bundle, images[0])
    top = args.concurrency
    result = {
        "benchmark": "scale_bench", "model": args.model,
        "conditions": {**where, "client": args.client, "concurrency": top, "duration_s": args.duration,
                       "repeats": args.repeats, "max_batch_size": args.max_batch_size,
                       "image": {"type": ctype, "mean_bytes": int(np.mean([len(b) for b in images]))},
                       "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                       "note": "client, both services and Ray share the same CPUs (and other users' jobs)"},
        "one_replica": one, "two_replicas": two,
        "ray_overhead": overhead(one, top),
        "replica_kill": {"kill_rate_per_client": args.kill_rate, "runs": kills,
                         "lost_answers_at_sdk": [k["lost_answers_at_sdk"] for k in kills],
                         "failed_at_http_level": [k["failed_at_http_level"] for k in kills],
                         "replica_back_s": [k["replica_back_s"] for k in kills]},
        "scaling_model": scaling_model(one[top]["ray"]["cpu_ms_per_request"], net, cores, args.nic_gbps),
        "targets": {"ray_1_replica_ge_70pct_of_plain": one[top]["ray_over_plain"]["median"] >= 0.7,
                    # None without --kills: nothing was measured
                    "no_lost_answers": all(k["lost_answers_at_sdk"] == 0 for k in kills) if kills else None,
                    "replica_back_under_30s": all(k["replica_back_s"] is not None and k["replica_back_s"] < 30
                                                  for k in kills) if kills else None},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result, indent=2), file=result_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
