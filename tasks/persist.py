"""Writing what a run read: scans, readings and runs, idempotently.

Every write is an upsert on the table's natural unique key, so a retried chunk or a re-run of
the same night replaces rows instead of duplicating them, and one chunk is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tasks.db import DuplicateFile, Reading, Run, Scan, Telegram, session_scope, utcnow
from tasks.official_results import MesaId, labels_for, upsert_telegram
from tasks.read import MESA_CODE, ScanReading, mesa_code_for_page, mesa_code_from_uri


def _upsert(session, table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    dialect = session.bind.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    update = {c: ins.excluded[c] for c in rows[0] if c not in keys and c != "id"}
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=update), rows)


def start_run(db_url: str, run_id: str, flow: str, model_version: str, template: str,
              params: dict[str, Any], stale_after_s: float | None = None) -> list[Run]:
    """Record a run as `running`. With `stale_after_s`, first mark every other `running` run
    with no sign of life for that long (no chunk stored, or not started, since) as
    `interrupted`: a process killed outright (SIGKILL, out of memory, power) cannot say so
    itself, and a run left `running` forever misleads whoever watches. Returns those runs."""
    now = utcnow()
    with session_scope(db_url) as s:
        stale = []
        if stale_after_s is not None:
            for run in s.scalars(select(Run).where(Run.status == "running", Run.id != run_id)):
                seen = _aware(run.heartbeat_at or run.started_at)
                if (now - seen).total_seconds() > stale_after_s:
                    run.status, run.finished_at = "interrupted", now
                    run.metrics = {**(run.metrics or {}), "interrupted": (
                        f"no sign of life since {seen.isoformat(timespec='seconds')}; "
                        f"marked by run {run_id}")}
                    stale.append(run)
        if s.get(Run, run_id) is None:
            s.add(Run(id=run_id, flow=flow, status="running", model_version=model_version,
                      template=template, params=params, metrics={}, heartbeat_at=now))
        return stale


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def note_mlflow_run(db_url: str, run_id: str, mlflow_run_id: str) -> None:
    """Link the run to its MLflow run as soon as there is one, so that a run killed before it
    ends can still have its MLflow run closed by the next."""
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(mlflow_run_id=mlflow_run_id))


def finish_run(db_url: str, run_id: str, status: str, metrics: dict[str, Any],
               mlflow_run_id: str | None) -> None:
    with session_scope(db_url) as s:
        run = s.get(Run, run_id)
        if run is not None:
            run.status, run.metrics, run.finished_at = status, metrics, utcnow()
            run.mlflow_run_id = mlflow_run_id


def link_telegrams(session, readings: list[ScanReading], template: str,
                   listing: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The telegram each scan page shows, by the code in the file name: {page uri: telegram
    id}. Its scan is recorded as the page's URI (`...#page=N` for multi-page files). The
    chunk's telegrams are looked up in one query, not one per page."""
    codes = {r.page_uri: mesa_code_for_page(r.uri, r.page, r.pages) for r in readings}
    wanted = {c for c in codes.values() if c is not None}
    found = {t.mesa_code: t for t in session.scalars(select(Telegram).where(Telegram.mesa_code.in_(wanted)))
             } if wanted else {}
    linked = {}
    for r in readings:
        code = codes[r.page_uri]
        if code is None:
            continue
        tel = found.get(code)
        if tel is None:
            m = MESA_CODE.match(code)
            assert m is not None
            mesa = MesaId(int(m[1]), int(m[2]), "", int(m[3]))
            tel = found[code] = upsert_telegram(session, mesa, template)
        tel.scan_uri, tel.content_hash = r.page_uri, r.content_hash
        received_at = listing.get(r.uri, {}).get("modified")
        if received_at is not None and tel.received_at is None:
            tel.received_at = received_at
        linked[r.page_uri] = tel
    session.flush()
    return {uri: tel.id for uri, tel in linked.items()}


