"""Checksum-aware decoding on the national form: readings are chosen so that every column adds
up to its total and the total equals the envelopes (sobres)."""

import pytest

from tasks.checksum import apply_checksum, decode, sum_relations
from tasks.compose import CellReading


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

    from tasks.checksum import OUTSIDE, WILDCARD, _knapsack, _prefix_masses

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
