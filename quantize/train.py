"""Train a bundle: OpenCV augmentation, early stopping on validation, a scored test split.

The cloud model is the big one; ``edge_arch`` optionally trains a smaller edge
network on the same data (big/little). Without it the edge model is the same CNN.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, Manifest, ModelFile, write_bundle
from edge_sdk.preprocess import InputSpec, PreprocessSpec

from . import data as data_mod
from .metrics import classification_summary, plot_confusion

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = "digits"
    out: str = "bundles/digits"
    name: str | None = None
    arch: str = "cnn"
    width: float = 1.0
    edge_arch: str | None = None
    edge_width: float = 0.5
    input_size: int | None = None  # default: 32 for digits, 96 otherwise
    grayscale: bool | None = None  # default: True for digits
    resize: str = "stretch"
    epochs: int = 40
    batch_size: int = 32
    patience: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    augment: bool = True
    flip: bool | None = None  # horizontal flips; default off for digits (a flipped 2 is not a 2)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    progress: bool = True

    def resolved(self) -> TrainConfig:
        digits = self.data == "digits"
        c = TrainConfig(**asdict(self))
        c.input_size = c.input_size or (data_mod.DIGITS_SIZE if digits else 96)
        c.grayscale = digits if c.grayscale is None else c.grayscale
        c.flip = (not digits) if c.flip is None else c.flip
        c.name = c.name or Path(c.out).name
        return c


def augment_batch(x: np.ndarray, rng: np.random.Generator, flip: bool, max_shift: float = 0.1, max_deg: float = 10.0):
    """Random crop (as a shift of up to ``max_shift`` of the side), small rotation, optional flip."""
    import cv2

    out = np.empty_like(x)
    h, w = x.shape[1:3]
    for i, img in enumerate(x):
        ang = rng.uniform(-max_deg, max_deg)
        scale = rng.uniform(0.92, 1.08)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, scale)
        m[:, 2] += rng.uniform(-max_shift, max_shift, 2) * (w, h)
        a = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a = a.reshape(img.shape)
        if flip and rng.random() < 0.5:
            a = a[:, ::-1]
        out[i] = a
    return out


def _batches(x, y, batch_size, rng, augment, flip):
    import keras

    class Augmented(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = rng.permutation(len(x))

        def __len__(self):
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            xb = augment_batch(x[idx], rng, flip) if augment else x[idx]
            return xb, y[idx]

        def on_epoch_end(self):
            self.order = rng.permutation(len(x))

    return Augmented()


def _progress_callback(epochs: int, desc: str, enabled: bool):
    import keras
    from tqdm.auto import tqdm

    class Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix(
                loss=f"{logs.get('loss', 0):.3f}", acc=f"{logs.get('accuracy', 0):.3f}",
                val_acc=f"{logs.get('val_accuracy', 0):.3f}",
            )
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return Bar()


def fit_model(model, train, val, cfg: TrainConfig, desc: str) -> dict[str, Any]:
    """Compile and fit with early stopping on val accuracy; best weights restored."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(cfg.seed)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience, restore_best_weights=True,
                                      mode="max"),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, cfg.patience // 2),
                                          min_lr=1e-5),
        _progress_callback(cfg.epochs, desc, cfg.progress),
    ]
    t0 = time.perf_counter()
    hist = model.fit(
        _batches(train.x, train.y, cfg.batch_size, rng, cfg.augment, cfg.flip),
        validation_data=(val.x, val.y) if len(val.y) else None,
        epochs=cfg.epochs, callbacks=callbacks, verbose=0,
    )
    h = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    best = int(np.argmax(h["val_accuracy"])) if "val_accuracy" in h else len(h["loss"]) - 1
    return {
        "epochs_run": len(h["loss"]), "best_epoch": best + 1, "seconds": round(time.perf_counter() - t0, 2),
        "val_accuracy": h.get("val_accuracy", [None])[best], "params": int(model.count_params()),
    }


