"""What `evaluate` reports: one row per mode, the accuracy-vs-offload trade-off, a table, plots, report.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle
from edge_sdk.scores import LOWER_IS_CONFIDENT

from .calibrate import METRICS, Curve, candidate_thresholds, sweep
from .eval_passes import ModeRun, hybrid_from
from .metrics import classification_summary, plot_confusion

ROWS = ("edge-only", "cloud-only", "hybrid")
PLOT = "accuracy_vs_offload.png"


@dataclass
class Row:
    name: str
    n: int
    accuracy: float
    macro_f1: float
    offload: float
    latency_mean_ms: float
    latency_p95_ms: float
    latency_kind: str
    bytes_per_image: float
    model_bytes: dict[str, int]
    reasons: dict[str, int]
    confusion_matrix: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_row(name: str, run: ModeRun, y: np.ndarray, labels: list[str], sizes: dict[str, int]) -> Row:
    s = classification_summary(y, run.probs.argmax(1), labels)
    used = {"edge-only": ("edge",), "cloud-only": ("cloud",), "hybrid": ("edge", "cloud")}[name]
    return Row(
        name=name, n=int(len(y)), accuracy=s["accuracy"], macro_f1=s["macro_f1"], offload=float(run.offloaded.mean()),
        latency_mean_ms=float(run.latency_ms.mean()), latency_p95_ms=float(np.percentile(run.latency_ms, 95)),
        latency_kind=run.latency_kind, bytes_per_image=float(run.bytes_sent.mean()),
        model_bytes={k: sizes[k] for k in used}, reasons=run.reasons, confusion_matrix=s["confusion_matrix"],
    )


@dataclass
class Tradeoff:
    """The accuracy-vs-offload curves on the evaluated data and where the bundle's threshold falls on them."""

    title: str
    curves: dict[str, Any]  # metric -> quantize.calibrate.Curve
    metric: str
    threshold: float
    offload: float
    accuracy: float
    edge_accuracy: float
    cloud_accuracy: float
    measured: tuple[float, float] | None = None  # (offload, accuracy) of the hybrid row, if run separately

    @classmethod
    def from_report(cls, report: dict[str, Any], title: str = "") -> Tradeoff:
        """Rebuild from an evaluate report.json (its "tradeoff", and the hybrid row when it was run over HTTP)."""
        d = report["tradeoff"]
        curves = {m: Curve(m, np.asarray(c["threshold"]), np.asarray(c["offload"]), np.asarray(c["hybrid_accuracy"]))
                  for m, c in d["curves"].items()}
        hybrid = next(r for r in report["rows"] if r["name"] == "hybrid")
        measured = (hybrid["offload"], hybrid["accuracy"]) if report["cloud"]["where"] == "http" else None
        return cls(title, curves, d["metric"], d["threshold"], d["offload_at_threshold"],
                   d["hybrid_accuracy_at_threshold"],
                   d["edge_accuracy"], d["cloud_accuracy"], measured)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "threshold": self.threshold, "offload_at_threshold": self.offload,
            "hybrid_accuracy_at_threshold": self.accuracy, "edge_accuracy": self.edge_accuracy,
            "cloud_accuracy": self.cloud_accuracy, "curves": {m: c.as_dict() for m, c in self.curves.items()},
        }


def tradeoff(edge: ModeRun, cloud: ModeRun, y: np.ndarray, metric: str, threshold: float, title: str = "") -> Tradeoff:
    curves = {m: sweep(edge.probs, cloud.probs, y, m) for m in METRICS}
    if metric not in curves and edge.scores is not None:
        curves[metric] = score_curve(edge.scores, metric, edge.probs.argmax(1) == y, cloud.probs.argmax(1) == y)
    h = hybrid_from(edge, cloud, metric, threshold)
    return Tradeoff(
        title, curves, metric, float(threshold), float(h.offloaded.mean()), float((h.probs.argmax(1) == y).mean()),
        float((edge.probs.argmax(1) == y).mean()), float((cloud.probs.argmax(1) == y).mean()),
    )


def score_curve(scores: np.ndarray, metric: str, edge_ok: np.ndarray, cloud_ok: np.ndarray) -> Curve:
    """The curve of a routing score the SDK computed (e.g. ``deferral``), over the thresholds between its values."""
    ts = candidate_thresholds(scores)
    conf = scores[None, :] <= ts[:, None] if metric in LOWER_IS_CONFIDENT else scores[None, :] >= ts[:, None]
    acc = np.where(conf, edge_ok[None, :], cloud_ok[None, :]).mean(axis=1)
    return Curve(metric, ts, 1.0 - conf.mean(axis=1), acc)


