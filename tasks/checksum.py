"""Checksum-aware decoding: choose the most probable readings of a whole telegram that satisfy
the form's own arithmetic (parties + blanco + nulos + recurridos + impugnada = total = sobres,
sobres - electores = diferencia), and say how sure that joint choice is.

Each cell offers a few candidate numbers with probabilities (tasks.compose). The template's
relations are read as "target = sum of addends". The solver enumerates the value of the root
cell (the one most relations end in: sobres on the national form); given it, each relation
is a knapsack over its addends, solved once by dynamic programming over all sums. The joint
confidence is the winning root value's share of the probability over all root values.

Templates whose relations do not have this shape are only checked, not decoded.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from tasks.compose import CellReading
from tasks.template import Template

NEG = -1e18
# Prior that a cell's truth is none of its candidates (a digit lost or added by segmentation,
# say), spread evenly over the 1000 values a cell can hold. It lets the sums name the one
# cell that is off instead of "correcting" several good ones to make them add up.
OUTSIDE = 0.1
WILDCARD = math.log(OUTSIDE / 1000)


@dataclass(frozen=True)
class SumRelation:
    name: str
    target: str
    addends: tuple[str, ...]


def sum_relations(template: Template) -> list[SumRelation] | None:
    """The relations as target = sum(addends); None when one does not have that shape."""
    out = []
    for r in template.relations:
        neg = [c for c, k in r.terms.items() if k == -1]
        pos = [c for c, k in r.terms.items() if k == 1]
        if len(neg) + len(pos) != len(r.terms):
            return None
        if len(neg) == 1:
            out.append(SumRelation(r.name, neg[0], tuple(pos)))
        elif len(pos) == 1:
            out.append(SumRelation(r.name, pos[0], tuple(neg)))
        else:
            return None
    return out


@dataclass
class Decoded:
    values: dict[str, int]
    confidence: float  # posterior probability of the whole winning assignment
    relations: list[str]
    marginals: dict[str, float]  # per cell: posterior probability of its decoded value


def _logp(cands: list[tuple[int, float]]) -> dict[int, float]:
    return {v: math.log(max(p, 1e-12)) for v, p in cands}


class _Mass:
    """Total probability of the choices summing to each s, as `lin * e**scale` with the largest
    `lin` at 1: sums of products are then plain NumPy arithmetic, ten times cheaper than
    logaddexp. A mass under 1e-308 of the largest becomes 0 (impossible), far below anything a
    confidence can show. `mass[s]` is the log mass (NEG when impossible)."""

    __slots__ = ("lin", "scale")

    def __init__(self, lin: np.ndarray, scale: float) -> None:
        top = float(lin.max())
        if top > 0:
            lin, scale = lin / top, scale + math.log(top)
        self.lin, self.scale = lin, scale

    def __getitem__(self, s: int) -> float:
        v = float(self.lin[s])
        return self.scale + math.log(v) if v > 0 else NEG

    @classmethod
    def start(cls, n: int) -> _Mass:
        lin = np.zeros(n)
        lin[0] = 1.0  # no cell yet: sum 0, surely
        return cls(lin, 0.0)

    def add_cell(self, cands: dict[int, float]) -> _Mass:
        """The masses after one more cell: one of its candidates, or the wildcard (any value)."""
        n = len(self.lin)
        new = np.cumsum(self.lin)
        new *= OUTSIDE / 1000  # e**WILDCARD
        for v, lp in cands.items():
            if v < n:
                new[v:] += self.lin[: n - v] * math.exp(lp)
        return _Mass(new, self.scale)


def _knapsack(cells: list[str], logp: dict[str, dict[int, float]], limit: int
              ) -> tuple[np.ndarray, list[np.ndarray], _Mass, list[_Mass]]:
    """Over the cells' candidate values: best[s] = max log-prob of values summing to s (with
    backpointers per cell), and the mass of all such choices at each s, which is what makes
    the joint confidence honest when two readings give the same sum. Also the mass before
    each cell: the prefix masses of `_prefix_masses`, already at hand.

    A candidate v only touches sums >= v (below, its shifted array would be NEG, which never
    wins), so the updates work on slices."""
    n = limit + 1
    best = np.full(n, NEG)
    best[0] = 0.0
    mass = _Mass.start(n)
    back = []
    prefixes = []
    positions = np.arange(n)
    for c in cells:
        prefixes.append(mass)
        new = np.full(n, NEG)
        choice = np.full(n, -1, dtype=np.int64)
        for v, lp in logp[c].items():
            if v > limit:
                continue
            shifted = best[: n - v] + lp
            tail = new[v:]
            better = shifted > tail
            tail[better] = shifted[better]
            choice[v:][better] = v
        # the wildcard: any value at all, for a cell whose truth is not among its candidates
        run_best = np.maximum.accumulate(best)
        at = np.maximum.accumulate(np.where(best >= run_best, positions, 0))
        wild = run_best + WILDCARD
        better = wild > new
        new[better] = wild[better]
        choice[better] = (positions - at)[better]
        best, mass = new, mass.add_cell(logp[c])
        back.append(choice)
    return best, back, mass, prefixes


def _prefix_masses(cells: list[str], logp: dict[str, dict[int, float]], limit: int) -> list[_Mass]:
    """masses[i] = total probability of the first i cells' values summing to each s."""
    out = [_Mass.start(limit + 1)]
    for c in cells[:-1]:
        out.append(out[-1].add_cell(logp[c]))
    return out


