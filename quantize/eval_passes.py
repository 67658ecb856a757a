"""One pass of one mode over the evaluation images: the edge SDK, the in-process Keras model, or routed.

Every row is measured, never assumed. The edge row always runs the real edge
SDK (``HybridClassifier`` in ``edge_only`` mode, one ``predict`` per image).
With a cloud URL the cloud and hybrid rows also go through the SDK, against
that server. Without one the bundle's Keras model runs in this process
(safe_mode, one compiled call per batch) and the hybrid row applies the SDK's
own routing functions (edge_sdk.policy) to the two sets of answers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edge_sdk.bundle import Bundle
from edge_sdk.errors import CloudError, HybridVisionError, InvalidImageError
from edge_sdk.hybrid import HybridClassifier
from edge_sdk.policy import confidence, is_confident
from edge_sdk.preprocess import load_image, preprocess, resize
from edge_sdk.scores import LOWER_IS_CONFIDENT
from edge_sdk.upload import Staged, build_request

from .errors import EvaluateError
from .models import load_safe


@dataclass
class ModeRun:
    """What one mode answered for each image, in item order."""

    name: str
    probs: np.ndarray  # [N, C] the answer's probabilities
    offloaded: np.ndarray  # [N] bool: the answer came from the cloud
    latency_ms: np.ndarray  # [N]
    bytes_sent: np.ndarray  # [N]
    latency_kind: str
    reasons: dict[str, int] = field(default_factory=dict)
    scores: np.ndarray | None = None  # [N] the SDK's routing score of the edge output (edge runs)
    ood: np.ndarray | None = None  # [N] bool: the bundle's out-of-distribution score flagged the image


def sdk_pass(
    bundle: Bundle, paths: Sequence[Path], mode: str, *, cloud_url: str | None = None, api_key: str | None = None,
    cloud_model: str | None = None, upload: str = "auto", deadline_ms: float = 10_000.0, progress: bool = True,
    strict: bool = True,
) -> tuple[ModeRun, list[tuple[str, str]]]:
    """Run the edge SDK's ``predict`` on each image in ``mode``; returns the run and the unreadable files.

    ``strict``: a readable image that gets no answer (the cloud failed in
    cloud_only mode) is an EvaluateError, since the row would be meaningless.
    """
    clf = HybridClassifier.from_bundle(
        bundle, cloud_url=cloud_url, api_key=api_key, mode=mode, upload=upload, deadline_ms=deadline_ms, probes=[],
        cloud_model=cloud_model,
    )
    n, c = len(paths), len(bundle.labels)
    probs = np.zeros((n, c), np.float32)
    off, lat, sent = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    scores, ood = np.full(n, np.nan), np.zeros(n, bool)
    reasons: Counter = Counter()
    skipped: list[tuple[str, str]] = []
    keep = np.ones(n, bool)
    with clf:
        _warm_up(clf, paths)
        for i, path in enumerate(tqdm(paths, desc=f"sdk {mode}", unit="img", disable=not progress, leave=False)):
            try:
                p = clf.predict(path)
            except InvalidImageError as e:
                skipped.append((str(path), str(e)))
                keep[i] = False
                continue
            except CloudError as e:
                if strict:
                    raise EvaluateError(f"{mode}: no answer for {path}: {e}") from None
                skipped.append((str(path), f"no answer: {e}"))
                keep[i] = False
                continue
            probs[i] = p.probabilities
            off[i] = p.source == "cloud"
            lat[i] = p.latency_ms["total"]
            sent[i] = p.bytes_sent
            scores[i] = np.nan if p.edge_score is None else p.edge_score
            ood[i] = p.out_of_distribution
            reasons[p.reason] += 1
    where = "over HTTP" if cloud_url else "on this machine"
    run = ModeRun(mode, probs[keep], off[keep], lat[keep], sent[keep], f"edge SDK predict() per image, {where}",
                  dict(reasons), scores[keep], ood[keep])
    return run, skipped


def _warm_up(clf, paths: Sequence[Path]) -> None:
    """One untimed call first: the interpreter's first invoke and the first connection are one-off costs."""
    for path in paths[:3]:
        try:
            clf.predict(path)
            return
        except HybridVisionError:
            continue


