"""The examples a camera app can copy: each runs as a script, headless, against a real server where it needs one."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cloud_server import serve_in_thread

from edge_sdk.samples import read_samples

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
KEY = "example-key-0123456789"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HV_API_KEY": KEY}


def run_example(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cloud_url(quantized_bundle_session):
    with serve_in_thread([quantized_bundle_session], api_keys=[KEY], max_delay_ms=2) as url:
        yield url


@pytest.fixture(scope="module")
def digit_files(digits_dir) -> dict[int, list[Path]]:
    return {d: sorted((digits_dir / str(d)).glob("*.png"))[:6] for d in range(10)}


@pytest.mark.parametrize("name", ["camera_loop.py", "folder_batch.py", "custom_policy.py"])
def test_help(name):
    r = run_example(name, "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "bundle" in r.stdout


def make_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def read_video(path: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def test_camera_loop_headless_on_a_video_file(quantized_bundle_session, digit_files, tmp_path):
    import cv2

    truth, frames = [], []
    for d in range(10):
        for p in digit_files[d][:2]:
            grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            big = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_NEAREST)
            frames.append(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
            truth.append(str(d))
    video, out = tmp_path / "clip.avi", tmp_path / "labelled.avi"
    make_video(video, frames)

    r = run_example("camera_loop.py", quantized_bundle_session, "--source", video, "--no-window", "--out", out,
                    "--max-frames", 18, "--print")
    assert r.returncode == 0, r.stderr
    lines = [ln.split("\t") for ln in r.stdout.splitlines() if ln.startswith("frame ")]
    assert len(lines) == 18  # --max-frames stops early: the clip has 20
    assert "processed 18 frames" in r.stdout and f"wrote {out}" in r.stdout
    assert {ln[3] for ln in lines} == {"edge"}  # no --cloud-url: edge only
    correct = sum(ln[1] == truth[i] for i, ln in enumerate(lines))
    assert correct >= 14, f"only {correct}/18 frames right: {[ln[1] for ln in lines]}"  # BGR frames through MJPG

    written = read_video(out)
    assert len(written) == 18
    assert written[0].shape == frames[0].shape
    # the overlay: coloured text in a banner at the top; the digit below is left alone
    src = read_video(video)[0].astype(int)
    top = np.abs(written[0][:20].astype(int) - src[:20]).mean()
    assert top > 5, top
    assert (written[0][:20, :, 1] > 120).sum() > 20  # green text (an edge answer)


def test_camera_loop_bad_source_is_a_clear_error(quantized_bundle_session, tmp_path):
    r = run_example("camera_loop.py", quantized_bundle_session, "--source", tmp_path / "missing.mp4", "--no-window")
    assert r.returncode != 0
    assert "cannot open video source" in r.stderr and "Traceback" not in r.stderr


def test_folder_batch_writes_one_row_per_image(quantized_bundle_session, digit_files, cloud_url, tmp_path):
    folder = tmp_path / "photos"
    expected = {}
    for d in (2, 5, 8):
        (folder / str(d)).mkdir(parents=True)
        for p in digit_files[d][:4]:
            shutil.copy(p, folder / str(d) / p.name)
            expected[str(folder / str(d) / p.name)] = str(d)
    (folder / "5" / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "results.csv"

    r = run_example("folder_batch.py", quantized_bundle_session, folder, "--out", out, "--cloud-url", cloud_url,
                    "--batch-size", 5)
    assert r.returncode == 1, r.stdout + r.stderr  # one file could not be classified
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 13
    by_path = {row["path"]: row for row in rows}
    broken = by_path.pop(str(folder / "5" / "broken.png"))
    assert broken["label"] == "" and "InvalidImageError" in broken["error"]
    assert set(by_path) == set(expected)
    for _path, row in by_path.items():
        assert row["source"] in ("edge", "cloud") and 0 < float(row["confidence"]) <= 1
        assert row["error"] == "" and float(row["latency_ms"]) > 0
    right = sum(row["label"] == expected[p] for p, row in by_path.items())
    assert right >= 10, [(p, row["label"]) for p, row in by_path.items()]
    assert "classified 12 of 13 images" in r.stdout and "accuracy against the folder names" in r.stdout


def test_battery_probe_logic():
    mod = load_example("custom_policy.py")
    assert mod.BatteryProbe(20, lambda: (15.0, False)).check().ok is False
    assert mod.BatteryProbe(20, lambda: (15.0, True)).check().ok is True  # plugged in
    assert mod.BatteryProbe(20, lambda: (20.0, False)).check().ok is True
    assert mod.BatteryProbe(20, lambda: None).check().ok is True  # no battery: mains powered


def _policy_rows(stdout: str) -> list[list[str]]:
    return [ln.split("\t") for ln in stdout.splitlines() if "\t" in ln]


def test_custom_policy_low_battery_sends_images_to_the_cloud(quantized_bundle_session, digit_files, cloud_url):
    imgs = [digit_files[d][0] for d in range(6)]
    # the battery policy alone: this machine's own CPU load (other jobs on a shared runner) must not decide
    busy_ok = ("--max-load-per-core", 1000)
    low = run_example("custom_policy.py", quantized_bundle_session, *imgs, "--cloud-url", cloud_url, "--battery", 10,
                      *busy_ok)
    assert low.returncode == 0, low.stderr
    assert "edge model skipped" in low.stdout
    rows = _policy_rows(low.stdout)
    assert len(rows) == 6
    assert all(r[3] == "cloud" and r[4] == "no_capacity:battery" for r in rows), rows

    # the session bundle's certified threshold offloads every image (too few calibration images for the bound),
    # so a threshold of our own lets confident images stay on the edge
    high = run_example("custom_policy.py", quantized_bundle_session, *imgs, "--cloud-url", cloud_url, "--battery", 80,
                       *busy_ok, "--threshold", 0.5)
    assert high.returncode == 0, high.stderr
    rows = _policy_rows(high.stdout)
    assert len(rows) == 6
    assert all(r[4] in ("confident", "low_confidence") for r in rows), rows
    assert any(r[3] == "edge" for r in rows)


def test_custom_policy_without_a_cloud_still_answers_on_the_edge(quantized_bundle_session, digit_files):
    imgs = [digit_files[d][0] for d in range(3)]
    r = run_example("custom_policy.py", quantized_bundle_session, *imgs, "--battery", 5)
    assert r.returncode == 0, r.stderr
    rows = _policy_rows(r.stdout)
    assert len(rows) == 3 and all(row[3] == "edge" for row in rows), rows


def test_flywheel_help():
    r = run_example("flywheel.py", "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--distill-epochs" in r.stdout


@pytest.mark.slow
@pytest.mark.extended  # `make test-all`: the whole cycle trains, distils and re-quantizes
def test_flywheel_runs_the_whole_cycle_on_loopback(tmp_path):
    """Train, serve, collect, distill, update over the air, stream again: small, so it runs in a few minutes."""
    out = tmp_path / "fw"
    r = run_example("flywheel.py", "--out", out, "--labelled", 40, "--test", 20, "--epochs", 6, "--distill-epochs", 2,
                    "--audit-rate", 0.2, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[3/5] distill" in r.stdout and "[4/5] over the air" in r.stdout
    rows = [row for row in map(str.split, r.stdout.splitlines()) if row and row[0].isdigit()]  # the table
    assert [row[0] for row in rows] == ["1", "2"]
    distilled = (out / "b2").is_dir()
    assert rows[1][1] == ("v2" if distilled else "v1")  # the device runs the new model after an accepted distill
    assert ("updated=True" in r.stdout) == distilled
    kinds = {s.meta.kind for s in read_samples(out / "collected")}
    assert "offload" in kinds
