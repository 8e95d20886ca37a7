"""The results database: telegrams (mesas and their scans), official results (the labels),
pipeline runs and per-cell readings. SQLAlchemy 2 models; schema changes go through the
Alembic migrations in tasks/migrations, never `create_all`.

Unique keys make every write idempotent: a mesa is one telegram row, a label is one row per
(telegram, cell), and a reading is one row per (scan content hash, page, cell, model version).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tasks.errors import CifrasError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long a session waits for an unreachable database server (a restart, a failover, a
# network blip) before giving up: long enough to ride out a restart, short enough that a
# wrong URL fails within a minute.
CONNECT_WAIT_S = 60.0
# what a reading names its model by (tasks.tracking.ModelRef.label): a registry version, or
# the URI of a model outside the registry, which must fit
MODEL_LABEL_LENGTH = 128
log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON}


class Telegram(Base):
    """One mesa's telegram: its identity, and the scan once one has been seen."""

    __tablename__ = "telegrams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mesa_code: Mapped[str] = mapped_column(String(32), unique=True)
    distrito: Mapped[int] = mapped_column(Integer)
    seccion: Mapped[int] = mapped_column(Integer)
    circuito: Mapped[str] = mapped_column(String(16))
    mesa: Mapped[int] = mapped_column(Integer)
    template: Mapped[str] = mapped_column(String(64))
    scan_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OfficialResult(Base):
    """The label of one cell, as published by the electoral authority."""

    __tablename__ = "official_results"
    __table_args__ = (UniqueConstraint("telegram_id", "cell_id", name="uq_official_cell"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    telegram_id: Mapped[int] = mapped_column(ForeignKey("telegrams.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(256))


class Run(Base):
    """One pipeline flow run (also an MLflow run)."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(MODEL_LABEL_LENGTH), nullable=True)
    template: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the last stored chunk's time: how a later run tells a killed run from a long one
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Reading(Base):
    """What the pipeline read in one cell of one scan, traceable to image and model."""

    __tablename__ = "readings"
    __table_args__ = (
        UniqueConstraint("content_hash", "page", "cell_id", "model_version", name="uq_reading_page"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    telegram_id: Mapped[int | None] = mapped_column(
        ForeignKey("telegrams.id", ondelete="SET NULL"), nullable=True, index=True
    )
    content_hash: Mapped[str] = mapped_column(String(64))
    # 1-based page of the scan file: a multi-page TIFF or PDF holds one telegram per page
    page: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    scan_uri: Mapped[str] = mapped_column(Text)
    template: Mapped[str] = mapped_column(String(64))
    cell_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[int | None] = mapped_column(Integer, nullable=True)
    digits: Mapped[str] = mapped_column(String(32), default="")
    digit_probs: Mapped[list[Any]] = mapped_column(default=list)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[str] = mapped_column(String(MODEL_LABEL_LENGTH))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Scan(Base):
    """A scan read (or refused) with one model version: what discovery checks as "new"."""

    __tablename__ = "scans"
    __table_args__ = (UniqueConstraint("content_hash", "page", "model_version", name="uq_scan_page_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, index=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    page: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pages: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    model_version: Mapped[str] = mapped_column(String(MODEL_LABEL_LENGTH))
    template: Mapped[str] = mapped_column(String(64))
    telegram_id: Mapped[int | None] = mapped_column(
        ForeignKey("telegrams.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    quality: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DuplicateFile(Base):
    """A file whose bytes another file already holds (a re-upload, a copy under another name):
    recorded with the file it repeats, and known to discovery by its listing identity, so it is
    neither read twice nor fetched again every night."""

    __tablename__ = "duplicate_files"
    __table_args__ = (UniqueConstraint("uri", "model_version", name="uq_duplicate_uri_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    original_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[str] = mapped_column(String(MODEL_LABEL_LENGTH))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the nightly writer
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@cache
def get_engine(url: str) -> Engine:
    """One pooled engine per URL and process; SQLite files get their folder created."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {}
    if url.startswith("postgresql"):
        # a server that vanishes mid-query (a dead host, a cut link) must end the wait with an
        # error the retries handle, not hang the night: TCP keepalives notice it within ~25 s
        connect_args = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                        "keepalives_interval": 5, "keepalives_count": 3}
    try:
        engine = create_engine(url, pool_pre_ping=True, future=True, connect_args=connect_args)
    except (ArgumentError, ImportError) as exc:  # not a URL, or a dialect whose driver is absent
        raise CifrasError(f"database URL {safe_url(url)} cannot be used: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def wait_for_database(url: str, wait_s: float = CONNECT_WAIT_S) -> None:
    """Return once a connection can be made to a database server, retrying with backoff for
    up to `wait_s`; then raise CifrasError. SQLite files are local and never waited for."""
    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        return
    deadline, delay, warned = time.monotonic() + wait_s, 0.25, False
    while True:
        try:
            with engine.connect():
                return
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise CifrasError(f"database {safe_url(url)} is unreachable after {wait_s:.0f} s: "
                                  f"{str(exc.orig).strip().splitlines()[0]}") from exc
            if not warned:
                log.warning("database %s unreachable; retrying for up to %.0f s", safe_url(url), wait_s)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def migrate(url: str) -> None:
    """Bring the schema to the newest migration (safe to call on every start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    wait_for_database(url)
    try:
        with get_engine(url).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise CifrasError(f"database {safe_url(url)} is unreachable: {exc.orig}") from exc


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed on success, rolled back whole on any error. Waits for an
    unreachable server first (wait_for_database); a connection lost inside the transaction
    rolls it back and raises, and the calling task retries the whole unit."""
    wait_for_database(url)
    maker = sessionmaker(get_engine(url), expire_on_commit=False)
    with maker.begin() as session:
        yield session
