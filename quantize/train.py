"""Train a bundle: a recipe chosen from the data, a cloud model, and an edge model that fits a size budget.

`train` profiles the data (:mod:`quantize.recipe`: input size, colour, data
size), trains the cloud model with :func:`quantize.fit.fit`, scores a
scikit-learn baseline on the same split (:mod:`quantize.baseline`), and picks
the edge model: the cloud model itself when its int8 file fits
``edge_max_kb``, else the widest little model that fits (:mod:`quantize.budget`),
distilled from the cloud model (Hinton et al. 2015).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, Manifest, ModelFile, write_bundle
from edge_sdk.preprocess import InputSpec, PreprocessSpec

from . import data as data_mod
from . import recipe as recipe_mod
from .metrics import classification_summary, plot_confusion

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """What to train. ``None`` means: chosen from the data (see :mod:`quantize.recipe`)."""

    data: str = "digits"
    out: str = "bundles/digits"
    name: str | None = None
    arch: str | None = None
    width: float | None = None
    edge_arch: str | None = None  # None: the cloud model if its int8 fits edge_max_kb, else the budgeted resnet_edge
    edge_width: float | None = None  # None: the widest that fits edge_max_kb
    edge_max_kb: float = 256.0
    distill: bool = True
    temperature: float = 4.0
    input_size: int | None = None
    grayscale: bool | None = None
    resize: str = "stretch"
    epochs: int | None = None
    edge_epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    augment: bool = True
    flip: bool | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    baseline: bool = True
    progress: bool = True

    def resolved_name(self) -> str:
        return self.name or Path(self.out).name


def _say(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)
    else:
        log.info(msg)


def pick_recipe(cfg: TrainConfig, sp: data_mod.Split) -> recipe_mod.Recipe:
    prof = recipe_mod.profile(sp.train, len(sp.labels), seed=cfg.seed)
    digits = cfg.data == "digits"
    rec = recipe_mod.choose(
        prof, input_size=cfg.input_size or (data_mod.DIGITS_SIZE if digits else None),
        grayscale=True if digits and cfg.grayscale is None else cfg.grayscale, flip=False if digits and cfg.flip is None
        else cfg.flip, arch=cfg.arch, width=cfg.width, epochs=cfg.epochs, batch_size=cfg.batch_size,
        patience=cfg.patience, augment=cfg.augment,
    )
    if cfg.learning_rate is not None:
        rec.lr = cfg.learning_rate
    return rec


def _fit_options(cfg: TrainConfig, rec: recipe_mod.Recipe, desc: str, epochs: int | None = None):
    from .fit import FitOptions

    return FitOptions(epochs=epochs or rec.epochs, batch_size=rec.batch_size, lr=rec.lr, patience=rec.patience,
                      temperature=cfg.temperature, seed=cfg.seed, progress=cfg.progress, desc=desc)


def train(cfg: TrainConfig) -> Bundle:
    import keras

    from .models import with_softmax

    keras.utils.set_random_seed(cfg.seed)
    configure_threads()
    t_start = time.perf_counter()
    sp = data_mod.split(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    rec = pick_recipe(cfg, sp)
    for why in rec.reasons:
        _say(cfg, f"recipe: {why}")
    inp = InputSpec(height=rec.input_size, width=rec.input_size, channels=1 if rec.grayscale else 3,
                    color="GRAY" if rec.grayscale else "RGB")
    pp = PreprocessSpec(resize=cfg.resize, scale=1.0 / 255.0, mean=[0.0], std=[1.0])
    tr, va, te, skipped = load_split(cfg, sp, inp, pp)
    reports: dict[str, Any] = {"config": asdict(cfg), "recipe": rec.as_dict(),
                               "skipped": {"count": len(skipped), "files": skipped[:50]}}
    if cfg.baseline:
        reports["baseline"] = run_baseline(cfg, tr, va, te)
    logits, flip_avg = train_cloud(cfg, rec, tr, va, len(sp.labels), reports)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        models = {"cloud": ModelFile(file="cloud.keras", format="keras")}
        files = save_model(with_softmax(logits, flip_average=flip_avg), "cloud", te, sp.labels, td, reports)
        reports["edge_plan"] = plan_edge(cfg, logits, (inp.height, inp.width, inp.channels), len(sp.labels))
        if reports["edge_plan"]["role"] == "edge_source":
            little = train_edge(cfg, rec, with_softmax(logits, flip_average=flip_avg), tr, va, reports)
            files.update(save_model(with_softmax(little), "edge_source", te, sp.labels, td, reports))
            models["edge_source"] = ModelFile(file="edge_source.keras", format="keras")
        if cfg.baseline:
            warn_if_baseline_wins(cfg, reports)
        reports["seconds_total"] = round(time.perf_counter() - t_start, 2)
        manifest = Manifest(name=cfg.resolved_name(), labels=sp.labels, input=inp, preprocess=pp, models=models,
                            data=sp.info, reports={"train": reports})
        bundle = write_bundle(cfg.out, manifest, files)
    log.debug("train report: %s", json.dumps(reports)[:2000])
    return bundle


def load_split(cfg: TrainConfig, sp: data_mod.Split, inp: InputSpec, pp: PreprocessSpec):
    """train, val and test arrays through the shared preprocessing, and the files that could not be read."""
    arrays = {part: data_mod.load_arrays(sp.part(part), inp, pp, desc=f"load {part}", progress=cfg.progress)
              for part in ("train", "val", "test")}
    skipped = [s for a in arrays.values() for s in a.skipped]
    if skipped:
        log.warning("skipped %d unreadable file(s), e.g. %s", len(skipped), skipped[0])
    if len(arrays["train"].y) == 0:
        raise data_mod.DataError(f"{cfg.data}: no readable training images")
    return arrays["train"], arrays["val"], arrays["test"], skipped


def _val(va) -> tuple[np.ndarray, np.ndarray] | None:
    return (va.x, va.y) if len(va.y) else None


def train_cloud(cfg: TrainConfig, rec, tr, va, n: int, reports: dict[str, Any]):
    """The cloud network (logits out) and whether its bundle model averages the image and its mirror."""
    from .fit import fit
    from .models import build

    if rec.arch == "kmeans":
        logits, fit_cloud = fit_small(tr, _val(va), n, rec, cfg)
    else:
        logits = build(rec.arch, tr.x.shape[1:], n, rec.width)
        fit_cloud = fit(logits, tr.x, tr.y, _val(va), rec.augment, _fit_options(cfg, rec, f"train cloud {logits.name}"))
    flip_avg = rec.augment.policy == "photo" and rec.augment.flip and rec.arch != "kmeans"
    reports["cloud"] = {"arch": rec.arch, "width": rec.width, "flip_average": flip_avg, **fit_cloud}
    return logits, flip_avg


def train_edge(cfg: TrainConfig, rec, teacher, tr, va, reports: dict[str, Any]):
    """The little network the plan chose, distilled from ``teacher`` unless --no-distill (logits out)."""
    from .fit import fit
    from .models import build

    plan = reports["edge_plan"]
    soft = teacher_soft_targets(teacher, tr.x, cfg.temperature) if cfg.distill else None
    little = build(plan["arch"], tr.x.shape[1:], int(teacher.output_shape[-1]), plan["width"])
    opts = _fit_options(cfg, rec, f"train edge {little.name}", cfg.edge_epochs or rec.edge_epochs)
    fit_edge = fit(little, tr.x, tr.y, _val(va), rec.augment, opts, soft=soft)
    reports["edge_source"] = {"arch": plan["arch"], "width": plan["width"], "distilled": soft is not None,
                              "temperature": cfg.temperature if soft is not None else None, **fit_edge}
    return little


def fit_small(tr, val, n: int, rec, cfg: TrainConfig):
    """The small-data model (k-means features + logistic regression); returns (logits model, report)."""
    from .features import FeatureOptions, train_features

    _say(cfg, "train cloud: k-means patch features (no labels) + logistic-regression head")
    model, rep = train_features(tr.x, tr.y, n, FeatureOptions(flip=rec.augment.flip, seed=cfg.seed))
    va = None
    if val is not None:
        from .fit import predict_logits

        va = float((predict_logits(model, val[0]).argmax(1) == val[1]).mean())
    return model, {**rep, "epochs_run": 0, "best_epoch": 0, "val_accuracy": va}


def configure_threads() -> None:
    """One inter-op thread and every core inside an op: what a small CPU does best (ignored once TF has started)."""
    import os

    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
    except RuntimeError:
        pass


def run_baseline(cfg: TrainConfig, tr, va, te) -> dict[str, Any]:
    from .baseline import fit_baseline

    _model, res = fit_baseline(tr.x, tr.y, (va.x, va.y), (te.x, te.y), seed=cfg.seed)
    acc = "n/a" if res.test_accuracy is None else f"{100 * res.test_accuracy:.2f}%"
    _say(cfg, f"baseline: {res.method} ({res.components} components): test accuracy {acc}")
    return res.as_dict()


def warn_if_baseline_wins(cfg: TrainConfig, reports: dict[str, Any]) -> None:
    from .baseline import BaselineResult, compare

    base = BaselineResult(**reports["baseline"])
    role = "edge_source" if "edge_source" in reports else "cloud"
    warnings = [f"{r} model: {w}" for r in dict.fromkeys(("cloud", role))
                if (w := compare(reports[r]["test"]["accuracy"], base))]
    reports["baseline"]["warnings"] = warnings
    for w in warnings:
        log.warning("%s", w)


def plan_edge(cfg: TrainConfig, cloud_logits, shape, n: int) -> dict[str, Any]:
    """Which network goes to the device: the cloud model when it fits the budget, else a budgeted little one."""
    from .budget import int8_size, widest_within

    max_bytes = int(cfg.edge_max_kb * 1024)
    if cfg.edge_arch is None:
        size = int8_size(cloud_logits)
        if size <= max_bytes:
            return {"role": "cloud", "reason": f"the cloud model's int8 file ({size / 1024:.1f} KB) fits "
                    f"--edge-max-kb {cfg.edge_max_kb:g}", "int8_bytes": size}
    arch = cfg.edge_arch or "resnet_edge"
    if cfg.edge_width is not None:
        return {"role": "edge_source", "arch": arch, "width": cfg.edge_width, "reason": "--edge-width given"}
    fit_ = widest_within(arch, shape, n, max_bytes)
    msg = (f"edge model: {arch} at width {fit_.width:g} ({fit_.params:,} params), the widest whose int8 file "
           f"({fit_.int8_bytes / 1024:.1f} KB) fits --edge-max-kb {cfg.edge_max_kb:g}")
    _say(cfg, msg)
    return {"role": "edge_source", "arch": arch, "width": fit_.width, "int8_bytes_estimate": fit_.int8_bytes,
            "reason": msg}


def teacher_soft_targets(teacher, x: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities at temperature T for each training image (from its logits)."""
    from .fit import soft_targets

    probs = predict_probs(teacher, x)
    return soft_targets(np.log(np.clip(probs, 1e-12, 1.0)), temperature)


def save_model(model, role: str, te, labels: list[str], td: Path, reports: dict[str, Any]) -> dict[str, Path]:
    """Save ``model`` as ``<role>.keras``, score it on the test split, plot its confusion matrix."""
    path = td / f"{role}.keras"
    save_for_inference(model, path)
    test = classification_summary(te.y, predict_probs(model, te.x).argmax(1), labels)
    reports[role]["test"] = test
    png = td / f"train_confusion_{'cloud' if role == 'cloud' else 'edge'}.png"
    plot_confusion(test["confusion_matrix"], labels, png, f"{role} model, test split")
    return {path.name: path, png.name: png}


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


