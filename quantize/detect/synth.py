"""The built-in detection set ``shapes``: digits and geometric shapes on cluttered backgrounds, made on the fly.

No download. Each image holds 1 to 6 objects from 14 classes (scikit-learn's
handwritten digits 0-9, and circle, square, triangle, star), each 8% to 60% of
the image side (log-uniform, so small objects are as common as big ones), in a
random colour with a little texture, on a background of colour gradients,
blurred noise, clutter strokes and outlines in the objects' own colours, with
partial occlusion (a later object may cover up to 35% of an earlier one) and
pixel noise. Boxes are the tight box of each object's whole mask (amodal:
occlusion never exceeds a third, so the extent stays visible).

The split is by construction: train, val and test images come from disjoint
seeds, and the digits they draw from are disjoint thirds of the 1,797 digit
scans (a test digit's handwriting was never seen in training).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import DetectionSet, ImageRecord

DIGITS = [str(i) for i in range(10)]
SHAPES = ["circle", "square", "triangle", "star"]
LABELS = DIGITS + SHAPES
NAME = "shapes"
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
DEFAULT_COUNTS = {"train": 3000, "val": 300, "test": 500}
MAX_OCCLUDED = 0.35
VERSION = 1  # bump when the images change, so caches are not reused


@dataclass(frozen=True)
class SynthConfig:
    size: int = 160
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.08
    max_scale: float = 0.60
    noise_sigma: tuple[float, float] = (2.0, 10.0)


def _digit_bank(part: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The part's third of the digit scans as float masks (0..1) cropped to their ink, and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(len(d.target))
    which = {"train": 0, "val": 1, "test": 2}[part]
    keep = idx[idx % 3 == which]
    masks = []
    for i in keep:
        m = d.images[i] / 16.0
        ys, xs = np.nonzero(m > 0.2)
        masks.append(np.ascontiguousarray(m[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1], np.float32))
    return masks, d.target[keep]


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A filled (or, for circles and squares, sometimes hollow) shape touching all four sides of a w x h box."""
    import cv2

    s = 4  # draw at 4x and shrink: anti-aliased edges
    W, H = w * s, h * s
    m = np.zeros((H, W), np.uint8)
    hollow = kind in ("circle", "square") and rng.random() < 0.3
    thick = -1 if not hollow else max(2 * s, int(min(W, H) * rng.uniform(0.15, 0.3)))
    if kind == "circle":
        cv2.ellipse(m, (W // 2, H // 2), (W // 2 - thick // 2 * (thick > 0), H // 2 - thick // 2 * (thick > 0)),
                    0, 0, 360, 255, thick, cv2.LINE_AA)
    elif kind == "square":
        off = thick // 2 if thick > 0 else 0
        cv2.rectangle(m, (off, off), (W - 1 - off, H - 1 - off), 255, thick)
    elif kind == "triangle":
        apex = int(rng.uniform(0.2, 0.8) * W)
        cv2.fillPoly(m, [np.array([[apex, 0], [W - 1, H - 1], [0, H - 1]], np.int32)], 255, cv2.LINE_AA)
    elif kind == "star":
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2 + rng.uniform(0, 2 * np.pi / 5)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(ang) * r, np.sin(ang) * r], 1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)) * [W - 1, H - 1]
        cv2.fillPoly(m, [pts.round().astype(np.int32)], 255, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient + blurred colour noise + clutter strokes and outlines: float32 HxWx3 in 0..255."""
    import cv2

    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = ramp[None, :] * np.float32(rng.uniform(-1, 1)) + ramp[:, None] * np.float32(rng.uniform(-1, 1))
    t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    bg = c0 + (c1 - c0) * t[..., None]
    cells = int(rng.integers(3, 12))
    blobs = cv2.resize(rng.uniform(-60, 60, (cells, cells, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    bg = bg + blobs
    grain = cv2.GaussianBlur(rng.standard_normal((size, size, 3), np.float32) * 18, (0, 0), rng.uniform(0.6, 2.0))
    bg = np.ascontiguousarray(bg + grain, np.float32)
    for _ in range(int(rng.integers(4, 14))):  # clutter: strokes, arcs and outlines that are not objects
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        th = int(rng.integers(1, 4))
        kind = rng.integers(0, 3)
        p = rng.integers(0, size, 4)
        if kind == 0:
            cv2.line(bg, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, th, cv2.LINE_AA)
        elif kind == 1:
            cv2.ellipse(bg, (int(p[0]), int(p[1])), (int(rng.integers(4, size // 3)), int(rng.integers(4, size // 3))),
                        float(rng.uniform(0, 180)), 0, float(rng.uniform(60, 300)), color, th, cv2.LINE_AA)
        else:
            cv2.polylines(bg, [rng.integers(0, size, (int(rng.integers(3, 6)), 2)).astype(np.int32)], False, color, th,
                          cv2.LINE_AA)
    return bg


def _contrasting_color(bg_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour at least 90 grey levels (in luma) away from the patch it lands on."""
    luma = np.array([0.299, 0.587, 0.114])
    target = float(bg_mean @ luma)
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if abs(float(c @ luma) - target) >= 90:
            return c
    return np.full(3, 255.0 if target < 128 else 0.0)


class Generator:
    """Deterministic images of one part (train, val or test): image ``i`` is the same on every run."""

    def __init__(self, part: str, cfg: SynthConfig = SynthConfig(), seed: int = 0):
        if part not in SPLIT_SEEDS:
            raise ValueError(f"part must be one of {sorted(SPLIT_SEEDS)}, not {part!r}")
        self.part, self.cfg = part, cfg
        self.seed = (seed, SPLIT_SEEDS[part])
        self.digits, self.digit_labels = _digit_bank(part)

    def _mask(self, cls: int, rng: np.random.Generator) -> np.ndarray:
        """The class's mask at a random size, 8-60% of the side on its longer edge."""
        import cv2

        c = self.cfg
        side = np.exp(rng.uniform(np.log(c.min_scale), np.log(c.max_scale))) * c.size
        if cls < 10:
            pick = rng.choice(np.flatnonzero(self.digit_labels == cls))
            src = self.digits[pick]
            aspect = src.shape[1] / src.shape[0] * rng.uniform(0.85, 1.15)
            h, w = (side, side * aspect) if aspect <= 1 else (side / aspect, side)
            h, w = max(3, round(h)), max(3, round(w))
            m = cv2.resize(src, (w, h), interpolation=cv2.INTER_CUBIC if h > src.shape[0] else cv2.INTER_AREA)
            return np.clip((m - 0.2) * 2.0, 0, 1)
        aspect = rng.uniform(0.75, 1.33)
        h, w = (side, side * aspect) if aspect <= 1 else (side / aspect, side)
        return _shape_mask(SHAPES[cls - 10], max(3, round(w)), max(3, round(h)), rng)

    def _place(self, masks_so_far: list[tuple[np.ndarray, int, int]], m: np.ndarray,
               rng: np.random.Generator) -> tuple[int, int] | None:
        """A top-left corner where ``m`` hides at most MAX_OCCLUDED of each earlier object, or None."""
        size = self.cfg.size
        h, w = m.shape
        solid = m > 0.5
        for _ in range(30):
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            ok = True
            for om, oy, ox in masks_so_far:
                oh, ow = om.shape
                y0, y1, x0, x1 = max(y, oy), min(y + h, oy + oh), max(x, ox), min(x + w, ox + ow)
                if y0 >= y1 or x0 >= x1:
                    continue
                covered = (om[y0 - oy: y1 - oy, x0 - ox: x1 - ox] > 0.5) & solid[y0 - y: y1 - y, x0 - x: x1 - x]
                if covered.sum() > MAX_OCCLUDED * max(1, (om > 0.5).sum()) or (abs(oy + oh / 2 - y - h / 2) < 4
                                                                               and abs(ox + ow / 2 - x - w / 2) < 4):
                    ok = False
                    break
            if ok:
                return y, x
        return None

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``i``: RGB uint8 HxWx3, boxes float32 [n, 4] (x0, y0, x1, y1 in pixels), classes int64 [n]."""
        c = self.cfg
        rng = np.random.default_rng((*self.seed, i))
        img = _background(c.size, rng)
        placed: list[tuple[np.ndarray, int, int]] = []
        boxes, classes = [], []
        for _ in range(int(rng.integers(c.min_objects, c.max_objects + 1))):
            cls = int(rng.integers(0, len(LABELS)))
            m = self._mask(cls, rng)
            where = self._place(placed, m, rng)
            if where is None:
                continue
            y, x = where
            h, w = m.shape
            patch = img[y: y + h, x: x + w]
            color = _contrasting_color(patch.reshape(-1, 3).mean(0), rng)
            tex = color.astype(np.float32) + rng.standard_normal((h, w, 3), np.float32) * 12
            a = m[..., None]
            img[y: y + h, x: x + w] = patch * (1 - a) + tex * a
            placed.append((m, y, x))
            ys, xs = np.nonzero(m > 0.5)
            boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
            classes.append(cls)
        img += rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(*c.noise_sigma))
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        return rgb, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def _cache_file(part: str, n: int, cfg: SynthConfig, seed: int) -> Path:
    from ..data import cache_dir

    key = hashlib.sha256(repr((VERSION, part, seed, cfg)).encode()).hexdigest()[:12]
    return cache_dir() / f"{NAME}-{part}-{key}-{n}.npz"


def _generate(part: str, n: int, cfg: SynthConfig, seed: int, progress: bool) -> list[tuple]:
    from tqdm.auto import tqdm

    gen = Generator(part, cfg, seed)
    return [gen.image(i) for i in tqdm(range(n), desc=f"shapes {part}", unit="img", disable=not progress, leave=False)]


def _load_cached(path: Path) -> list[tuple] | None:
    try:
        with np.load(path) as z:
            images, boxes, classes, counts = z["images"], z["boxes"], z["classes"], z["counts"]
    except (OSError, ValueError, KeyError):
        return None
    ends = np.cumsum(counts)
    return [(images[i], boxes[e - c: e], classes[e - c: e]) for i, (c, e) in enumerate(zip(counts, ends, strict=True))]


def _save_cached(path: Path, items: list[tuple]) -> None:
    """Write atomically (a temp file, then a rename); a failure to cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=np.stack([x[0] for x in items]), boxes=np.concatenate([x[1] for x in items]),
                 classes=np.concatenate([x[2] for x in items]), counts=np.array([len(x[2]) for x in items]))
        os.replace(tmp, path)
    except OSError:
        pass


def make_set(part: str, n: int, cfg: SynthConfig = SynthConfig(), seed: int = 0,
             progress: bool = False) -> DetectionSet:
    """``n`` images of one part, held in memory (3000 at 160x160 take 230 MB); cached on disk once made."""
    path = _cache_file(part, n, cfg, seed)
    items = _load_cached(path) if n and path.exists() else None
    if items is None:
        items = _generate(part, n, cfg, seed, progress)
        if n:
            _save_cached(path, items)
    records = [ImageRecord(f"{NAME}/{part}/{i:05d}.png", rgb.shape[1], rgb.shape[0], b, c, pixels=rgb)
               for i, (rgb, b, c) in enumerate(items)]
    return DetectionSet(LABELS, records, f"{NAME}:{part}")
