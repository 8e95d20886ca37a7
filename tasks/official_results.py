"""Official results (the labels): mesa identities, the authority's CSV format, and writing
them to the results database in one transaction per file.

The CSV follows the shape election authorities publish: one row per mesa x category x party
(or vote type), e.g.::

    distrito_id,seccion_id,circuito_id,mesa_id,cargo_nombre,agrupacion_id,votos_tipo,votos_cantidad
    21,1,402,1,SENADORES NACIONALES,503,POSITIVO,135
    21,1,402,1,SENADORES NACIONALES,,EN BLANCO,5
    21,1,402,1,,,SOBRES,283

Header fields of the telegram use an empty cargo and votos_tipo SOBRES, ELECTORES or
DIFERENCIA. A category's TOTAL row may be given; when it is not, it is the sum of the rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from tasks.db import OfficialResult, Telegram, session_scope
from tasks.errors import CifrasError
from tasks.template import Template

CSV_COLUMNS = (
    "distrito_id", "seccion_id", "circuito_id", "mesa_id", "cargo_nombre",
    "agrupacion_id", "votos_tipo", "votos_cantidad",
)
CARGOS = {"SENADORES NACIONALES": "senadores", "DIPUTADOS NACIONALES": "diputados"}
CATEGORY_CARGO = {v: k for k, v in CARGOS.items()}
VOTE_TYPES = {"EN BLANCO": "blanco", "NULO": "nulos", "RECURRIDO": "recurridos",
              "IMPUGNADO": "impugnada", "TOTAL": "total"}
ROW_VOTE_TYPE = {v: k for k, v in VOTE_TYPES.items()}
HEADER_TYPES = {"SOBRES": "sobres", "ELECTORES": "electores", "DIFERENCIA": "diferencia"}


@dataclass(frozen=True)
class MesaId:
    distrito: int
    seccion: int
    circuito: str
    mesa: int

    @property
    def code(self) -> str:
        """The telegram code printed under the barcode, e.g. 2100100001X."""
        return f"{self.distrito:02d}{self.seccion:03d}{self.mesa:05d}X"


@dataclass(frozen=True)
class Label:
    mesa: MesaId
    cell_id: str
    value: int


def cell_for(template: Template, cargo: str, agrupacion: str, tipo: str) -> str:
    """Map one CSV row's (cargo, party, vote type) to a template cell id."""
    tipo = tipo.strip().upper()
    if tipo in HEADER_TYPES:
        cell = f"header/{HEADER_TYPES[tipo]}"
    else:
        category = CARGOS.get(cargo.strip().upper())
        if category is None:
            raise ValueError(f"unknown cargo_nombre {cargo!r}")
        if tipo == "POSITIVO":
            if not agrupacion.strip():
                raise ValueError("POSITIVO row without agrupacion_id")
            row = str(int(agrupacion))
        elif tipo in VOTE_TYPES:
            row = VOTE_TYPES[tipo]
        else:
            raise ValueError(f"unknown votos_tipo {tipo!r}")
        cell = f"{category}/{row}"
    if cell not in template.cell_ids:
        raise ValueError(f"no cell {cell} on form {template.name}")
    return cell


def parse_results_csv(text: str, template: Template) -> list[Label]:
    """Every row validated; the first bad row stops the file with its line number."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CifrasError(f"results CSV lacks column(s) {', '.join(missing)}")
    labels: dict[tuple[MesaId, str], Label] = {}
    for line, row in enumerate(reader, start=2):
        try:
            mesa = MesaId(int(row["distrito_id"]), int(row["seccion_id"]),
                          row["circuito_id"].strip(), int(row["mesa_id"]))
            cell = cell_for(template, row["cargo_nombre"], row["agrupacion_id"], row["votos_tipo"])
            raw = row["votos_cantidad"].strip()
            if not raw.isdigit():
                raise ValueError(f"votos_cantidad {raw!r} is not a whole number")
            value = int(raw)
            if value >= 10 ** template.cell(cell).max_digits:
                raise ValueError(f"votos_cantidad {value} does not fit cell {cell}")
        except (ValueError, TypeError, AttributeError) as exc:
            raise CifrasError(f"results CSV line {line}: {exc}") from exc
        key = (mesa, cell)
        if key in labels and labels[key].value != value:
            raise CifrasError(f"results CSV line {line}: {cell} of mesa {mesa.code} given twice")
        labels[key] = Label(mesa, cell, value)
    return with_totals(list(labels.values()), template)


def with_totals(labels: list[Label], template: Template) -> list[Label]:
    """Add each category's TOTAL as the sum of its rows where the file did not give it, but
    only from a complete category: a correction file of one row must not replace the stored
    TOTAL with that row's value. Without every row the TOTAL stays as stored (or unlabelled)."""
    out = list(labels)
    present = {(lab.mesa, lab.cell_id) for lab in labels}
    sums: dict[tuple[MesaId, str], int] = {}
    given: dict[tuple[MesaId, str], set[str]] = {}
    for lab in labels:
        category, row = lab.cell_id.split("/", 1)
        if category != "header" and row != "total":
            sums[(lab.mesa, category)] = sums.get((lab.mesa, category), 0) + lab.value
            given.setdefault((lab.mesa, category), set()).add(row)
    for (mesa, category), total in sums.items():
        cell = f"{category}/total"
        rows = {r for r in template.rows(category) if r != "total"}
        if cell in template.cell_ids and (mesa, cell) not in present and given[(mesa, category)] >= rows:
            out.append(Label(mesa, cell, total))
    return out


