"""Your own labelled photos, no code written: COCO or YOLO folder -> train -> quantize -> evaluate, by command line.

Tiny data (the built-in shapes written out as PNG files with COCO JSON or YOLO
txt), a 64x64 input and one epoch: these prove the path, not the accuracy
(benchmarks/detect_bench.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_sdk.bundle import load_bundle
from quantize.detect import synth
from quantize.detect.annotations import write_coco, write_yolo

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # `make test-all`; CI keeps under 20 minutes

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-m", "edge_sdk.cli", *args], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=1200)
    if ok:
        assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return {"coco": write_coco(synth.make_set("train", 30), root / "coco").parent,
            "yolo": write_yolo(synth.make_set("test", 10), root / "yolo")}


@pytest.fixture(scope="module")
def detect_bundle(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "mine"
    r = cli("train", "--task", "detect", "--data", str(folders["coco"]), "--out", str(out), "--detector", "small",
            "--input-size", "64", "--epochs", "1", "--batch-size", "8", "--quiet")
    assert "task detect, 14 classes" in r.stdout and "test mAP@0.5" in r.stdout
    r = cli("quantize", str(out), "--num-calib", "8", "--max-drop", "100", "--quiet")
    assert "edge int8" in r.stdout and "routing (validation split): metric" in r.stdout
    return out


def test_coco_folder_trains_and_quantizes(detect_bundle):
    b = load_bundle(detect_bundle)
    m = b.manifest
    assert m.task == "detect" and m.labels == synth.LABELS and m.detection is not None
    assert m.models["edge"].format == "tflite-int8" and b.model_path("edge").stat().st_size < 1_000_000
    q = m.reports["quantize"]
    assert q["ops"]["non_int8"] == [] and q["passed"]
    assert set(q["test"]["scores"]) == {"cloud_keras", "edge_keras", "edge_int8"}
    assert m.routing.metric in ("band_mass", "band_count", "top_entropy")
    assert m.routing.calibration["score"] == "map50" and len(m.routing.calibration["curves"]) == 3


def test_yolo_folder_evaluates(detect_bundle, folders, tmp_path):
    out = tmp_path / "eval"
    r = cli("evaluate", str(detect_bundle), "--data", str(folders["yolo"]), "--out", str(out), "--quiet")
    assert "edge-only" in r.stdout and "cloud-only" in r.stdout and "hybrid" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["n"] == 10 and rep["data"]["split"] == "folder"
    assert [row["name"] for row in rep["rows"]] == ["edge-only", "cloud-only", "hybrid"]
    assert all(0.0 <= row["map50"] <= 1.0 for row in rep["rows"])
    for f in ("map_vs_offload.png", "detections.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_annotation_stops_training_naming_file_and_line_unless_skipped(folders, tmp_path):
    bad = write_yolo(synth.make_set("val", 12), tmp_path / "bad")
    label = sorted((bad / "labels").glob("*.txt"))[3]
    label.write_text(label.read_text() + "0 1.2 0.5 0.3 0.3\n")
    n = len(label.read_text().splitlines())
    r = cli("train", "--task", "detect", "--data", str(bad), "--out", str(tmp_path / "b"), "--epochs", "1", ok=False)
    assert r.returncode == 1
    assert f"{label} line {n}: box" in r.stderr and "extends outside the 160x160 image" in r.stderr
    assert not (tmp_path / "b").exists()
    r = cli("train", "--task", "detect", "--data", str(bad), "--out", str(tmp_path / "b"), "--detector", "small",
            "--input-size", "64", "--epochs", "1", "--batch-size", "8", "--skip-bad", "--quiet")
    assert "bad annotations skipped: 1" in r.stdout and f"{label} line {n}" in r.stdout
    assert load_bundle(tmp_path / "b").manifest.reports["train"]["bad_annotations"]["count"] == 1
