"""The demo's detection section: a short detector run on the built-in shapes, then the same serve-and-evaluate.

A few epochs on a few hundred images (the demo's whole budget is five minutes
on two cores), so its mAP is far from the trained detector's; the numbers that
meet the targets come from ``benchmarks/detect_bench.py`` on a full training.
The bundle is served by the demo's one service beside the classifiers, and
``hybrid-vision evaluate --cloud-url`` runs the edge SDK (HybridDetector) over
the shapes test split against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "shapes_detector"


@dataclass(frozen=True)
class DetectDemoConfig:
    epochs: int = 4
    train_images: int = 600
    val_images: int = 100
    test_images: int = 150
    progress: bool = True


QUICK = DetectDemoConfig(epochs=1, train_images=48, val_images=24, test_images=24)


def build_bundle(dest: Path, cfg: DetectDemoConfig, seed: int = 0) -> Path:
    """Train the small detector (it is also the cloud's: the same network at full precision) and quantize it."""
    from .pipeline import quantize_detector
    from .train import DetectTrainConfig, train_detector

    train_detector(DetectTrainConfig(
        data="shapes", out=str(dest), name=NAME, model="small", epochs=cfg.epochs, eval_every=cfg.epochs, seed=seed,
        synth_counts=(cfg.train_images, cfg.val_images, cfg.test_images), progress=cfg.progress,
    ))
    quantize_detector(dest, num_calib=min(100, cfg.train_images), max_drop=100.0, latency_runs=30,
                      progress=cfg.progress)
    return dest


def run_evaluate(bundle: Path, url: str, key: str, out: Path, progress: bool) -> dict[str, Any]:
    """`hybrid-vision evaluate BUNDLE --data shapes --cloud-url URL` in a child process; its report.json."""
    cmd = [sys.executable, "-m", "edge_sdk.cli", "evaluate", str(bundle), "--data", "shapes", "--cloud-url", url,
           "--out", str(out), *([] if progress else ["--quiet"])]
    env = {**os.environ, "HV_API_KEY": key, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.txt").write_text(r.stdout, encoding="utf-8")
    if r.returncode != 0:
        from edge_sdk.errors import HybridVisionError

        raise HybridVisionError(f"hybrid-vision evaluate {bundle.name} failed with status {r.returncode}")
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def summary(report: dict[str, Any], bundle_train: dict[str, Any]) -> str:
    """The demo's detection table, with how the model was trained."""
    from .evaluate import Row, format_table

    rows = [Row(**r) for r in report["rows"]]
    ro = report["routing"]
    head = (f"detection: a small CenterNet (int8 on the edge, the same network in fp32 in the cloud), trained "
            f"{bundle_train.get('epochs_run')} epochs on {bundle_train.get('images')} images\n"
            f"(shapes test split, n={report['data']['n']}, {report['data']['boxes']} boxes; edge SDK against the "
            f"service; hybrid = edge boxes when {ro['metric']} <= {ro['threshold']:.4g})")
    return format_table(rows, head) + f"\npicture: {report['files']['detections']}"
