"""`train --task detect`: a CenterNet detector bundle from COCO/YOLO data or the built-in ``shapes`` set.

The cloud model is the ``large`` detector (or ``small``); ``edge_model`` also
trains a small one for the device (big/little). Images are resized once, through
``edge_sdk.preprocess``, and held in memory as uint8; each batch is augmented
(random scale and shift, colour jitter; flips only if asked) and encoded into
CenterNet targets on the fly. Adam with a warm-up and cosine decay; the weights
with the best validation mAP (pycocotools) are kept.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_sdk.bundle import Bundle, DataInfo, Manifest, ModelFile, write_bundle
from edge_sdk.detection import Detections, DetectionSpec, decode, to_model, to_original
from edge_sdk.preprocess import InputSpec, PreprocessSpec, normalize, resize

from . import cocoeval, datasets
from .annotations import DetectionSet
from .model import CLOUD_SPEC, EDGE_SPEC, STRIDE, build_detector, training_model
from .targets import centernet_loss, encode

log = logging.getLogger(__name__)

SPECS = {"small": EDGE_SPEC, "large": CLOUD_SPEC}
ModelSize = Literal["small", "large"]


@dataclass
class DetectTrainConfig:
    data: str = "shapes"
    out: str = "bundles/shapes"
    name: str | None = None
    model: ModelSize = "large"
    edge_model: ModelSize | None = None  # also train this for the device (big/little)
    input_size: int = 160
    resize: str = "stretch"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    augment: bool = True
    flip: bool = False  # horizontal flips (off by default: a mirrored digit is not a digit)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    synth_counts: tuple[int, int, int] = (3000, 300, 500)  # built-in set: train, val, test images
    skip_bad: bool = False
    eval_every: int = 2
    checkpoint: str | None = None  # also save each new best model here (a long run interrupted keeps its best)
    init: str | None = None  # start the cloud detector from this .keras file's weights (continue a run)
    progress: bool = True


@dataclass
class Prepared:
    """A part's images resized to the model input (uint8) with boxes in model-input pixels."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]


def prepare(ds: DetectionSet, inp: InputSpec, pp: PreprocessSpec, progress: bool = False) -> Prepared:
    """Decode and resize every image once, through the shared preprocessing."""
    from tqdm.auto import tqdm

    hw = (inp.height, inp.width)
    imgs = np.empty((len(ds.records), inp.height, inp.width, 3), np.uint8)
    boxes = []
    for i, r in enumerate(tqdm(ds.records, desc=f"load {ds.source}", unit="img", disable=not progress, leave=False)):
        rgb = r.load()
        imgs[i] = resize(rgb, inp.height, inp.width, pp.resize)
        boxes.append(to_model(r.boxes, pp.resize, hw, rgb.shape[:2]))
    return Prepared(imgs, boxes, [r.classes for r in ds.records])


def augment(img: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator, flip: bool):
    """Random scale (0.75-1.25) and shift (up to 15%), colour jitter, optional flip; boxes follow.

    A box keeps its object only if at least 40% of it stays in the frame.
    """
    import cv2

    h, w = img.shape[:2]
    s = rng.uniform(0.75, 1.25)
    tx, ty = rng.uniform(-0.15, 0.15, 2) * (w, h) + (1 - s) * np.array([w, h]) / 2
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    fill = tuple(float(v) for v in rng.uniform(0, 255, 3))
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    b = boxes * s + np.array([tx, ty, tx, ty], np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    b = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], 1)
    kept = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 0.4 * np.maximum(area, 1e-6)
    b, c = b[kept], classes[kept]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
        b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)
    out = np.clip(out.astype(np.float32) * gain + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out), b.astype(np.float32), c


