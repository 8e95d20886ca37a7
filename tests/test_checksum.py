"""Checksum-aware decoding on the national form: readings are chosen so that every column adds
up to its total and the total equals the envelopes (sobres)."""

import pytest

from tasks.checksum import _Mass, apply_checksum, decode, sum_relations
from tasks.compose import CellReading


def _prefix_masses(cells: list[str], logp: dict[str, dict[int, float]], limit: int) -> list:
    """masses[i] = total probability of the first i cells' values summing to each s, one cell at a
    time: the reference the decoder's tables are checked against."""
    out = [_Mass.start(limit + 1)]
    for c in cells[:-1]:
        out.append(out[-1].add_cell(logp[c]))
    return out


def truth() -> dict[str, int]:
    col = {"87": 4, "501": 15, "502": 8, "503": 135, "504": 2, "505": 7, "506": 1, "507": 6,
           "508": 94, "blanco": 5, "nulos": 6, "recurridos": 0, "impugnada": 0, "total": 283}
    values = {f"{cat}/{row}": v for cat in ("senadores", "diputados") for row, v in col.items()}
    values.update({"header/sobres": 283, "header/electores": 283, "header/diferencia": 0})
    return values


def sure(v: int) -> CellReading:
    return CellReading(v, str(v), 0.99, "ok", None, candidates=[(v, 0.99)])


def cells_from(values: dict[str, int]) -> dict[str, CellReading]:
    return {c: sure(v) for c, v in values.items()}


def test_relations_are_read_as_sums(template):
    rels = {r.name: r for r in sum_relations(template)}
    assert rels["senadores_sum"].target == "senadores/total"
    assert len(rels["senadores_sum"].addends) == 13
    assert rels["diferencia"].target == "header/sobres"
    assert set(rels["diferencia"].addends) == {"header/electores", "header/diferencia"}


def test_a_consistent_telegram_is_kept(template):
    cells = cells_from(truth())
    out = apply_checksum(template, cells, 0.9)
    assert {c: r.value for c, r in out.items()} == truth()
    assert all(r.status == "ok" for r in out.values())
    assert decode(template, cells).confidence > 0.99


def test_a_misread_digit_is_corrected_by_the_sums(template):
    cells = cells_from(truth())
    # 94 misread as 84, with 94 as the runner-up
    cells["senadores/508"] = CellReading(84, "84", 0.6, "review", None,
                                         candidates=[(84, 0.6), (94, 0.35)])
    out = apply_checksum(template, cells, 0.9)
    fixed = out["senadores/508"]
    assert fixed.value == 94 and fixed.digits == "94"
    assert fixed.status == "ok" and "corrected by checksum" in fixed.reason
    assert out["senadores/503"].value == 135


def test_ambiguous_swap_goes_to_review(template):
    cells = cells_from(truth())
    # 7 and 1 in two cells of one column: swapping them keeps every sum
    cells["diputados/505"] = CellReading(7, "7", 0.52, "review", None, candidates=[(7, 0.52), (1, 0.45)])
    cells["diputados/506"] = CellReading(1, "1", 0.51, "review", None, candidates=[(1, 0.51), (7, 0.47)])
    out = apply_checksum(template, cells, 0.9)
    assert out["diputados/505"].status == "review" and out["diputados/506"].status == "review"
    assert "uncertain" in out["diputados/505"].reason
    assert out["diputados/503"].status == "ok"


def test_unreadable_cell_is_inferred_but_sent_to_review(template):
    cells = cells_from(truth())
    cells["senadores/503"] = CellReading(None, "", 0.0, "unreadable", "scribbled over")
    out = apply_checksum(template, cells, 0.9)
    r = out["senadores/503"]
    assert r.value == 135 and r.status == "review"
    assert "inferred from the sums" in r.reason
    assert out["senadores/total"].status == "ok"


def test_blank_cells_that_sum_to_zero_stay_blank(template):
    cells = cells_from(truth())
    cells["senadores/recurridos"] = CellReading(None, "", 1.0, "empty", "no ink in the cell",
                                                candidates=[(0, 1.0)])
    out = apply_checksum(template, cells, 0.9)
    assert out["senadores/recurridos"].status == "empty" and out["senadores/recurridos"].value is None


@pytest.mark.parametrize("bad", [300, 180])
def test_a_wrong_total_is_fixed_from_the_parties_and_sobres(template, bad):
    cells = cells_from(truth())
    cells["diputados/total"] = CellReading(bad, str(bad), 0.9, "ok", None, candidates=[(bad, 0.9)])
    out = apply_checksum(template, cells, 0.9)
    assert out["diputados/total"].value == 283
    assert out["diputados/total"].status == "review"


