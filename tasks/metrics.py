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


BLUES = (np.array([255, 251, 247], np.float32), np.array([107, 48, 8], np.float32))  # BGR, light -> dark


def confusion_image(matrix: list[list[int]] | np.ndarray, title: str, cell: int = 44) -> np.ndarray:
    """A labelled confusion-matrix heat map (BGR), drawn with OpenCV: the run's report needs
    no plotting library (importing and drawing with matplotlib took half a second at the end
    of every ingest run). Colour follows log(1 + count), so that small confusions show."""
    import cv2

    cm = np.asarray(matrix, dtype=np.int64)
    n = cm.shape[0] if cm.ndim == 2 else 0
    left, top, bottom, right = 64, 40, 52, 12
    img = np.full((top + n * cell + bottom, left + n * cell + right, 3), 255, np.uint8)
    font, black, white = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (255, 255, 255)

    def text(s: str, x: int, y: int, scale: float, colour=black) -> None:
        (w, h), _ = cv2.getTextSize(s, font, scale, 1)
        cv2.putText(img, s, (int(x - w / 2), int(y + h / 2)), font, scale, colour, 1, cv2.LINE_AA)

    text(title, img.shape[1] / 2, top / 2, 0.55)
    peak = int(cm.max()) if cm.size else 0
    shade = np.log1p(cm) / np.log1p(peak) if peak > 0 else np.zeros(cm.shape)
    light, dark = BLUES
    for (i, j), v in np.ndenumerate(cm):
        y, x = top + i * cell, left + j * cell
        img[y : y + cell, x : x + cell] = (light + (dark - light) * shade[i, j]).round().astype(np.uint8)
        if v:
            text(str(v), x + cell / 2, y + cell / 2, 0.36 if v < 1000 else 0.3,
                 white if shade[i, j] > 0.7 else black)  # light text on the dark cells
    for k in range(n):
        text(str(k), left + k * cell + cell / 2, top + n * cell + 12, 0.45)
        text(str(k), left - 12, top + k * cell + cell / 2, 0.45)
    text("predicted", left + n * cell / 2, top + n * cell + 36, 0.5)
    side = np.full((22, n * cell), 255, np.uint8)
    cv2.putText(side, "true", (max(0, n * cell // 2 - 18), 16), font, 0.5, 0, 1, cv2.LINE_AA)
    img[top : top + n * cell, 8:30] = cv2.rotate(side, cv2.ROTATE_90_COUNTERCLOCKWISE)[..., None]
    return img


def save_confusion_png(matrix: list[list[int]] | np.ndarray, path: Path, title: str) -> Path:
    """The confusion matrix as a PNG for the MLflow UI."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", confusion_image(matrix, title))
    if not ok:  # pragma: no cover - encoding a small BGR image does not fail
        raise ValueError(f"could not encode {path.name}")
    path.write_bytes(png.tobytes())
    return path