def plot_tradeoffs(panels: Sequence[Tradeoff], path: Path) -> Path:
    """One panel per configuration: hybrid accuracy against offload per metric, the bundle's threshold starred."""
    import matplotlib  # heavy: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], panels, strict=False):
        for m, c in t.curves.items():
            order = np.argsort(c.offload, kind="stable")
            ax.plot(c.offload[order], 100 * c.accuracy[order], marker=".", ms=3, lw=1.6 if m == t.metric else 0.9,
                    alpha=1.0 if m == t.metric else 0.6, label=m)
        ax.axhline(100 * t.cloud_accuracy, color="grey", ls="--", lw=1,
                   label=f"cloud only {100 * t.cloud_accuracy:.2f}%")
        ax.axhline(100 * t.edge_accuracy, color="grey", ls=":", lw=1, label=f"edge only {100 * t.edge_accuracy:.2f}%")
        ax.plot([t.offload], [100 * t.accuracy], marker="*", ms=16, color="black", ls="none", zorder=5,
                label=f"calibrated threshold: {t.metric} {t.threshold:.4g} -> {100 * t.offload:.1f}% offload, "
                      f"{100 * t.accuracy:.2f}%")
        if t.measured is not None:
            ax.plot([t.measured[0]], [100 * t.measured[1]], marker="x", ms=10, mew=2, color="tab:red", ls="none",
                    zorder=6, label=f"hybrid run (SDK): {100 * t.measured[0]:.1f}% offload, {100 * t.measured[1]:.2f}%")
        ys = [100 * v for c in t.curves.values() for v in c.accuracy] + [100 * t.edge_accuracy, 100 * t.cloud_accuracy]
        pad = max(0.5, 0.08 * (max(ys) - min(ys)))
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0 + pad / 2, max(ys) + pad))
        ax.set_xlabel("offload fraction (share sent to the cloud)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(t.title or "hybrid accuracy vs offload", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def routing_summary(routing: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """The bundle's threshold, what quantize certified on validation data (estimate, bound, n, delta), and the
    gap to the cloud and the offload measured here."""
    cal = routing.calibration or {}
    keys = ("estimate_points", "bound_points", "n", "delta", "target_gap_points", "offload", "too_small", "mode")
    cloud, hybrid = rows[1], rows[2]
    return {"metric": routing.metric, "threshold": routing.threshold, "temperature": routing.temperature,
            "out_of_distribution": routing.ood.kind if routing.ood is not None else None,
            "validation": {k: cal[k] for k in keys if k in cal},
            "gap_points": 100 * (cloud.accuracy - hybrid.accuracy), "offload": hybrid.offload}


def format_routing(r: dict[str, Any]) -> str:
    """One line: the gap measured here beside the validation estimate and its bound."""
    v = r["validation"]
    here = f"here: gap to the cloud {r['gap_points']:.2f} points at {100 * r['offload']:.1f}% offload"
    if "bound_points" not in v:
        return f"routing: {r['metric']} threshold {r['threshold']:.4g}; {here}"
    return (f"routing: {r['metric']} threshold {r['threshold']:.4g}; validation (n={v['n']}): gap estimate "
            f"{v['estimate_points']:.2f} points, bound {v['bound_points']:.2f} at delta {v['delta']:g} "
            f"(target {v['target_gap_points']:g}); {here}")


def model_sizes(bundle: Bundle) -> dict[str, int]:
    return {role: bundle.model_path(role).stat().st_size for role in ("edge", "cloud") if bundle.has(role)}


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KB"


def hybrid_rule(metric: str, threshold: float) -> str:
    """When the hybrid keeps the edge's answer, in words for a table's title.

    A max_prob threshold at or under 0 (a certified threshold when the int8 edge never disagrees with the cloud
    on the calibration split) is said as what it means: the edge answers every frame it scores in distribution.
    """
    if metric == "max_prob" and threshold <= 0:
        return f"hybrid = edge answer always, but for out-of-distribution frames (max_prob threshold {threshold:.4g})"
    op = "<=" if metric in LOWER_IS_CONFIDENT else ">="
    return f"hybrid = edge answer when {metric} {op} {threshold:.4g}"


def format_table(rows: Sequence[Row], title: str = "") -> str:
    """A plain-text table, one row per mode: the numbers a README can quote."""
    head = ("mode", "accuracy", "offload", "mean ms", "p95 ms", "bytes/img", "model size")
    names = {"edge": "int8 .tflite", "cloud": ".keras"}
    body = [
        (r.name, f"{100 * r.accuracy:.2f}%", f"{100 * r.offload:.1f}%", f"{r.latency_mean_ms:.2f}",
         f"{r.latency_p95_ms:.2f}",
         f"{r.bytes_per_image:.0f}", " + ".join(f"{_kb(v)} {names[k]}" for k, v in r.model_bytes.items()))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    def line(cells: Sequence[str]) -> str:
        padded = zip(cells, widths, strict=True)
        return "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(padded))

    out = [title] if title else []
    out += [line(head).rstrip(), "  ".join("-" * w for w in widths), *(line(b).rstrip() for b in body)]
    return "\n".join(out)


def write_outputs(out: Path, rows: Sequence[Row], tr: Tradeoff, labels: list[str], report: dict[str, Any],
                  *, plot: bool = True) -> dict[str, Any]:
    """report.json, the accuracy-vs-offload plot and one confusion matrix per row, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"report": str(out / "report.json")}
    if plot:
        files["accuracy_vs_offload"] = str(plot_tradeoffs([tr], out / PLOT))
        files["confusion"] = {
            r.name: str(plot_confusion(r.confusion_matrix, labels, out / f"confusion_{r.name.replace('-', '_')}.png",
                                       f"{r.name}: accuracy {100 * r.accuracy:.2f}% (n={r.n})"))
            for r in rows
        }
    report["files"] = files
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return files