def _unlinked(r: ScanReading, telegram_id: int | None) -> str | None:
    if telegram_id is not None or r.status != "ok":
        return None
    return ("not linked to a mesa: the file name names none (a mesa code such as 2100100001X, "
            "or one per page)")


def duplicate_reason(uri: str, original: str | None) -> str:
    """Why a file was not read: the file it repeats, and a warning when the two names point at
    different mesas (a copy saved under the wrong code: which telegram is it?)."""
    if original is None:
        return "same bytes as a file already read"
    reason = f"same bytes as {original}"
    mine, theirs = mesa_code_from_uri(uri), mesa_code_from_uri(original)
    if mine and theirs and mine != theirs:
        reason += f"; named for mesa {mine}, read as mesa {theirs}: check which telegram it is"
    return reason


def _record_duplicates(s, files: Sequence[tuple[str, str]], run_id: str, model_version: str,
                       listing: dict[str, dict[str, Any]], owners: dict[str, str]) -> int:
    """Duplicate files (uri, content hash) to `duplicate_files`, each with the file it repeats."""
    unseen = {h for _, h in files} - owners.keys()
    if unseen:
        owners = {**owners, **dict(s.execute(
            select(Scan.content_hash, Scan.uri).where(Scan.content_hash.in_(unseen),
                                                      Scan.model_version == model_version)).all())}
    rows = {}
    for uri, digest in files:
        meta = listing.get(uri, {})
        rows[uri] = {"uri": uri, "size": meta.get("size"), "etag": meta.get("etag"), "content_hash": digest,
                     "original_uri": owners.get(digest), "reason": duplicate_reason(uri, owners.get(digest)),
                     "model_version": model_version, "run_id": run_id, "seen_at": utcnow()}
    _upsert(s, DuplicateFile.__table__, list(rows.values()), ["uri", "model_version"])
    return len(rows)


def persist_chunk(
    db_url: str, readings: Iterable[ScanReading], run_id: str, model_version: str, template: str,
    listing: dict[str, dict[str, Any]], duplicates: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, dict[str, int]], int]:
    """Write one chunk in one transaction; returns ({page uri: its official labels}, files
    recorded as duplicates). `duplicates`: (uri, hash) of files whose bytes an earlier run read.
    A file whose bytes another file of this run holds is recorded as its duplicate too, not
    written over it: the first in listing order keeps the readings. (Across runs a forced
    re-read still takes the new name: a renamed file is re-linked that way.)"""
    with session_scope(db_url) as s:
        readings = list(readings)
        hashes = {r.content_hash for r in readings}
        owners = dict(s.execute(select(Scan.content_hash, Scan.uri).where(
            Scan.content_hash.in_(hashes), Scan.model_version == model_version,
            Scan.run_id == run_id)).all()) if hashes else {}
        kept, repeated = [], list(duplicates)
        for r in readings:
            if owners.setdefault(r.content_hash, r.uri) == r.uri:
                kept.append(r)
            else:
                repeated.append((r.uri, r.content_hash))
        readings = kept
        n_duplicates = _record_duplicates(s, repeated, run_id, model_version, listing, owners)
        if readings:  # a file read now is no longer anyone's duplicate (renamed, then forced)
            s.execute(delete(DuplicateFile).where(DuplicateFile.model_version == model_version,
                                                  DuplicateFile.uri.in_({r.uri for r in readings})))
        scan_rows, reading_rows = [], []
        tel_of = link_telegrams(s, readings, template, listing)
        for r in readings:
            meta = listing.get(r.uri, {})
            tid = tel_of.get(r.page_uri)
            scan_rows.append({
                "uri": r.uri, "size": meta.get("size"), "etag": meta.get("etag"),
                "content_hash": r.content_hash, "page": r.page, "pages": r.pages,
                "model_version": model_version, "template": template,
                "telegram_id": tid, "status": r.status,
                "reason": "; ".join([x for x in [r.reason, *r.notes, _unlinked(r, tid)] if x]) or None,
                "quality": r.quality, "run_id": run_id, "read_at": utcnow(),
            })
            for cell_id, c in r.cells.items():
                reading_rows.append({
                    "telegram_id": tid, "content_hash": r.content_hash, "page": r.page, "scan_uri": r.uri,
                    "template": template, "cell_id": cell_id, "value": c.value, "digits": c.digits,
                    "digit_probs": c.digit_probs, "confidence": c.confidence, "status": c.status,
                    "reason": c.reason, "model_version": model_version, "run_id": run_id,
                    "created_at": utcnow(),
                })
        _upsert(s, Scan.__table__, scan_rows, ["content_hash", "page", "model_version"])
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))
        for start in range(0, len(reading_rows), 1000):
            _upsert(s, Reading.__table__, reading_rows[start : start + 1000],
                    ["content_hash", "page", "cell_id", "model_version"])
        labels = labels_for(s, tel_of.values())
        return {uri: labels.get(tid, {}) for uri, tid in tel_of.items()}, n_duplicates


