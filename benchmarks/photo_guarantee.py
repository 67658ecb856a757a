"""The threshold's guarantee checked on held-out photos (the guarantee part of benchmarks/photo_bench.py, issue 13).

quantize certifies a threshold on its validation split: with probability at least 1 - delta over the draw of
that split, the hybrid's gap to the cloud on new data from the same source is within the target. One bundle is
one draw, so one test gap says little about the probability. This module repeats the draw on the test split:

* :func:`held_out_check`: the test split cut into two stratified random halves, ``repeats`` times; quantize's own
  routing fit (quantize.routing_calibration.fit_routing: temperature, deferral model, certified threshold) on one
  half, the realised gap and offload on the other. With delta = 0.1 at most about 10% of the fits should have a
  true gap over the target. The realised gap on 1,500 images carries its own sampling noise (about 0.3 points),
  so the count of realised gaps over the target overstates how often the true gap is over it.
* :func:`small_calibration`: the same fit on small calibration sets drawn from one half: the certified threshold
  offloads more as n shrinks, and says so (``too_small`` and a note) when no threshold can be certified.

Everything works on arrays already computed (the int8 model's named outputs through the SDK's LocalModel, the
cloud's probabilities, the labels), so it costs seconds per fit, no model runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _labelled(outs: Mapping[str, np.ndarray], cloud: np.ndarray, y: np.ndarray):
    from quantize.routing_calibration import Labelled

    return Labelled({k: v for k, v in outs.items() if not k.startswith("_")}, cloud, y)


def _fit_and_measure(fit_on, judge_on, cfg, prob_floor: float) -> dict[str, Any]:
    """quantize's routing fit on ``fit_on``; the chosen threshold's realised gap (points) and offload on
    ``judge_on``."""
    from edge_sdk.scores import LOWER_IS_CONFIDENT, DeferralModel, metric_scores
    from quantize.routing_calibration import fit_routing

    r = fit_routing(fit_on, None, cfg, prob_floor=prob_floor)
    deferral = DeferralModel(r.deferral) if r.deferral is not None else None
    s = metric_scores(judge_on.outputs, r.metric, temperature=r.temperature, deferral=deferral, prob_floor=prob_floor)
    kept = s <= r.threshold if r.metric in LOWER_IS_CONFIDENT else s >= r.threshold
    hybrid = np.where(kept, judge_on.edge_ok, judge_on.cloud_ok).mean()
    cal = r.calibration
    return {"metric": r.metric, "n": cal["n"], "fit_offload": cal["offload"], "estimate": cal["estimate_points"],
            "bound": cal["bound_points"], "too_small": bool(cal["too_small"]), "note": cal.get("note"),
            "point_offload": cal["point_estimate"]["offload"],
            "gap": 100 * float(judge_on.cloud_ok.mean() - hybrid), "offload": float(1 - kept.mean())}


def _halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from quantize.routing_calibration import split_fit_calibrate

    return split_fit_calibrate(y, 0.5, seed)


def held_out_check(outs: Mapping[str, np.ndarray], cloud: np.ndarray, y: np.ndarray, *, target_gap: float = 0.5,
                   delta: float = 0.1, repeats: int = 40, progress: bool = False) -> dict[str, Any]:
    """Fit on a random half, judge on the other, ``repeats`` times; how often the realised gap exceeds the target."""
    from tqdm.auto import tqdm

    from quantize.routing_calibration import RoutingConfig

    data, floor = _labelled(outs, cloud, y), float(outs["_prob_floor"])
    runs = []
    for i in tqdm(range(repeats), desc="guarantee (halves)", disable=not progress, leave=False):
        a, b = _halves(y, seed=1000 + i)
        cfg = RoutingConfig(target_gap=target_gap, delta=delta, ood=None, seed=i)
        runs.append(_fit_and_measure(data.take(a), data.take(b), cfg, floor))
    gaps, offs = np.array([r["gap"] for r in runs]), np.array([r["offload"] for r in runs])
    over = int((gaps > target_gap + 1e-9).sum())
    return {
        "repeats": repeats, "n_fit_half": int(len(y) // 2), "target_gap_points": target_gap, "delta": delta,
        "realised_gap_over_target": over, "realised_gap_over_target_rate": over / repeats,
        "realised_gap_over_its_bound": int(sum(r["gap"] > r["bound"] + 1e-9 for r in runs)),
        "gap_points": _spread(gaps), "offload": _spread(offs),
        "bound_points": _spread(np.array([r["bound"] for r in runs])),
        "metrics_chosen": dict(Counter(r["metric"] for r in runs)),
        "too_small": int(sum(r["too_small"] for r in runs)),
        "runs": [{k: v for k, v in r.items() if k != "note"} for r in runs],
    }


def small_calibration(outs: Mapping[str, np.ndarray], cloud: np.ndarray, y: np.ndarray, *,
                      sizes: Sequence[int] = (100, 200, 400, 800, 1500), draws: int = 5, target_gap: float = 0.5,
                      delta: float = 0.1, progress: bool = False) -> dict[str, Any]:
    """The fit on ``sizes`` validation images (half fit, half calibration) drawn from one half of the test split,
    judged on the other half: offload, the point estimate's offload, and how often it says it is too small."""
    from tqdm.auto import tqdm

    from quantize.data import stratified_sample
    from quantize.routing_calibration import RoutingConfig

    data, floor = _labelled(outs, cloud, y), float(outs["_prob_floor"])
    a, b = _halves(y, seed=7)
    judge = data.take(b)
    out: dict[str, Any] = {}
    for n in tqdm(sizes, desc="guarantee (small n)", disable=not progress, leave=False):
        runs = []
        for d in range(draws):
            pick = np.array([i for i, _ in stratified_sample([(i, int(y[i])) for i in a], n, seed=d)])
            cfg = RoutingConfig(target_gap=target_gap, delta=delta, ood=None, seed=d)
            runs.append(_fit_and_measure(data.take(pick), judge, cfg, floor))
        notes = [r["note"] for r in runs if r["note"]]
        out[str(n)] = {"n_calibration": runs[0]["n"], "offload": _spread(np.array([r["offload"] for r in runs])),
                       "point_estimate_offload_on_its_calibration_set":
                           _spread(np.array([r["point_offload"] for r in runs])),
                       "gap_points": _spread(np.array([r["gap"] for r in runs])),
                       "too_small": int(sum(r["too_small"] for r in runs)), "draws": draws,
                       "note": notes[0] if notes else None}
    return out


