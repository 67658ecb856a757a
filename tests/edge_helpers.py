"""Test helpers for the edge SDK tests: tiny real int8 TFLite models and bundles.

Tests may import TensorFlow; edge_sdk may not. These build genuine full-integer
int8 models with tf.lite.TFLiteConverter from small Keras models, so the
runtime is tested on the real interpreter, not a stand-in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edge_sdk.bundle import Manifest, ModelFile, Routing, write_bundle  # noqa: E402
from edge_sdk.preprocess import InputSpec, PreprocessSpec, QuantParams  # noqa: E402

LABELS = [f"c{i}" for i in range(4)]
SIZE = 8

# The first lines of a script run in a subprocess that stands for a device: importing TensorFlow, Keras, scikit-learn,
# SciPy, quantize or cloud fails there, as it would on a phone; the script then imports json and what it needs.
DEVICE_BLOCKED = ("tensorflow", "keras", "sklearn", "scipy", "quantize", "cloud", "jax", "torch")
DEVICE_ONLY_PRELUDE = (
    "import sys, importlib.abc, json\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {DEVICE_BLOCKED!r}:\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def tiny_keras(size: int = SIZE, channels: int = 1, classes: int = len(LABELS), seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out)


def to_int8(model, rep: np.ndarray) -> tuple[bytes, QuantParams, QuantParams]:
    """Full-integer int8 conversion with a representative set; returns the model and its in/out quantization."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r[None].astype(np.float32)] for r in rep)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    interp = tf.lite.Interpreter(model_content=blob)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    q = lambda d: QuantParams(scale=float(d["quantization"][0]), zero_point=int(d["quantization"][1]), dtype="int8")  # noqa: E731
    return blob, q(i), q(o)


def make_tiny_bundle(dest: Path, *, seed: int = 0, threshold: float = 0.5, name: str = "tiny", size: int = SIZE,
                     labels: list[str] = LABELS, channels: int = 1) -> Path:
    """A bundle with a tiny random-weight ``size``x``size`` int8 edge model (grey unless ``channels=3``) and its
    Keras source as the cloud model."""
    model = tiny_keras(size=size, channels=channels, classes=len(labels), seed=seed)
    rng = np.random.default_rng(seed)
    rep = rng.random((32, size, size, channels), dtype=np.float32)
    blob, iq, oq = to_int8(model, rep)
    tmp = Path(dest).parent / f".{Path(dest).name}-src"
    tmp.mkdir(parents=True, exist_ok=True)
    model.save(tmp / "cloud.keras")
    manifest = Manifest(
        name=name, labels=labels,
        input=InputSpec(height=size, width=size, channels=channels, color="GRAY" if channels == 1 else "RGB"),
        preprocess=PreprocessSpec(),
        models={
            "cloud": ModelFile(file="cloud.keras", format="keras"),
            "edge": ModelFile(file="edge_int8.tflite", format="tflite-int8", input_quant=iq, output_quant=oq),
        },
        routing=Routing(metric="max_prob", threshold=threshold),
    )
    write_bundle(dest, manifest, {"cloud.keras": tmp / "cloud.keras", "edge_int8.tflite": blob})
    return Path(dest)


def tiny_images(n: int, seed: int = 1) -> list[np.ndarray]:
    """n random 8x8 RGB uint8 images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


_BUILT: dict[tuple, Path] = {}


def cached_tiny_bundle(tmp_path_factory, seed: int = 0, threshold: float = 0.5) -> Path:
    """One tiny bundle per (seed, threshold) per test session, shared by every edge test module. Do not modify."""
    key = (seed, threshold)
    if key not in _BUILT:
        _BUILT[key] = make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", seed=seed, threshold=threshold)
    return _BUILT[key]
