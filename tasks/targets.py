"""Issue #5's accuracy targets side by side with their figures: pure functions that judge an
evaluation's figures and render the table; `flows/targets.py` runs the evaluations.

Why one table: the figures come from six evaluations on five data sets, and a team comparing
models needs all of them from one command, each with the command that reproduces it alone.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass

from tasks.settings import Target


@dataclass(frozen=True)
class TargetRow:
    target: str
    metric: str
    value: float | None  # None: not measured (data absent, or the evaluation failed)
    at_least: float
    met: bool
    command: str
    note: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def command_for(target: Target, data: str, labels: str | None) -> str:
    """The single cifras command that measures this target's figures."""
    if target.kind == "digits":
        args = ["cifras", "evaluate-digits", data] + (["--split", target.split] if target.split else [])
    elif target.kind == "cells":
        args = ["cifras", "evaluate-cells", "--images", data, "--labels", labels or ""]
        args += ["--split", target.split] if target.split else []
    else:
        args = ["cifras", "read-telegram", data]
    return " ".join(shlex.quote(a) for a in [*args, "--json"])


def judge(target: Target, figures: dict | None, command: str, note: str | None = None) -> list[TargetRow]:
    """One row per bounded figure. A figure that is missing (no figures at all, or not in
    them) is unmet: a target is met only by a measurement."""
    rows = []
    for metric, bound in target.at_least.items():
        value = None if figures is None else figures.get(metric)
        value = None if value is None else float(value)
        rows.append(TargetRow(target.name, metric, value, bound, value is not None and value >= bound,
                              command, note))
    return rows


def reference_score(cells: dict[str, dict], truth: dict[str, int]) -> dict:
    """The reference telegram against its hand transcription: cells right, sent to review,
    and wrong while marked `ok` (the only kind of error the target forbids)."""
    right = [c for c in truth if cells.get(c, {}).get("value") == truth[c]]
    review = [c for c in truth if cells.get(c, {}).get("status") != "ok"]
    wrong_ok = sorted(c for c in truth if c not in right and c not in review)
    n = len(truth)
    return {"cells": n, "right": len(right), "review": len(review), "wrong_ok": wrong_ok,
            "accuracy": len(right) / n if n else None,
            "right_or_review": (n - len(wrong_ok)) / n if n else None}


def render_targets(result: dict) -> str:
    """The table for a terminal: target, figure, bound, met."""
    lines = [f"targets for {result.get('model') or 'the model'}:"]
    for r in result["rows"]:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        mark = "met" if r["met"] else "NOT MET"
        line = f"  {r['target']:<20}{r['metric']:<18}{value:>8}  >= {r['at_least']:<7}{mark}"
        lines.append(line + (f"  ({r['note']})" if r["note"] else ""))
    met = sum(r["met"] for r in result["rows"])
    lines.append(f"{met} of {len(result['rows'])} met")
    return "\n".join(lines)
