"""Fault injection on the real ingest flow: the database unreachable for a while (a TCP proxy
in front of the real PostgreSQL drops every connection and refuses new ones), the process
SIGKILLed in the middle of a chunk, and MLflow unreachable. Each time the run recovers or ends
in a clear state, a re-run completes the rest, and every scan has exactly one reading per cell:
none lost, none duplicated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tasks.db import Reading, Run, Scan, session_scope
from tasks.errors import CifrasError

REPO = Path(__file__).resolve().parents[1]
CELLS = 31  # cells of the telegrama_nacional_2021 template


def readings_per_scan(db_url: str) -> dict[tuple[str, int], int]:
    """{(content hash, page): readings}; fails on any duplicated (scan, page, cell, model)."""
    with session_scope(db_url) as s:
        rows = s.execute(select(Reading.content_hash, Reading.page, Reading.cell_id,
                                Reading.model_version, func.count())
                         .group_by(Reading.content_hash, Reading.page, Reading.cell_id,
                                   Reading.model_version)).all()
    out: dict[tuple[str, int], int] = {}
    for h, page, cell, _model, n in rows:
        assert n == 1, f"duplicated reading {h}/{page}/{cell}"
        out[(h, page)] = out.get((h, page), 0) + 1
    return out


def n_scans(db_url: str) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(Scan))


@pytest.fixture
def night(reading_env: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "2")
    return reading_env


class FlakyProxy:
    """TCP proxy to a server; `outage(s)` drops every open connection and, for s seconds,
    accepts and immediately closes new ones (what clients see while a server restarts)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.down_until = 0.0
        self.refused = self.dropped = 0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def outage(self, seconds: float) -> None:
        with self.lock:
            self.down_until = time.monotonic() + seconds
            for c in self.conns:
                self.dropped += 1
                with suppress(OSError):  # shutdown wakes the pipe thread blocked in recv;
                    c.shutdown(socket.SHUT_RDWR)  # close alone would leave the peer hanging
                c.close()
            self.conns.clear()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end the other too. shutdown, not close alone, so that the
            for s in (src, dst):  # thread blocked in recv on it wakes and its peer sees the end
                with suppress(OSError):  # (else a client could wait on a dead pipe for ever:
                    s.shutdown(socket.SHUT_RDWR)  # its keepalives are answered by this proxy)
                s.close()

    def close(self) -> None:
        self.stopped = True
        with suppress(OSError):  # wakes the accept thread (close alone would leave it waiting)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.outage(0)


@pytest.mark.postgres
@pytest.mark.slow
def test_database_outage_mid_run_is_ridden_out(night: Path, pg_url: str, monkeypatch):
    from sqlalchemy.engine import make_url

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow

    n, outage_s = 6, 5.0
    url = make_url(pg_url)
    proxy = FlakyProxy((url.host or "127.0.0.1", url.port or 5432))
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    monkeypatch.setenv("CIFRAS_DATABASE_URL", via_proxy)
    generate_flow(count=n, seed=51)
    fired = threading.Event()

    def break_after_first_chunk() -> None:  # watches the real server, not through the proxy
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and n_scans(pg_url) < 2:
            time.sleep(0.05)
        proxy.outage(outage_s)
        fired.set()

    watcher = threading.Thread(target=break_after_first_chunk, daemon=True)
    watcher.start()
    try:
        started = time.monotonic()
        result = ingest_flow()
        wall = time.monotonic() - started
    finally:
        proxy.close()
    assert fired.is_set()
    print(f"database outage {outage_s:.0f} s mid-run: {proxy.dropped} connections dropped, "
          f"{proxy.refused} refused; run took {wall:.1f} s")
    assert proxy.dropped + proxy.refused > 0  # the outage did hit the run
    assert result["scans"] == n and result["read"] == n
    per_scan = readings_per_scan(pg_url)
    assert len(per_scan) == n and set(per_scan.values()) == {CELLS}
    with session_scope(pg_url) as s:
        assert s.scalar(select(Run.status)) == "completed"


