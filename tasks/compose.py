"""From per-digit probabilities to a cell reading: value, digit string, confidence, status.

Statuses: ``ok`` (read and confident), ``review`` (read, but a person should look),
``empty`` (nothing written), ``unreadable`` (marks that are not digits). A blank cell is
``empty``, never a guessed zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from operator import itemgetter

import numpy as np

from tasks.segment import Segmentation

TOP_K = 3
# log-probability cost of each extra digit when a blob is read as touching digits: splitting
# must explain the ink clearly better than reading it whole
SPLIT_PENALTY = 0.35
# log-probability cost per unit of width/height above WIDE_FROM of a mark read as one digit:
# a handwritten digit is seldom wider than tall, two touching ones usually are. Chosen on the
# Danish validation rows (+2.3 points) and the validation telegrams (unchanged).
WIDE_PENALTY = 2.0
WIDE_FROM = 0.9


@dataclass
class CellReading:
    value: int | None
    digits: str
    confidence: float
    status: str
    reason: str | None = None
    digit_probs: list[list[tuple[int, float]]] = field(default_factory=list)  # top-k per digit
    chosen: list[int] = field(default_factory=list)  # which candidate digit images were read
    # the likeliest numbers this cell may hold, (value, probability), best first: what the
    # checksum decoder chooses among
    candidates: list[tuple[int, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def compose(seg: Segmentation, probs: np.ndarray, max_digits: int, ok_threshold: float,
            dash_is_zero: bool = True) -> CellReading:
    """Rebuild the number from its digits; low confidence or too many digits go to review. A
    lone dash is zero on a telegram; elsewhere (`dash_is_zero` False: a ditto mark in a
    register, a separator in an amount) it has no agreed meaning and goes to review."""
    if seg.kind == "empty":
        return CellReading(None, "", 1.0, "empty", seg.reason, candidates=[(0, 1.0)])
    if seg.kind == "unreadable":
        return CellReading(None, "", 0.0, "unreadable", seg.reason)
    if seg.kind == "dash":
        if dash_is_zero:
            return CellReading(0, "-", 1.0, "ok", None, candidates=[(0, 1.0)])
        return CellReading(0, "-", 1.0, "review", "a lone dash: zero on a telegram, unclear here",
                           candidates=[(0, 1.0)])
    if len(probs) == 0:
        return CellReading(None, "", 0.0, "unreadable", "no digit found")
    # each digit's top and top classes, sorted once for the candidates and the digit_probs alike
    top = probs.max(axis=1)
    top_of = _top_classes(probs)
    p_of = probs.tolist()
    chosen, splits = _choose_hypotheses(seg, top)
    candidates = _number_candidates(seg, top_of, p_of, chosen, max_digits)
    best = probs.argmax(axis=1).tolist()
    digits = "".join([str(best[i]) for i in chosen])
    top = top[chosen]
    conf = float(top.prod())
    reading = CellReading(int(digits), digits, round(conf, 4), "ok", None,
                          [_rounded(top_of[i], p_of[i]) for i in chosen], chosen, candidates)
    if splits:
        reading.reason = f"read {splits} blob(s) as touching digits"
    if len(digits) > max_digits:
        reading.status, reading.reason = "review", (
            f"{len(digits)} marks read as digits in a {max_digits}-digit cell")
    elif conf < ok_threshold:
        weakest = int(top.argmin())
        alt = _rounded(top_of[chosen[weakest]][:2], p_of[chosen[weakest]])
        reading.status, reading.reason = "review", (
            f"low confidence {conf:.2f}: digit {weakest + 1} is {alt[0][0]} ({alt[0][1]:.2f}) "
            f"or {alt[1][0]} ({alt[1][1]:.2f})")
    return reading


def _top_classes(probs: np.ndarray) -> list[list[int]]:
    """Per digit, its TOP_K likeliest classes, best first."""
    return probs.argsort(axis=1)[:, : -TOP_K - 1 : -1].tolist()


def _rounded(classes: list[int], row: list[float]) -> list[tuple[int, float]]:
    return [(d, round(row[d], 4)) for d in classes]




def _choose_hypotheses(seg: Segmentation, top: np.ndarray) -> tuple[list[int], int]:
    """Per blob, the reading (whole, or split into touching digits) the model finds likeliest,
    from each digit's top probability; returns the chosen digit indices and how many blobs
    were split."""
    if not seg.groups:
        return list(range(len(top))), 0
    chosen: list[int] = []
    splits = 0
    score = None  # only blobs with more than one reading need it
    for hypotheses in seg.groups:
        if len(hypotheses) > 1:
            if score is None:
                score = _hypothesis_score(seg, top)
            best = max(hypotheses, key=score)
        else:
            best = hypotheses[0]
        chosen.extend(best)
        splits += seg.extra_digits(best) > 0
    return chosen, splits


def contenders(seg: Segmentation, top: np.ndarray, margin: float) -> np.ndarray:
    """Which of a cell's digit images can still be part of its reading: those of every
    hypothesis of a blob scoring within `margin` (log-probability) of the blob's best, and all
    of a blob read one way only. Averaging seven views moves a digit's probability only so
    far: a hypothesis well behind keeps losing, and six more views of its digits are wasted
    (at a margin of 1 the validation sets read exactly as many numbers right, docs/performance.md)."""
    out = np.ones(len(top), bool)
    if not seg.groups or all(len(h) == 1 for h in seg.groups):
        return out
    score = _hypothesis_score(seg, top)
    for hypotheses in seg.groups:
        if len(hypotheses) > 1:
            scores = [score(h) for h in hypotheses]
            best = max(scores)
            for h, s in zip(hypotheses, scores, strict=True):
                if s < best - margin:
                    out[h] = False
    return out


def contenders_of(segs: list[Segmentation], top: np.ndarray, margin: float) -> np.ndarray:
    """`contenders` over a batch: `top` holds the digits of `segs` one cell after another."""
    bounds = np.cumsum([0, *(len(s.boxes) for s in segs)])
    if bounds[-1] != len(top):
        raise ValueError(f"{len(top)} digit probabilities for {bounds[-1]} digit images")
    parts = [contenders(s, top[a:b], margin) for s, a, b in zip(segs, bounds[:-1], bounds[1:], strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _hypothesis_score(seg: Segmentation, top: np.ndarray) -> Callable[[list[int]], float]:
    """How likely the model finds one reading of a blob: its digits' log-probabilities, less
    the cost of splitting and of reading wide marks as one digit."""
    logp = np.log(top.clip(1e-9, 1.0))
    wide = [max(0.0, w / max(1, h) - WIDE_FROM) for _, _, w, h in seg.boxes] if seg.boxes else []

    costs, extra_digits = seg.costs, seg.extra_digits

    def score(h: list[int]) -> float:
        width_cost = WIDE_PENALTY * sum(wide[i] for i in h) if wide else 0.0
        extra = costs.get(tuple(h), 0.0) if costs else 0.0
        return float(logp[h].sum()) - SPLIT_PENALTY * extra_digits(h) - width_cost - extra

    return score


MAX_CANDIDATES = 12


@cache
def _split_factor(extra_digits: int) -> float:
    return float(np.exp(-SPLIT_PENALTY * extra_digits))


def _number_candidates(seg: Segmentation, top_of: list[list[int]], p_of: list[list[float]],
                       chosen: list[int], max_digits: int) -> list[tuple[int, float]]:
    """Numbers the cell may hold with their probabilities: every combination of each digit's
    top-3 classes on the chosen segmentation, plus the best reading of each other way of
    splitting its blobs. Values that do not fit the cell are left out. Digits come as Python
    lists (hypotheses share digits, and list lookups are what the combinations cost)."""
    out: dict[int, float] = {}
    get = out.get

    def add(indices: list[int], penalty: float) -> None:
        if not indices or len(indices) > max_digits:
            return
        combos: list[tuple[int, float]] = [(0, penalty)]
        for i in indices:
            row, top = p_of[i], top_of[i]
            combos = [(v * 10 + d, p * row[d]) for v, p in combos for d in top]
        if not out:  # the values of one reading are all different
            out.update([(value, p if p > 0.0 else 0.0) for value, p in combos])
            return
        for value, p in combos:
            old = get(value, 0.0)
            out[value] = p if p > old else old

    add(chosen, 1.0)
    if seg.groups:
        pos = 0
        chosen_set = set(chosen)
        for hypotheses in seg.groups:
            if len(hypotheses) == 1:  # no other way to read this blob
                pos += len(hypotheses[0])
                continue
            best = next(h for h in hypotheses if set(h) <= chosen_set)
            for alt in hypotheses:
                if alt is best:
                    continue
                swapped = [*chosen[:pos], *alt, *chosen[pos + len(best):]]
                cost = seg.costs.get(tuple(alt), 0.0) if seg.costs else 0.0
                add(swapped, _split_factor(seg.extra_digits(alt))
                    * (float(np.exp(-cost)) if cost else 1.0))
            pos += len(best)
    ranked = sorted(out.items(), key=itemgetter(1), reverse=True)[:MAX_CANDIDATES]
    return [(v, round(p, 6)) for v, p in ranked]
