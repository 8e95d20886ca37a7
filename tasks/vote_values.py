"""Plausible vote counts for one mesa, consistent with every arithmetic relation of the form.

The generator writes these numbers into synthetic telegrams, so they should look like real
counts: a few parties take most votes, blank/null votes are few, recurridos and impugnada are
almost always zero, and each column adds up to the envelopes in the box (sobres).
"""

from __future__ import annotations

import numpy as np

from tasks.errors import CifrasError
from tasks.template import Template

SPECIAL_ROWS = ("blanco", "nulos", "recurridos", "impugnada", "total")
HEADER_ROWS = ("sobres", "electores", "diferencia")
_PARTY_CONCENTRATION = np.array([9.0, 6.0, 2.5, 1.2, 0.8, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1])


def _small_count(rng: np.random.Generator, high: int) -> int:
    """Mostly low values in 0..high (blank and null votes are few)."""
    return int(min(high, rng.geometric(1.0 / (1.0 + high / 3.5)) - 1))


def _rare_count(rng: np.random.Generator) -> int:
    """Recurridos / impugnada: zero on nearly every mesa, now and then 1 or 2."""
    return 0 if rng.random() < 0.93 else int(rng.integers(1, 3))


def _party_shares(rng: np.random.Generator, n: int) -> np.ndarray:
    """Skewed shares: a few big parties, a long tail of small ones, in a random order."""
    alpha = _PARTY_CONCENTRATION[:n] if n <= len(_PARTY_CONCENTRATION) else np.full(n, 0.3)
    return rng.dirichlet(rng.permutation(alpha) * rng.uniform(0.8, 1.6))


def _solve_relations(template: Template, values: dict[str, int]) -> None:
    """Fill the cells the relations determine (e.g. totals, sobres), one unknown at a time."""
    progress = True
    while progress:
        progress = False
        for rel in template.relations:
            unknown = [c for c in rel.terms if c not in values]
            if len(unknown) == 1 and abs(rel.terms[unknown[0]]) == 1:
                coef = rel.terms[unknown[0]]
                rest = sum(k * values[c] for c, k in rel.terms.items() if c != unknown[0])
                values[unknown[0]] = -rest * coef
                progress = True


def sample_values(template: Template, rng: np.random.Generator) -> dict[str, int]:
    """One value per cell of `template`; raises CifrasError if the relations cannot be met."""
    values: dict[str, int] = {}
    header = {c.row: c.id for c in template.cells if c.category == "header"}
    electores = int(rng.integers(150, 331))
    diferencia = int(rng.choice([0, 1, 2], p=[0.82, 0.12, 0.06]))
    if "electores" in header:
        values[header["electores"]] = electores
    if "diferencia" in header:
        values[header["diferencia"]] = diferencia
    _solve_relations(template, values)  # sobres = electores + diferencia
    sobres = values.get(header.get("sobres", ""), electores + diferencia)

    shares: np.ndarray | None = None
    for category in template.categories:
        if category == "header":
            continue
        cells = {c.row: c.id for c in template.cells if c.category == category}
        parties = [row for row in cells if row not in SPECIAL_ROWS]
        minor = {
            "blanco": _small_count(rng, 15),
            "nulos": _small_count(rng, 10),
            "recurridos": _rare_count(rng),
            "impugnada": _rare_count(rng),
        }
        minor = {row: v for row, v in minor.items() if row in cells}
        party_votes = max(sobres - sum(minor.values()), 0)  # electores >= 150 > 29 minor votes
        if shares is None or len(shares) != len(parties):
            shares = _party_shares(rng, len(parties))
        else:  # both categories are voted in the same envelopes: the second follows the first
            shares = rng.dirichlet(shares * 300 + 0.05)
        counts = rng.multinomial(party_votes, shares)
        values.update({cells[row]: int(v) for row, v in zip(parties, counts, strict=True)})
        values.update({cells[row]: v for row, v in minor.items()})
    _solve_relations(template, values)

    missing = [c.id for c in template.cells if c.id not in values]
    broken = template.violations(values)
    too_long = [c.id for c in template.cells if c.id in values and not 0 <= values[c.id] < 10**c.max_digits]
    if missing or broken or too_long:
        raise CifrasError(
            f"template {template.name}: sampled values leave cells {missing} unset, "
            f"break relations {broken} or overflow cells {too_long}"
        )
    return values
