"""`cifras evaluate-digits` end to end: CLI, flow, real MLflow run."""

import json

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks.inference import second_look
from tasks.reframe import reframe_many
from tasks.settings import load_settings

runner = CliRunner()


@pytest.fixture
def small_set(tmp_path, mnist_sample):
    x, y = mnist_sample
    # Pad to 36x36 so the reframing has real work to do (any image size is accepted).
    x = np.pad(x[:200], ((0, 0), (4, 4), (4, 4)))
    path = tmp_path / "small.npz"
    np.savez(path, x_val=x, y_val=y[:200])
    return path, x, y[:200]


@pytest.mark.parametrize("method", ["mnist", "paper"])
def test_json_output_matches_an_independent_computation(use_registry, small_set, method):
    import mlflow.keras

    path, x, y = small_set
    result = runner.invoke(
        app, ["evaluate-digits", str(path), "--split", "val", "--reframe", method, "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix"):
        assert key in out
    assert out["n"] == 200 and out["reframe"] == method and out["model"] == "digit-cnn/v1"
    cm = np.array(out["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 200
    assert np.trace(cm) / 200 == pytest.approx(out["accuracy"])

    s = load_settings()
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    mlflow.set_registry_uri(s.mlflow_tracking_uri)
    model = mlflow.keras.load_model("models:/digit-cnn/1")
    inputs = reframe_many(x, method, ink="bright")
    single = np.asarray(model(inputs))
    assert out["accuracy_single_look"] == pytest.approx(float((single.argmax(1) == y).mean()))
    # the pipeline's reading: a second look at the digits under read.second_look
    assert out["second_look"] == s.read.second_look > 0
    looked = second_look(model, inputs, single, s.read.second_look)
    assert out["accuracy"] == pytest.approx(float((looked.argmax(1) == y).mean()))

    client = MlflowClient(s.mlflow_tracking_uri)
    run = client.get_run(out["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "digit-eval"
    assert run.data.params["model_version"] == "digit-cnn/v1"
    assert run.data.params["reframe"] == method
    assert run.data.params["dataset"] == "small:val"
    assert run.data.metrics["accuracy"] == pytest.approx(out["accuracy"])


def test_corrupt_dataset_is_one_error_line(use_registry, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    result = runner.invoke(app, ["evaluate-digits", str(bad), "--json"])
    assert result.exit_code == 2
    assert result.stdout.strip() == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.npz" in errors[0]


def test_no_model_yet_says_how_to_get_one(cifras_env, prefect_server, small_set):
    path, _, _ = small_set
    result = runner.invoke(app, ["evaluate-digits", str(path), "--split", "val"])
    assert result.exit_code == 2
    assert "cifras train" in result.stderr


def test_unknown_reframing_is_refused(small_set):
    path, _, _ = small_set
    result = runner.invoke(app, ["evaluate-digits", str(path), "--reframe", "wavy"])
    assert result.exit_code == 2 and "unknown reframing" in result.stderr


def test_second_look_off_is_the_single_reading(use_registry, small_set):
    path, _, _ = small_set
    result = runner.invoke(app, ["evaluate-digits", str(path), "--split", "val", "--second-look", "0",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["second_look"] == 0 and out["accuracy"] == out["accuracy_single_look"]