def known_scans(db_url: str, model_version: str) -> tuple[set[tuple[str, int | None, str | None]], set[str]]:
    """What this model version has already read: by listing identity and by content hash."""
    with session_scope(db_url) as s:
        rows = s.execute(select(Scan.uri, Scan.size, Scan.etag, Scan.content_hash)
                         .where(Scan.model_version == model_version)).all()
        repeats = s.execute(select(DuplicateFile.uri, DuplicateFile.size, DuplicateFile.etag)
                            .where(DuplicateFile.model_version == model_version)).all()
    return {(u, sz, e) for u, sz, e, _ in rows} | {(u, sz, e) for u, sz, e in repeats}, {h for *_, h in rows}


CellRow = tuple[str, int | None, str, int | None, str, str]


def iter_run_cells(db_url: str, run_id: str, batch: int = 20_000) -> Iterator[list[CellRow]]:
    """(cell, label, digits, value, status, scan uri) for every reading of a run, labelled or
    not, in batches: a large run is scored and exported without holding all its rows."""
    from tasks.db import OfficialResult

    with session_scope(db_url) as s:
        q = (select(Reading.cell_id, OfficialResult.value, Reading.digits, Reading.value,
                    Reading.status, Reading.scan_uri)
             .outerjoin(OfficialResult, (OfficialResult.telegram_id == Reading.telegram_id)
                        & (OfficialResult.cell_id == Reading.cell_id))
             .where(Reading.run_id == run_id)
             .execution_options(yield_per=batch))
        # on the connection: plain rows, without the ORM's per-row loading (a third of scoring)
        for part in s.connection().execute(q).partitions():
            yield [tuple(row) for row in part]  # type: ignore[misc]


def run_cells(db_url: str, run_id: str) -> list[CellRow]:
    """All of `iter_run_cells` at once (small runs, tests)."""
    return [row for part in iter_run_cells(db_url, run_id) for row in part]


def scan_status_counts(db_url: str, run_id: str) -> dict[str, int]:
    """Scans of the run by status: read, unreadable, unaligned; and read scans linked to no
    mesa (their file name names none), whose readings no official result can score."""
    from sqlalchemy import func

    with session_scope(db_url) as s:
        rows = s.execute(select(Scan.status, func.count()).where(Scan.run_id == run_id)
                         .group_by(Scan.status)).all()
        unlinked = s.scalar(select(func.count()).select_from(Scan).where(
            Scan.run_id == run_id, Scan.status == "ok", Scan.telegram_id.is_(None)))
    counts = {status: n for status, n in rows}
    return {"read": counts.get("ok", 0), "unreadable": counts.get("unreadable", 0),
            "unaligned": counts.get("unaligned", 0), "unlinked": unlinked or 0}
