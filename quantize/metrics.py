"""Scores and plots shared by train, quantize and evaluate (scikit-learn + matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, a per-class report and the confusion matrix, as plain JSON types."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    idx = list(range(len(labels)))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": classification_report(
            y_true, y_pred, labels=idx, target_names=list(labels), output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def plot_confusion(
    cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str = "Confusion matrix"
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)), dpi=110)
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > thresh else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
