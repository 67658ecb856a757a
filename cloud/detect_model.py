"""A detect bundle's full-precision detector, served: the Keras CenterNet model plus the device's own numpy decoding.

``predict`` keeps the batcher's contract (an array with one row per image, so a
batch splits back into requests by slicing): float32 [N, K, 6] rows of
``x0, y0, x1, y1, score, class`` in model-input pixels, best first, padded with
score -1 past the image's detections. :func:`unpack` turns a row into boxes in
the original image's pixels.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.bundle import Bundle
from edge_sdk.detection import Detections, DetectionSpec, decode, to_original
from edge_sdk.errors import BundleError

from .model import CloudModel


def pack(dets: list[Detections], k: int) -> np.ndarray:
    out = np.full((len(dets), k, 6), -1.0, np.float32)
    for i, d in enumerate(dets):
        n = min(k, len(d))
        out[i, :n, :4], out[i, :n, 4], out[i, :n, 5] = d.boxes[:n], d.scores[:n], d.classes[:n]
    return out


def unpack(row: np.ndarray, mode: str, model_hw: tuple[int, int], image_hw: tuple[int, int],
           min_score: float = 0.0) -> Detections:
    """One packed row -> detections in the original image's pixels, those scoring >= ``min_score``."""
    keep = row[:, 4] >= max(min_score, 0.0)
    r = row[keep]
    return Detections(to_original(r[:, :4], mode, model_hw, image_hw), r[:, 4].copy(), r[:, 5].astype(np.int64))


class DetectCloudModel(CloudModel):
    """The cloud side of a detect bundle; ``predict`` gives packed detections [N, K, 6]."""

    def __init__(self, bundle: Bundle, **kw):
        spec = bundle.manifest.detection
        if bundle.manifest.task != "detect" or spec is None:
            raise BundleError(f"{bundle.path}: not a detect bundle")
        self.spec: DetectionSpec = spec
        super().__init__(bundle, **kw)

    @property
    def max_detections(self) -> int:
        return self.spec.max_detections

    def _run(self, x: np.ndarray) -> np.ndarray:
        outs = self._call(x)
        if not isinstance(outs, (list, tuple)) or len(outs) != 3:
            raise BundleError(f"{self.name}: a detector must give 3 outputs (heatmap, size, offset)")
        heat, size, offset = (np.asarray(o, np.float32) for o in outs)
        if heat.shape[-1] != self.num_classes or heat.shape[0] != len(x):
            raise BundleError(f"{self.name}: heatmap shape {heat.shape} does not fit {self.num_classes} labels")
        return pack([decode(heat[i], size[i], offset[i], self.spec) for i in range(len(x))], self.max_detections)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.max_detections, 6), np.float32)
        return super().predict(x)

    def warmup(self) -> float:
        """Compile every bucket and check the detector gives finite boxes; then mark ready."""
        import time

        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for b in self.buckets:
            y = self._run(rng.random((b,) + self.input_shape, dtype=np.float32))
            if not np.isfinite(y).all():
                raise BundleError(f"{self.name}: the detector gives NaN/Inf on a warm-up batch")
        self.warmup_seconds = time.perf_counter() - t0
        self.ready.set()
        return self.warmup_seconds