def _unwind(cells: list[str], back: list[np.ndarray], total: int) -> dict[str, int]:
    out = {}
    s = total
    for c, choice in zip(reversed(cells), reversed(back), strict=True):
        v = int(choice[s])
        out[c] = v
        s -= v
    return out


def decode(template: Template, cells: dict[str, CellReading]) -> Decoded | None:
    """The most probable consistent assignment of the related cells, or None if there is none
    (or the relations are not of a shape this solver handles)."""
    rels = sum_relations(template)
    if not rels:
        return None
    involved = {c for r in rels for c in (r.target, *r.addends)}
    if not involved <= set(cells):
        return None
    logp = {c: _logp(cells[c].candidates) for c in involved}
    root = Counter(r.target for r in rels).most_common(1)[0][0]
    limit = 10 ** max(template.cell(c).max_digits for c in involved) - 1
    # relations ending in the root; an addend may itself be the target of one more relation
    # (a column total), whose addends must all be leaves
    by_target = {r.target: r for r in rels}
    plans = []
    for r in rels:
        if r.target != root:
            continue
        parts = []
        for a in r.addends:
            sub = by_target.get(a)
            if sub is None:
                parts.append((a, None))
            elif any(x in by_target for x in sub.addends):
                return None
            else:
                parts.append((a, (list(sub.addends), *_knapsack(list(sub.addends), logp, limit))))
        leaves = [a for a, sub in parts if sub is None]
        plans.append((r, parts, leaves, _knapsack(leaves, logp, limit) if len(leaves) > 1 else None))
    covered = {r.name for r, *_ in plans} | {by_target[a].name for r, parts, *_ in plans
                                             for a, sub in parts if sub is not None}
    if covered != {r.name for r in rels}:
        return None

    def score(s: int, use_mass: bool) -> float:
        """log-prob of the best (or, with use_mass, of all) consistent readings with root = s."""
        k = 2 if use_mass else 0
        total = max(logp[root].get(s, NEG), WILDCARD)
        for _r, parts, leaves, ks in plans:
            if ks is not None and all(sub is None for _, sub in parts):
                total += ks[k][s]
                continue
            for a, sub in parts:
                if sub is None:
                    total += max(logp[a].get(s, NEG), WILDCARD) if len(leaves) == 1 else 0.0
                else:
                    total += max(logp[a].get(s, NEG), WILDCARD) + sub[1 + k][s]
        return max(total, NEG)

    candidates = {v for v, _ in cells[root].candidates}
    for r in rels:
        if r.target == root and len(r.addends) == 1:
            candidates |= {v for v, _ in cells[r.addends[0]].candidates}
    for _r, parts, _leaves, ks in plans:  # what each column adds up to on its own
        arrays = [ks[0]] if ks is not None else []
        arrays += [sub[1] for _a, sub in parts if sub is not None]
        for best in arrays:
            candidates |= {int(i) for i in np.argsort(best)[::-1][:3]}
    scores = {s: score(s, False) for s in candidates if 0 <= s <= limit}
    finite = {s: v for s, v in scores.items() if v > NEG / 2}
    if not finite:
        return None
    s_best = max(finite, key=finite.get)
    masses = [score(s, True) for s in finite]
    top = max(masses)
    log_total = top + math.log(sum(math.exp(m - top) for m in masses))
    confidence = math.exp(finite[s_best] - log_total)
    values = {root: s_best}
    # leaf cells summing to the root value, their mass and their prefix masses
    groups: list[tuple[list[str], _Mass, list[_Mass]]] = []
    for _r, parts, leaves, ks in plans:
        if ks is not None and all(sub is None for _, sub in parts):
            values.update(_unwind(leaves, ks[1], s_best))
            groups.append((leaves, ks[2], ks[3]))
            continue
        for a, sub in parts:
            values[a] = s_best
            if sub is not None:
                values.update(_unwind(sub[0], sub[2], s_best))
                groups.append((sub[0], sub[3], sub[4]))
    mass_by_s = dict(zip(finite, masses, strict=True))
    root_marginal = math.exp(mass_by_s[s_best] - log_total)
    marginals = {c: root_marginal for c in values}
    # a root value's share of a cell's marginal is at most its own share of the total: those
    # below e^-40 of it cannot move a confidence rounded to 4 decimals, and are skipped
    weighty = [s for s in finite if mass_by_s[s] > log_total - 40]
    for leaves, group_mass, prefix in groups:
        rest = {s: mass_by_s[s] - group_mass[s] for s in weighty if group_mass[s] > NEG / 2}
        suffix = _prefix_masses(leaves[::-1], logp, limit)[::-1]
        for i, c in enumerate(leaves):
            v = values[c]
            own_or_wild = float(np.logaddexp(logp[c].get(v, NEG), WILDCARD))
            pre, suf = prefix[i], suffix[i]
            terms = []
            for s, r in rest.items():
                t = s - v  # what the other leaves add up to
                if t < 0:
                    continue
                both = float(np.dot(pre.lin[: t + 1], suf.lin[t::-1]))
                if both > 0:
                    terms.append(r + own_or_wild + pre.scale + suf.scale + math.log(both))
            if terms:
                top_t = max(terms)
                lse = top_t + math.log(sum(math.exp(t - top_t) for t in terms))
                marginals[c] = min(1.0, math.exp(lse - log_total))
    return Decoded(values, confidence, [r.name for r in rels], marginals)


