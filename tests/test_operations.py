"""Server mode end to end, with real processes on 127.0.0.1: a Prefect server on PostgreSQL, an
MLflow server whose artifacts go to S3 (SeaweedFS) through the server, a process worker, and the
deployments of deploy/prefect.yaml. A backfill triggered through the Prefect API reads scans from
S3 with a champion trained against the MLflow server, and writes readings to PostgreSQL, metrics
and artifacts to MLflow, and its Parquet export to S3. A second, forced backfill survives S3
stopping (SIGSTOP) for a while in the middle of the run, with nothing lost or duplicated.

The same commands run the services without containers (see deploy/docker-compose.yml and
docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import _free_port_pair, scratch_pg_database

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_SCANS = 8
CELLS = 31  # cells of the telegrama_nacional_2021 template
STALL_S = 10



def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except OSError:
        return None


def _wait_for(what: str, check: Callable[[], object], timeout: float, logs: list[Path],
              every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what} not ready after {timeout:.0f} s\n{_tails(logs)}")


def _tails(logs: list[Path], lines: int = 40) -> str:
    out = []
    for log in logs:
        if log.exists():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} (last {lines} lines)\n" + "\n".join(text))
    return "\n".join(out)


class Services:
    """Processes started by the test, each in its own process group, all stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log_path = self.folder / f"{name}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, name: str, args: list[str], env: dict[str, str], timeout: float) -> str:
        """A command that must succeed within `timeout`; its output is kept as a log."""
        log_path = self.folder / f"{name}.log"
        self.logs.append(log_path)
        try:
            done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            log_path.write_text(f"{exc.stdout or ''}\n{exc.stderr or ''}")
            pytest.fail(f"{name} took more than {timeout} s\n{_tails([log_path])}")
        log_path.write_text(done.stdout + "\n" + done.stderr)
        assert done.returncode == 0, f"{name} failed\n{_tails([log_path])}"
        return done.stdout

    def stop(self) -> None:
        """Last started, first stopped (the worker before the servers it talks to)."""
        for proc in reversed(self.procs):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = Services(tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def prefect_db_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the Prefect server (asyncpg driver)."""
    with scratch_pg_database("prefect", "postgresql+asyncpg") as url:
        yield url


def _weed_pid(endpoint: str) -> int:
    """The SeaweedFS process serving this S3 endpoint (started by the conftest fixture)."""
    import psutil

    flag = f"-s3.port={endpoint.rsplit(':', 1)[1]}"
    for proc in psutil.process_iter(["cmdline"]):
        if flag in (proc.info["cmdline"] or []):
            return proc.pid
    pytest.fail(f"no weed process with {flag}")


@contextmanager
def _prefect_api(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def _wait_final(client, flow_run_id, timeout: float, logs: list[Path]):
    def final():
        run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return _wait_for(f"flow run {flow_run_id}", final, timeout, logs, every=1)


def _readings_per_scan(db_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from tasks.db import Reading, session_scope

    with session_scope(db_url) as s:
        rows = s.execute(select(Reading.content_hash, Reading.cell_id, func.count())
                         .group_by(Reading.content_hash, Reading.cell_id))
        per_scan: dict[str, int] = {}
        for content_hash, _cell, n in rows:
            assert n == 1, f"duplicated reading for {content_hash}/{_cell}"
            per_scan[content_hash] = per_scan.get(content_hash, 0) + 1
    return per_scan


def _run_row(db_url: str, run_id: str):
    from tasks.db import Run, session_scope

    with session_scope(db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None, f"no run {run_id} in the results database"
        return run.status, run.mlflow_run_id


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.slow
def test_deployed_backfill_on_servers_survives_an_s3_stall(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, pg_url: str, prefect_db_url: str,
    mnist_npz: Path, services: Services,  # last: its processes stop before the databases go
):
    import s3fs
    from mlflow import MlflowClient

    started = time.monotonic()
    prefect_port, mlflow_port = _free_port_pair(), _free_port_pair()
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    aws = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
           "AWS_DEFAULT_REGION": "us-east-1"}
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("PREFECT_", "CIFRAS_", "MLFLOW_", "AWS_"))}
    base_env.update(aws)
    prefect_env = {**base_env, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # what a worker machine sets: where the results, scans, exports and models are
    cifras_env = {
        **prefect_env,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "CIFRAS_REPO": str(REPO),
        "CIFRAS_DATA_DIR": str(tmp_path / "data"),
        "CIFRAS_MNIST_PATH": str(mnist_npz),
        "CIFRAS_DATABASE_URL": pg_url,
        "CIFRAS_STORAGE__SCANS_URI": f"s3://{s3_bucket}/scans",
        "CIFRAS_STORAGE__EXPORTS_URI": f"s3://{s3_bucket}/exports",
        "CIFRAS_STORAGE__S3_ENDPOINT_URL": s3_endpoint,
        "CIFRAS_MLFLOW__TRACKING_URI": mlflow_url,
        "CIFRAS_READ__CHUNK_SIZE": "2",
        # a one-epoch model is below the production MNIST floor for champions (0.99)
        "CIFRAS_PROMOTION__MIN_MNIST_ACCURACY": "0",
    }
    if os.environ.get("CIFRAS_SHARED_DATA"):
        cifras_env["CIFRAS_SHARED_DATA"] = os.environ["CIFRAS_SHARED_DATA"]

    # the two servers, started together
    services.start("prefect-server", [_exe("prefect"), "server", "start", "--host", "127.0.0.1",
                                      "--port", str(prefect_port)],
                   {**prefect_env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db_url}, tmp_path)
    services.start("mlflow-server", [
        _exe("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{s3_bucket}/mlflow"],
        {**base_env, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}, tmp_path)
    _wait_for("Prefect server", lambda: _http_status(f"{api_url}/health") == 200, 120, services.logs)
    _wait_for("MLflow server", lambda: _http_status(f"{mlflow_url}/health") == 200, 120, services.logs)

    # a champion in the MLflow server (artifacts proxied to S3), and labelled scans in S3 + PostgreSQL
    services.run("train", [_exe("cifras"), "train", "--epochs", "1", "--limit", "3000", "--json"],
                 cifras_env, timeout=240)
    services.run("generate", [_exe("cifras"), "generate", "--count", str(N_SCANS), "--seed", "11",
                              "--out", f"s3://{s3_bucket}/scans", "--db", pg_url, "--json"],
                 cifras_env, timeout=180)

    # the deployments of deploy/prefect.yaml, on a process work pool, and a worker
    services.run("work-pool", [_exe("prefect"), "work-pool", "create", "cifras", "--type", "process"],
                 cifras_env, timeout=60)
    services.run("deploy", [_exe("prefect"), "--no-prompt", "deploy", "--all",
                            "--prefect-file", "deploy/prefect.yaml"], cifras_env, timeout=120)
    worker = services.start("worker", [_exe("prefect"), "worker", "start", "--pool", "cifras",
                                       "--limit", "1"], cifras_env, REPO)

    today = datetime.now(UTC).date()
    period = {"since": (today - timedelta(days=1)).isoformat(),
              "until": (today + timedelta(days=2)).isoformat()}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    mlflow = MlflowClient(tracking_uri=mlflow_url)

    with _prefect_api(api_url) as client:
        names = {d.name for d in client.read_deployments()}
        assert names == {"nightly-ingest", "backfill", "train", "fine-tune", "evaluate"}
        tune = client.read_deployment_by_name("fine-tune/fine-tune")
        assert tune.parameter_openapi_schema["required"] == ["shards"]
        nightly = client.read_deployment_by_name("ingest/nightly-ingest")
        assert nightly.schedules[0].schedule.cron == "0 3 * * *"
        assert nightly.schedules[0].schedule.timezone == "America/Argentina/Buenos_Aires"
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        backfill = client.read_deployment_by_name("backfill/backfill")
        assert backfill.enforce_parameter_schema and not backfill.schedules
        assert set(backfill.parameter_openapi_schema["required"]) == {"since", "until"}

        # 1. a backfill, triggered through the API, read by the worker from the repo
        first = client.create_flow_run_from_deployment(backfill.id, parameters=period)
        run = _wait_final(client, first.id, 240, services.logs)
        assert run.state.is_completed(), f"{run.state}\n{_tails(services.logs)}"
        assert worker.poll() is None

    per_scan = _readings_per_scan(pg_url)
    assert len(per_scan) == N_SCANS and set(per_scan.values()) == {CELLS}
    status, mlflow_run_id = _run_row(pg_url, str(first.id))
    assert status == "completed" and mlflow_run_id
    tracked = mlflow.get_run(mlflow_run_id)
    assert mlflow.get_experiment(tracked.info.experiment_id).name == "telegram-ingest"
    assert {"digit_accuracy", "number_accuracy", "review_share"} <= set(tracked.data.metrics)
    assert tracked.data.params["model_version"] == "digit-cnn/v1"
    artifacts = {a.path for a in mlflow.list_artifacts(mlflow_run_id)}
    assert {"readings.parquet", "metrics.json", "digit_confusion_matrix.png"} <= artifacts
    assert fs.find(f"{s3_bucket}/mlflow"), "MLflow artifacts did not reach S3"
    import pandas as pd

    with fs.open(f"{s3_bucket}/exports/runs/{first.id}/readings.parquet", "rb") as f:
        assert len(pd.read_parquet(f)) == N_SCANS * CELLS
    assert _http_status(f"http://127.0.0.1:{prefect_port}/") == 200
    assert _http_status(f"{api_url}/health") == 200
    assert _http_status(f"{mlflow_url}/") == 200

    # 2. a forced backfill while S3 stops answering for a while, mid-run
    weed = _weed_pid(s3_endpoint)
    with _prefect_api(api_url) as client:
        second = client.create_flow_run_from_deployment(backfill.id, parameters={**period, "force": True})

        def reading_started():
            runs = client.read_task_runs(flow_run_filter=_flow_run_filter(second.id))
            return any(r.name.startswith("read-chunk") for r in runs)

        _wait_for("the forced backfill's first chunk", reading_started, 180, services.logs, every=0.25)
        os.kill(weed, signal.SIGSTOP)
        try:
            time.sleep(STALL_S)
            assert not client.read_flow_run(second.id).state.is_final(), "finished without S3"
        finally:
            os.kill(weed, signal.SIGCONT)
        run = _wait_final(client, second.id, 240, services.logs)
        assert run.state.is_completed(), f"{run.state}\n{_tails(services.logs)}"
        task_runs = client.read_task_runs(flow_run_filter=_flow_run_filter(second.id))
    retried = sorted(r.name for r in task_runs if (r.run_count or 0) > 1)
    print(f"S3 stopped {STALL_S} s mid-run; task runs that needed more than one attempt: {retried}")

    per_scan = _readings_per_scan(pg_url)
    assert len(per_scan) == N_SCANS and set(per_scan.values()) == {CELLS}, per_scan
    status, _ = _run_row(pg_url, str(second.id))
    assert status == "completed"
    with fs.open(f"{s3_bucket}/exports/runs/{second.id}/readings.parquet", "rb") as f:
        assert len(pd.read_parquet(f)) == N_SCANS * CELLS
    print(f"server-mode integration test: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_dask_workers_read_like_the_sequential_path(reading_env: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """The same telegrams read chunk by chunk in the flow process, then on a LocalCluster of
    two Dask workers (settings.dask), give the same readings, each stored once."""
    from sqlalchemy import select

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.db import Reading, session_scope
    from tasks.settings import load_settings

    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "2")
    generate_flow(count=5, seed=23)
    db_url = load_settings().db_url

    def readings() -> list[tuple]:
        with session_scope(db_url) as s:
            return list(s.execute(select(Reading.content_hash, Reading.cell_id, Reading.value,
                                         Reading.digits, Reading.status)
                                  .order_by(Reading.content_hash, Reading.cell_id)))

    sequential = ingest_flow()
    before = readings()
    monkeypatch.setenv("CIFRAS_DASK__LOCAL_WORKERS", "2")
    assert load_settings().dask.enabled
    parallel = ingest_flow(force=True)
    assert parallel["scans"] == sequential["scans"] == 5 and parallel["read"] == 5
    assert len(before) == 5 * CELLS and readings() == before
    assert parallel["digit_accuracy"] == sequential["digit_accuracy"]


def _flow_run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
