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
from collections.abc import Callable
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


_Part = tuple[str, tuple[str, ...] | None]  # an addend of a root relation, and its own addends
# of a root value's score: a cell's own log-probability (`dict.get`) and a table's value at s
_Term = tuple[Callable[[int, float], float] | None, Callable[[int], float]]


@dataclass(frozen=True)
class _Form:
    """What decoding needs of a template, derived once per template (templates are frozen)
    rather than once per telegram. `plans` is None when the relations are not of a shape the
    solver handles; else per relation ending in the root, its parts and those that are leaves."""

    relations: list[SumRelation] | None
    involved: tuple[str, ...]  # sorted
    root: str = ""
    limit: int | None = None  # None: a related cell the template does not define
    plans: tuple[tuple[tuple[_Part, ...], tuple[str, ...]], ...] | None = None


_FORMS: dict[int, tuple[Template, _Form]] = {}


def _form(template: Template) -> _Form:
    """The template's `_Form`, memoised by identity (the template is kept, so its id is not
    reused while cached)."""
    hit = _FORMS.get(id(template))
    if hit is not None and hit[0] is template:
        return hit[1]
    form = _derive_form(template)
    if len(_FORMS) >= 64:
        _FORMS.clear()
    _FORMS[id(template)] = (template, form)
    return form


def _derive_form(template: Template) -> _Form:
    rels = sum_relations(template)
    involved = tuple(sorted({c for r in rels or [] for c in (r.target, *r.addends)}))
    if not rels:
        return _Form(rels, involved)
    root = Counter(r.target for r in rels).most_common(1)[0][0]
    digits = {c.id: c.max_digits for c in template.cells}
    limit = 10 ** max(digits[c] for c in involved) - 1 if set(involved) <= digits.keys() else None
    # relations ending in the root; an addend may itself be the target of one more relation
    # (a column total), whose addends must all be leaves
    by_target = {r.target: r for r in rels}
    plans = []
    for r in rels:
        if r.target != root:
            continue
        parts: list[_Part] = []
        for a in r.addends:
            sub = by_target.get(a)
            if sub is None:
                parts.append((a, None))
            elif any(x in by_target for x in sub.addends):
                return _Form(rels, involved, root, limit)
            else:
                parts.append((a, sub.addends))
        plans.append((tuple(parts), tuple(a for a, sub in parts if sub is None)))
    covered = {r.name for r in rels if r.target == root} | {
        by_target[a].name for parts, _ in plans for a, sub in parts if sub is not None}
    if covered != {r.name for r in rels}:
        return _Form(rels, involved, root, limit)
    return _Form(rels, involved, root, limit, tuple(plans))


def _nothing(s: int) -> float:
    """The table of a term that is a cell's own log-probability alone."""
    return 0.0


def _logp(cands: list[tuple[int, float]]) -> dict[int, float]:
    return {v: math.log(max(p, 1e-12)) for v, p in cands}


def _windows(padded: np.ndarray) -> np.ndarray:
    """Rows laid out as `head (n) | fill (n) | table (n)`, seen as windows[j, k] =
    padded[j, k:k + n] without a copy: window 0 is the head and window 2n - v the table shifted
    by v (the fill below v). Gathering the windows of all candidates at once replaces a slice
    update per candidate."""
    r, width = padded.shape
    n = width // 3
    return np.ndarray((r, 2 * n + 1, n), np.float64, padded, 0, (width * 8, 8, 8))


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
        v = self.lin.item(s)
        return self.scale + math.log(v) if v > 0 else NEG

    @classmethod
    def start(cls, n: int) -> _Mass:
        lin = np.zeros(n)
        lin[0] = 1.0  # no cell yet: sum 0, surely
        return cls(lin, 0.0)

    def add_cell(self, cands: dict[int, float]) -> _Mass:
        """The masses after one more cell: one of its candidates, or the wildcard (any value)."""
        padded = np.zeros((1, 3 * len(self.lin)))
        return _Mass(_spread(self.lin, cands, padded, _windows(padded)[0]), self.scale)


def _weighted_sum(rows: np.ndarray, logps: list[float]) -> np.ndarray:
    """rows[0] plus each next row times its candidate's probability, added row after row (NumPy
    sums along the first axis in order): the same additions, in the same order, as one slice
    update per candidate."""
    if logps:
        rows[1:] *= np.array([math.exp(lp) for lp in logps])[:, None]
    return rows.sum(axis=0)


