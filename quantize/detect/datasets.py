"""Where detection data comes from: the built-in ``shapes`` set or a COCO/YOLO folder, split train/val/test.

A folder's split is a seeded permutation of its images in sorted order, so any
tool can rebuild the split training used from the bundle's ``data`` section
(``split_from_info``). The built-in set is split by construction (see synth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_sdk.bundle import DataInfo

from ..data import DataError  # noqa: F401  (re-exported: the error callers catch)
from . import synth
from .annotations import AnnotationError, DetectionSet, read_folder

BUILTIN = (synth.NAME,)


@dataclass
class Parts:
    labels: list[str]
    train: DetectionSet
    val: DetectionSet
    test: DetectionSet
    bad: list[AnnotationError] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train.records), "val": len(self.val.records), "test": len(self.test.records)}

    def bad_report(self) -> dict[str, Any]:
        return {"count": len(self.bad), "items": [{"file": e.file, "line": e.line, "reason": e.reason}
                                                  for e in self.bad[:100]]}


def load_split(source: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               synth_counts: tuple[int, int, int] = (3000, 300, 500), skip_bad: bool = False,
               progress: bool = False, max_train: int | None = None) -> Parts:
    """Train/val/test of the built-in set (``synth_counts`` images) or of a COCO/YOLO folder.

    ``max_train`` keeps only the first images of the train part (calibration needs a few hundred, not all).
    """
    if source == synth.NAME:
        counts = (min(synth_counts[0], max_train if max_train is not None else synth_counts[0]), *synth_counts[1:])
        sets = [synth.make_set(part, n, seed=seed, progress=progress)
                for part, n in zip(("train", "val", "test"), counts, strict=True)]
        return Parts(synth.LABELS, *sets)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in [0, 1) and sum to less than 1")
    ds = read_folder(source, skip_bad=skip_bad)
    n = len(ds.records)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(f"{source}: {n} usable image(s) is too few to split into train, val and test")
    train = sorted(order[n_test + n_val:])[:max_train]
    return Parts(ds.labels, ds.subset(train, "train"),
                 ds.subset(sorted(order[n_test: n_test + n_val]), "val"), ds.subset(sorted(order[:n_test]), "test"),
                 ds.bad)


def split_from_info(info: DataInfo, progress: bool = False, max_train: int | None = None) -> Parts:
    """Rebuild the split a bundle was trained on (bad annotations skipped: training could only have used the rest)."""
    counts = tuple(info.counts.get(k, d) for k, d in zip(("train", "val", "test"), (3000, 300, 500), strict=True))
    return load_split(info.source, seed=info.seed, val_fraction=info.val_fraction, test_fraction=info.test_fraction,
                      synth_counts=counts, skip_bad=True, progress=progress,  # type: ignore[arg-type]
                      max_train=max_train)