def apply_checksum(template: Template, cells: dict[str, CellReading], min_confidence: float
                   ) -> dict[str, CellReading]:
    """Cells re-read under the form's relations: corrected where the sums demand it, `ok` only
    when the joint reading is confident, otherwise `review` with the reason."""
    out = dict(cells)
    rels = sum_relations(template) or []
    involved = sorted({c for r in rels for c in (r.target, *r.addends)} & set(cells))
    if not involved:
        return out
    decoded = decode(template, cells)
    if decoded is None:
        plain = {c: r.value if r.value is not None else 0 for c, r in cells.items()
                 if r.status in ("ok", "empty", "review")}
        broken = template.violations(plain) if len(plain) == len(cells) else ["unreadable cell"]
        for c in involved:
            r = out[c]
            if broken and r.status == "ok":
                out[c] = replace(r, status="review",
                                 reason=f"no reading of the telegram satisfies {', '.join(broken)}")
        return out
    for c in involved:
        r = out[c]
        v = decoded.values[c]
        if r.status == "empty" and v == 0:
            continue  # a blank cell the sums agree is zero stays blank
        own = dict(r.candidates).get(v, 0.0)
        if v != r.value and not (r.value is None and v == 0 and r.status == "empty"):
            r = replace(r, value=v, digits=str(v),
                        reason=f"corrected by checksum: read {r.digits or r.status}, sums give {v}")
        conf = round(decoded.marginals.get(c, decoded.confidence), 4)
        if conf >= min_confidence and own > 0:
            status = "empty" if r.status == "empty" and v == 0 else "ok"
            keep = r.reason if r.reason and r.reason.startswith("corrected") else None
            out[c] = replace(r, status=status, confidence=conf, reason=keep)
        elif own == 0:
            out[c] = replace(r, status="review", confidence=conf, reason=(
                f"value {v} inferred from the sums; the cell reads {r.digits or r.status}"))
        else:
            out[c] = replace(r, status="review", confidence=conf, reason=(
                f"the sums leave this cell uncertain (confidence {conf:.2f})"
                + (f"; {r.reason}" if r.reason else "")))
    return out
