"""The small-data model: unsupervised single-layer features and a trained linear head, as one Keras model.

Coates, Lee & Ng 2011, "An Analysis of Single-Layer Networks in Unsupervised
Feature Learning": learn a dictionary by k-means on whitened image patches,
encode every patch of an image against it, pool over the four quadrants, and
train a linear classifier. With a few images per class nothing is learnt from
the labels except the linear head, which is why it beats a CNN trained from
scratch there. The encoding is the soft threshold max(0, D.x - a) of Coates &
Ng 2011 ("The Importance of Encoding Versus Training with Sparse Coding and
Vector Quantization"), on both polarities, so the whole model is
Conv2D (fixed) -> ReLU -> quadrant average pool -> Dense -> softmax: built-in
layers only, and it converts to full-integer int8 like any other.

Patch mean removal and ZCA whitening are linear, so they are folded into the
convolution's kernel; the head's feature standardisation is folded into the Dense.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FeatureOptions:
    filters: int = 256  # k-means centroids; the model has twice as many feature maps (both polarities)
    patch: int | None = None  # patch side; default about 6/32 of the image side
    patches: int = 20000  # patches sampled for whitening and k-means
    iterations: int = 10  # k-means iterations (Coates et al. use 10)
    flip: bool = True  # add mirrored training images to the head's training set
    seed: int = 0


def _patches(x: np.ndarray, r: int, count: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = x.shape
    i, r0, c0 = rng.integers(0, n, count), rng.integers(0, h - r + 1, count), rng.integers(0, w - r + 1, count)
    win = np.arange(r)
    p = x[i[:, None, None], (r0[:, None] + win)[:, :, None], (c0[:, None] + win)[:, None, :]]
    return p.reshape(count, -1).astype(np.float64)


def learn_filters(x: np.ndarray, opts: FeatureOptions) -> tuple[np.ndarray, float, int]:
    """Conv kernels (r, r, C, 2K) that whiten, match the centroids and take both polarities; threshold a; r."""
    rng = np.random.default_rng(opts.seed)
    side = min(x.shape[1:3])
    r = opts.patch or int(np.clip(round(side * 6 / 32), 3, side))
    p = _patches(x, r, opts.patches, rng)
    centre = np.eye(p.shape[1]) - 1.0 / p.shape[1]  # removes each patch's mean
    p = p @ centre
    evals, evecs = np.linalg.eigh(np.cov(p, rowvar=False))
    evals = np.maximum(evals, 0)
    zca = evecs @ np.diag(1.0 / np.sqrt(evals + 0.1 * evals.mean())) @ evecs.T
    white = p @ zca
    centres = kmeans(white.astype(np.float32), opts.filters, opts.iterations, rng)
    d = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-8)
    kernel = centre @ zca @ d.T  # patch -> responses to each centroid
    z = white @ d.T
    alpha = float(0.5 * z.std())
    k = np.concatenate([kernel, -kernel], axis=1).reshape(r, r, x.shape[3], 2 * opts.filters)
    return k.astype(np.float32), alpha, r


def kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Plain k-means (Lloyd) from k random points; an emptied cluster restarts at a random point."""
    c = x[rng.choice(len(x), size=min(k, len(x)), replace=False)].copy()
    for _ in range(iterations):
        nearest = np.argmax(x @ c.T - 0.5 * (c * c).sum(1), axis=1)
        counts = np.bincount(nearest, minlength=len(c))
        sums = np.zeros((len(c), len(x)), np.float32)
        sums[nearest, np.arange(len(x))] = 1.0
        sums = sums @ x
        empty = counts == 0
        c[~empty] = sums[~empty] / counts[~empty, None]
        c[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
    return c.astype(np.float64)


def feature_model(input_shape, kernel: np.ndarray, alpha: float):
    """image -> (fixed conv, soft threshold, quadrant average) features; returns (model, feature count)."""
    import keras
    from keras import layers

    r, k = kernel.shape[0], kernel.shape[-1]
    inp = keras.Input(input_shape, name="image")
    conv = layers.Conv2D(k, r, padding="valid", trainable=False, name="kmeans_filters")
    x = layers.ReLU(name="soft_threshold")(conv(inp))
    conv.set_weights([kernel, np.full(k, -alpha, np.float32)])
    oh, ow = input_shape[0] - r + 1, input_shape[1] - r + 1
    x = layers.AveragePooling2D((oh // 2, ow // 2), name="quadrants")(x)
    x = layers.Flatten()(x)
    return keras.Model(inp, x, name="kmeans_features")


def train_features(x: np.ndarray, y: np.ndarray, num_classes: int, opts: FeatureOptions) -> tuple[Any, dict[str, Any]]:
    """Learn the features without labels, then the logistic-regression head; returns (logits model, report)."""
    import keras
    from keras import layers
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    kernel, alpha, r = learn_filters(x, opts)
    feats = feature_model(x.shape[1:], kernel, alpha)
    xs, ys = (np.concatenate([x, x[:, :, ::-1]]), np.concatenate([y, y])) if opts.flip else (x, y)
    f = np.concatenate([np.asarray(feats(xs[i : i + 256])) for i in range(0, len(xs), 256)])
    mu, sd = f.mean(0), f.std(0) + 1e-6
    fs = (f - mu) / sd
    # L2-regularised weights lie in the span of the training features (representer theorem), so with fewer
    # images than features the head is fitted in that span: the same solution, a much smaller problem.
    basis = np.linalg.svd(fs, full_matrices=False)[2].T if len(fs) < fs.shape[1] else np.eye(fs.shape[1])
    head = LogisticRegression(C=_pick_c(len(np.unique(ys)), len(ys)), max_iter=3000)
    head.fit(fs @ basis, ys)
    w = np.zeros((f.shape[1], num_classes), np.float32)
    b = np.full(num_classes, -1e4, np.float32)  # a class absent from training is never predicted
    coef, icpt = _full_coef(head, num_classes)
    coef = (basis @ coef).astype(np.float32)
    seen = head.classes_
    w[:, seen] = coef / sd[:, None]
    b[seen] = icpt - (mu / sd) @ coef
    out = layers.Dense(num_classes, name="logits")
    logits = out(feats.output)
    out.set_weights([w, b])
    model = keras.Model(feats.input, logits, name="kmeans_linear")
    train_acc = float((head.predict(fs @ basis) == ys).mean())
    return model, {"filters": opts.filters, "patch": r, "features": int(f.shape[1]), "alpha": alpha,
                   "C": head.C, "train_accuracy": train_acc, "seconds": round(time.perf_counter() - t0, 2),
                   "params": int(model.count_params())}


def _pick_c(classes: int, n: int) -> float:
    """Strong L2 for few images a class, weaker as data grows."""
    return float(np.clip(n / classes / 100.0, 0.01, 1.0))


def _full_coef(head, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, seen classes) weights and intercepts; a binary head becomes two symmetric columns."""
    coef, icpt = head.coef_, head.intercept_
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    return coef.T.astype(np.float32), icpt.astype(np.float32)
