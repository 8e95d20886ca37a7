"""The nightly ingest flow over generated telegrams plus every kind of bad input, against a
real Prefect API, real MLflow tracking and a real SQLite results database."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import delete, func, select

from flows.generate import generate_flow, mesa_for
from flows.ingest import _chunks, backfill_flow, ingest_flow
from tasks.db import OfficialResult, Reading, Scan, Telegram, session_scope
from tasks.official_results import Label, MesaId, store_labels
from tasks.settings import load_settings
from tasks.template import load_template
from tests.test_decode import png_header_only

N_GENERATED = 20


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


def add_bad_inputs(scans: Path) -> dict[str, str]:
    """Objects that must each end with a recorded reason, never a crash."""
    rng = np.random.default_rng(0)
    a_scan = cv2.imread(str(sorted(scans.glob("*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    wrong = np.full((2800, 1700), 255, np.uint8)
    for _ in range(40):  # another document: text-like blocks, no telegram table
        x, y = int(rng.integers(100, 1400)), int(rng.integers(100, 2600))
        cv2.putText(wrong, "LOREM IPSUM DOLOR", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 0, 2)
    files = {
        "corrupt.jpg": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "zero.png": b"",
        "bomb.png": png_header_only(60_000, 60_000),
        "blank.jpg": jpeg(np.full((2800, 1700), 250, np.uint8)),
        "other_form.jpg": jpeg(wrong),
        "9900100001X.jpg": jpeg(cv2.rotate(a_scan, cv2.ROTATE_90_CLOCKWISE)),  # no labels
        "9900100002X.jpg": jpeg(cv2.rotate(a_scan, cv2.ROTATE_180)),
    }
    for name, data in files.items():
        (scans / name).write_bytes(data)
    return {
        "corrupt.jpg": "not an image", "zero.png": "empty file", "bomb.png": "too large",
        "blank.jpg": "blank page", "other_form.jpg": "form not recognised",
    }


def scan_rows(url: str) -> dict[str, tuple[str, str | None]]:
    with session_scope(url) as s:
        rows = s.execute(select(Scan.uri, Scan.status, Scan.reason))
        return {u.rsplit("/", 1)[-1]: (st, r) for u, st, r in rows}


def count(url: str, table) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(table))


@pytest.mark.slow
def test_nightly_ingest_reads_scores_and_survives_bad_input(reading_env, shared_data, template,
                                                            monkeypatch):
    from mlflow import MlflowClient

    secret = "s3cr3t-never-logged-7f3a"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    settings = load_settings()
    generate_flow(count=N_GENERATED, seed=31)
    scans = reading_env / "scans"
    expected_reasons = add_bad_inputs(scans)
    ref = shared_data / "telegram_reference" / "santa_fe_2021_mesa_0001.jpg"
    (scans / "2100100001X.jpg").write_bytes(ref.read_bytes())
    # the reference telegram's labels: one row left out of the database on purpose
    mesa = MesaId(21, 1, "402", 1)
    truth = {"senadores/503": 135, "senadores/508": 94, "header/sobres": 283}
    store_labels(settings.db_url, [Label(mesa, c, v) for c, v in truth.items()], template, "test",
                 create_mesas=True)
    with session_scope(settings.db_url) as s:
        victim = s.scalar(select(Telegram.id).where(Telegram.mesa_code == mesa_for(31, 0).code))
        assert victim is not None
        s.execute(delete(OfficialResult).where(OfficialResult.telegram_id == victim,
                                               OfficialResult.cell_id == "senadores/87"))

    result = ingest_flow()

    total_objects = N_GENERATED + len(expected_reasons) + 3
    assert result["scans"] == total_objects
    rows = scan_rows(settings.db_url)
    assert len(rows) == total_objects
    for name, reason in expected_reasons.items():
        status, why = rows[name]
        assert status in ("unreadable", "unaligned") and reason in why, (name, status, why)
    for name in ("9900100001X.jpg", "9900100002X.jpg"):
        assert rows[name][0] == "ok" and "turned" in rows[name][1]
    n_ok = sum(1 for st, _ in rows.values() if st == "ok")
    assert n_ok == N_GENERATED + 3, {k: v for k, v in rows.items() if v[0] != "ok"}
    assert result["read"] == n_ok and result["unreadable"] + result["unaligned"] == len(expected_reasons)
    assert count(settings.db_url, Reading) == n_ok * len(template.cells)
    # scored: every generated cell but the deleted label, plus the reference's three labels
    assert result["cells_scored"] == N_GENERATED * len(template.cells) - 1 + len(truth)
    assert result["digit_accuracy"] > 0.7 and result["number_accuracy"] > 0.5
    assert set(result["status_counts"]) <= {"ok", "review", "empty", "unreadable"}

    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "telegram-ingest"
    for key in ("digit_accuracy", "digit_precision_macro", "digit_recall_macro", "digit_f1_macro",
                "number_accuracy", "review_share", "number_accuracy_len1"):
        assert key in run.data.metrics
    assert run.data.metrics["digit_accuracy"] == pytest.approx(result["digit_accuracy"])
    assert run.data.params["model_version"] == "digit-cnn/v1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"readings.parquet", "digit_confusion_matrix.png", "metrics.json"} <= artifacts
    if result["number_accuracy"] < 1:
        assert "misread_cells.png" in artifacts

    exports = reading_env / "exports"
    table = pd.read_parquet(exports / "runs" / result["run_id"] / "readings.parquet")
    assert len(table) == n_ok * len(template.cells)
    digits = np.load(next((exports / "datasets" / result["run_id"] / "digits").glob("*.npz")))
    assert digits["x"].shape[1:] == (28, 28) and len(digits["x"]) == len(digits["y"])

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-summary"])))
    assert arts and any("digit_accuracy" in str(a.data) for a in arts)
    # secrets in the environment never reach MLflow parameters, tags or Prefect artifacts
    assert secret not in str(run.data.params) + str(run.data.tags) + str([a.data for a in arts])

    # the same night again: nothing new, nothing duplicated
    again = ingest_flow()
    assert again["scans"] == 0
    assert count(settings.db_url, Reading) == n_ok * len(template.cells)
    # forced re-read (e.g. after fixing the reader): rows are replaced, not added
    forced = ingest_flow(force=True)
    assert forced["scans"] == total_objects
    assert count(settings.db_url, Reading) == n_ok * len(template.cells)
    assert count(settings.db_url, Scan) == total_objects
    # a backfill of a period with no scans reads nothing
    assert backfill_flow(date(2001, 1, 1), date(2001, 1, 2), force=True)["scans"] == 0


def test_read_telegram_json(use_registry, reference_scan):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    scan, _ = reference_scan
    out = CliRunner().invoke(app, ["read-telegram", str(scan), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["scan"] == str(scan) and doc["status"] == "ok"
    assert len(doc["cells"]) == 31
    cell = doc["cells"]["senadores/503"]
    assert set(cell) == {"value", "digits", "confidence", "status", "reason"}
    assert doc["cells"]["senadores/recurridos"]["digits"] == "-"


def test_the_flow_freezes_what_is_alive_once_per_process():
    import gc

    from flows.ingest import _freeze_imports

    _freeze_imports()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the libraries imported so far
    garbage = [[] for _ in range(1000)]
    _freeze_imports()  # a later run: objects made since stay collectable
    assert gc.get_freeze_count() == frozen
    del garbage


def test_a_long_run_starts_and_ends_with_short_chunks():
    items = list(range(1000))
    chunks = _chunks(items, 25)
    assert [x for c in chunks for x in c] == items  # every scan once, in order
    assert len(chunks[0]) == len(chunks[-1]) == 5 and max(map(len, chunks)) == 25
    assert [len(c) for c in _chunks(items[:50], 25)] == [25, 25]  # short runs: plain chunks
    assert [len(c) for c in _chunks(items[:7], 2)] == [2, 2, 2, 1]  # and small chunk sizes
    assert _chunks([], 25) == []


@pytest.mark.slow
def test_a_file_repeating_another_is_recorded_once_and_never_fetched_again(reading_env: Path, monkeypatch):
    """Same bytes under another name: before, dropped with no record (and fetched again every
    night), or, when both were new in one run, written over the other's readings, leaving its
    telegram with none. Now the first keeps its readings; the other is recorded as its
    duplicate, with the mesa mismatch in the reason."""
    from tasks.db import DuplicateFile

    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "2")  # the two copies fall in different chunks
    generate_flow(count=2, seed=71)
    settings = load_settings()
    first = ingest_flow()
    assert first["read"] == 2 and first["duplicates"] == 0
    old, new_dir = sorted(reading_env.rglob("*.jpg")), reading_env / "scans" / "later"
    new_dir.mkdir(parents=True)
    generate_flow(count=1, seed=72)
    fresh = sorted(set(reading_env.rglob("*.jpg")) - set(old))[0]
    # an old scan re-uploaded under another mesa's code, and tonight's scan twice
    (new_dir / "2199900001X.jpg").write_bytes(old[0].read_bytes())
    (new_dir / "zz-2199900002X.jpg").write_bytes(fresh.read_bytes())
    night = ingest_flow()
    assert night["scans"] == 3 and night["read"] == 1 and night["duplicates"] == 2
    with session_scope(settings.db_url) as s:
        dups = {u.rsplit("/", 1)[-1]: (o, r) for u, o, r in s.execute(
            select(DuplicateFile.uri, DuplicateFile.original_uri, DuplicateFile.reason))}
        assert dups["2199900001X.jpg"][0] == old[0].resolve().as_uri()
        assert "named for mesa 2199900001X" in dups["2199900001X.jpg"][1]
        assert dups["zz-2199900002X.jpg"][0] == fresh.resolve().as_uri()
        code = fresh.stem
        tel = s.scalar(select(Telegram).where(Telegram.mesa_code == code))
        n = s.scalar(select(func.count()).select_from(Reading).where(Reading.telegram_id == tel.id))
        assert n == len(load_template(settings.template).cells)  # its readings stay its own
        assert s.scalar(select(Scan.uri).where(Scan.content_hash == s.scalar(
            select(DuplicateFile.content_hash).where(DuplicateFile.uri.like("%zz-2199900002X.jpg"))))
        ) == fresh.resolve().as_uri()
    assert ingest_flow()["scans"] == 0  # known by their listing: not fetched again
    # the old name was the wrong one: removed, and the day re-read by force under the new name
    old[0].unlink()
    forced = ingest_flow(force=True)
    assert forced["duplicates"] == 1  # the other copy still repeats tonight's scan
    with session_scope(settings.db_url) as s:
        assert {u.rsplit("/", 1)[-1] for u in s.scalars(select(DuplicateFile.uri))} == {"zz-2199900002X.jpg"}
        assert s.scalar(select(Scan.telegram_id).where(Scan.uri.like("%/2199900001X.jpg"))) == s.scalar(
            select(Telegram.id).where(Telegram.mesa_code == "2199900001X"))


@pytest.mark.slow
def test_a_scan_whose_name_names_no_mesa_is_read_and_counted_as_unlinked(reading_env: Path):
    """Its readings can match no official result: before, it was stored `ok` with no reason,
    and nothing in the summary said that some of the night's scans were scored against nothing."""
    generate_flow(count=1, seed=73)
    named = sorted(reading_env.rglob("*.jpg"))[0]
    img = cv2.imread(str(named), cv2.IMREAD_GRAYSCALE)
    (named.parent / "scan_0001.jpg").write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1])
    result = ingest_flow()
    assert result["read"] == 2 and result["unlinked"] == 1
    rows = scan_rows(load_settings().db_url)
    assert rows["scan_0001.jpg"][0] == "ok" and "not linked to a mesa" in rows["scan_0001.jpg"][1]
    assert rows[named.name][1] is None or "not linked" not in rows[named.name][1]
