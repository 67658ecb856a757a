"""The full-precision model, loaded safely and compiled once, before the service says it is ready.

``model.predict()`` pays a data-adapter and callback cost on every call that
dwarfs a small CNN, so each backend gets a compiled call instead:

* TensorFlow: one ``tf.function`` with a ``[None, H, W, C]`` signature, traced
  once; any batch size runs without retracing or padding (measured on CPU: as
  fast as a trace per fixed shape, and no compute wasted on padding).
* JAX: ``jax.jit`` of the stateless call, which compiles per shape, so batches
  are padded up to a ladder of bucket sizes (1, 2, 3, 4, 6, 8, 12, 16, 24, ...:
  at most a third of a batch is padding) and every bucket is compiled during warm-up.
* torch: a no-grad call; any batch size.

The warm-up runs every bucket size once (for TensorFlow this also builds the
oneDNN kernels for those shapes).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.errors import BundleError, HybridVisionError

log = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "jax", "torch")


class BackendError(HybridVisionError):
    """The requested Keras backend is unknown, not installed, or clashes with the one already loaded."""


def select_backend(name: str | None = None) -> str:
    """Choose the Keras backend before Keras is imported: ``name``, else KERAS_BACKEND, else tensorflow.

    Keras reads KERAS_BACKEND once, at import; asking for another backend after
    that is an error rather than a silent mismatch.
    """
    want = (name or os.environ.get("KERAS_BACKEND") or "tensorflow").lower()
    if want not in BACKENDS:
        raise BackendError(f"unknown backend {want!r}; choose from {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        have = keras.backend.backend()
        if have != want:
            raise BackendError(
                f"Keras is already loaded with the {have!r} backend; cannot switch to {want!r} in this process"
            )
        return have
    os.environ["KERAS_BACKEND"] = want
    try:
        import keras
    except ImportError as e:
        raise BackendError(f"backend {want!r} is not usable here: {e}") from None
    return keras.backend.backend()


def plan_instances(backend: str, instances: int = 0, threads: int = 0, cpus: int | None = None) -> tuple[int, int]:
    """(model instances, threads per op) for ``--model-instances`` / ``--model-threads`` (0 = auto).

    JAX gets one instance: it is the GPU path, and one caller keeps a GPU fed best. TensorFlow and
    torch run on the CPU here and get two instances of half the cores each. Measured on 2 cores with
    the digits CNN at batch 32: one caller with 2 threads per op gave 2,864 images/s on a quiet
    machine; two callers with 1 thread each gave 3,152. Under HTTP load the gap widens: an op split
    over two threads stalls whenever the event loop holds one of the cores, and a lone instance idles
    while its answers go out and its next batch is collected, so the CPUs sat 20% idle.
    """
    cpus = cpus or os.cpu_count() or 1
    if instances <= 0:
        instances = 1 if backend == "jax" else max(1, min(2, cpus))
    if threads <= 0:
        threads = max(1, cpus // instances)
    return instances, threads


def configure_threads(backend: str, threads: int) -> None:
    """Set the backend's threads within one op (process-wide); a warning when it is too late to change."""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.threading.get_intra_op_parallelism_threads() != threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        elif backend == "torch":
            import torch

            torch.set_num_threads(threads)
        # jax: XLA sizes its own pools; on a GPU they barely matter
    except RuntimeError as e:  # TensorFlow's runtime already started in this process (e.g. in tests)
        log.warning("cannot set %s to %d thread(s) per op now (%s); keeping its current setting", backend, threads, e)


