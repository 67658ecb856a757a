"""A classical baseline on the same split: PCA (whitened) then multinomial logistic regression.

Printed beside the CNN so a user sees when the deep model is not earning its
keep (eigenfaces-style PCA: Turk & Pentland 1991). Pixels are the same
preprocessed tensors the CNN sees, flattened.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 5000  # the baseline is a reference, not the product: cap its cost on big data
MAX_COMPONENTS = 100


@dataclass
class BaselineResult:
    method: str
    components: int
    train_images: int
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def fit_baseline(x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
                 test: tuple[np.ndarray, np.ndarray] | None, seed: int = 0):
    """Fit PCA(whiten) + logistic regression; returns (the fitted pipeline, its scores)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    if len(x) > MAX_FIT_IMAGES:
        idx = np.random.default_rng(seed).choice(len(x), MAX_FIT_IMAGES, replace=False)
        x, y = x[idx], y[idx]
    flat = x.reshape(len(x), -1)
    k = int(max(1, min(MAX_COMPONENTS, len(flat) - 1, flat.shape[1])))
    model = make_pipeline(PCA(n_components=k, whiten=True, random_state=seed), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(flat, y)

    def score(part: tuple[np.ndarray, np.ndarray] | None) -> float | None:
        if part is None or len(part[1]) == 0:
            return None
        return float((model.predict(part[0].reshape(len(part[0]), -1)) == part[1]).mean())

    res = BaselineResult("PCA(whiten) + logistic regression", k, len(flat), score(val), score(test),
                         round(time.perf_counter() - t0, 2))
    return model, res


def compare(model_accuracy: float | None, baseline: BaselineResult, what: str = "test") -> str | None:
    """A warning when the trained model is less accurate than the baseline on the same images, else None."""
    base = baseline.test_accuracy if what == "test" else baseline.val_accuracy
    if model_accuracy is None or base is None or model_accuracy >= base:
        return None
    return (f"the trained model ({100 * model_accuracy:.2f}%) is less accurate than the baseline "
            f"{baseline.method} ({100 * base:.2f}%) on the {what} split: more data, more epochs or a smaller "
            "model may help")
