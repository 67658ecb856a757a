"""Training-time augmentation on whole batches of preprocessed images (N, H, W, C float32 in [0, 1]).

Two policies. ``photo``: random crop with reflect padding, horizontal flip,
cutout and mild colour jitter, all vectorised numpy (a batch of 256 32x32
images takes about a millisecond). ``shape`` (digits, characters: a flipped
2 is not a 2): a small random rotation, scale and shift with OpenCV, per image.

Cutout: DeVries & Taylor 2017, "Improved Regularization of Convolutional
Neural Networks with Cutout". Crop-with-padding and flip as in He et al. 2016.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Policy = Literal["photo", "shape", "none"]


@dataclass(frozen=True)
class AugmentSpec:
    policy: Policy = "photo"
    flip: bool = True
    pad: float = 0.125  # crop padding as a fraction of the side (4 px at 32)
    cutout: float = 0.375  # cutout square side as a fraction of the image side (12 px at 32); 0 = off
    jitter: float = 0.1  # brightness / contrast / saturation amplitude; 0 = off
    max_deg: float = 10.0  # shape policy: rotation
    max_shift: float = 0.1  # shape policy: shift as a fraction of the side

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.policy == "none":
            return x
        if self.policy == "shape":
            return affine_batch(x, rng, self.max_deg, self.max_shift, self.flip)
        out = crop_flip(x, rng, self.pad, self.flip)
        if self.cutout > 0:
            cutout(out, rng, self.cutout)
        if self.jitter > 0:
            out = colour_jitter(out, rng, self.jitter)
        return out


def crop_flip(x: np.ndarray, rng: np.random.Generator, pad: float, flip: bool) -> np.ndarray:
    """A random crop of the reflect-padded batch (a shift of up to ``pad`` of the side), then a random flip."""
    n, h, w, _ = x.shape
    ph, pw = int(round(h * pad)), int(round(w * pad))
    out = x
    if ph or pw:
        padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
        rows = rng.integers(0, 2 * ph + 1, n)[:, None] + np.arange(h)[None]
        cols = rng.integers(0, 2 * pw + 1, n)[:, None] + np.arange(w)[None]
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    else:
        out = x.copy()
    if flip:
        f = rng.random(n) < 0.5
        out[f] = out[f][:, :, ::-1]
    return out


def cutout(x: np.ndarray, rng: np.random.Generator, frac: float, fill: float = 0.5) -> None:
    """In place: one square of side ``frac`` x side per image, centred anywhere (clipped at the border)."""
    n, h, w, _ = x.shape
    half_h, half_w = h * frac / 2, w * frac / 2
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    in_rows = np.abs(np.arange(h)[None] + 0.5 - cy[:, None]) < half_h
    in_cols = np.abs(np.arange(w)[None] + 0.5 - cx[:, None]) < half_w
    x[in_rows[:, :, None] & in_cols[:, None, :]] = fill


def colour_jitter(x: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Random brightness (add), contrast (scale about the image mean) and saturation (blend with grey)."""
    n = len(x)
    b = rng.uniform(-amp, amp, (n, 1, 1, 1)).astype(np.float32)
    c = rng.uniform(1 - amp, 1 + amp, (n, 1, 1, 1)).astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    out = (x - mean) * c + mean + b
    if x.shape[-1] == 3:
        s = rng.uniform(1 - amp, 1 + amp, (n, 1, 1, 1)).astype(np.float32)
        grey = out.mean(axis=3, keepdims=True)
        out = grey + (out - grey) * s
    return np.clip(out, 0.0, 1.0, out=out)


def affine_batch(x: np.ndarray, rng: np.random.Generator, max_deg: float, max_shift: float, flip: bool) -> np.ndarray:
    """Small rotation, scale and shift per image (OpenCV), optional flip: for digits and other shapes."""
    import cv2

    out = np.empty_like(x)
    h, w = x.shape[1:3]
    for i, img in enumerate(x):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_deg, max_deg), rng.uniform(0.92, 1.08))
        m[:, 2] += rng.uniform(-max_shift, max_shift, 2) * (w, h)
        a = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(img.shape)
        out[i] = a[:, ::-1] if flip and rng.random() < 0.5 else a
    return out
