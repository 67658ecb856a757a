"""Wrap a Keras model the user already has into a bundle.

The routing threshold needs probabilities, so a model whose outputs are logits
(not in [0, 1], or not summing to 1) is detected and gets a softmax appended.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdk.bundle import Bundle, Manifest, ModelFile, write_bundle
from edge_sdk.errors import HybridVisionError
from edge_sdk.preprocess import InputSpec, PreprocessSpec

# Named normalisations, as the common model families expect them.
PRESETS: dict[str, dict] = {
    "unit": {"scale": 1 / 255.0, "mean": [0.0], "std": [1.0]},  # [0, 1]
    "tf": {"scale": 1 / 127.5, "mean": [1.0], "std": [1.0]},  # [-1, 1] (MobileNet, Inception)
    "imagenet": {"scale": 1 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "raw": {"scale": 1.0, "mean": [0.0], "std": [1.0]},  # 0..255 (models with a Rescaling layer inside)
}


class ModelImportError(HybridVisionError):
    """The model cannot be wrapped: wrong input/output shape, labels mismatch, unreadable file."""


@dataclass
class ImportConfig:
    model: str
    labels: str
    out: str
    name: str | None = None
    input_size: int | None = None
    preprocess: str = "unit"
    resize: str = "stretch"
    grayscale: bool = False
    extra: dict = field(default_factory=dict)


def read_labels(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ModelImportError(f"{path}: labels file not found")
    labels = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(labels) < 2:
        raise ModelImportError(f"{path}: needs at least 2 labels, one per line")
    return labels


def outputs_are_probabilities(probs: np.ndarray, tol: float = 1e-3) -> bool:
    """True when every row is a distribution: entries in [0, 1] and summing to 1."""
    return bool(((probs >= -tol) & (probs <= 1 + tol)).all() and np.allclose(probs.sum(-1), 1.0, atol=tol))


def with_softmax(model):
    import keras

    out = keras.layers.Softmax(name="probabilities")(model.output)
    return keras.Model(model.inputs, out, name=f"{model.name}_softmax")


def import_model(cfg: ImportConfig) -> tuple[Bundle, dict]:

    if cfg.preprocess not in PRESETS:
        raise ModelImportError(f"unknown preprocess preset {cfg.preprocess!r}; choose from {', '.join(PRESETS)}")
    from .models import load_safe

    model = load_safe(cfg.model, ModelImportError, "as a Keras model")
    labels = read_labels(cfg.labels)
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ModelImportError(f"{cfg.model}: input shape {shape} is not NHWC images")
    _, h, w, c = shape
    if c not in (1, 3):
        raise ModelImportError(f"{cfg.model}: input has {c} channels; expected 1 or 3")
    h = h or cfg.input_size
    w = w or cfg.input_size
    if cfg.input_size and (h, w) != (cfg.input_size, cfg.input_size) and shape[1]:
        raise ModelImportError(f"{cfg.model}: --input-size {cfg.input_size} disagrees with the model's input {h}x{w}")
    if not h or not w:
        raise ModelImportError(f"{cfg.model}: input size is dynamic; give --input-size")
    n_out = model.output_shape[-1]
    if n_out != len(labels):
        raise ModelImportError(f"{cfg.model}: model has {n_out} outputs but {cfg.labels} has {len(labels)} labels")

    pp = PreprocessSpec(resize=cfg.resize, **PRESETS[cfg.preprocess])
    inp = InputSpec(height=h, width=w, channels=c, color="GRAY" if c == 1 else "RGB")
    probe = _probe_inputs(inp, pp)
    probs = np.asarray(model(probe, training=False))
    added_softmax = not outputs_are_probabilities(probs)
    if added_softmax:
        model = with_softmax(model)
    report = {"source": str(cfg.model), "added_softmax": added_softmax, "params": int(model.count_params()),
              "input": inp.model_dump(), "preprocess": pp.model_dump()}
    with tempfile.TemporaryDirectory() as td:
        mp = Path(td) / "cloud.keras"
        model.save(mp)
        manifest = Manifest(
            name=cfg.name or Path(cfg.out).name, labels=labels, input=inp, preprocess=pp,
            models={"cloud": ModelFile(file="cloud.keras", format="keras")}, reports={"import": report},
        )
        return write_bundle(cfg.out, manifest, {"cloud.keras": mp}), report


def _probe_inputs(inp: InputSpec, pp: PreprocessSpec, n: int = 8) -> np.ndarray:
    """Random pixels through the bundle's normalisation: enough to see whether outputs are a distribution."""
    from edge_sdk.preprocess import normalize

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, inp.height, inp.width, 3), dtype=np.uint8)
    return np.stack([normalize(im, inp, pp) for im in imgs])
