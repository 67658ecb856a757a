"""`hybrid-vision demo` end to end (quick mode), and its promise to stop its server even when interrupted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from edge_sdk.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
READY = re.compile(r"cloud service ready at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)")

pytestmark = pytest.mark.slow


def demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_sdk.cli", "demo", "--quiet", *map(str, args)]


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def leftovers(out: Path) -> list[str]:
    """Live processes whose command line names the demo's folder (its server, its evaluate children)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(out) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def demo_run(trained_bundle_session, tmp_path_factory):
    """One quick demo, starting from the session's trained bundle (its cloud model; the little edge CNN is trained)."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    t0 = time.perf_counter()
    r = subprocess.run(demo_cmd("--quick", "--bundle", trained_bundle_session, "--out", out), capture_output=True,
                       text=True, env=ENV, cwd=REPO, timeout=420)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout, json.loads((out / "report.json").read_text()), time.perf_counter() - t0


def test_quick_demo_report(demo_run):
    out, _, rep, _ = demo_run
    assert set(rep["configs"]) == {"same_cnn", "big_little"}
    for name, c in rep["configs"].items():
        rows = {r["name"]: r for r in c["rows"]}
        assert list(rows) == ["edge-only", "cloud-only", "hybrid"], name
        n = c["data"]["n"]
        assert c["data"]["split"] == "test" and n > 200 and c["cloud"]["where"] == "http"
        for r in rows.values():
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["offload"] <= 1.0, (name, r)
            assert r["latency_mean_ms"] > 0 and r["latency_p95_ms"] > 0 and r["n"] == n
            assert all(v > 0 for v in r["model_bytes"].values())
        e, cl, h = rows["edge-only"], rows["cloud-only"], rows["hybrid"]
        # hybrid no worse than edge-only (one image of slack: in same-CNN both sides are the same network)
        assert h["accuracy"] >= e["accuracy"] - 1.01 / n, (name, e["accuracy"], h["accuracy"])
        assert e["offload"] == 0 and cl["offload"] == 1 and e["bytes_per_image"] == 0
        assert cl["bytes_per_image"] > 100 and cl["reasons"] == {"cloud_only": n}  # every image went over HTTP
        # no cloud failures; an image the bundle's out-of-distribution score flags is offloaded too
        assert set(h["reasons"]) <= {"confident", "low_confidence", "out_of_distribution"}, h["reasons"]
        offloaded = h["reasons"].get("low_confidence", 0) + h["reasons"].get("out_of_distribution", 0)
        assert h["offload"] == pytest.approx(offloaded / n)
        assert cl["accuracy"] > 0.9, "the session's cloud model is well trained; quick mode must stay sane"
        assert e["accuracy"] > 0.5
        assert c["quantize"]["size_bytes"]["tflite_int8"] == c["model_bytes"]["edge"]
    same, bl = rep["configs"]["same_cnn"], rep["configs"]["big_little"]
    # one cloud model served for both: identical cloud rows; the little edge model is much smaller
    assert same["rows"][1]["accuracy"] == bl["rows"][1]["accuracy"]
    assert same["model_bytes"]["cloud"] == bl["model_bytes"]["cloud"]
    assert bl["model_bytes"]["edge"] * 3 < same["model_bytes"]["edge"]
    assert bl["train"]["edge_source"]["epochs_run"] <= 4 and "edge_source" not in same["train"]
    assert bl["rows"][2]["offload"] > 0  # a little model is unsure about something
    assert rep["seconds"]["total"] > 0 and rep["machine"]["cpus"] >= 1


def test_quick_demo_files_and_output(demo_run):
    out, stdout, rep, secs = demo_run
    assert Path(rep["files"]["accuracy_vs_offload"]) == out / "accuracy_vs_offload.png"
    pngs = [out / "accuracy_vs_offload.png"] + [out / c / f"confusion_{r}.png" for c in ("same_cnn", "big_little")
                                                for r in ("edge_only", "cloud_only", "hybrid")]
    pngs += [out / c / "accuracy_vs_offload.png" for c in ("same_cnn", "big_little")]
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, p
    assert (out / "serve.log").exists()
    assert stdout.count("mode        accuracy  offload  mean ms  p95 ms  bytes/img  model size") == 2
    for line in ("edge-only", "cloud-only", "hybrid", "demo finished in", "report: ", "plot: "):
        assert line in stdout
    m = READY.search(stdout)
    assert m and "cloud service stopped (exit status 0)" in stdout
    assert gone(int(m.group(2)))
    print(f"quick demo: {secs:.1f} s wall, stages {rep['seconds']}")


def sigint_as_a_terminal_gives_it() -> None:
    """In the child, before exec: SIGINT back to its default action (Python then raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_serving_stops_the_server(demo_run, tmp_path):
    """Start a demo that reuses the quick run's bundles, interrupt it once its server is up: no server is left."""
    src, *_ = demo_run
    out = tmp_path / "demo-out"
    shutil.copytree(src / "bundles", out / "bundles")
    # SIGINT as a terminal gives it: a job started in the background (`make test &`, nohup, some CI runners)
    # inherits SIGINT ignored, and a child that ignores Ctrl-C would test the caller's shell, not the demo
    proc = subprocess.Popen(demo_cmd("--reuse", "--out", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=REPO, preexec_fn=sigint_as_a_terminal_gives_it)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            m = READY.search(line)
            if m:
                break
        assert m, "".join(lines) + proc.stderr.read()
        url, server_pid = m.group(1), int(m.group(2))
        assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does to the demo; the server is in its own session
        rc = proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert gone(server_pid), f"server {server_pid} still running"
    assert leftovers(out) == [], "a child of the demo (server or evaluate) is still running"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/health/live", timeout=5)
    assert not (out / "report.json").exists()


def test_reuse_without_bundles_is_a_clear_error(tmp_path, capsys):
    rc = cli_main(["demo", "--reuse", "--out", str(tmp_path / "nothing"), "--quiet"])
    assert rc == 1
    assert "no quantized bundles" in capsys.readouterr().err


def test_sigterm_and_sighup_interrupt_like_ctrl_c():
    """`kill` or a closed terminal unwinds the demo like Ctrl-C, so its finally blocks stop the server."""
    from quantize.demo import signals_interrupt

    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt, match=sig.name), signals_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises long before this ends
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored afterwards


def test_a_service_that_cannot_start_is_a_clear_error(tmp_path):
    from quantize.service_process import CloudService, ServiceError

    # a bad option: the child fails fast, before loading anything
    svc = CloudService([tmp_path], args=["--max-batch-size", "many"], log_path=tmp_path / "serve.log", progress=False)
    with pytest.raises(ServiceError, match="exited with status 2 before it was ready") as e, svc:
        pass
    assert "invalid int value: 'many'" in str(e.value)  # the log tail says why
    assert svc.proc.poll() is not None
