"""The reading pipeline as Prefect flows: `ingest` (the nightly job) and `backfill` (a period,
on demand). Both discover scans, read them chunk by chunk with the champion model, store and
score the readings, and track the run in MLflow and in the Prefect UI.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from datetime import time as dtime
from functools import cache
from pathlib import Path

import mlflow  # noqa: F401  (the run's tracking client: loaded with the flow, not inside each run, ~0.7 s)
from distributed.diagnostics.plugin import WorkerPlugin
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.utilities.annotations import quote
from sqlalchemy.exc import SQLAlchemyError

from tasks import tracking, workers
from tasks.db import migrate
from tasks.errors import CifrasError
from tasks.exports import ReadingsParquet, gallery_png
from tasks.ingest_tasks import (
    busy_seconds,
    discover_task,
    persist_chunk_task,
    read_chunk_task,
    resolve_model_task,
    worker_processes,
)
from tasks.metrics import save_confusion_png
from tasks.persist import (
    finish_run,
    iter_run_cells,
    known_scans,
    note_mlflow_run,
    scan_status_counts,
    start_run,
)
from tasks.prefect_utils import IO_RETRIES, run_logger
from tasks.scoring import ScoreAccumulator, Scored
from tasks.settings import DaskSettings, Settings, load_settings
from tasks.storage import check_within, join, write_file

# A deployed run's process (Prefect's process work pool imports this module before it starts
# the flow) stops cleanly on SIGTERM too; `cifras` itself does this in its main.
workers.stop_on_sigterm()

SUMMARY_KEYS = ("scans", "read", "unreadable", "unaligned", "unlinked", "duplicates", "cells", "cells_scored",
                "digit_accuracy", "digit_precision_macro", "digit_recall_macro", "digit_f1_macro",
                "number_accuracy", "accuracy_when_ok", "review_share")


@task(name="score-run", **IO_RETRIES)  # reads the database: retried like any I/O
def score_task(db_url: str, run_id: str, parquet_path: str) -> dict:
    """Score the run and write its readings to a local Parquet file, streaming both from the
    database in batches (memory stays flat however large the run)."""
    acc = ScoreAccumulator()
    status_counts: dict[str, int] = {}
    cells = 0
    export = ReadingsParquet(parquet_path)
    try:
        for rows in iter_run_cells(db_url, run_id):
            acc.add([Scored(cell, label, value, digits, status)
                     for cell, label, digits, value, status, _ in rows if label is not None])
            for *_, status, _uri in rows:
                status_counts[status] = status_counts.get(status, 0) + 1
            cells += len(rows)
            export.write(rows)
    finally:
        export.close()
    metrics = acc.result()
    metrics["cells"] = cells
    metrics["cell_status_counts"] = status_counts
    return metrics


@task(name="export-run", **IO_RETRIES)
def export_run_task(settings: Settings, parquet_path: str, run_id: str) -> str:
    """The run's readings as Parquet in the exports storage (copied from a local file in a
    stream: a large run's export is never held in memory)."""
    parquet_uri = join(settings.exports_uri, "runs", run_id, "readings.parquet")
    write_file(parquet_uri, parquet_path, settings)
    return parquet_uri


@task(name="log-run", **IO_RETRIES)
def log_run_task(settings: Settings, mlflow_run_id: str, params: dict, metrics: dict,
                 parquet_path: str, misread: list) -> None:
    """Metrics, confusion matrix, misread gallery and the Parquet export, to MLflow."""
    client = tracking.configure_mlflow(settings)
    tracking.log_params(client, mlflow_run_id, params)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    scalars.update({f"number_accuracy_len{k}": v for k, v in metrics["number_accuracy_by_length"].items()})
    scalars.update({f"cells_{k}": v for k, v in metrics["cell_status_counts"].items()})
    tracking.log_metrics(client, mlflow_run_id, scalars)
    client.log_artifact(mlflow_run_id, parquet_path)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_confusion_png(metrics["confusion_matrix"], folder / "digit_confusion_matrix.png",
                           "telegram digits")
        gallery = gallery_png(misread)
        if gallery:
            (folder / "misread_cells.png").write_bytes(gallery)
        for f in folder.iterdir():
            client.log_artifact(mlflow_run_id, str(f))
    tracking.log_json(client, mlflow_run_id, metrics, "metrics.json")