def _spread(lin: np.ndarray, cands: dict[int, float], padded: np.ndarray, windows: np.ndarray
            ) -> np.ndarray:
    """`lin` after one more cell, not yet rescaled (`_Mass.add_cell`). `padded` (1, 3n) has
    zeros in its middle third and `windows` = `_windows(padded)[0]`: kept across cells."""
    n = len(lin)
    shifts = [v for v in cands if v < n]
    head = padded[0, :n]
    np.add.accumulate(lin, out=head)
    head *= OUTSIDE / 1000  # e**WILDCARD
    padded[0, 2 * n :] = lin
    return _weighted_sum(windows[np.array([0, *(2 * n - v for v in shifts)])],
                         [cands[v] for v in shifts])


def _knapsack(cells: list[str], logp: dict[str, dict[int, float]], limit: int
              ) -> tuple[np.ndarray, list[np.ndarray], _Mass, list[_Mass]]:
    """Over the cells' candidate values: best[s] = max log-prob of values summing to s, and the
    mass of all such choices at each s, which is what makes the joint confidence honest when
    two readings give the same sum. Also the best table and the mass before each cell (the
    prefix masses, already at hand): `_unwind` finds the choices behind one
    sum from them, cheaper than keeping a backpointer for every sum."""
    n = limit + 1
    best = np.full(n, NEG)
    best[0] = 0.0
    mass = _Mass.start(n)
    before = []
    prefixes = []
    # both tables laid out for `_windows`, shifted by every candidate in one gather; the head of
    # each is the wildcard: any value at all, for a cell whose truth is not among its candidates
    padded = np.empty((2, 3 * n))
    padded[0, n : 2 * n] = NEG
    padded[1, n : 2 * n] = 0.0
    windows = _windows(padded)
    for c in cells:
        prefixes.append(mass)
        before.append(best)
        cands = logp[c]
        shifts = [v for v in cands if v <= limit]
        logps = [cands[v] for v in shifts]
        if len(before) == 1:
            # from sum 0 alone: the wildcard gives every sum e**WILDCARD, a candidate its own
            # probability too (the general step below, without its additions of zero)
            best = np.full(n, WILDCARD)
            best[shifts] = np.maximum(logps, WILDCARD)
            lin = np.full(n, OUTSIDE / 1000)
            lin[shifts] += [math.exp(lp) for lp in logps]
            mass = _Mass(lin, mass.scale)
            continue
        head = padded[0, :n]
        np.maximum.accumulate(best, out=head)
        head += WILDCARD
        padded[0, 2 * n :] = best
        head = padded[1, :n]
        np.add.accumulate(mass.lin, out=head)
        head *= OUTSIDE / 1000  # e**WILDCARD
        padded[1, 2 * n :] = mass.lin
        rows = windows[:, np.array([0, *(2 * n - v for v in shifts)])]
        if logps:
            rows[0, 1:] += np.array(logps)[:, None]
        best, mass = rows[0].max(axis=0), _Mass(_weighted_sum(rows[1], logps), mass.scale)
    return best, before, mass, prefixes


def _unwind(cells: list[str], before: list[np.ndarray], logp: dict[str, dict[int, float]],
            total: int) -> dict[str, int]:
    """The values behind best[total], from the last cell back: at each sum, the first candidate
    with the highest score, unless the wildcard (the best sum below, at its last position)
    beats it, as `_knapsack` built the table."""
    out = {}
    s = total
    for c, prev in zip(reversed(cells), reversed(before), strict=True):
        top, v = NEG, -1
        at = prev.item
        for x, lp in logp[c].items():
            if x <= s and at(s - x) + lp > top:
                top, v = at(s - x) + lp, x
        head = prev[: s + 1]
        run = float(head.max())
        if run + WILDCARD > top:
            v = s - int(np.flatnonzero(head == run)[-1])
        out[c] = v
        s -= v
    return out


def _leaf_marginals(leaves: list[str], values: dict[str, int], logp: dict[str, dict[int, float]],
                    prefix: list[_Mass], rest: dict[int, float], log_total: float
                    ) -> dict[str, float]:
    """Each leaf's posterior probability of its decoded value. e**rest[s] weighs root value s
    by everything but these leaves; a backward pass carries it over the leaves from the last,
    so that a leaf's marginal is one dot with its prefix masses (not one per root value, nor a
    suffix table per leaf). Equal to the sum over root values up to float rounding."""
    m = max(rest) + 1
    scale = max(rest.values())
    # after[m - 1 - u] * e**scale: the weight of the leaves after the current one reaching
    # u on their way to a root value. Reversed, one more leaf is an `add_cell` step.
    after = np.zeros(m)
    for s, r in rest.items():
        after[m - 1 - s] = math.exp(r - scale)
    padded = np.zeros((1, 3 * m))
    windows = _windows(padded)[0]
    out = {}
    for i in range(len(leaves) - 1, -1, -1):
        c = leaves[i]
        v = values[c]
        pre = prefix[i]
        if v < m:
            both = float(np.dot(pre.lin[: m - v], after[m - 1 - v :: -1]))
            if both > 0:
                own = logp[c].get(v, NEG)  # or the wildcard: log(e**own + e**WILDCARD)
                own_or_wild = max(own, WILDCARD) + math.log1p(math.exp(-abs(own - WILDCARD)))
                lse = own_or_wild + pre.scale + scale + math.log(both)
                out[c] = min(1.0, math.exp(lse - log_total))
        if i:  # not rescaled: a cell multiplies the weights by its total probability, a few at most
            after = _spread(after, logp[c], padded, windows)
    return out