def _spread(a: np.ndarray) -> dict[str, float]:
    return {"mean": float(a.mean()), "min": float(a.min()), "p90": float(np.quantile(a, 0.9)), "max": float(a.max())}


def plot_guarantee(check: dict[str, Any], small: dict[str, Any], path: Path) -> Path:
    """Left: the realised test gaps of the repeated fits against the target. Right: offload against the
    calibration set's size (the certified threshold and the point estimate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=110)
    gaps = [r["gap"] for r in check["runs"]]
    ax1.hist(gaps, bins=20, color="tab:blue", alpha=0.8)
    target = check["target_gap_points"]
    ax1.axvline(target, color="tab:purple", ls="-.", label=f"target {target:g} pt")
    ax1.set_xlabel("realised gap to the cloud on the held-out half (points)")
    ax1.set_ylabel("fits")
    ax1.set_title(f"{check['repeats']} fits on random halves: {check['realised_gap_over_target']} over the target "
                  f"(delta {check['delta']:g})", fontsize=9)
    ax1.legend(fontsize=8)
    ns = [v["n_calibration"] for v in small.values()]
    ax2.plot(ns, [100 * v["offload"]["mean"] for v in small.values()], "o-", label="certified threshold")
    ax2.plot(ns, [100 * v["point_estimate_offload_on_its_calibration_set"]["mean"] for v in small.values()], "s--",
             label="point estimate (no bound), on its calibration set")
    ax2.set_xscale("log")
    ax2.set_xticks(ns, [str(n) for n in ns])
    ax2.minorticks_off()
    ax2.set_xlabel("calibration images (n)")
    ax2.set_ylabel("offload on held-out photos (%)")
    ax2.set_title("a smaller calibration set offloads more", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