@pytest.mark.slow
def test_worker_killed_mid_chunk_then_rerun_completes(night: Path, prefect_server):
    """`cifras ingest` in its own process, SIGKILLed while reading its second chunk: the
    chunk persisted before stays whole, the killed one leaves nothing, a re-run reads the rest."""
    from prefect.settings import PREFECT_API_URL

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.settings import load_settings

    n = 24  # enough chunks that the kill lands mid-run even on a fast machine (reading overlaps)
    generate_flow(count=n, seed=53)
    db_url = load_settings().db_url
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", "--json"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while n_scans(db_url) < 2:
            assert proc.poll() is None, "ingest ended before it could be killed"
            assert time.monotonic() < deadline, "first chunk never persisted"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = readings_per_scan(db_url)
    done = n_scans(db_url)
    print(f"killed after {done} of {n} scans were stored")
    assert 2 <= done < n and len(kept) == done and set(kept.values()) == {CELLS}

    with session_scope(db_url) as s:
        killed = s.scalars(select(Run)).one()
        assert killed.status == "running"  # all a killed process leaves behind
        assert killed.heartbeat_at is not None  # its last stored chunk

    time.sleep(1.5)
    with pytest.MonkeyPatch.context() as mp:  # a killed run's last sign of life is this old
        mp.setenv("CIFRAS_READ__STALE_RUN_S", "1")
        rerun = ingest_flow()
    assert rerun["scans"] == n - done and rerun["read"] == n - done
    per_scan = readings_per_scan(db_url)
    assert len(per_scan) == n and set(per_scan.values()) == {CELLS}
    assert n_scans(db_url) == n
    with session_scope(db_url) as s:
        runs = {r.id: r for r in s.scalars(select(Run))}
    after = runs[killed.id]
    assert after.status == "interrupted" and "no sign of life" in after.metrics["interrupted"]
    assert [r.status for i, r in runs.items() if i != killed.id] == ["completed"]
    from mlflow import MlflowClient

    settings = load_settings()
    assert MlflowClient(settings.mlflow_tracking_uri).get_run(killed.mlflow_run_id).info.status == "KILLED"


def dead_http_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


@pytest.mark.slow
def test_mlflow_unreachable(night: Path, trained_registry: Path, monkeypatch):
    """Registry unreachable: the run fails before reading, with a clear message, and reads all
    once MLflow answers. Tracking lost while the model is at hand: readings are stored and the
    run completes with a warning."""
    import flows.ingest
    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.ingest_tasks import resolve_model_task
    from tasks.settings import load_settings

    n = 3
    generate_flow(count=n, seed=57)
    db_url = load_settings().db_url
    store = f"sqlite:///{trained_registry / 'mlflow.db'}"
    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", dead_http_url())
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    # the same retries, with short delays so the test takes seconds
    monkeypatch.setattr(flows.ingest, "resolve_model_task",
                        resolve_model_task.with_options(retry_delay_seconds=0.2))

    with pytest.raises(CifrasError, match=r"MLflow registry unreachable.*Nothing was read"):
        ingest_flow()
    assert n_scans(db_url) == 0 and readings_per_scan(db_url) == {}

    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", store)  # MLflow is back
    back = ingest_flow()
    assert back["scans"] == n and back["read"] == n and back["mlflow_run_id"] and not back["warnings"]

    # tracking down, the model available as files (a pinned local copy): read, warn, complete
    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", dead_http_url())
    local_model = next(trained_registry.rglob("MLmodel")).parent
    alone = ingest_flow(model=str(local_model))
    assert alone["scans"] == n and alone["read"] == n and alone["mlflow_run_id"] is None
    assert any("unreachable" in w for w in alone["warnings"])
    per_scan = readings_per_scan(db_url)
    assert len(per_scan) == n and set(per_scan.values()) == {2 * CELLS}  # two model versions
    with session_scope(db_url) as s:
        run = s.get(Run, alone["run_id"])
        assert run.status == "completed" and run.metrics["read"] == n and run.metrics["warnings"]
    assert (night / "exports" / "runs" / alone["run_id"] / "readings.parquet").is_file()


