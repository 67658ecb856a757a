"""`hybrid-vision distill B --from DIR [--from DIR2] --out B2`: the edge model learns from the cloud's answers.

1. Read the collected samples (:mod:`quantize.distill_data`): the images the
   device sent to the cloud, its audits and its offline queue's late answers,
   or what the service stored (``serve --collect``); hold a fixed share out.
2. Fine-tune B's edge network on the rest, mixed with B's original training
   split, with :func:`quantize.fit.fit`, the one training loop: knowledge
   distillation (Hinton, Vinyals & Dean 2015) whose soft targets are the
   cloud's probabilities at temperature T for the collected images and the
   cloud model's for the original ones.
3. Write a candidate bundle (B's files, the new ``edge_source.keras``, the
   version plus one) and run the quantize pipeline on it: int8, the parity
   check, the routing calibration (:func:`quantize.pipeline.quantize_bundle`).
4. Compare the old and new int8 edge models on the held-out collected slice
   (agreement with the cloud's labels) and on B's test split (true labels).
5. Refuse a model that is worse on either (:class:`DistillRefusedError`, with
   the report), and with ``require_gain`` one that is no more accurate on the
   test split (a tie is not worth a fleet's download): nothing is written to ``--out``. Else write ``--out``
   atomically, the report in its manifest (``reports.distill``).

B itself is never written. The cloud model is B's, unchanged, so a service
restarted on B2 answers as before and serves the new edge model over the air.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import MANIFEST, Bundle, ModelFile, load_bundle, write_bundle
from edge_sdk.errors import HybridVisionError

from . import data as data_mod
from .augment import AugmentSpec
from .distill_data import Collected, load_collected, split_holdout, training_mix
from .errors import AccuracyDropError, DistillError, DistillRefusedError

log = logging.getLogger(__name__)

EDGE_SOURCE = "edge_source.keras"
LR_SCALE = 0.25  # fine-tuning peaks at this share of the recipe's learning rate
DEFAULT_LR = 0.01  # a bundle without a recipe (imported) or with the small-data one


@dataclass
class DistillConfig:
    """What to distil. ``lr``/``batch_size`` None: from B's training recipe."""

    bundle: str
    sources: list[str]
    out: str
    epochs: int = 8
    lr: float | None = None
    batch_size: int | None = None
    temperature: float = 4.0
    soft_weight: float = 0.9
    holdout: float = 0.2
    tolerance: float = 0.0  # points by which the new model may trail the old on either comparison
    require_gain: bool = False  # also refuse a model that is not more accurate than the old on the test split
    seed: int = 0
    num_calib: int = 300
    max_drop: float = 1.0
    target_gap: float = 0.5
    progress: bool = True


@dataclass
class DistillResult:
    bundle: Bundle
    report: dict[str, Any] = field(repr=False)