def decode(template: Template, cells: dict[str, CellReading]) -> Decoded | None:
    """The most probable consistent assignment of the related cells, or None if there is none
    (or the relations are not of a shape this solver handles)."""
    form = _form(template)
    rels = form.relations
    if not rels:
        return None
    involved = form.involved
    if not cells.keys() >= set(involved):
        return None
    limit = form.limit
    if limit is None:  # raises the KeyError of the undefined cell
        limit = 10 ** max(template.cell(c).max_digits for c in involved) - 1
    if form.plans is None:
        return None
    root = form.root
    logp = {c: _logp(cells[c].candidates) for c in involved}
    plans = []
    for parts, leaves in form.plans:
        tabled = [(a, None if sub is None else (list(sub), *_knapsack(list(sub), logp, limit)))
                  for a, sub in parts]
        plans.append((tabled, list(leaves),
                      _knapsack(list(leaves), logp, limit) if len(leaves) > 1 else None))
    # score(s) adds, in this order, per plan either its leaves' table at s, or per part the
    # part's own term and its column's table (a lone leaf: its own term; other leaves: nothing)
    best_terms: list[_Term] = []
    mass_terms: list[_Term] = []
    for parts, leaves, ks in plans:
        if ks is not None and all(sub is None for _, sub in parts):
            best_terms.append((None, ks[0].item))
            mass_terms.append((None, ks[2].__getitem__))
            continue
        for a, sub in parts:
            if sub is None:
                if len(leaves) == 1:
                    best_terms.append((logp[a].get, _nothing))
                    mass_terms.append((logp[a].get, _nothing))
            else:
                best_terms.append((logp[a].get, sub[1].item))
                mass_terms.append((logp[a].get, sub[3].__getitem__))
    root_logp = logp[root].get

    def score(s: int, use_mass: bool) -> float:
        """log-prob of the best (or, with use_mass, of all) consistent readings with root = s."""
        total = max(root_logp(s, NEG), WILDCARD)
        for own, table in mass_terms if use_mass else best_terms:
            if own is None:
                total += table(s)
            elif table is _nothing:
                total += max(own(s, NEG), WILDCARD)
            else:
                total += max(own(s, NEG), WILDCARD) + table(s)
        return max(total, NEG)

    candidates = {v for v, _ in cells[root].candidates}
    for r in rels:
        if r.target == root and len(r.addends) == 1:
            candidates |= {v for v, _ in cells[r.addends[0]].candidates}
    for parts, _leaves, ks in plans:  # what each column adds up to on its own
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
    for parts, leaves, ks in plans:
        if ks is not None and all(sub is None for _, sub in parts):
            values.update(_unwind(leaves, ks[1], logp, s_best))
            groups.append((leaves, ks[2], ks[3]))
            continue
        for a, sub in parts:
            values[a] = s_best
            if sub is not None:
                values.update(_unwind(sub[0], sub[2], logp, s_best))
                groups.append((sub[0], sub[3], sub[4]))
    mass_by_s = dict(zip(finite, masses, strict=True))
    root_marginal = math.exp(mass_by_s[s_best] - log_total)
    marginals = {c: root_marginal for c in values}
    # a root value's share of a cell's marginal is at most its own share of the total: those
    # below e^-40 of it cannot move a confidence rounded to 4 decimals, and are skipped
    weighty = [s for s in finite if mass_by_s[s] > log_total - 40]
    for leaves, group_mass, prefix in groups:
        rest = {}
        for s in weighty:
            g = group_mass[s]
            if g > NEG / 2:
                rest[s] = mass_by_s[s] - g
        if not rest:
            continue
        marginals.update(_leaf_marginals(leaves, values, logp, prefix, rest, log_total))
    return Decoded(values, confidence, [r.name for r in rels], marginals)


def apply_checksum(template: Template, cells: dict[str, CellReading], min_confidence: float
                   ) -> dict[str, CellReading]:
    """Cells re-read under the form's relations: corrected where the sums demand it, `ok` only
    when the joint reading is confident, otherwise `review` with the reason."""
    out = dict(cells)
    involved = [c for c in _form(template).involved if c in cells]
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
