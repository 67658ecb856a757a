"""Labelled images: an ImageFolder loader, a seeded stratified split, and the built-in digits.

The split is made from the sorted file listing, so any tool can rebuild exactly
the split that training used from the bundle's ``data`` section.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdk.bundle import DataInfo
from edge_sdk.errors import HybridVisionError, InvalidImageError
from edge_sdk.preprocess import InputSpec, PreprocessSpec, preprocess

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
BUILTIN = ("digits",)
DIGITS_SIZE = 32


class DataError(HybridVisionError):
    """The data folder cannot be used: missing, empty, or fewer than two classes."""


@dataclass
class Split:
    labels: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    info: DataInfo

    def part(self, name: str) -> list[tuple[Path, int]]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass
class Arrays:
    x: np.ndarray
    y: np.ndarray
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def cache_dir() -> Path:
    return Path(os.environ.get("HYBRID_VISION_CACHE", Path.home() / ".cache" / "hybrid-vision"))


def resolve(source: str) -> Path:
    """A folder path, or the name of a built-in dataset (written out on first use)."""
    if source == "digits":
        return write_digits(cache_dir() / f"digits-{DIGITS_SIZE}")
    p = Path(source).expanduser()
    if not p.is_dir():
        raise DataError(f"{source}: no such folder (and not a built-in dataset: {', '.join(BUILTIN)})")
    return p


def write_digits(dest: Path, size: int = DIGITS_SIZE) -> Path:
    """scikit-learn's handwritten digits (8x8, 16 grey levels) as size x size PNGs, one folder a class."""
    if (dest / ".complete").exists():
        return dest
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=dest.parent))
    try:
        for i, (img, y) in enumerate(zip(d.images, d.target, strict=False)):
            px = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
            big = cv2.resize(px, (size, size), interpolation=cv2.INTER_CUBIC)
            cls_dir = tmp / str(int(y))
            cls_dir.mkdir(exist_ok=True)
            cv2.imwrite(str(cls_dir / f"{i:04d}.png"), big)
        (tmp / ".complete").write_text("ok\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def list_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and every image file under them."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[tuple[Path, int]] = []
    for i, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        items += [(f, i) for f in files]
    counts = {c: sum(1 for _, y in items if y == i) for i, c in enumerate(classes)}
    non_empty = [c for c, n in counts.items() if n]
    if len(non_empty) < 2:
        raise DataError(
            f"{root}: found {len(non_empty)} class folder(s) with images; need at least 2 "
            f"(one sub-folder per class holding .jpg/.png/.bmp/.webp files)"
        )
    empty = [c for c, n in counts.items() if not n]
    if empty:
        raise DataError(f"{root}: class folder(s) with no images: {', '.join(empty)}")
    return classes, items


def presplit_test_folder(root: Path) -> Path | None:
    """``root/test`` when ``root`` holds exactly ``train/`` and ``test/`` image folders (a given test split)."""
    subs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return root / "test" if subs == ["test", "train"] else None


def split(source: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Split:
    """Seeded, stratified train/val/test split of a folder or built-in dataset.

    A folder with exactly two sub-folders ``train/`` and ``test/`` (each one
    sub-folder per class, same classes) keeps its test split as given:
    validation is split from ``train/`` and ``test_fraction`` is not used.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in [0, 1) and sum to less than 1")
    root = resolve(source)
    test_dir = presplit_test_folder(root)
    if test_dir is None:
        labels, items = list_folder(root)
        parts = _stratified_parts(items, len(labels), seed, val_fraction, test_fraction)
    else:
        labels, items = list_folder(root / "train")
        test_labels, test_items = list_folder(test_dir)
        if test_labels != labels:
            raise DataError(f"{root}: train/ and test/ have different classes ({labels} vs {test_labels})")
        parts = _stratified_parts(items, len(labels), seed, val_fraction, 0.0)
        parts["test"] = test_items
    info = DataInfo(
        source=source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        counts={k: len(v) for k, v in parts.items()},
    )
    return Split(labels, parts["train"], parts["val"], parts["test"], info)


def _stratified_parts(
    items: Sequence[tuple[Path, int]], num_classes: int, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[tuple[Path, int]]]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for c in range(num_classes):
        cls = [it for it in items if it[1] == c]
        order = rng.permutation(len(cls))
        n_test = int(round(len(cls) * test_fraction))
        n_val = int(round(len(cls) * val_fraction))
        if len(cls) - n_test - n_val < 1:  # tiny class: keep one for training
            n_test, n_val = min(n_test, max(0, len(cls) - 1)), 0
        picked = [cls[j] for j in order]
        parts["test"] += picked[:n_test]
        parts["val"] += picked[n_test : n_test + n_val]
        parts["train"] += picked[n_test + n_val :]
    return parts


def split_from_info(info: DataInfo) -> Split:
    """Rebuild the split a bundle was trained on."""
    return split(info.source, seed=info.seed, val_fraction=info.val_fraction, test_fraction=info.test_fraction)


def load_arrays(
    items: Sequence[tuple[Path, int]], inp: InputSpec, pp: PreprocessSpec, *, desc: str = "loading",
    progress: bool = True,
) -> Arrays:
    """Run every file through the shared preprocessing; unreadable files are skipped and counted."""
    from tqdm.auto import tqdm

    xs, ys, paths, skipped = [], [], [], []
    for path, y in tqdm(items, desc=desc, unit="img", disable=not progress, leave=False):
        try:
            xs.append(preprocess(path, inp, pp))
        except InvalidImageError as e:
            skipped.append((str(path), str(e)))
            continue
        ys.append(y)
        paths.append(path)
    x = np.stack(xs) if xs else np.zeros((0, inp.height, inp.width, inp.channels), np.float32)
    return Arrays(x, np.asarray(ys, np.int64), paths, skipped)


def stratified_sample(items: Sequence[tuple[Path, int]], n: int, seed: int = 0) -> list[tuple[Path, int]]:
    """Up to n items with the classes in their original proportions."""
    if n >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    ys = np.array([y for _, y in items])
    chosen: list[int] = []
    for c in np.unique(ys):
        idx = np.flatnonzero(ys == c)
        k = max(1, int(round(n * len(idx) / len(items))))
        chosen += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return [items[i] for i in sorted(chosen)]