@pytest.mark.postgres
def test_a_model_reference_too_long_to_record_is_refused_before_any_reading(pg_url, template):
    """Every reading records its model; PostgreSQL enforces the column's width, so a path that
    does not fit must stop the run up front with a clear error, not fail each chunk's write."""
    from tasks.db import MODEL_LABEL_LENGTH
    from tasks.persist import persist_chunk, start_run
    from tasks.read import ScanReading
    from tasks.tracking import resolve_model

    longest = "file:///models/" + "m" * (MODEL_LABEL_LENGTH - len("file:///models/"))
    assert resolve_model(None, longest).label == longest  # outside the registry: no lookup
    start_run(pg_url, "r1", "ingest", longest, template.name, {})
    reading = ScanReading("file:///s/2100100001X.jpg", "a" * 64, "unreadable", "corrupt", 0.0, [], {})
    persist_chunk(pg_url, [reading], "r1", longest, template.name, {})
    with session_scope(pg_url) as s:
        assert s.scalars(select(Scan.model_version)).all() == [longest]
    with pytest.raises(CifrasError, match="too long to record"):
        resolve_model(None, longest + "x")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_run_with_no_sign_of_life_is_marked_interrupted_by_the_next(backend, request, template):
    """Only runs whose last stored chunk (or start) is older than the limit: a long backfill
    storing chunks beside tonight's ingest stays running."""
    from datetime import timedelta

    from tasks.db import utcnow
    from tasks.persist import start_run

    url = request.getfixturevalue("db_url" if backend == "sqlite" else "pg_url")
    start_run(url, "killed", "ingest", "digit-cnn/v1", template.name, {})
    start_run(url, "alive", "backfill", "digit-cnn/v1", template.name, {})
    start_run(url, "done", "ingest", "digit-cnn/v1", template.name, {})
    with session_scope(url) as s:
        s.get(Run, "killed").heartbeat_at = utcnow() - timedelta(hours=2)
        s.get(Run, "alive").heartbeat_at = utcnow() - timedelta(minutes=5)
        s.get(Run, "done").status = "completed"
        s.get(Run, "done").heartbeat_at = utcnow() - timedelta(hours=3)
    stale = start_run(url, "new", "ingest", "digit-cnn/v1", template.name, {}, stale_after_s=3600)
    assert [r.id for r in stale] == ["killed"]
    with session_scope(url) as s:
        status = {r.id: r.status for r in s.scalars(select(Run))}
        reason = s.get(Run, "killed").metrics["interrupted"]
    assert status == {"killed": "interrupted", "alive": "running", "done": "completed", "new": "running"}
    assert reason.startswith("no sign of life since") and "marked by run new" in reason


@pytest.mark.slow
def test_a_run_ending_while_the_database_is_locked_keeps_its_own_error(night: Path, monkeypatch):
    """Why a run ended (here its scan store failing) is what the caller sees, even when the
    database cannot take the run's last record (CI, session 17: a SIGTERM'd run met SQLite
    `database is locked`, and exited 1 with that error instead of 143). The run is left
    `running`, and the next run marks it interrupted."""
    from sqlalchemy.exc import OperationalError

    import flows.ingest as ingest
    from tasks.settings import load_settings

    def store_gone(*args, **kwargs):
        raise RuntimeError("scan store gone")

    def locked(*args, **kwargs):
        raise OperationalError("UPDATE runs SET status=?", {}, Exception("database is locked"))

    with monkeypatch.context() as m:
        m.setattr(ingest, "discover_task", store_gone)
        m.setattr(ingest, "finish_run", locked)
        with pytest.raises(RuntimeError, match="scan store gone"):
            ingest.ingest_flow()
    db_url = load_settings().db_url
    with session_scope(db_url) as s:
        assert s.scalars(select(Run.status)).all() == ["running"]
    monkeypatch.setenv("CIFRAS_READ__STALE_RUN_S", "1")
    time.sleep(1.5)  # no sign of life for longer than that
    (night / "scans").mkdir(exist_ok=True)  # a night with no scans (a missing folder is an error)
    ingest.ingest_flow()
    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(Run.status)).all()) == ["completed", "interrupted"]
