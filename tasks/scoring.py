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


class ScoreAccumulator:
    """`score_cells` fed in batches: keeps a few counters and the digit pairs, never the cells,
    so that scoring a 10,000-telegram run does not hold its 300,000 readings in memory."""

    def __init__(self) -> None:
        self.n = 0
        self.right = 0
        self.statuses: Counter[str] = Counter()
        self.by_len: dict[str, list[int]] = {}  # length -> [right, total]
        self.ok_right = 0
        self.yt: list[int] = []
        self.yp: list[int] = []

    def add(self, cells: list[Scored]) -> None:
        for c in cells:
            ok = effective_value(c.value, c.status) == c.label
            self.n += 1
            self.right += ok
            self.statuses[c.status] += 1
            tally = self.by_len.setdefault(str(len(str(c.label))), [0, 0])
            tally[0] += ok
            tally[1] += 1
            if c.status == "ok":
                self.ok_right += ok
            pairs = digit_pairs(c.label, c.digits)
            if pairs:
                self.yt.extend(a for a, _ in pairs)
                self.yp.extend(b for _, b in pairs)

    def result(self) -> dict:
        digits = digit_metrics(np.array(self.yt, dtype=np.int64), np.array(self.yp, dtype=np.int64))
        n, n_ok = self.n, self.statuses.get("ok", 0)
        return {
            "cells_scored": n,
            "number_accuracy": self.right / n if n else None,
            "number_accuracy_by_length": {k: r / t for k, (r, t) in sorted(self.by_len.items())},
            "accuracy_when_ok": self.ok_right / n_ok if n_ok else None,
            "review_share": self.statuses.get("review", 0) / n if n else None,
            "status_counts": dict(self.statuses),
            "digits_scored": digits["n"],
            "digit_accuracy": digits["accuracy"],
            "digit_precision_macro": digits["precision_macro"],
            "digit_recall_macro": digits["recall_macro"],
            "digit_f1_macro": digits["f1_macro"],
            "confusion_matrix": digits["confusion_matrix"],
        }


def score_cells(cells: list[Scored]) -> dict:
    """Number-level and digit-level metrics over labelled cells, and counts by status."""
    acc = ScoreAccumulator()
    acc.add(cells)
    return acc.result()
