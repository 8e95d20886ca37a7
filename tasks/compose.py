"""From per-digit probabilities to a cell reading: value, digit string, confidence, status.

Statuses: ``ok`` (read and confident), ``review`` (read, but a person should look),
``empty`` (nothing written), ``unreadable`` (marks that are not digits). A blank cell is
``empty``, never a guessed zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


def top_candidates(p: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
    order = np.argsort(p)[::-1][:k]
    return [(int(d), round(float(p[d]), 4)) for d in order]


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
    chosen, splits = choose_hypotheses(seg, probs)
    candidates = number_candidates(seg, probs, chosen, max_digits)
    probs = probs[chosen]
    best = probs.argmax(axis=1)
    digits = "".join(str(int(d)) for d in best)
    conf = float(np.prod(probs.max(axis=1)))
    reading = CellReading(int(digits), digits, round(conf, 4), "ok", None,
                          [top_candidates(p) for p in probs], chosen, candidates)
    if splits:
        reading.reason = f"read {splits} blob(s) as touching digits"
    if len(digits) > max_digits:
        reading.status, reading.reason = "review", (
            f"{len(digits)} marks read as digits in a {max_digits}-digit cell")
    elif conf < ok_threshold:
        weakest = int(probs.max(axis=1).argmin())
        alt = top_candidates(probs[weakest], 2)
        reading.status, reading.reason = "review", (
            f"low confidence {conf:.2f}: digit {weakest + 1} is {alt[0][0]} ({alt[0][1]:.2f}) "
            f"or {alt[1][0]} ({alt[1][1]:.2f})")
    return reading


def choose_hypotheses(seg: Segmentation, probs: np.ndarray) -> tuple[list[int], int]:
    """Per blob, the reading (whole, or split into touching digits) the model finds likeliest;
    returns the chosen digit indices and how many blobs were split."""
    if not seg.groups:
        return list(range(len(probs))), 0
    logp = np.log(np.clip(probs.max(axis=1), 1e-9, 1.0))
    wide = [max(0.0, w / max(1, h) - WIDE_FROM) for _, _, w, h in seg.boxes] if seg.boxes else []

    def score(h: list[int]) -> float:
        width_cost = WIDE_PENALTY * sum(wide[i] for i in h) if wide else 0.0
        return float(logp[h].sum()) - SPLIT_PENALTY * (len(h) - 1) - width_cost

    chosen: list[int] = []
    splits = 0
    for hypotheses in seg.groups:
        best = max(hypotheses, key=score)
        chosen.extend(best)
        splits += len(best) > 1
    return chosen, splits


MAX_CANDIDATES = 12


def number_candidates(seg: Segmentation, probs: np.ndarray, chosen: list[int], max_digits: int
                      ) -> list[tuple[int, float]]:
    """Numbers the cell may hold with their probabilities: every combination of each digit's
    top-3 classes on the chosen segmentation, plus the best reading of each other way of
    splitting its blobs. Values that do not fit the cell are left out."""
    out: dict[int, float] = {}
    # each digit's top classes and their probabilities, once (hypotheses share digits)
    top_of = np.argsort(probs, axis=1)[:, ::-1][:, :TOP_K].tolist()
    p_of = probs.tolist()

    def add(indices: list[int], penalty: float) -> None:
        if not indices or len(indices) > max_digits:
            return
        combos: list[tuple[str, float]] = [("", penalty)]
        for i in indices:
            row, top = p_of[i], top_of[i]
            combos = [(s + str(d), p * row[d]) for s, p in combos for d in top]
        for text, p in combos:
            value = int(text)
            out[value] = max(out.get(value, 0.0), p)

    add(chosen, 1.0)
    if seg.groups:
        pos = 0
        for hypotheses in seg.groups:
            best = next(h for h in hypotheses if set(h) <= set(chosen))
            for alt in hypotheses:
                if alt is best:
                    continue
                swapped = [*chosen[:pos], *alt, *chosen[pos + len(best):]]
                add(swapped, float(np.exp(-SPLIT_PENALTY * max(0, len(alt) - 1))))
            pos += len(best)
    ranked = sorted(out.items(), key=lambda kv: -kv[1])[:MAX_CANDIDATES]
    return [(v, round(p, 6)) for v, p in ranked]
