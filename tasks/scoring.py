"""Scoring readings against official results, at digit and number level.

Digit labels come from the number label when the digit count matches (as the source paper
built its digit set); a zero-padded reading ("004") is compared with the zero-padded label.
A blank cell whose label is 0 counts as read right: on the form, nothing written means none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tasks.metrics import digit_metrics


@dataclass(frozen=True)
class Scored:
    cell_id: str
    label: int
    value: int | None
    digits: str
    status: str


def effective_value(value: int | None, status: str) -> int | None:
    return 0 if value is None and status == "empty" else value


def digit_pairs(label: int, digits: str) -> list[tuple[int, int]] | None:
    """(true, predicted) digit pairs, or None when the counts differ."""
    if not digits or not digits.isdigit():
        return None
    truth = str(label)
    if len(digits) > len(truth) and digits.startswith("0"):
        truth = truth.zfill(len(digits))
    if len(truth) != len(digits):
        return None
    return [(int(a), int(b)) for a, b in zip(truth, digits, strict=True)]


def score_cells(cells: list[Scored]) -> dict:
    """Number-level and digit-level metrics over labelled cells, and counts by status."""
    statuses = Counter(c.status for c in cells)
    right = [effective_value(c.value, c.status) == c.label for c in cells]
    by_len: dict[str, list[bool]] = {}
    for c, ok in zip(cells, right, strict=True):
        by_len.setdefault(str(len(str(c.label))), []).append(ok)
    ok_cells = [r for c, r in zip(cells, right, strict=True) if c.status == "ok"]
    yt, yp = [], []
    for c in cells:
        pairs = digit_pairs(c.label, c.digits)
        if pairs:
            yt.extend(a for a, _ in pairs)
            yp.extend(b for _, b in pairs)
    digits = digit_metrics(np.array(yt, dtype=np.int64), np.array(yp, dtype=np.int64))
    n = len(cells)
    return {
        "cells_scored": n,
        "number_accuracy": float(np.mean(right)) if n else None,
        "number_accuracy_by_length": {k: float(np.mean(v)) for k, v in sorted(by_len.items())},
        "accuracy_when_ok": float(np.mean(ok_cells)) if ok_cells else None,
        "review_share": statuses.get("review", 0) / n if n else None,
        "status_counts": dict(statuses),
        "digits_scored": digits["n"],
        "digit_accuracy": digits["accuracy"],
        "digit_precision_macro": digits["precision_macro"],
        "digit_recall_macro": digits["recall_macro"],
        "digit_f1_macro": digits["f1_macro"],
        "confusion_matrix": digits["confusion_matrix"],
    }