def distill(cfg: DistillConfig) -> DistillResult:
    """Run the five steps of the module docstring; the accepted bundle and its report.

    Raises:
        DistillError: the bundle, the collected samples or B's training data cannot be used.
        DistillRefusedError: the new model is worse than B's on the held-out slice or the test split, or
            with ``require_gain`` no better on the test split (or it loses accuracy to int8); nothing was written.
    """
    import keras

    from .train import configure_threads

    keras.utils.set_random_seed(cfg.seed)
    configure_threads()
    t0 = time.perf_counter()
    bundle = _source_bundle(cfg)
    collected = load_collected(cfg.sources, bundle, cfg.progress)
    to_train, held = split_holdout(collected, cfg.holdout)
    if not len(to_train) or not len(held):
        raise DistillError(f"{len(collected)} collected sample(s) leave {len(to_train)} to train on and "
                           f"{len(held)} to compare on; collect more")
    original = _original_data(bundle, cfg.progress)
    model, fit_report = fine_tune(bundle, original, to_train, cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.distill-", dir=out.parent) as td:
        candidate = _quantized_candidate(bundle, model, Path(td) / "candidate", cfg)
        report = _report(cfg, collected, to_train, held, original, fit_report, candidate)
        report["compare"] = compare(bundle, candidate, held, original["test"])
        report["seconds"] = round(time.perf_counter() - t0, 1)
        _decide(report, cfg.tolerance, cfg.require_gain)
        manifest = candidate.manifest.model_copy(deep=True)
        manifest.reports["distill"] = report
        files = {p.name: p for p in candidate.path.iterdir() if p.is_file() and p.name not in (MANIFEST, "labels.txt")}
        accepted = write_bundle(out, manifest, files)
    return DistillResult(accepted, report)


def _source_bundle(cfg: DistillConfig) -> Bundle:
    try:
        bundle = load_bundle(cfg.bundle)
    except HybridVisionError as e:
        raise DistillError(str(e)) from None
    if not bundle.has("edge"):
        raise DistillError(f"{cfg.bundle}: no int8 edge model to improve; run `hybrid-vision quantize` on it first")
    if Path(cfg.out).resolve() == bundle.path.resolve():
        raise DistillError("--out must be a new bundle directory: distill never writes over the bundle it starts from")
    if bundle.manifest.data is None:
        raise DistillError(f"{cfg.bundle}: the bundle records no training data (imported?), which distill mixes in "
                           "so that the model does not forget")
    return bundle


def _original_data(bundle: Bundle, progress: bool) -> dict[str, data_mod.Arrays]:
    """B's own train, val and test splits as model tensors."""
    assert bundle.manifest.data is not None
    man = bundle.manifest
    try:
        sp = data_mod.split_from_info(man.data)
    except data_mod.DataError as e:
        raise DistillError(f"{bundle.path}: cannot rebuild the training data split ({e})") from None
    if sp.labels != man.labels:
        raise DistillError(f"the training data's classes {sp.labels} are not the bundle's {man.labels}")
    return {part: data_mod.load_arrays(sp.part(part), man.input, man.preprocess, desc=f"load {part}",
                                       progress=progress) for part in ("train", "val", "test")}


def fine_tune(bundle: Bundle, original: dict[str, data_mod.Arrays], collected: Collected, cfg: DistillConfig):
    """B's edge network (probabilities out), fine-tuned in place through its logits; and fit's report."""
    from .fit import FitOptions, fit
    from .models import load_safe
    from .pipeline import edge_role
    from .train import teacher_soft_targets

    model = load_safe(bundle.model_path(edge_role(bundle)), DistillError, "the edge network")
    teacher = load_safe(bundle.model_path("cloud"), DistillError, "the cloud model")
    mix = training_mix(original["train"], teacher_soft_targets(teacher, original["train"].x, cfg.temperature),
                       collected, cfg.temperature)
    lr, batch_size, augment = _recipe(bundle)
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size or batch_size, lr=cfg.lr or lr,
                      temperature=cfg.temperature, soft_weight=cfg.soft_weight, seed=cfg.seed, progress=cfg.progress,
                      desc="distill edge")
    val = original["val"]
    summary = fit(logits_of(model), mix.x, mix.y, (val.x, val.y) if len(val.y) else None, augment, opts, soft=mix.soft)
    summary.pop("history", None)
    return model, {**summary, "images": {"original": mix.n_original, "collected": mix.n_collected}}


def logits_of(model):
    """The logits inside a bundle's model (everything before its final Softmax), sharing its weights."""
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Softmax):
        raise DistillError(f"the edge network ends in {type(last).__name__}, not a Softmax layer; distill fine-tunes "
                           "the logits before it")
    return keras.Model(model.input, last.input, name=f"{model.name}_logits")


def _recipe(bundle: Bundle) -> tuple[float, int, AugmentSpec]:
    """(peak learning rate, batch size, augmentation) for fine-tuning, from B's training recipe."""
    rec = bundle.manifest.reports.get("train", {}).get("recipe")
    if not rec:
        return DEFAULT_LR, 64, AugmentSpec(policy="none", flip=False)
    lr = float(rec.get("lr") or 0.0) * LR_SCALE
    return lr or DEFAULT_LR, int(rec.get("batch_size") or 64), AugmentSpec(**rec["augment"])


