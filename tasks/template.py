"""Form templates: the fixed geometry of a telegram, loaded from conf/templates/<name>.yaml.

A template is data, not code: page size, registration marks, every value cell and the
arithmetic relations between cells. Loading validates it so that a mistyped box or relation
is one clear error at start-up rather than silently wrong crops at night.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import CifrasError
from tasks.settings import CONF_DIR

Box = tuple[int, int, int, int]  # x, y, w, h in template pixels


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(_Strict):
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Registration(BaseModel):
    """Printed rules and corners used to align a scan; extra measured keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    horizontal_rules: tuple[int, ...]
    vertical_rules: tuple[int, ...]
    table_box: Box
    header_box: Box | None = None
    # Rotation of the template's own coordinates (degrees, clockwise), when they were measured
    # on a slightly skewed reference scan: its rules are straight only after undoing it.
    skew_deg: float = 0.0


class Cell(_Strict):
    id: str
    category: str
    row: str
    label: str
    box: Box
    subboxes: int = 0
    subbox_edges: tuple[int, ...] = ()
    max_digits: int = Field(3, ge=1, le=6)

    @field_validator("box")
    @classmethod
    def _positive(cls, box: Box) -> Box:
        if box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"box {list(box)} has no area")
        return box


class Relation(_Strict):
    """sum(coefficient * value of cell) == 0 over the terms."""

    name: str
    terms: dict[str, int]

    def residual(self, values: dict[str, int]) -> int:
        return sum(coef * values[cell] for cell, coef in self.terms.items())


class Template(_Strict):
    name: str
    description: str = ""
    page: Page
    registration: Registration
    cells: tuple[Cell, ...]
    relations: tuple[Relation, ...] = ()
    printed: dict[str, Any] = Field(default_factory=dict)

    @property
    def cell_ids(self) -> list[str]:
        return [c.id for c in self.cells]

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(cell_id)

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(c.category for c in self.cells))

    def rows(self, category: str) -> list[str]:
        return [c.row for c in self.cells if c.category == category]

    def violations(self, values: dict[str, int]) -> list[str]:
        """Names of the relations that the values break (cells missing count as unknown)."""
        return [r.name for r in self.relations
                if all(c in values for c in r.terms) and r.residual(values) != 0]


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def validate_geometry(t: Template) -> None:
    """Boxes on the page, no overlapping cells, unique ids, relations over known cells."""
    seen: set[str] = set()
    for c in t.cells:
        if c.id in seen:
            raise CifrasError(f"template {t.name}: cell {c.id} is defined twice")
        seen.add(c.id)
        if c.id != f"{c.category}/{c.row}":
            raise CifrasError(f"template {t.name}: cell id {c.id} must be <category>/<row>")
        x, y, w, h = c.box
        if x < 0 or y < 0 or x + w > t.page.width or y + h > t.page.height:
            raise CifrasError(
                f"template {t.name}: cell {c.id} box {list(c.box)} lies off the "
                f"{t.page.width}x{t.page.height} page"
            )
        for edge in c.subbox_edges:
            if not x < edge < x + w:
                raise CifrasError(f"template {t.name}: cell {c.id} sub-box edge {edge} is outside its box")
    for i, a in enumerate(t.cells):
        for b in t.cells[i + 1 :]:
            if _overlap(a.box, b.box):
                raise CifrasError(f"template {t.name}: cells {a.id} and {b.id} overlap")
    for r in t.relations:
        unknown = [cid for cid in r.terms if cid not in seen]
        if unknown:
            raise CifrasError(f"template {t.name}: relation {r.name} names unknown cell {unknown[0]}")


def parse_template(raw: dict[str, Any], source: str = "<memory>") -> Template:
    try:
        template = Template.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CifrasError(f"template {source}: {where}: {first['msg']}") from exc
    validate_geometry(template)
    return template


def template_path(name: str, conf_dir: Path = CONF_DIR) -> Path:
    return conf_dir / "templates" / f"{name}.yaml"


def available_templates(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "templates").glob("*.yaml"))


@cache
def load_template(name: str, conf_dir: Path = CONF_DIR) -> Template:
    path = Path(name) if name.endswith((".yaml", ".yml")) else template_path(name, conf_dir)
    if not path.is_file():
        known = ", ".join(available_templates(conf_dir)) or "none"
        raise CifrasError(f"template {name!r} not found (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CifrasError(f"template {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CifrasError(f"template {path}: expected a mapping at the top level")
    return parse_template(raw, str(path))
