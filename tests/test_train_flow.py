"""The training flow against a real MLflow store (SQLite) and a real Prefect API."""

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.train import train_flow
from tasks.settings import load_settings


@pytest.mark.slow
def test_training_registers_versions_and_moves_the_alias_only_when_better(
    cifras_env, mnist_npz, prefect_server, monkeypatch
):
    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    weak = train_flow(epochs=1, limit=500)
    strong = train_flow(epochs=1, limit=5000)
    weak_again = train_flow(epochs=1, limit=500)

    assert (weak["version"], strong["version"], weak_again["version"]) == ("1", "2", "3")
    assert weak["promoted"] and strong["promoted"]
    assert strong["mnist_test"]["accuracy"] > weak["mnist_test"]["accuracy"]
    assert not weak_again["promoted"]
    assert weak_again["champion"] == "2"

    s = load_settings()
    client = MlflowClient(s.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("digit-cnn", "champion").version) == "2"

    run = client.get_run(strong["run_id"])
    m = run.data.metrics
    for key in ("test_accuracy", "test_precision_macro", "test_recall_macro", "test_f1_macro",
                "mnist_test_accuracy"):
        assert key in m
    assert m["test_accuracy"] == pytest.approx(strong["mnist_test"]["accuracy"])
    assert run.data.params["epochs"] == "1" and run.data.params["trainable_params"] == "34826"
    assert run.data.params["train_samples"] == "5000"
    # per-epoch metrics are logged with their step
    history = client.get_metric_history(strong["run_id"], "val_accuracy")
    assert [h.step for h in history] == [0]
    artifacts = {a.path for a in client.list_artifacts(strong["run_id"])}
    assert {"test_confusion_matrix.png", "test_classification_report.json"} <= artifacts
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_registered_model_loads_and_predicts_like_the_logged_metric(use_registry, mnist_sample):
    import mlflow.keras

    s = load_settings()
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    mlflow.set_registry_uri(s.mlflow_tracking_uri)
    model = mlflow.keras.load_model("models:/digit-cnn@champion")
    x, y = mnist_sample
    pred = np.asarray(model(x[..., None].astype("float32") / 255.0)).argmax(1)
    assert (pred == y).mean() > 0.8  # 1 epoch on 6,000 digits already reads most of them
    mv = MlflowClient(s.mlflow_tracking_uri).get_model_version_by_alias("digit-cnn", "champion")
    assert float(mv.tags["mnist_test_accuracy"]) > 0.8