def _batches(data: Prepared, inp: InputSpec, pp: PreprocessSpec, num_classes: int, cfg: DetectTrainConfig):
    import keras

    rng = np.random.default_rng(cfg.seed)
    n = len(data.images)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = rng.permutation(n)

        def __len__(self):
            return math.ceil(n / cfg.batch_size)

        def __getitem__(self, i):
            idx = self.order[i * cfg.batch_size: (i + 1) * cfg.batch_size]
            xs, ys = [], []
            for j in idx:
                img, b, c = data.images[j], data.boxes[j], data.classes[j]
                if cfg.augment:
                    img, b, c = augment(img, b, c, rng, cfg.flip)
                xs.append(normalize(img, inp, pp))
                ys.append(encode(b, c, inp.height, inp.width, num_classes))
            return np.stack(xs), np.stack(ys)

        def on_epoch_end(self):
            self.order = rng.permutation(n)

    return Batches()


def predict_outputs(model, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """The detector's three outputs for a float32 batch, as numpy arrays."""
    outs: list[list[np.ndarray]] = [[], [], []]
    for i in range(0, len(x), batch_size):
        for k, y in enumerate(model(x[i: i + batch_size], training=False)):
            outs[k].append(np.asarray(y))
    return [np.concatenate(o) for o in outs]


def detect_batch(model, images: np.ndarray, inp: InputSpec, pp: PreprocessSpec,
                 spec: DetectionSpec) -> list[Detections]:
    """Resized uint8 images -> detections in model-input pixels, decoded exactly as the device does."""
    x = np.stack([normalize(im, inp, pp) for im in images])
    heat, size, offset = predict_outputs(model, x)
    return [decode(heat[i], size[i], offset[i], spec) for i in range(len(images))]


def in_original(dets: list[Detections], ds: DetectionSet, inp: InputSpec, pp: PreprocessSpec) -> list[Detections]:
    hw = (inp.height, inp.width)
    return [Detections(to_original(d.boxes, pp.resize, hw, (r.height, r.width)), d.scores, d.classes)
            for d, r in zip(dets, ds.records, strict=True)]


def _map_callback(model, val: Prepared, val_ds: DetectionSet, inp, pp, spec, cfg: DetectTrainConfig, desc: str):
    """Every ``eval_every`` epochs: validation mAP; the best weights are restored at the end."""
    import keras
    from tqdm.auto import tqdm

    gt = cocoeval.ground_truth_from(val_ds.records, val_ds.labels)

    class BestMap(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.best, self.best_weights, self.history = -1.0, None, []
            self.bar = tqdm(total=cfg.epochs, desc=desc, unit="epoch", disable=not cfg.progress)

        def on_epoch_end(self, epoch, logs=None):
            last = epoch + 1 == cfg.epochs
            post = {"loss": f"{(logs or {}).get('loss', 0):.3f}"}
            if len(val.images) and ((epoch + 1) % cfg.eval_every == 0 or last):
                s = cocoeval.score(gt, in_original(detect_batch(model, val.images, inp, pp, spec), val_ds, inp, pp))
                self.history.append({"epoch": epoch + 1, "val_map50": s.map50, "val_map": s.map})
                if s.map50 + s.map > self.best:
                    self.best, self.best_weights, self.best_epoch = s.map50 + s.map, model.get_weights(), epoch + 1
                    if cfg.checkpoint:
                        model.save(cfg.checkpoint)
                post.update(val_map50=f"{s.map50:.3f}", val_map=f"{s.map:.3f}")
            self.bar.set_postfix(post)
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()
            if self.best_weights is not None:
                model.set_weights(self.best_weights)

    return BestMap()


def fit_detector(model, train: Prepared, val: Prepared, val_ds: DetectionSet, inp, pp, spec: DetectionSpec,
                 cfg: DetectTrainConfig, num_classes: int) -> dict[str, Any]:
    import keras

    steps = math.ceil(len(train.images) / cfg.batch_size)
    warm = min(steps, steps * cfg.epochs // 4)
    lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate * 0.1, max(1, steps * cfg.epochs - warm), alpha=0.02,
                                                warmup_target=cfg.learning_rate, warmup_steps=warm)
    wrapper = training_model(model)
    wrapper.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=10.0), loss=centernet_loss(num_classes))
    best = _map_callback(model, val, val_ds, inp, pp, spec, cfg, f"train {model.name}")
    t0 = time.perf_counter()
    hist = wrapper.fit(_batches(train, inp, pp, num_classes, cfg), epochs=cfg.epochs, callbacks=[best], verbose=0)
    return {"epochs_run": len(hist.history["loss"]), "best_epoch": getattr(best, "best_epoch", None),
            "seconds": round(time.perf_counter() - t0, 2), "params": int(model.count_params()),
            "final_loss": float(hist.history["loss"][-1]), "val_history": best.history}


