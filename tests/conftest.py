"""Shared fixtures: real MLflow on temporary SQLite stores, one Prefect test server per session,
and the shared development data (tests that need it skip cleanly where it is absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture
def cifras_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory (MLflow store, exports) for one test."""
    data = tmp_path / "cifras-data"
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(data))
    for var in list(os.environ):
        if var.startswith("CIFRAS_") and var not in ("CIFRAS_DATA_DIR", "CIFRAS_SHARED_DATA",
                                                     "CIFRAS_MNIST_PATH", "CIFRAS_TEST_POSTGRES_URL"):
            monkeypatch.delenv(var)
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
        train_flow(epochs=1, limit=6000)
    yield data


@pytest.fixture
def use_registry(trained_registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(trained_registry))
    return trained_registry


@pytest.fixture(scope="session")
def mnist_sample(mnist_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """300 MNIST test digits (never training digits)."""
    with np.load(mnist_npz) as d:
        return d["x_test"][:300].copy(), d["y_test"][:300].astype(np.int64)
