"""int8 against fp32, class by class: where does quantization change the answer?

Agreement is the share of images whose top-1 class is the same for both
models; per class it is grouped by the true label, so a class whose images the
int8 model answers differently stands out even when the overall figure is high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def agreement_report(p_int8: np.ndarray, p_fp32: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Overall and per-class top-1 agreement, with the classes that agree least first in ``worst``."""
    a, b = np.asarray(p_int8).argmax(1), np.asarray(p_fp32).argmax(1)
    same = a == b
    y = np.asarray(y)
    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(labels):
        m = y == c
        n = int(m.sum())
        per_class[name] = {"n": n, "agreement": float(same[m].mean()) if n else None,
                           "changed": int((~same[m]).sum())}
    scored = [(v["agreement"], k) for k, v in per_class.items() if v["agreement"] is not None]
    return {
        "overall": float(same.mean()) if len(same) else None,
        "changed": int((~same).sum()),
        "per_class": per_class,
        "worst": [k for _, k in sorted(scored)[:3]],
    }