def save_for_inference(model, path: Path) -> None:
    """Save weights and architecture only: the optimizer state would triple the file and is never used."""
    import keras

    clean = keras.Model.from_config(model.get_config())  # uncompiled: no optimizer slots
    clean.set_weights(model.get_weights())
    clean.save(path)


def predict_probs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Compiled, batched inference (model.predict's per-call overhead is not paid per image)."""
    out = [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def train(cfg: TrainConfig) -> Bundle:
    import keras

    from .models import build

    cfg = cfg.resolved()
    keras.utils.set_random_seed(cfg.seed)
    t_start = time.perf_counter()
    sp = data_mod.split(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    inp = InputSpec(
        height=cfg.input_size, width=cfg.input_size, channels=1 if cfg.grayscale else 3,
        color="GRAY" if cfg.grayscale else "RGB",
    )
    pp = PreprocessSpec(resize=cfg.resize, scale=1.0 / 255.0, mean=[0.0], std=[1.0])
    arrays = {
        part: data_mod.load_arrays(sp.part(part), inp, pp, desc=f"load {part}", progress=cfg.progress)
        for part in ("train", "val", "test")
    }
    skipped = [s for a in arrays.values() for s in a.skipped]
    if skipped:
        log.warning("skipped %d unreadable file(s), e.g. %s", len(skipped), skipped[0])
    tr, va, te = arrays["train"], arrays["val"], arrays["test"]
    if len(tr.y) == 0:
        raise data_mod.DataError(f"{cfg.data}: no readable training images")
    shape = (inp.height, inp.width, inp.channels)
    n = len(sp.labels)

    cloud = build(cfg.arch, shape, n, cfg.width)
    fit_cloud = fit_model(cloud, tr, va, cfg, f"train {cloud.name}")
    reports: dict[str, Any] = {"config": asdict(cfg), "skipped": {"count": len(skipped), "files": skipped[:50]},
                               "cloud": {"arch": cfg.arch, "width": cfg.width, **fit_cloud}}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        files: dict[str, Any] = {}
        save_for_inference(cloud, td / "cloud.keras")
        files["cloud.keras"] = td / "cloud.keras"
        models = {"cloud": ModelFile(file="cloud.keras", format="keras")}
        test = classification_summary(te.y, predict_probs(cloud, te.x).argmax(1), sp.labels)
        reports["cloud"]["test"] = test
        plot_confusion(test["confusion_matrix"], sp.labels, td / "train_confusion_cloud.png", "cloud model, test split")
        files["train_confusion_cloud.png"] = td / "train_confusion_cloud.png"
        if cfg.edge_arch:
            edge = build(cfg.edge_arch, shape, n, cfg.edge_width)
            fit_edge = fit_model(edge, tr, va, cfg, f"train {edge.name}")
            save_for_inference(edge, td / "edge_source.keras")
            files["edge_source.keras"] = td / "edge_source.keras"
            models["edge_source"] = ModelFile(file="edge_source.keras", format="keras")
            etest = classification_summary(te.y, predict_probs(edge, te.x).argmax(1), sp.labels)
            reports["edge_source"] = {"arch": cfg.edge_arch, "width": cfg.edge_width, **fit_edge, "test": etest}
            plot_confusion(etest["confusion_matrix"], sp.labels, td / "train_confusion_edge.png",
                           "edge float model, test split")
            files["train_confusion_edge.png"] = td / "train_confusion_edge.png"
        reports["seconds_total"] = round(time.perf_counter() - t_start, 2)
        manifest = Manifest(
            name=cfg.name, labels=sp.labels, input=inp, preprocess=pp, models=models, data=sp.info,
            reports={"train": reports},
        )
        bundle = write_bundle(cfg.out, manifest, files)
    log.debug("train report: %s", json.dumps(reports)[:2000])
    return bundle
