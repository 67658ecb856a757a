"""What `train` does with a data set when no flags say otherwise, and why.

:func:`profile` reads a sample of the training images (headers for sizes, a
few decodes for colour); :func:`choose` turns that profile and the user's
explicit settings into a :class:`Recipe`: input size, colour, augmentation,
architecture, width and epochs, each with the reason it was picked, which
`train` prints and stores in the bundle's train report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentSpec

MIN_SIDE, MAX_SIDE = 16, 96  # the inferred input side is clamped to this range
SMALL_MAX_SIDE = 48  # the small-data (k-means features) model: larger inputs add cost, not accuracy
SMALL_PER_CLASS = 30  # fewer training images per class than this: the small-data recipe
SAMPLE = 400


@dataclass
class DataProfile:
    images: int
    classes: int
    min_per_class: int
    median_side: int
    grayscale: bool
    sampled: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Recipe:
    input_size: int
    grayscale: bool
    kind: str  # "photo", "shape" or "small"
    arch: str
    width: float
    epochs: int
    batch_size: int
    lr: float
    patience: int
    augment: AugmentSpec
    edge_epochs: int | None = None  # a distilled little model: its own epochs (default: as epochs)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d


def profile(items: Sequence[tuple[Path, int]], num_classes: int, seed: int = 0) -> DataProfile:
    """Sizes from the headers of up to SAMPLE files; grey if every decoded sample has R == G == B."""
    from edge_sdk.errors import InvalidImageError
    from edge_sdk.imageinfo import read_info
    from edge_sdk.preprocess import load_image

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(items), size=min(SAMPLE, len(items)), replace=False) if items else []
    sides, grey = [], []
    for j, i in enumerate(pick):
        path = items[int(i)][0]
        try:
            data = Path(path).read_bytes()
            info = read_info(data)
            if info.width and info.height:
                sides.append(min(info.width, info.height))
            if j < 100:  # colour needs a decode: fewer
                rgb = load_image(data)
                grey.append(bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])))
        except (OSError, InvalidImageError):
            continue
    counts = np.bincount([y for _, y in items], minlength=num_classes) if items else np.zeros(num_classes, int)
    return DataProfile(images=len(items), classes=num_classes, min_per_class=int(counts.min()) if len(counts) else 0,
                       median_side=int(np.median(sides)) if sides else 0, grayscale=bool(grey) and all(grey),
                       sampled=len(sides))


def infer_input_size(p: DataProfile) -> tuple[int, str]:
    """The median shorter side, clamped to [MIN_SIDE, MAX_SIDE], with the reason."""
    if not p.median_side:
        return 32, "input 32x32: no image size could be read from the sample (default)"
    side = int(np.clip(p.median_side, MIN_SIDE, MAX_SIDE))
    why = f"the median image side is {p.median_side} px over {p.sampled} sampled files"
    if side != p.median_side:
        bound = "capped at" if side == MAX_SIDE else "raised to"
        why += f", {bound} {side} (training cost grows with the square of the side; --input-size overrides)"
    return side, f"input {side}x{side}: {why}"


def choose(p: DataProfile, *, input_size: int | None = None, grayscale: bool | None = None,
           flip: bool | None = None, arch: str | None = None, width: float | None = None,
           epochs: int | None = None, batch_size: int | None = None, patience: int | None = None,
           augment: bool = True) -> Recipe:
    """The recipe for this data: the user's explicit settings win, the rest follows from the profile."""
    reasons = []
    if input_size is None:
        input_size, why = infer_input_size(p)
        reasons.append(why)
    if grayscale is None:
        grayscale = p.grayscale
        reasons.append("one grey channel: every sampled image has R = G = B" if grayscale
                       else "RGB input: the sampled images have colour")
    small = p.min_per_class < SMALL_PER_CLASS
    if small and reasons and input_size > SMALL_MAX_SIDE:
        input_size = SMALL_MAX_SIDE
        reasons[0] += f"; small data: lowered to {SMALL_MAX_SIDE} for the k-means feature model"
    shape = grayscale and input_size <= 32 and not small
    if flip is None:
        flip = not shape
        if shape:
            reasons.append("no mirror flips: small grey images look like characters or digits (--flip to force)")
    kind = "small" if small else "shape" if shape else "photo"
    r = _defaults(kind, p, flip)
    r.input_size, r.grayscale, r.reasons = input_size, grayscale, reasons + r.reasons
    for name, value in (("arch", arch), ("width", width), ("epochs", epochs), ("batch_size", batch_size),
                        ("patience", patience)):
        if value is not None:
            setattr(r, name, value)
    if not augment:
        r.augment = AugmentSpec(policy="none", flip=False)
    return r


def _defaults(kind: str, p: DataProfile, flip: bool) -> Recipe:
    if kind == "small":
        return Recipe(0, False, kind, "kmeans", 1.0, epochs=0, batch_size=32, lr=0.0, patience=0,
                      augment=AugmentSpec("photo" if flip else "none", flip=flip, cutout=0.0, jitter=0.0),
                      reasons=[f"small data ({p.min_per_class} images in the smallest class, under {SMALL_PER_CLASS}): "
                               "k-means patch features learnt without labels and a logistic-regression head "
                               "(Coates, Lee & Ng 2011), which beat a CNN trained from scratch on so few images"])
    if kind == "shape":
        epochs = int(np.clip(round(50000 / max(1, p.images)), 8, 30))
        return Recipe(0, True, kind, "cnn", 1.0, epochs=epochs, batch_size=64, lr=0.05, patience=max(4, epochs // 2),
                      augment=AugmentSpec("shape", flip=flip),
                      reasons=[f"digits/characters recipe: a plain CNN, small rotations, scales and shifts; {epochs} "
                               f"epochs for {p.images} training images"])
    big = p.images >= 5000
    width = 0.5 if big else 0.25
    return Recipe(0, False, kind, "resnet", width, epochs=14 if big else 40, batch_size=128 if big else 64,
                  lr=0.2, patience=10, augment=AugmentSpec("photo", flip=flip), edge_epochs=16 if big else None,
                  reasons=[f"photo recipe for {p.images} training images: ResNet-9 at width {width:g}, crop + flip + "
                           "cutout + colour jitter, label smoothing, one-cycle schedule"])
