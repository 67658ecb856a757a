"""The routing step of ``quantize``: from the int8 edge model and the cloud's answers to the manifest's ``routing``.

1. :func:`model_to_convert`: the edge network with its routing outputs (logits, features: quantize.edge_outputs),
   so one int8 file answers and scores.
2. :func:`calibrate_routing`: run that int8 model on the validation split (and a sample of the training split
   for the out-of-distribution score), fit everything (quantize.routing_calibration), and return the
   manifest section, the report and the plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Routing

from .routing_calibration import Labelled, RoutingConfig, RoutingFit, fit_routing
from .routing_plot import Marked, plot_routing
from .tflite_eval import io_quant, run_tflite_named

log = logging.getLogger(__name__)

PLOT = "quantize_routing.png"


def model_to_convert(edge_keras):
    """The edge network with named routing outputs, or the network itself when its head is not understood."""
    from .edge_outputs import with_routing_outputs

    routed = with_routing_outputs(edge_keras)
    if routed is None:
        log.warning("the edge model does not end in a softmax this tool understands: routing uses its probabilities "
                    "only (no temperature from logits, no out-of-distribution score on features)")
        return edge_keras
    return routed


def prob_floor(int8: bytes) -> float:
    """Half a quantization step of the probabilities: what an int8 zero stands for when taking log p."""
    _, out_q = io_quant(int8)
    return out_q.scale / 2 if out_q is not None else 1e-4


def calibrate_routing(int8: bytes, val_x: np.ndarray, val_y: np.ndarray, val_cloud: np.ndarray,
                      train_x: np.ndarray | None, train_y: np.ndarray | None, cfg: RoutingConfig,
                      *, progress: bool = False) -> tuple[Routing, RoutingFit]:
    """Fit the routing on held-out data; the Routing goes into the manifest, the RoutingFit into the report."""
    val = Labelled(run_tflite_named(int8, val_x, progress=progress, desc="int8 outputs (val)"), val_cloud, val_y)
    train = None
    if train_x is not None and train_y is not None and cfg.ood == "mahalanobis":
        outs = run_tflite_named(int8, train_x, progress=progress, desc="int8 outputs (train sample)")
        train = Labelled(outs, np.zeros((len(train_y), 1)), train_y)
    fit = fit_routing(val, train, cfg, prob_floor(int8))
    routing = Routing(metric=fit.metric, threshold=fit.threshold, temperature=fit.temperature,  # type: ignore[arg-type]
                      calibration={**fit.calibration, "curves": fit.curves}, deferral=fit.deferral, ood=fit.ood)
    return routing, fit


def plot_calibration(fit: RoutingFit, path: Path) -> Path:
    """The calibration part's accuracy-vs-offload curves, the oracle and the certified threshold."""
    c = fit.calibration
    point = fit.curves.get(c["metric"])
    marks = []
    if point is not None:
        acc = float(np.interp(c["offload"], point["offload"], point["hybrid_accuracy"]))
        bound = f", bound {c['bound_points']:.2f} pt" if "bound_points" in c else ""
        marks.append(Marked(c["offload"], acc, f"chosen: {c['metric']} ({100 * c['offload']:.1f}% offload{bound})"))
    return plot_routing(fit.curves, path, cloud_accuracy=c["cloud_accuracy"], edge_accuracy=c["edge_accuracy"],
                        target_gap=c.get("target_gap_points"), marks=marks,
                        title=f"accuracy vs offload, validation calibration part (n={c['n']})")


def report_section(fit: RoutingFit) -> dict[str, Any]:
    """The quantize report's ``calibration`` entry (no curves: those are in the manifest)."""
    c = fit.calibration
    keys = ("mode", "metric", "threshold", "offload", "target_gap_points", "max_offload", "delta", "n", "n_fit",
            "estimate_points", "bound_points", "too_small", "note", "cloud_accuracy", "edge_accuracy")
    out = {k: c[k] for k in keys if k in c}
    out["temperature"] = fit.temperature
    out["ece_before"], out["ece_after"] = c["temperature"]["ece_before"], c["temperature"]["ece_after"]
    out["deferral"] = c["deferral"]
    if "ood" in c:
        out["ood"] = c["ood"]
    return out
