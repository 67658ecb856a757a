"""The training loop every `train` model goes through, optionally taught by a teacher model.

SGD with Nesterov momentum, a one-cycle schedule (linear warm-up, then cosine
to zero: Smith & Topin 2018, "Super-Convergence"; Loshchilov & Hutter 2017,
"SGDR"), label smoothing (Szegedy et al. 2016), L2 weight decay on kernels,
and early stopping on the validation split that restores the best weights.
A teacher turns it into knowledge distillation (Hinton, Vinyals & Dean 2015,
"Distilling the Knowledge in a Neural Network"): the loss mixes the labels
with the teacher's soft targets at temperature T, scaled by T^2.

The model passed in returns logits; the bundle's model adds the softmax.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .augment import AugmentSpec


@dataclass
class FitOptions:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate, reached at the end of the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup: float = 0.15  # fraction of all steps spent warming up
    patience: int | None = None  # epochs without a better validation accuracy before stopping; None: never
    temperature: float = 4.0  # distillation only
    soft_weight: float = 0.9  # distillation only: the soft targets' share of the loss
    seed: int = 0
    progress: bool = True
    desc: str = "train"


def learning_rate(step: int, total: int, opts: FitOptions) -> float:
    """Linear warm-up to ``opts.lr``, then half a cosine down to zero."""
    warm = max(1, int(total * opts.warmup))
    if step < warm:
        return opts.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.5 * opts.lr * (1.0 + math.cos(math.pi * min(1.0, t)))


def predict_logits(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    out = [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def _step_fn(model, optimizer, opts: FitOptions, num_classes: int, distil: bool):
    import tensorflow as tf

    kernels = [w for w in model.trainable_weights if "kernel" in w.path]
    t_scale = float(opts.temperature)

    @tf.function(reduce_retracing=True)
    def step(x, y, soft):
        target = tf.one_hot(y, num_classes) * (1.0 - opts.label_smoothing) + opts.label_smoothing / num_classes
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, logits))
            if distil:  # soft: the teacher's probabilities at temperature T
                kd = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(soft, logits / t_scale)) * t_scale**2
                loss = (1.0 - opts.soft_weight) * loss + opts.soft_weight * kd
            total = loss + 0.5 * opts.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])
        grads = tape.gradient(total, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=y.dtype), y), tf.float32))
        return loss, acc

    return step


def soft_targets(teacher_logits: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities at temperature T (Hinton et al. 2015)."""
    z = teacher_logits / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).astype(np.float32)


def _validate(model, val, hist: dict[str, list[float]], best: tuple, epoch: int) -> tuple:
    """Score the epoch on the validation split; returns the (accuracy, epoch, weights) best so far."""
    if val is None or not len(val[1]):
        return best
    va = float((predict_logits(model, val[0]).argmax(1) == val[1]).mean())
    hist["val_accuracy"].append(va)
    return (va, epoch + 1, model.get_weights()) if va >= best[0] else best


def fit(model, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, augment: AugmentSpec,
        opts: FitOptions, soft: np.ndarray | None = None) -> dict[str, Any]:
    """Train ``model`` (logits out) in place; returns what happened (epochs, best epoch, seconds, history).

    ``soft`` (N, classes), the teacher's probabilities at ``opts.temperature`` for
    each training image (its un-augmented view, averaged with the mirror image
    when the teacher flip-averages), turns on distillation.
    """
    import keras
    from tqdm.auto import tqdm

    n, num_classes = len(x), int(model.output_shape[-1])
    bs = max(1, min(opts.batch_size, n))
    steps = n // bs  # drop the ragged last batch: one shape to trace, no tiny batch for BatchNorm
    total = steps * opts.epochs
    optimizer = keras.optimizers.SGD(learning_rate=opts.lr, momentum=opts.momentum, nesterov=True)
    step_fn = _step_fn(model, optimizer, opts, num_classes, soft is not None)
    dummy = np.zeros((1, num_classes), np.float32)
    rng, y32 = np.random.default_rng(opts.seed), y.astype(np.int32)
    hist: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_accuracy": []}
    best = (-1.0, 0, None)  # (val accuracy, epoch, weights)
    t0, done = time.perf_counter(), 0
    bar = tqdm(total=total, desc=opts.desc, unit="step", disable=not opts.progress, leave=False)
    try:
        for epoch in range(opts.epochs):
            order = rng.permutation(n)
            losses, accs = [], []
            for i in range(steps):
                idx = order[i * bs : (i + 1) * bs]
                optimizer.learning_rate.assign(learning_rate(done, total, opts))
                loss, acc = step_fn(augment.apply(x[idx], rng), y32[idx], soft[idx] if soft is not None else dummy)
                losses.append(float(loss))
                accs.append(float(acc))
                done += 1
                bar.update(1)
            hist["loss"].append(float(np.mean(losses)))
            hist["accuracy"].append(float(np.mean(accs)))
            best = _validate(model, val, hist, best, epoch)
            bar.set_postfix(epoch=f"{epoch + 1}/{opts.epochs}", loss=f"{hist['loss'][-1]:.3f}",
                            acc=f"{hist['accuracy'][-1]:.3f}",
                            val_acc=f"{hist['val_accuracy'][-1]:.3f}" if hist["val_accuracy"] else "-")
            if opts.patience is not None and best[2] is not None and epoch + 1 - best[1] >= opts.patience:
                break
    finally:
        bar.close()
    stopped_early = len(hist["loss"]) < opts.epochs
    if stopped_early and best[2] is not None:
        model.set_weights(best[2])  # the schedule did not finish: keep the best epoch seen
    return _summary(model, hist, best, stopped_early, opts) | {
        "seconds": round(time.perf_counter() - t0, 2), "steps": done, "batch_size": bs}


def _summary(model, hist: dict[str, list[float]], best: tuple, stopped_early: bool, opts: FitOptions) -> dict[str, Any]:
    return {
        "epochs_run": len(hist["loss"]), "epochs_planned": opts.epochs, "stopped_early": stopped_early,
        "best_epoch": best[1] if stopped_early else len(hist["loss"]),
        "val_accuracy": (best[0] if stopped_early else hist["val_accuracy"][-1]) if hist["val_accuracy"] else None,
        "params": int(model.count_params()), "options": {k: v for k, v in asdict(opts).items() if k != "progress"},
        "history": {k: [round(v, 4) for v in vs] for k, vs in hist.items()},
    }
