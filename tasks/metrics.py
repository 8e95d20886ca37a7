"""Classification metrics shared by digit evaluation and the telegram pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

DIGITS = list(range(10))


def digit_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro P/R/F1 over the classes present, per-class report and confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    if n == 0:
        return {"n": 0, "accuracy": None, "precision_macro": None, "recall_macro": None,
                "f1_macro": None, "confusion_matrix": np.zeros((10, 10), int).tolist(),
                "report": {}}
    # Macro averages over the labels that occur in truth or prediction, as sklearn does.
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    report = classification_report(
        y_true, y_pred, labels=DIGITS, output_dict=True, zero_division=0
    )
    return {
        "n": n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=DIGITS).tolist(),
        "report": report,
    }


def save_confusion_png(matrix: list[list[int]] | np.ndarray, path: Path, title: str) -> Path:
    """A labelled confusion-matrix heat map for the MLflow UI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(6, 5.4), dpi=100)
    ax.imshow(np.log1p(cm), cmap="Blues")
    peak = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > peak / 2 else "black")
    ax.set_xticks(range(cm.shape[1]))
    ax.set_yticks(range(cm.shape[0]))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