def labels_to_csv(labels: Iterable[Label]) -> str:
    """The inverse of parse_results_csv, for generated telegrams and exports."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for lab in labels:
        category, row = lab.cell_id.split("/", 1)
        m = lab.mesa
        if category == "header":
            cargo, party, tipo = "", "", row.upper()
        else:
            cargo = CATEGORY_CARGO[category]
            party, tipo = (row, "POSITIVO") if row.isdigit() else ("", ROW_VOTE_TYPE[row])
        w.writerow([m.distrito, m.seccion, m.circuito, m.mesa, cargo, party, tipo, lab.value])
    return buf.getvalue()


def upsert_telegram(session, mesa: MesaId, template: str, scan_uri: str | None = None,
                    content_hash: str | None = None, received_at: datetime | None = None) -> Telegram:
    tel = session.scalar(select(Telegram).where(Telegram.mesa_code == mesa.code))
    if tel is None:
        tel = Telegram(mesa_code=mesa.code, distrito=mesa.distrito, seccion=mesa.seccion,
                       circuito=mesa.circuito, mesa=mesa.mesa, template=template)
        session.add(tel)
    if scan_uri is not None:
        tel.scan_uri = scan_uri
    if content_hash is not None:
        tel.content_hash = content_hash
    if received_at is not None:
        tel.received_at = received_at
    session.flush()
    return tel


def store_labels(
    db_url: str, labels: list[Label], template: Template, source: str, create_mesas: bool = False
) -> dict[str, int]:
    """Write labels in one transaction: all rows or none. Unknown mesas are an error unless
    `create_mesas`; an existing label for the same cell is replaced (idempotent re-load)."""
    by_mesa: dict[MesaId, list[Label]] = {}
    for lab in labels:
        by_mesa.setdefault(lab.mesa, []).append(lab)
    with session_scope(db_url) as session:
        for mesa, group in by_mesa.items():
            tel = session.scalar(select(Telegram).where(Telegram.mesa_code == mesa.code))
            if tel is None:
                if not create_mesas:
                    raise CifrasError(
                        f"mesa {mesa.code} (distrito {mesa.distrito}, seccion {mesa.seccion}, "
                        f"mesa {mesa.mesa}) is unknown; nothing was loaded "
                        "(pass --create-mesas to register new mesas)"
                    )
                tel = upsert_telegram(session, mesa, template.name)
            existing = {r.cell_id: r for r in session.scalars(
                select(OfficialResult).where(OfficialResult.telegram_id == tel.id))}
            for lab in group:
                row = existing.get(lab.cell_id)
                if row is None:
                    session.add(OfficialResult(telegram_id=tel.id, cell_id=lab.cell_id,
                                               value=lab.value, source=source))
                else:
                    row.value, row.source = lab.value, source
    return {"labels": len(labels), "mesas": len(by_mesa)}


def labels_for(session, telegram_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """{telegram id: {cell id: value}} for the given telegrams (missing ones are absent)."""
    ids = list(telegram_ids)
    out: dict[int, dict[str, int]] = {}
    for start in range(0, len(ids), 500):
        rows = session.execute(select(OfficialResult.telegram_id, OfficialResult.cell_id,
                                      OfficialResult.value)
                               .where(OfficialResult.telegram_id.in_(ids[start:start + 500])))
        for tid, cell, value in rows:
            out.setdefault(tid, {})[cell] = value
    return out
