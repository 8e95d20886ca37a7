import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.errors import CifrasError
from tasks.settings import load_settings
from tests.conftest import KEPT_ENV


def test_defaults_use_local_sqlite(cifras_env, monkeypatch):
    s = load_settings()
    assert s.mlflow_tracking_uri == f"sqlite:///{(cifras_env / 'mlflow.db').resolve()}"
    assert s.mlflow_artifact_root.startswith("file://")
    assert s.train.epochs == 15 and s.train.batch_size == 128
    assert s.evaluate.model_uri == "models:/digit-cnn@champion"


def test_environment_overrides_nested_values(cifras_env, monkeypatch):
    monkeypatch.setenv("CIFRAS_TRAIN__EPOCHS", "3")
    monkeypatch.setenv("CIFRAS_MNIST_PATH", "/data/mnist.npz")
    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", "http://127.0.0.1:5000")
    s = load_settings()
    assert s.train.epochs == 3
    assert str(s.mnist_path) == "/data/mnist.npz"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_null_in_the_environment_is_none_as_in_the_yaml(cifras_env, monkeypatch):
    assert load_settings().read.second_look_margin == 1.0
    monkeypatch.setenv("CIFRAS_READ__SECOND_LOOK_MARGIN", "null")
    monkeypatch.setenv("CIFRAS_TRAIN__LIMIT", "null")
    s = load_settings()
    assert s.read.second_look_margin is None and s.train.limit is None
    monkeypatch.setenv("CIFRAS_READ__SECOND_LOOK_MARGIN", "2.5")
    assert load_settings().read.second_look_margin == 2.5


def test_bad_value_is_one_clear_line(cifras_env, monkeypatch):
    monkeypatch.setenv("CIFRAS_TRAIN__EPOCHS", "many")
    with pytest.raises(CifrasError, match=r"train\.epochs") as err:
        load_settings()
    assert "\n" not in str(err.value)



@pytest.mark.parametrize(("name", "value", "where"), [
    ("CIFRAS_READ__BATCH_SIZE", "0", "read.batch_size"),  # was range() arg 3 must not be zero
    ("CIFRAS_READ__CHUNK_SIZE", "0", "read.chunk_size"),
    ("CIFRAS_READ__OK_THRESHOLD", "95", "read.ok_threshold"),  # a percentage: every cell to review
    ("CIFRAS_READ__OK_THRESHOLD", "-1", "read.ok_threshold"),  # every cell ok
    ("CIFRAS_READ__PAD", "-50", "read.pad"),
    ("CIFRAS_READ__SUFFIXES", ".jpg", "JSON"),  # a list not written as JSON
])
def test_values_outside_their_meaning_are_one_clear_line(cifras_env, monkeypatch, name, value, where):
    monkeypatch.setenv(name, value)
    with pytest.raises(CifrasError, match=where.replace(".", r"\.")) as err:
        load_settings()
    assert "\n" not in str(err.value)


def test_a_config_file_that_is_not_yaml_is_one_clear_line(cifras_env, monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("read:\n  pad: [1\n")
    monkeypatch.setenv("CIFRAS_CONFIG", str(bad))
    with pytest.raises(CifrasError, match="not valid YAML") as err:
        load_settings()
    assert "\n" not in str(err.value)

def test_unknown_key_in_the_file_is_an_error(cifras_env, monkeypatch, tmp_path):
    from tasks.settings import CONF_DIR

    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF_DIR / "default.yaml").read_text() + "\nepochz: 3\n")
    monkeypatch.setenv("CIFRAS_CONFIG", str(bad))
    with pytest.raises(CifrasError, match="epochz"):
        load_settings()


def test_missing_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFRAS_CONFIG", str(tmp_path / "none.yaml"))
    with pytest.raises(CifrasError, match="CIFRAS_CONFIG"):
        load_settings()


def test_the_shell_settings_do_not_reach_the_tests():
    """Run from a shell pointed at a real registry or database, the tests keep to their own
    stores: only KEPT_ENV passes (checked again in a pytest run given such a shell)."""
    assert not [v for v in os.environ if v.startswith("CIFRAS_") and v not in KEPT_ENV]
    if os.environ.get("SHELL_SETTINGS_PROBE"):
        return
    shell = {**os.environ, "SHELL_SETTINGS_PROBE": "1",
             "CIFRAS_MLFLOW__TRACKING_URI": "sqlite:////nonexistent/registry/mlflow.db",
             "CIFRAS_DATABASE_URL": "postgresql+psycopg://operator@db.example/cifras"}
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"{__file__}::test_the_shell_settings_do_not_reach_the_tests"],
                           env=shell, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert inner.returncode == 0, inner.stdout[-3000:]


def test_mlflow_calls_to_a_silent_server_are_bounded_unless_the_operator_says(cifras_env, monkeypatch):
    """MLflow's client retries a call 7 times with backoff by default (4 minutes, and each task
    retry again): a nightly run with MLflow down had not said so after 5 minutes (46 s now)."""
    from tasks import tracking

    for var in tracking._HTTP_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking, "_http_env_ours", {})
    tracking.configure_mlflow(load_settings())
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    monkeypatch.setenv("CIFRAS_MLFLOW__HTTP_RETRIES", "1")
    tracking.configure_mlflow(load_settings())
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # this process's own value follows
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the operator's
    tracking.configure_mlflow(load_settings())
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.mark.parametrize(("url", "says"), [
    ("notaurl", "Could not parse"),
    ("mysql://operator:s3cret@db.example/cifras", "MySQLdb"),  # a dialect whose driver is absent
])
def test_a_database_url_that_cannot_be_used_is_one_line_without_its_password(url, says):
    from tasks.db import get_engine

    with pytest.raises(CifrasError, match=says) as err:
        get_engine(url)
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