def keras_cloud_pass(bundle: Bundle, paths: Sequence[Path], *, upload: str = "auto", batch_size: int = 64,
                     progress: bool = True) -> ModeRun:
    """The bundle's full-precision model in this process: shared preprocessing, one compiled call per batch.

    Latency per image = its own preprocessing + its batch's model time / batch size.
    """
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    call = compiled_keras(bundle.model_path("cloud"), (inp.height, inp.width, inp.channels))
    n = len(paths)
    xs = np.zeros((n, inp.height, inp.width, inp.channels), np.float32)
    pre_ms = np.zeros(n)
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        xs[i] = preprocess(path, inp, pp)
        pre_ms[i] = (time.perf_counter() - t0) * 1000
    call(xs[:1])  # trace and warm up outside the timing
    probs = np.zeros((n, len(bundle.labels)), np.float32)
    model_ms = np.zeros(n)
    starts = tqdm(range(0, n, batch_size), desc="cloud model (in-process)", unit="batch", disable=not progress,
                  leave=False)
    for s in starts:
        t0 = time.perf_counter()
        probs[s : s + batch_size] = call(xs[s : s + batch_size])
        model_ms[s : s + batch_size] = (time.perf_counter() - t0) * 1000 / len(xs[s : s + batch_size])
    sent = np.array([request_bytes(p, bundle, upload) for p in paths], float)
    return ModeRun("cloud_only", probs, np.ones(n, bool), pre_ms + model_ms, sent,
                   f"in-process Keras, batches of {batch_size} (no network)", {"cloud_only": n})


def compiled_keras(path: Path, shape: tuple[int, int, int]):
    """Load a .keras file with safe_mode and return ``f(batch) -> probs``, compiled once for any batch size."""
    import keras  # heavy: only this pass needs it

    model = load_safe(path, EvaluateError, "the cloud model")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        return lambda x: fn(tf.constant(x, tf.float32)).numpy()
    return lambda x: np.asarray(model(x, training=False))


def request_bytes(path: Path, bundle: Bundle, upload: str) -> int:
    """The size of the v2 infer request body the SDK sends for this one image (as edge_sdk.client counts it),
    to a server that speaks binary tensor data, as ``hybrid-vision serve`` does."""
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    rgb = load_image(path)
    staged = Staged(path, rgb, resize(rgb, inp.height, inp.width, pp.resize))
    return len(build_request([staged], upload).encode(binary_data=True).body)


def hybrid_from(edge: ModeRun, cloud: ModeRun, metric: str, threshold: float) -> ModeRun:
    """Route each image with the SDK's own rule: the edge answer when confident (by the SDK's own routing
    score when the edge run recorded it) and not out of distribution, else the cloud's."""
    if edge.scores is not None and not np.isnan(edge.scores).any():
        s = edge.scores
        conf = (s <= threshold) if metric in LOWER_IS_CONFIDENT else (s >= threshold)
    else:
        conf = np.asarray(is_confident(np.asarray(confidence(edge.probs, metric)), threshold, metric), bool)
    if edge.ood is not None:
        conf = conf & ~edge.ood
    probs = np.where(conf[:, None], edge.probs, cloud.probs)
    lat = edge.latency_ms + np.where(conf, 0.0, cloud.latency_ms)
    sent = np.where(conf, 0.0, cloud.bytes_sent)
    reasons = {"confident": int(conf.sum()), "low_confidence": int((~conf).sum())}
    return ModeRun("auto", probs, ~conf, lat, sent, "edge SDK per image + in-process cloud for offloaded images",
                   reasons)