def buckets_for(max_batch_size: int) -> list[int]:
    """Batch sizes 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ... below ``max_batch_size``, then ``max_batch_size``.

    Powers of two and 1.5x powers of two: few compiled shapes, and padding a batch
    up to the next one adds at most a third.
    """
    out, p = [], 1
    while True:
        for b in (p, p + p // 2) if p >= 2 else (p,):
            if b >= max_batch_size:
                return out + [max_batch_size]
            out.append(b)
        p *= 2


class CloudModel:
    """One bundle's cloud model: ``predict`` takes float32 NHWC and gives probabilities [N, C].

    ``predict`` may be called from several threads at once (one per model instance).
    """

    def __init__(self, bundle: Bundle, name: str | None = None, max_batch_size: int = 32, backend: str | None = None):
        self.bundle = bundle
        self.name = name or bundle.manifest.name
        self.manifest = bundle.manifest
        self.labels = list(bundle.manifest.labels)
        inp = bundle.manifest.input
        self.input_shape = (inp.height, inp.width, inp.channels)
        self.backend = select_backend(backend)
        self.buckets = buckets_for(max_batch_size)
        self.max_batch_size = max_batch_size
        self.pads = self.backend == "jax"  # jit compiles per shape; the others take any batch size
        self.apply_softmax = False
        self.ready = threading.Event()
        self.warmup_seconds: float | None = None
        self._model = self._load(bundle.model_path("cloud"))
        self._call = _compiled_call(self._model, self.backend)

    @classmethod
    def from_path(cls, path: str | os.PathLike, name: str | None = None, **kw) -> CloudModel:
        return cls(load_bundle(path, verify=True), name=name, **kw)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _load(self, path: Path):
        import keras

        if self.bundle.manifest.models["cloud"].format != "keras":
            raise BundleError(f"{path}: the cloud model must be in Keras format")
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as e:  # keras raises ValueError/TypeError/OSError for bad or unsafe files
            raise BundleError(f"{path}: cannot load the cloud model safely: {type(e).__name__}: {e}") from None
        shapes = [tuple(t.shape[1:]) for t in model.inputs] if getattr(model, "inputs", None) else []
        if len(shapes) != 1:
            raise BundleError(f"{path}: the cloud model must have exactly one input (has {len(shapes)})")
        given = shapes[0]
        if len(given) != 3 or any(m is not None and m != e for m, e in zip(given, self.input_shape, strict=True)):
            raise BundleError(f"{path}: model input {shapes[0]} does not match the manifest's {self.input_shape}")
        return model

    def _run(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(self._call(x), dtype=np.float32)
        if y.ndim != 2 or y.shape != (len(x), self.num_classes):
            raise BundleError(f"model output shape {y.shape} is not [{len(x)}, {self.num_classes}]")
        return y

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, H, W, C] -> probabilities float32 [N, num_classes], in chunks of max_batch_size
        (each padded up to a bucket size on JAX)."""
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        outs = []
        for i in range(0, n, self.max_batch_size):
            chunk = x[i : i + self.max_batch_size]
            size = next(b for b in self.buckets if b >= len(chunk)) if self.pads else len(chunk)
            if size != len(chunk):
                pad = np.zeros((size - len(chunk),) + chunk.shape[1:], np.float32)
                chunk_p = np.concatenate([chunk, pad])
            else:
                chunk_p = np.ascontiguousarray(chunk, np.float32)
            outs.append(self._run(chunk_p)[: len(chunk)])
        y = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return _softmax(y) if self.apply_softmax else y

    def warmup(self) -> float:
        """Trace/compile every bucket and check the output is a probability vector; then mark ready."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for b in self.buckets:
            x = rng.random((b,) + self.input_shape, dtype=np.float32)
            y = self._run(x)
            if not np.isfinite(y).all():
                raise BundleError(f"{self.name}: the cloud model gives NaN/Inf on a warm-up batch")
            if b == self.buckets[-1]:
                self.apply_softmax = bool((y < -1e-6).any() or np.abs(y.sum(1) - 1).max() > 1e-3)
                if self.apply_softmax:
                    log.warning("%s: model outputs are not probabilities; applying softmax to them", self.name)
        self.warmup_seconds = time.perf_counter() - t0
        self.ready.set()
        log.info("%s: warmed up %d batch sizes %s on %s in %.1fs", self.name, len(self.buckets), self.buckets,
                 self.backend, self.warmup_seconds)
        return self.warmup_seconds


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _compiled_call(model, backend: str) -> Callable[[np.ndarray], np.ndarray]:
    if backend == "tensorflow":
        import tensorflow as tf

        shape = tuple(model.inputs[0].shape[1:])
        fn = tf.function(lambda t: model(t, training=False),
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        return lambda x: fn(tf.constant(x)).numpy()
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def jitted(tv, ntv, x):
            y, _ = model.stateless_call(tv, ntv, x, training=False)
            return y

        return lambda x: np.asarray(jitted(trainable, non_trainable, x))
    if backend == "torch":
        import keras
        import torch

        def call(x):
            with torch.inference_mode():
                return keras.ops.convert_to_numpy(model(x, training=False))

        return call
    raise BackendError(f"unknown backend {backend!r}")
