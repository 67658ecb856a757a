"""The accuracy-vs-offload plot: every routing metric, the oracle (the limit), the target and the chosen threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STYLE = {"oracle": dict(color="black", ls="--", lw=1.4), "deferral": dict(color="tab:red", lw=2.0)}


@dataclass
class Marked:
    """A point to mark on the plot (the chosen threshold measured on this data)."""

    offload: float
    accuracy: float
    label: str


def plot_routing(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *, cloud_accuracy: float,
                 edge_accuracy: float, target_gap: float | None = None, marks: Sequence[Marked] = (),
                 title: str = "hybrid accuracy vs offload") -> Path:
    """One line per curve (``{"offload": [...], "hybrid_accuracy": [...]}``), accuracies as fractions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.6), dpi=110)
    for name, c in curves.items():
        ax.plot(c["offload"], 100 * np.asarray(c["hybrid_accuracy"]), label=name,
                **STYLE.get(name, dict(lw=1.1, alpha=0.85)))
    ax.axhline(100 * cloud_accuracy, color="grey", ls="-", lw=0.8, label=f"cloud only {100 * cloud_accuracy:.2f}%")
    ax.axhline(100 * edge_accuracy, color="grey", ls=":", lw=1, label=f"edge only {100 * edge_accuracy:.2f}%")
    if target_gap is not None:
        ax.axhline(100 * cloud_accuracy - target_gap, color="tab:purple", ls="-.", lw=0.8,
                   label=f"target: cloud - {target_gap:g} pt")
    for m in marks:
        ax.plot([m.offload], [100 * m.accuracy], marker="*", ms=15, color="gold", mec="black", ls="none", zorder=5,
                label=m.label)
    ax.set_xlabel("offload (share of images sent to the cloud)")
    ax.set_ylabel("hybrid accuracy (%)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
