"""The routing, out-of-distribution and upload sections of benchmarks/photo_bench.py (issue 13).

Each function measures one thing on real data and returns one JSON-able dict:

* :func:`upload_section`: for each ``upload=`` choice, the bytes the SDK sends per image and the cloud
  model's accuracy on what arrives, against the cloud on the original files;
* :func:`routing_section`: on the test split, the ECE before and after the bundle's temperature, for
  every routing metric the offload needed to come within the target of the cloud, the oracle's, and the
  calibrated threshold's validation estimate and bound beside its test gap and offload; plus the plot;
* :func:`ood_section`: one data set shown to a bundle trained on the other: the AUROC of the bundle's
  out-of-distribution score, and how many outliers the device would still answer as confident.

The edge model runs through the edge SDK's own :class:`edge_sdk.runtime.LocalModel` and
:mod:`edge_sdk.scores` (what the device runs); the cloud model runs in this process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _cloud_call(bundle):
    from quantize.eval_passes import compiled_keras

    inp = bundle.manifest.input
    return compiled_keras(bundle.model_path("cloud"), (inp.height, inp.width, inp.channels))


def _batched(call, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([call(x[i:i + batch]) for i in range(0, len(x), batch)])


def _sent_bytes(item_bytes: Sequence[bytes]) -> float:
    return float(np.mean([len(b) for b in item_bytes]))


def upload_section(bundle_path: str | Path, items: Sequence[tuple[Path, int]], progress: bool = False
                   ) -> dict[str, Any]:
    """Cloud accuracy and bytes per image for each ``upload=`` choice, against the cloud on the original files.

    What the server decodes is rebuilt from the very request the SDK builds (edge_sdk.upload.build_request),
    then run through the one preprocessing path, as cloud.inputs does.
    """
    from tqdm.auto import tqdm

    from edge_sdk.bundle import load_bundle
    from edge_sdk.preprocess import load_image, normalize, preprocess, resize
    from edge_sdk.upload import UPLOADS, Staged, build_request

    bundle = load_bundle(bundle_path)
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    y = np.array([c for _, c in items])
    call = _cloud_call(bundle)
    xs: dict[str, list[np.ndarray]] = {u: [] for u in ("files", *UPLOADS)}
    sent: dict[str, list[int]] = {u: [] for u in UPLOADS}
    binary: dict[str, list[int]] = {u: [] for u in UPLOADS}
    for path, _ in tqdm(items, desc="uploads", disable=not progress, leave=False):
        rgb = load_image(path)
        staged = Staged(path, rgb, resize(rgb, inp.height, inp.width, pp.resize))
        xs["files"].append(preprocess(path, inp, pp))
        for u in UPLOADS:
            payload = build_request([staged], u, inp.channels)
            sent[u].append(len(payload.encode(False).body))
            binary[u].append(len(payload.encode(True).body))
            values = payload.inputs[0].values
            if isinstance(values, tuple):  # encoded images: what the server decodes
                xs[u].append(preprocess(values[0], inp, pp))
            else:
                pixels = np.asarray(values, np.uint8)[0]
                xs[u].append(normalize(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels, inp, pp))
    acc = {u: float((_batched(call, np.stack(x)).argmax(1) == y).mean()) for u, x in xs.items()}
    base = acc.pop("files")
    return {
        "n": int(len(y)), "input": f"{inp.height}x{inp.width}x{inp.channels}",
        "cloud_accuracy_original_files": base,
        "file_bytes_mean": float(np.mean([Path(p).stat().st_size for p, _ in items])),
        "formats": {u: {"cloud_accuracy": acc[u], "cost_points": 100 * (base - acc[u]),
                        "request_bytes_json_mean": float(np.mean(sent[u])),
                        "request_bytes_binary_mean": float(np.mean(binary[u]))} for u in UPLOADS},
    }


# --- the edge as the device runs it ------------------------------------------------------------------


def edge_outputs(bundle, items: Sequence[tuple[Path, int]], progress: bool = False) -> dict[str, np.ndarray]:
    """Every named output of the bundle's int8 model for each image, through the SDK's LocalModel."""
    from tqdm.auto import tqdm

    from edge_sdk.preprocess import preprocess
    from edge_sdk.runtime import LocalModel

    model = LocalModel.from_bundle(bundle)
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    rows = [model.predict_outputs(model.quantize_input(preprocess(p, inp, pp)))
            for p, _ in tqdm(items, desc="edge", disable=not progress, leave=False)]
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    out["_prob_floor"] = np.array(model.output_quant.scale / 2)
    return out


def _scores(bundle, outs: dict[str, np.ndarray], metric: str) -> np.ndarray:
    from edge_sdk.scores import DeferralModel, metric_scores

    r = bundle.manifest.routing
    deferral = DeferralModel(r.deferral) if r.deferral is not None else None
    return metric_scores(outs, metric, temperature=r.temperature, deferral=deferral,
                         prob_floor=float(outs["_prob_floor"]))


def _confident(bundle, outs: dict[str, np.ndarray], threshold: float | None = None) -> np.ndarray:
    """Which images the bundle's routing keeps on the edge (at its threshold, or at ``threshold``)."""
    from edge_sdk.scores import LOWER_IS_CONFIDENT

    r = bundle.manifest.routing
    t = r.threshold if threshold is None else threshold
    s = _scores(bundle, outs, r.metric)
    return s <= t if r.metric in LOWER_IS_CONFIDENT else s >= t


