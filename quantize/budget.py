"""The int8 size budget: the widest model of an architecture whose int8 TFLite file fits ``max_bytes``.

Within one architecture a wider model is the more accurate one at this scale,
so "the most accurate edge model that fits" is the widest that fits. The size
of an int8 file does not depend on the weights' values, so it is measured by
converting the untrained model (a few seconds each, at most a few tries).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MIN_WIDTH, MAX_WIDTH = 0.125, 8.0


@dataclass
class BudgetFit:
    arch: str
    width: float
    int8_bytes: int
    max_bytes: int
    params: int
    conversions: int


class BudgetError(ValueError):
    """Even the narrowest model of the architecture does not fit the budget."""


def int8_size(model) -> int:
    """Bytes of the full-integer int8 TFLite file for this (logits) model."""
    from .convert import convert_int8
    from .models import with_softmax

    shape = model.input_shape[1:]
    rep = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype(np.float32)
    return len(convert_int8(with_softmax(model), rep))


def _widest(fits, lo: float, hi: float) -> float:
    """Binary search (in log width) for the largest width in [lo, hi] with fits(width) true; fits(lo) must hold."""
    if fits(hi):
        return hi
    for _ in range(10):  # 6 octaves of width to about 1% of a width step
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return round(lo, 4)


def widest_within(arch: str, input_shape: tuple[int, int, int], num_classes: int, max_bytes: int) -> BudgetFit:
    """Largest width whose int8 file is at most ``max_bytes``; raises BudgetError if none is."""
    from .models import build

    @functools.cache
    def params(w: float) -> int:
        return build(arch, input_shape, num_classes, w).count_params()

    overhead = 0
    for tries in range(1, 5):
        if params(MIN_WIDTH) + overhead > max_bytes:
            break
        allowed = max_bytes - overhead
        w = _widest(lambda w, allowed=allowed: params(w) <= allowed, MIN_WIDTH, MAX_WIDTH)
        model = build(arch, input_shape, num_classes, w)
        size = int8_size(model)
        if size <= max_bytes:
            return BudgetFit(arch, w, size, max_bytes, int(model.count_params()), tries)
        overhead = size - model.count_params() + max(256, (size - max_bytes) // 4)  # the file's own cost, learnt
    raise BudgetError(f"no {arch} model fits {max_bytes / 1024:.0f} KB as int8 (the narrowest, width {MIN_WIDTH}, "
                      "is bigger); raise --edge-max-kb or choose a smaller --edge-arch")
