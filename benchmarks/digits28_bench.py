"""An MNIST-like folder of 28x28 grey digits, trained with no flags; one JSON object.

No MNIST ships with any installed package (Keras and scikit-learn download it,
which this project never does), so the folder is rendered from scikit-learn's
8x8 digits: each is upscaled to a 20x20 box centred in 28x28, as MNIST's are,
and varied by rotation, scale, shift, stroke width and blur. The base digits
are split first (1,497 for train/, 300 for test/), so no test image is a
variant of a training image. Target (issue 12): >= 98.5% test accuracy within
5 minutes of `train`, with the input size inferred (28) and printed.

    python benchmarks/digits28_bench.py [--per-image 5] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402

TEST_BASE = 300


def render(img8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (0..16) as a varied 28x28 uint8 image, white on black."""
    import cv2

    box = cv2.resize(np.clip(img8 * (255.0 / 16.0), 0, 255).astype(np.uint8), (20, 20), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        box = op(box, np.ones((2, 2), np.uint8))
    canvas = np.zeros((28, 28), np.uint8)
    canvas[4:24, 4:24] = box
    m = cv2.getRotationMatrix2D((14, 14), rng.uniform(-12, 12), rng.uniform(0.85, 1.1))
    m[:, 2] += rng.uniform(-2, 2, 2)
    out = cv2.warpAffine(canvas, m, (28, 28), flags=cv2.INTER_LINEAR, borderValue=0)
    return cv2.GaussianBlur(out, (3, 3), rng.uniform(0.3, 0.9))


def make_folder(dest: Path, per_image: int = 5, seed: int = 0) -> dict[str, int]:
    """dest/train/<digit>/*.png and dest/test/<digit>/*.png from disjoint base digits; returns the counts."""
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.images))
    parts = {"test": order[:TEST_BASE], "train": order[TEST_BASE:]}
    counts = {}
    for part, idx in parts.items():
        n = 0
        for i in idx:
            cls = dest / part / str(int(d.target[i]))
            cls.mkdir(parents=True, exist_ok=True)
            for k in range(per_image):
                cv2.imwrite(str(cls / f"{i:04d}_{k}.png"), render(d.images[i], rng))
                n += 1
        counts[part] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    from quantize.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-image", type=int, default=5, help="variants of each base digit [5: 7,485 train, 1,500 test]")
    ap.add_argument("--out", help="keep the folder and bundle here [a temporary folder]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hv-digits28-") as td:
        work = Path(args.out) if args.out else Path(td)
        counts = make_folder(work / "digits28", args.per_image, args.seed)
        t0, c0, load0 = time.perf_counter(), os.times(), os.getloadavg()[0]
        b = train(TrainConfig(data=str(work / "digits28"), out=str(work / "bundle"), seed=args.seed,
                              progress=not args.quiet))
        c1 = os.times()
        rep = b.manifest.reports["train"]
        res = {
            "benchmark": "digits28", "machine": machine_info(), "data": {"source": "scikit-learn digits rendered "
                                                                          "to 28x28", **counts},
            "recipe": {k: rep["recipe"][k] for k in ("input_size", "grayscale", "kind", "arch", "width", "epochs")},
            "reasons": rep["recipe"]["reasons"],
            "train_wall_s": round(time.perf_counter() - t0, 1), "train_cpu_s": round(c1.user - c0.user + c1.system -
                                                                                      c0.system, 1),
            "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "test_accuracy": rep["cloud"]["test"]["accuracy"],
            "baseline_test_accuracy": rep["baseline"]["test_accuracy"],
        }
        res["targets_met"] = {"accuracy_ge_98.5": res["test_accuracy"] >= 0.985,
                              "train_le_300_s": res["train_wall_s"] <= 300}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