def test_knapsack_masses_and_best_match_enumeration():
    """The solver's per-sum tables against every assignment of three small cells, each value
    weighted by its candidate probability plus the wildcard's (any value at all)."""
    import itertools
    import math

    from tasks.checksum import OUTSIDE, WILDCARD, _knapsack

    limit = 12
    logp = {"a": {2: math.log(0.7), 3: math.log(0.2)}, "b": {5: math.log(0.9)},
            "c": {0: math.log(0.5), 4: math.log(0.4), 11: math.log(0.05)}}
    cells = ["a", "b", "c"]
    best, _back, mass, prefixes = _knapsack(cells, logp, limit)

    def weight(c: str, x: int) -> float:  # a value is a candidate, or the wildcard, or both
        return math.exp(logp[c].get(x, -math.inf)) + OUTSIDE / 1000

    def log_best(c: str, x: int) -> float:
        return max(logp[c].get(x, -math.inf), WILDCARD)

    total = [0.0] * (limit + 1)
    top = [-math.inf] * (limit + 1)
    for xa, xb, xc in itertools.product(range(limit + 1), repeat=3):
        s = xa + xb + xc
        if s <= limit:
            total[s] += weight("a", xa) * weight("b", xb) * weight("c", xc)
            top[s] = max(top[s], log_best("a", xa) + log_best("b", xb) + log_best("c", xc))
    for s in range(limit + 1):
        assert mass[s] == pytest.approx(math.log(total[s]), abs=1e-9)
        assert best[s] == pytest.approx(top[s], abs=1e-9)
    # the prefix masses are the same tables over the first cells
    two = _prefix_masses(cells, logp, limit)[2]
    assert [prefixes[2][s] for s in range(limit + 1)] == pytest.approx([two[s] for s in range(limit + 1)])
    assert two[7] == pytest.approx(math.log(sum(weight("a", x) * weight("b", 7 - x) for x in range(8))))


def _random_logp(rng, cells, limit):
    import math

    return {c: {rng.randint(0, limit): math.log(rng.choice([1e-12, 1e-5, rng.random()]))
                for _ in range(rng.randint(0, 5))} for c in cells}


def test_unwound_values_reach_the_best_sum():
    """The choices `_unwind` finds from the tables before each cell add up to the sum and score
    exactly its best log-probability."""
    import random

    from tasks.checksum import NEG, WILDCARD, _knapsack, _unwind

    rng = random.Random(1)
    cells = ["a", "b", "c", "d"]
    for _ in range(200):
        limit = rng.choice([9, 30, 99])
        logp = _random_logp(rng, cells, limit)
        best, before, _mass, _prefixes = _knapsack(cells, logp, limit)
        for total in rng.sample(range(limit + 1), 5):
            values = _unwind(cells, before, logp, total)
            assert sum(values.values()) == total
            score = sum(max(logp[c].get(v, NEG), WILDCARD) for c, v in values.items())
            assert score == pytest.approx(best[total], abs=1e-9)


def test_leaf_marginals_match_the_sum_over_root_values():
    """The backward pass gives each leaf the same marginal as summing, root value by root
    value, the leaves before it times the leaves after it."""
    import math
    import random

    import numpy as np

    from tasks.checksum import NEG, WILDCARD, _knapsack, _leaf_marginals

    rng = random.Random(2)
    leaves = ["a", "b", "c", "d", "e"]
    limit = 60
    for _ in range(50):
        logp = _random_logp(rng, leaves, limit)
        _best, _before, _mass, prefix = _knapsack(leaves, logp, limit)
        values = {c: rng.randint(0, 12) for c in leaves}
        rest = {s: rng.uniform(-30, -3) for s in rng.sample(range(limit + 1), 6)}
        got = _leaf_marginals(leaves, values, logp, prefix, rest, 0.0)
        suffix = _prefix_masses(leaves[::-1], logp, limit)[::-1]
        for i, c in enumerate(leaves):
            v = values[c]
            own = float(np.logaddexp(logp[c].get(v, NEG), WILDCARD))
            total = 0.0
            for s, r in rest.items():
                if s >= v:
                    both = float(np.dot(prefix[i].lin[: s - v + 1], suffix[i].lin[s - v :: -1]))
                    total += math.exp(r + own + prefix[i].scale + suffix[i].scale) * both
            if total > 0:
                assert got[c] == pytest.approx(min(1.0, total), rel=1e-12)
            else:
                assert c not in got


def test_add_cell_adds_in_the_order_of_slice_updates():
    """Bit for bit the masses of one slice update per candidate, in the candidates' order: the
    joint confidence must not move with the way the sums are batched."""
    import math
    import random

    import numpy as np

    from tasks.checksum import OUTSIDE, _Mass

    rng = random.Random(3)
    for _ in range(300):
        n = rng.choice([10, 100, 1000])
        mass = _Mass(np.array([rng.random() ** rng.choice((1, 8, 40)) for _ in range(n)]), rng.random())
        cands = {rng.randint(0, n + 5): math.log(max(rng.random(), 1e-12)) for _ in range(rng.randint(0, 12))}
        want = np.cumsum(mass.lin)
        want *= OUTSIDE / 1000
        for v, lp in cands.items():
            if v < n:
                want[v:] += mass.lin[: n - v] * math.exp(lp)
        want = _Mass(want, mass.scale)
        got = mass.add_cell(cands)
        assert np.array_equal(got.lin, want.lin) and got.scale == want.scale


def test_knapsack_masses_are_those_of_add_cell_bit_for_bit():
    import random

    import numpy as np

    from tasks.checksum import _knapsack

    rng = random.Random(4)
    cells = ["a", "b", "c", "d", "e", "f"]
    for _ in range(50):
        logp = _random_logp(rng, cells, 999)
        _best, _before, mass, prefixes = _knapsack(cells, logp, 999)
        chain = _prefix_masses(cells, logp, 999)
        chain.append(chain[-1].add_cell(logp[cells[-1]]))
        for got, want in zip([*prefixes, mass], chain, strict=True):
            assert np.array_equal(got.lin, want.lin) and got.scale == want.scale