def _quantized_candidate(bundle: Bundle, model, dest: Path, cfg: DistillConfig) -> Bundle:
    """B's files with the new edge network and the next version, through the quantize pipeline."""
    from .pipeline import quantize_bundle
    from .train import save_for_inference

    src = dest.parent / EDGE_SOURCE
    save_for_inference(model, src)
    man = bundle.manifest.model_copy(deep=True)
    man.models["edge_source"] = ModelFile(file=EDGE_SOURCE, format="keras")
    man.version = next_version(man.version)
    man.reports.pop("quantize", None)
    files: dict[str, str | Path | bytes] = {
        p.name: p for p in bundle.path.iterdir() if p.is_file() and p.name not in (MANIFEST, "labels.txt")}
    files[EDGE_SOURCE] = src
    write_bundle(dest, man, files)
    try:
        quantize_bundle(dest, num_calib=cfg.num_calib, max_drop=cfg.max_drop, target_gap=cfg.target_gap,
                        progress=cfg.progress)
    except AccuracyDropError as e:
        raise DistillRefusedError(f"the distilled model was refused: {e}", {"quantize": e.report}) from e
    return load_bundle(dest)


def next_version(version: str) -> str:
    """"3" -> "4"; anything else gets ".1" appended."""
    return str(int(version) + 1) if version.isdigit() else f"{version}.1"


def compare(old: Bundle, new: Bundle, held: Collected, test: data_mod.Arrays) -> dict[str, Any]:
    """Old and new int8 edge models on the held-out collected slice (against the cloud's labels) and the test split."""
    from .tflite_eval import run_tflite

    def accuracy(bundle: Bundle, x: np.ndarray, y: np.ndarray) -> float:
        return float((run_tflite(bundle.model_path("edge").read_bytes(), x).argmax(1) == y).mean())

    out: dict[str, Any] = {}
    for part, (x, y, ref) in {"holdout": (held.x, held.labels, "the cloud's labels"),
                              "test": (test.x, test.y, "true labels")}.items():
        out[part] = {"n": int(len(y)), "reference": ref, "old": accuracy(old, x, y), "new": accuracy(new, x, y)}
    return out


def _decide(report: dict[str, Any], tolerance: float, require_gain: bool) -> None:
    """Refuse (raise) when the new model trails the old by more than ``tolerance`` points on either comparison, or,
    with ``require_gain``, when it is not more accurate than the old on the test split."""
    why = [f"{part}: {100 * c['new']:.2f}% < {100 * c['old']:.2f}% (n={c['n']}, against {c['reference']})"
           for part, c in report["compare"].items() if 100 * (c["new"] - c["old"]) < -tolerance]
    test, worse = report["compare"]["test"], bool(why)
    if require_gain and not worse and test["new"] <= test["old"]:
        why.append(f"test: {100 * test['new']:.2f}% is no gain on {100 * test['old']:.2f}% (n={test['n']}, "
                   "--require-gain)")
    report["accepted"] = not why
    report["refused_because"] = why
    if why:
        verdict = "worse" if worse else "no better"
        raise DistillRefusedError(f"the distilled edge model is {verdict} than the bundle's: " + "; ".join(why)
                                  + "; nothing was written", report)


def _report(cfg: DistillConfig, collected: Collected, to_train: Collected, held: Collected,
            original: dict[str, data_mod.Arrays], fit_report: dict[str, Any], candidate: Bundle) -> dict[str, Any]:
    q = candidate.manifest.reports.get("quantize", {})
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "collected": {"total": len(collected), "by_kind": collected.by_kind(), "train": len(to_train),
                      "holdout": len(held), "skipped": len(collected.skipped)},
        "original": {part: int(len(a.y)) for part, a in original.items()},
        "fit": fit_report,
        "quantize": {"test": q.get("test", {}).get("accuracy"), "calibration": q.get("calibration")},
        "version": candidate.manifest.version,
    }