def _chunks(items: list, size: int) -> list[list]:
    """Chunks of `size`, but a long run starts and ends with a fifth of that. While the first
    chunk is prepared the flow has nothing to infer, and while it infers and stores the last
    the reader's processes have nothing to prepare: short ends keep both waits short (about
    a second of a 1,000-telegram run)."""
    edge = size // 5
    if edge < 2 or len(items) <= 2 * size:
        edge = 0
    end = len(items) - edge
    middle = [items[i : min(i + size, end)] for i in range(edge, end, size)]
    return [items[:edge], *middle, items[end:]] if edge else middle


class _WorkerSetup(WorkerPlugin):
    """Runs on each Dask worker before its first chunk. Points MLflow at this run's store, so that
    `load_reader_model` loads the pinned version there (once per worker process, then cached).
    Keeps OpenCV to one thread per task, as Dask does for OpenMP and BLAS: the workers are the
    parallelism. And undoes the MALLOC_TRIM_THRESHOLD_=65536 that Dask's nanny gives workers:
    it turns off glibc's adaptive mmap threshold, so every large image temporary is mapped and
    zeroed afresh, and registering a scan took 3-4 times longer here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def setup(self, worker) -> None:
        import cv2

        cv2.setNumThreads(1)
        workers.keep_large_blocks()
        tracking.configure_mlflow(self.settings)


@contextmanager
def _chunk_states(chunks: list[list], read_args: dict, dask: DaskSettings) -> Iterator[Iterator[State]]:
    """The final state of `read-chunk` for each chunk, in order. By default chunks are read in
    this process, one ahead of the caller (`_lookahead`); with `dask` configured all chunks are
    submitted at once to a Dask cluster (a running scheduler, or a LocalCluster for this run).
    Either way the caller persists each chunk as soon as its state is known, so a failed chunk
    loses only itself."""
    if not dask.enabled:
        yield _lookahead(chunks, read_args)
        return
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=dask.address) if dask.address else DaskTaskRunner(cluster_kwargs={
        "n_workers": dask.local_workers, "threads_per_worker": dask.threads_per_worker,
        "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    with runner:
        runner.client.register_plugin(_WorkerSetup(read_args["settings"]), name="cifras-setup")
        futures = [runner.submit(read_chunk_task, {"refs": chunk, **read_args}) for chunk in chunks]

        yield (_settle(f) for f in futures)


def _settle(future) -> State:
    future.wait()
    state = future.state
    # a lost worker leaves no final state: count the chunk as failed, keep the others
    return state if state.is_completed() else Failed(message=f"read-chunk ended {state.name}")


def _lookahead(chunks: list[list], read_args: dict) -> Iterator[State]:
    """Chunk states in order, reading the next chunk in a task-runner thread while the caller
    persists this one: reading (2 threads), inference and the database writes overlap instead
    of taking turns. At most two chunks are in flight, so memory does not grow with the run."""
    pending: deque = deque()
    upcoming = iter(chunks)

    def submit_next() -> None:
        chunk = next(upcoming, None)
        if chunk is not None:
            pending.append(read_chunk_task.submit(refs=chunk, **read_args))

    submit_next()
    while pending:
        submit_next()
        yield _settle(pending.popleft())


@cache  # once per process
def _freeze_imports() -> None:
    """Move the objects alive now (mostly the imported libraries: TensorFlow, MLflow, Prefect)
    out of the cyclic garbage collector's sight. Its full passes walked them all every ~9 s of
    a run, 0.37 s each with the GIL held, and the worker processes ran dry meanwhile. Objects
    made later are collected as before."""
    gc.freeze()


def read_scans(flow_name: str, source: str | None, model: str | None, force: bool,
               since: datetime | None, until: datetime | None) -> dict:
    """Shared body of ingest and backfill.

    MLflow down: without the registry the champion cannot be resolved, so the run fails
    before reading anything (no reading without a known model version). Once the model is
    loaded, MLflow going missing costs only the tracking: readings, scores and the Parquet
    export are written, and the run completes with a warning (metrics stay in `runs`)."""
    _freeze_imports()
    settings = load_settings()
    log = run_logger()
    started = time.perf_counter()
    db_url = settings.db_url
    if not settings.dask.enabled and worker_processes(settings):
        workers.warm(worker_processes(settings))  # the reader's processes start while we look around
    migrate(db_url)
    if source:  # a run parameter (API, CLI) must not point the reader anywhere else
        check_within(settings.scans_uri, source, "source", settings)
    source = source or settings.scans_uri
    template = settings.template
    try:
        model_ref = resolve_model_task(settings, model or settings.evaluate.model_uri)
    except tracking.TrackingUnavailable as exc:
        raise CifrasError(f"{exc}. Nothing was read; re-run when MLflow answers (or pass --model "
                          "with a local copy of the model)") from exc
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning(message)

    run_id = str(flow_run.get_id() or uuid.uuid4())
    params = {"flow": flow_name, "source": source, "model_uri": model_ref.uri,
              "model_version": model_ref.label, "template": template, "force": force,
              "since": since, "until": until, "ok_threshold": settings.read.ok_threshold,
              "reframe": settings.read.reframe, "chunk_size": settings.read.chunk_size,
              "inference": settings.read.inference, "threads": settings.read.threads}
    stale = start_run(db_url, run_id, flow_name, model_ref.label, template,
                      {k: str(v) for k, v in params.items()}, settings.read.stale_run_s)
    client = tracking.configure_mlflow(settings)
    for run in stale:
        warn(f"{run.flow} run {run.id} was still marked running with no sign of life for over "
             f"{settings.read.stale_run_s} s (its process was killed); marked interrupted")
        tracking.mark_killed(client, run.mlflow_run_id)
    try:
        experiment = tracking.ensure_experiment(client, settings, settings.read.experiment)
    except CifrasError as exc:
        if not tracking.unreachable(exc.__cause__ or exc):
            raise
        experiment = None
        warn(f"MLflow at {settings.mlflow_tracking_uri} unreachable: reading anyway, this run "
             "is not tracked in MLflow (metrics stay in the results database)")
    status = "failed"
    metrics: dict = {}
    mlflow_run_id = None
    try:
        with tracking.optional_run(client, experiment, f"{flow_name}-{run_id[:8]}",
                                   {"prefect_flow_run_id": run_id}, warn) as mlflow_run_id:
            if mlflow_run_id is not None:
                note_mlflow_run(db_url, run_id, mlflow_run_id)
            refs, skipped = discover_task(settings, source, model_ref.label, since, until, force, db_url)
            log.info("%d new scans under %s (%d already read by %s)", len(refs), source, skipped,
                     model_ref.label)
            _, hashes = known_scans(db_url, model_ref.label)
            counts = {"numbers": 0, "digits": 0, "duplicates": 0}
            timings: dict[str, float] = {}
            misread: list = []
            failed_chunks = 0
            spans: list[tuple[float, float]] = []
            chunks = _chunks(refs, settings.read.chunk_size)
            read_args = {"settings": settings, "model_ref": model_ref, "template_name": template,
                         "known_hashes": quote(hashes), "force": force}
            with _chunk_states(chunks, read_args, settings.dask) as states:
                for no, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
                    if state.is_failed():
                        failed_chunks += 1
                        log.error("chunk %d/%d failed for good; its %d scans stay new for the next run",
                                  no + 1, len(chunks), len(chunk))
                        continue
                    result = state.result()
                    for k, v in result.timings.items():
                        timings[k] = timings.get(k, 0.0) + v
                    # quote: Prefect would otherwise walk every reading, crop and array of the
                    # chunk looking for futures, twice (that was a third of the run's CPU)
                    bad, shard_counts, t_persist, span = persist_chunk_task(
                        quote(result), chunk, settings, db_url, run_id, model_ref.label, template, no)
                    spans += [result.span, span]
                    timings["persist"] = timings.get("persist", 0.0) + t_persist
                    misread.extend(bad[: max(0, 48 - len(misread))])
                    for k, v in shard_counts.items():
                        counts[k] += v
                    log.info("chunk %d/%d: %d scans read", no + 1, len(chunks), len(result.readings))
            t_score, e_score = time.perf_counter(), time.time()
            export_dir = tempfile.mkdtemp(prefix="cifras-export-")
            parquet_path = str(Path(export_dir) / "readings.parquet")
            metrics = score_task(db_url, run_id, parquet_path)
            timings["score"] = time.perf_counter() - t_score
            spans.append((e_score, time.time()))
            metrics.update({
                "scans": len(refs), "skipped_known": skipped,
                "duplicates": counts["duplicates"], "failed_chunks": failed_chunks,
                "dataset_numbers": counts["numbers"], "dataset_digits": counts["digits"],
                "wall_s": time.perf_counter() - started,
                **{f"stage_{k}_s": v for k, v in timings.items()},
            })
            metrics.update(scan_status_counts(db_url, run_id))
            t_report, e_report = time.perf_counter(), time.time()
            try:
                metrics["parquet_uri"] = export_run_task(settings, parquet_path, run_id)
                if mlflow_run_id is not None:
                    logged = log_run_task(settings, mlflow_run_id, params, metrics, parquet_path,
                                          misread, return_state=True)
                    if logged.is_failed():
                        warn(f"MLflow logging failed, metrics stay in the results database: "
                             f"{str(logged.message)[:200]}")
            finally:
                shutil.rmtree(export_dir, ignore_errors=True)
            metrics["stage_report_s"] = time.perf_counter() - t_report
            spans.append((e_report, time.time()))
            # wall time during which some stage worked (stages overlap across chunks)
            metrics["busy_s"] = busy_seconds(spans)
            metrics["warnings"] = warnings
            status = "completed" if failed_chunks == 0 else "partial"
            report = _report(flow_name, run_id, mlflow_run_id, model_ref.label, metrics, settings)
    except BaseException as ended:
        # the run is ending on an error or a stop (SIGTERM): record it, but a database that
        # cannot take the record now (locked, gone) must not replace the reason the run ended;
        # a run left `running` is marked interrupted by the next one (`read.stale_run_s`)
        try:
            finish_run(db_url, run_id, status, _jsonable(metrics), mlflow_run_id)
        except SQLAlchemyError as exc:
            log.warning("run %s ended (%s) but could not be recorded as %s: %s", run_id,
                        type(ended).__name__, status, str(exc).splitlines()[0][:200])
        raise
    finish_run(db_url, run_id, status, _jsonable(metrics), mlflow_run_id)
    if metrics.get("failed_chunks"):
        # everything else is written; failing the flow run makes the gap visible in the UI
        raise RuntimeError(f"{metrics['failed_chunks']} chunk(s) failed; re-run to read them")
    return report


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str | dict | list | type(None))}


def _report(flow_name: str, run_id: str, mlflow_run_id: str | None, model: str, metrics: dict,
            settings: Settings) -> dict:
    """The summary as a Prefect table artifact plus a note on where the MLflow run is."""
    summary = {k: metrics.get(k) for k in SUMMARY_KEYS}
    create_table_artifact(
        key=f"{flow_name}-summary",
        table=[{"metric": k, "value": "" if v is None else (round(v, 4) if isinstance(v, float) else v)}
               for k, v in summary.items()],
        description=f"{flow_name} with {model}",
    )
    uri = settings.mlflow_tracking_uri
    where = (f"[MLflow run {mlflow_run_id}]({uri.rstrip('/')}/#/experiments/0/runs/{mlflow_run_id})"
             if uri.startswith("http") else
             f"MLflow run `{mlflow_run_id}` in `{uri}`: open it with "
             f"`mlflow ui --backend-store-uri {uri}`")
    if mlflow_run_id is None:
        where = "**Not tracked in MLflow** (unreachable during the run): " + "; ".join(
            metrics.get("warnings") or []) + ". Metrics are in the results database (`runs`)."
    create_markdown_artifact(key=f"{flow_name}-mlflow", markdown=f"{where}\n\nParquet export: "
                             f"`{metrics.get('parquet_uri')}`", description="MLflow run")
    return {"run_id": run_id, "mlflow_run_id": mlflow_run_id, "model": model, **summary,
            "status_counts": metrics.get("cell_status_counts"), "wall_s": metrics.get("wall_s"),
            "warnings": metrics.get("warnings") or []}


@flow(name="ingest")
def ingest_flow(source: str | None = None, model: str | None = None, force: bool = False) -> dict:
    """The nightly job: read every scan not yet read by the model."""
    return read_scans("ingest", source, model, force, None, None)


@flow(name="backfill")
def backfill_flow(since: date, until: date, force: bool = False, model: str | None = None,
                  source: str | None = None) -> dict:
    """Re-read the scans received in [since, until); with `force`, also those already read."""
    if since >= until:
        raise CifrasError(f"backfill: --since {since} is not before --until {until}; nothing to read")
    lo = datetime.combine(since, dtime.min, UTC)
    hi = datetime.combine(until, dtime.min, UTC)
    return read_scans("backfill", source, model, force, lo, hi)
