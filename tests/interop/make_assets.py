"""Build what the interop tests need, in the main environment (TensorFlow is needed to write the int8 model).

    python tests/interop/make_assets.py OUT

writes OUT/digits (a digits-shaped bundle: 32x32 grey, ten labels, a small random-weight CNN as the cloud model
and its int8 copy as the edge model), OUT/images/{0..9}.png (one built-in digit per class, at 32x32), and for
those images OUT/fp32.npy (preprocessed as the bundle says, [10, 32, 32, 1] float32) and OUT/uint8.npy (the
resized grey pixels, [10, 32, 32, 1] uint8). The interop tests run in the side environment, which has neither
TensorFlow nor OpenCV, so the tensors are made here, by the one preprocessing path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for edge_helpers

from edge_helpers import make_tiny_bundle  # noqa: E402

from edge_sdk.bundle import load_bundle  # noqa: E402
from edge_sdk.preprocess import cv2, load_image, preprocess, resize  # noqa: E402
from quantize.data import resolve  # noqa: E402

LABELS = [str(i) for i in range(10)]


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    bundle_dir = make_tiny_bundle(out / "digits", seed=3, name="digits", size=32, labels=LABELS)
    m = load_bundle(bundle_dir).manifest
    digits = resolve("digits")
    paths = [sorted((digits / lb).glob("*.png"))[0] for lb in LABELS]
    fp32, grey = [], []
    for lb, p in zip(LABELS, paths, strict=True):
        shutil.copyfile(p, out / "images" / f"{lb}.png")
        rgb = load_image(p)
        fp32.append(preprocess(rgb, m.input, m.preprocess, color="rgb"))
        grey.append(cv2.cvtColor(resize(rgb, m.input.height, m.input.width, m.preprocess.resize),
                                 cv2.COLOR_RGB2GRAY)[..., None])
    np.save(out / "fp32.npy", np.stack(fp32))
    np.save(out / "uint8.npy", np.stack(grey))
    print(json.dumps({"bundle": str(bundle_dir), "images": len(paths)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