def _ood_flags(bundle, outs: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
    from edge_sdk.scores import OODScorer

    ood = bundle.manifest.routing.ood
    if ood is None:
        return None, np.zeros(len(outs["probabilities"]), bool)
    scorer = OODScorer(ood)
    s = scorer(outs)
    return s, np.asarray(scorer.is_out(s), bool)


# --- routing on the test split --------------------------------------------------------------------------


def routing_section(bundle_path: str | Path, items: Sequence[tuple[Path, int]], *, target_gap: float = 0.5,
                    plot: Path | None = None, guarantee_repeats: int = 0, progress: bool = False) -> dict[str, Any]:
    """ECE, the offload each metric needs to come within ``target_gap`` points of the cloud, the oracle's, and the
    calibrated threshold's validation estimate and bound against its test gap and offload; with
    ``guarantee_repeats``, the guarantee checked on held-out halves and small calibration sets
    (benchmarks/photo_guarantee.py)."""
    from edge_sdk.bundle import load_bundle
    from edge_sdk.preprocess import preprocess
    from edge_sdk.scores import LOWER_IS_CONFIDENT, ROUTING_METRICS
    from quantize.routing_calibration import offload_to_reach, oracle_curve, tradeoff_curve

    bundle = load_bundle(bundle_path)
    r = bundle.manifest.routing
    y = np.array([c for _, c in items])
    outs = edge_outputs(bundle, items, progress)
    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    cloud = _batched(_cloud_call(bundle), np.stack([preprocess(p, inp, pp) for p, _ in items]))
    e_ok, c_ok = outs["probabilities"].argmax(1) == y, cloud.argmax(1) == y
    goal = c_ok.mean() - target_gap / 100
    metrics = [m for m in ROUTING_METRICS if m != "deferral" or r.deferral is not None]
    curves = {m: tradeoff_curve(_scores(bundle, outs, m), m in LOWER_IS_CONFIDENT, e_ok, c_ok, len(y) + 1)
              for m in metrics}
    curves["oracle"] = oracle_curve(e_ok, c_ok, len(y) + 1)
    kept = _confident(bundle, outs)
    ood_score, flagged = _ood_flags(bundle, outs)
    hybrid = float(np.where(kept, e_ok, c_ok).mean())
    cal = r.calibration or {}
    section = {
        "n": int(len(y)), "edge_accuracy": float(e_ok.mean()), "cloud_accuracy": float(c_ok.mean()),
        "target_gap_points": target_gap,
        "ece": _ece(outs, y, r.temperature),
        "offload_to_target": {m: offload_to_reach(c, goal) for m, c in curves.items()},
        "calibrated": {
            "metric": r.metric, "threshold": r.threshold, "delta": cal.get("delta"), "n_val": cal.get("n"),
            "val_estimate_points": cal.get("estimate_points"), "val_bound_points": cal.get("bound_points"),
            "val_offload": cal.get("offload"), "too_small": cal.get("too_small"),
            "test_gap_points": 100 * (float(c_ok.mean()) - hybrid), "test_offload": float(1 - kept.mean()),
            "test_offload_with_ood": float(1 - (kept & ~flagged).mean()),
        },
    }
    section["offload_to_target"]["best_metric"] = min((v, m) for m, v in section["offload_to_target"].items()
                                                      if m != "oracle")[1]
    if plot is not None:
        section["plot"] = str(_plot(curves, section, plot))
    if guarantee_repeats > 0:
        section["guarantee"] = _guarantee(outs, cloud, y, target_gap, guarantee_repeats, plot, progress)
    return section


def _guarantee(outs: dict[str, np.ndarray], cloud: np.ndarray, y: np.ndarray, target_gap: float, repeats: int,
               plot: Path | None, progress: bool) -> dict[str, Any]:
    from photo_guarantee import held_out_check, plot_guarantee, small_calibration

    check = held_out_check(outs, cloud, y, target_gap=target_gap, repeats=repeats, progress=progress)
    small = small_calibration(outs, cloud, y, target_gap=target_gap, progress=progress)
    out = {"held_out_halves": check, "small_calibration": small}
    if plot is not None:
        out["plot"] = str(plot_guarantee(check, small, plot.with_name(plot.stem + "_guarantee.png")))
    return out


def _ece(outs: dict[str, np.ndarray], y: np.ndarray, temperature: float) -> dict[str, float]:
    """The ECE of the int8 model's own probabilities, and after the bundle's temperature."""
    from edge_sdk.scores import calibrated_probs
    from quantize.routing_fit import expected_calibration_error

    after = calibrated_probs(outs, temperature, float(outs["_prob_floor"]))
    return {"before": expected_calibration_error(outs["probabilities"], y),
            "after": expected_calibration_error(after, y), "temperature": temperature}


def _plot(curves: dict[str, dict[str, list[float]]], section: dict[str, Any], path: Path) -> Path:
    from quantize.routing_plot import Marked, plot_routing

    c = section["calibrated"]
    thin = {m: {k: v[:: max(1, len(v) // 400)] + v[-1:] for k, v in cv.items()} for m, cv in curves.items()}
    mark = Marked(c["test_offload"], section["cloud_accuracy"] - c["test_gap_points"] / 100,
                  f"calibrated ({c['metric']}): {100 * c['test_offload']:.1f}% offload, test gap "
                  f"{c['test_gap_points']:.2f} pt (bound {c['val_bound_points']:.2f})")
    return plot_routing(thin, path, cloud_accuracy=section["cloud_accuracy"], edge_accuracy=section["edge_accuracy"],
                        target_gap=section["target_gap_points"], marks=[mark],
                        title=f"CIFAR-10 photos, test split (n={section['n']}): accuracy vs offload")


# --- out of distribution ----------------------------------------------------------------------------------


def ood_section(bundle_path: str | Path, in_items: Sequence[tuple[Path, int]], out_items: Sequence[tuple[Path, int]],
                progress: bool = False) -> dict[str, Any]:
    """The bundle's out-of-distribution score with ``in_items`` (its own test data) against ``out_items``
    (another data set): AUROC, outliers caught, outliers still answered as confident on the edge, and the
    extra offload it costs on in-distribution images; the parameter-free scores beside it for comparison."""
    from edge_sdk.bundle import load_bundle
    from edge_sdk.scores import edge_logits, energy
    from quantize.routing_fit import auroc

    bundle = load_bundle(bundle_path)
    ins, outs = edge_outputs(bundle, in_items, progress), edge_outputs(bundle, out_items, progress)
    s_in, f_in = _ood_flags(bundle, ins)
    s_out, f_out = _ood_flags(bundle, outs)
    conf_in, conf_out = _confident(bundle, ins), _confident(bundle, outs)
    point = ((bundle.manifest.routing.calibration or {}).get("point_estimate") or {}).get("threshold")
    point_out = _confident(bundle, outs, point) if point is not None else conf_out
    alt = {"energy": lambda o: energy(edge_logits(o)), "max_logit": lambda o: -edge_logits(o).max(1),
           "max_prob": lambda o: -o["probabilities"].max(1)}
    ood = bundle.manifest.routing.ood
    return {
        "n_in": len(in_items), "n_out": len(out_items),
        "score": None if ood is None else {"kind": ood.kind, "outputs": [c.output for c in ood.components]},
        "auroc": None if s_in is None else auroc(s_in, s_out),
        "outliers_flagged": float(f_out.mean()),
        "outliers_confident_on_edge": float((conf_out & ~f_out).mean()),
        "outliers_confident_on_edge_without_ood": float(conf_out.mean()),
        # when the certified threshold offloads everything (a small calibration set), the same at the point
        # estimate's threshold says what the score does for a bundle that keeps images on the edge
        "at_point_estimate_threshold": {"outliers_confident_on_edge": float((point_out & ~f_out).mean()),
                                        "without_ood": float(point_out.mean())},
        "extra_offload_points_in_distribution": 100 * float((conf_in & f_in).mean()),
        "auroc_other_scores": {k: auroc(f(ins), f(outs)) for k, f in alt.items()},
    }


# --- the whole routing part of the bench ----------------------------------------------------------------------


def digits_bundle(out: Path, progress: bool = False) -> Path:
    """A quantized bundle trained on the built-in digits (the other data set of the OOD pair), made once in ``out``."""
    from edge_sdk.bundle import load_bundle
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    if not out.exists():
        train(TrainConfig(data="digits", out=str(out), progress=progress))
    if not load_bundle(out).has("edge"):
        quantize_bundle(out, progress=progress)
    return out


def routing_sections(bundle: Path, test_dir: Path, digits: Path, plot: Path, progress: bool = False,
                     guarantee_repeats: int = 40) -> dict[str, Any]:
    """The routing, OOD and upload sections for a CIFAR bundle, with ``digits`` as the other bundle of the pair."""
    from edge_sdk.bundle import load_bundle
    from quantize import data as data_mod

    _, test_items = data_mod.list_folder(test_dir)
    digits_split = data_mod.split_from_info(load_bundle(digits).manifest.data)  # type: ignore[arg-type]
    _, all_digits = data_mod.list_folder(data_mod.resolve("digits"))
    photos_sample = data_mod.stratified_sample(test_items, 1000)
    return {
        "routing": routing_section(bundle, test_items, plot=plot, guarantee_repeats=guarantee_repeats,
                                   progress=progress),
        "ood": {
            "digits_shown_to_the_photo_bundle": ood_section(bundle, test_items, all_digits, progress),
            "photos_shown_to_the_digits_bundle": ood_section(digits, digits_split.test, photos_sample, progress),
        },
        "upload": upload_section(bundle, test_items, progress),
    }


def routing_targets(s: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's done-when lines, each with the measured value it was judged on."""
    r, oods, up = s["routing"], s["ood"].values(), s["upload"]
    off = r["offload_to_target"]
    best = off[off["best_metric"]]
    allowed = max(0.35, 2.5 * off["oracle"])
    c = r["calibrated"]
    auto = up["formats"]["auto"]["cost_points"]
    return {
        "best_metric_offload_within_target": {"value": best, "limit": allowed, "met": best <= allowed},
        "calibrated_test_gap_within_bound": {"value": c["test_gap_points"], "limit": c["val_bound_points"],
                                             "met": c["test_gap_points"] <= c["val_bound_points"] + 1e-9},
        "calibrated_test_offload_le_40": {"value": c["test_offload"], "limit": 0.40, "met": c["test_offload"] <= 0.40},
        "ece_after_le_3": {"value": r["ece"]["after"], "limit": 0.03, "met": r["ece"]["after"] <= 0.03},
        "ood_auroc_ge_95": {"value": [o["auroc"] for o in oods], "limit": 0.95,
                            "met": all(o["auroc"] is not None and o["auroc"] >= 0.95 for o in oods)},
        "ood_outliers_confident_le_5": {"value": [o["outliers_confident_on_edge"] for o in oods], "limit": 0.05,
                                        "met": all(o["outliers_confident_on_edge"] <= 0.05 for o in oods)},
        "ood_extra_offload_le_1_point": {"value": [o["extra_offload_points_in_distribution"] for o in oods],
                                         "limit": 1.0,
                                         "met": all(o["extra_offload_points_in_distribution"] <= 1.0 for o in oods)},
        "default_upload_cost_le_0_2_points": {"value": auto, "limit": 0.2, "met": auto <= 0.2},
    }