def start_from(model, path: str) -> None:
    """Load a saved detector's weights into ``model`` (the same architecture and classes), to continue training."""
    from ..models import load_safe

    src = load_safe(path, datasets.DataError, "the --init detector")
    try:
        model.set_weights(src.get_weights())
    except ValueError as e:
        raise datasets.DataError(f"{path}: its weights do not fit a {model.name} for these classes ({e})") from None


def save_detector(model, path: Path) -> None:
    """Inference weights and architecture only (no optimizer state)."""
    model.save(path)


def test_scores(model, test: Prepared, test_ds: DetectionSet, inp, pp, spec) -> dict[str, Any]:
    gt = cocoeval.ground_truth_from(test_ds.records, test_ds.labels)
    return cocoeval.score(gt, in_original(detect_batch(model, test.images, inp, pp, spec), test_ds, inp, pp)).as_dict()


def train_detector(cfg: DetectTrainConfig) -> Bundle:
    """Train (the cloud detector, and the edge one for big/little), score on the test split, write the bundle."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    t_start = time.perf_counter()
    parts = datasets.load_split(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                synth_counts=cfg.synth_counts, skip_bad=cfg.skip_bad, progress=cfg.progress)
    labels = parts.labels
    inp = InputSpec(height=cfg.input_size, width=cfg.input_size, channels=3, color="RGB")
    pp = PreprocessSpec(resize=cfg.resize, scale=1.0 / 255.0, mean=[0.0], std=[1.0])
    spec = DetectionSpec(stride=STRIDE)
    prep = {k: prepare(getattr(parts, k), inp, pp, cfg.progress) for k in ("train", "val", "test")}
    if len(prep["train"].images) == 0:
        raise datasets.DataError(f"{cfg.data}: no training images")
    reports: dict[str, Any] = {"config": asdict(cfg), "bad_annotations": parts.bad_report(), "counts": parts.counts()}
    roles = {"cloud": cfg.model} | ({"edge_source": cfg.edge_model} if cfg.edge_model else {})
    files: dict[str, Any] = {}
    models: dict[str, ModelFile] = {}
    with tempfile.TemporaryDirectory() as td:
        for role, size in roles.items():
            model = build_detector((inp.height, inp.width, 3), len(labels), SPECS[size])
            if role == "cloud" and cfg.init:
                start_from(model, cfg.init)
            fit = fit_detector(model, prep["train"], prep["val"], parts.val, inp, pp, spec, cfg, len(labels))
            fit["test"] = test_scores(model, prep["test"], parts.test, inp, pp, spec)
            reports[role] = {"model": size, "arch": model.name, **fit}
            fname = f"{role}.keras"
            save_detector(model, Path(td) / fname)
            files[fname] = Path(td) / fname
            models[role] = ModelFile(file=fname, format="keras")
        reports["seconds_total"] = round(time.perf_counter() - t_start, 2)
        manifest = Manifest(
            task="detect", name=cfg.name or Path(cfg.out).name, labels=labels, input=inp, preprocess=pp, models=models,
            detection=spec, data=DataInfo(source=cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                          test_fraction=cfg.test_fraction, counts=parts.counts()),
            reports={"train": reports},
        )
        return write_bundle(cfg.out, manifest, files)
