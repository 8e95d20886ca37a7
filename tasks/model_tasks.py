"""Prefect tasks for training, evaluating and registering the digit model.

Thin wrappers: each calls pure functions from the neighbouring modules and adds retries,
logging and MLflow bookkeeping.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks import tracking
from tasks.augment import get_recipe
from tasks.digit_data import DigitSet, Mnist, load_digit_set, load_mnist
from tasks.inference import predict_proba
from tasks.metrics import digit_metrics, save_confusion_png
from tasks.model import EXPECTED_PARAMS
from tasks.prefect_utils import COMPUTE, IO_RETRIES, run_logger
from tasks.reframe import reframe_many
from tasks.settings import Settings
from tasks.training import fit_convnet, subset

MNIST_METRIC = "mnist_test_accuracy"


@task(name="load-mnist", **IO_RETRIES)
def load_mnist_task(settings: Settings) -> Mnist:
    return load_mnist(
        settings.mnist_path,
        settings.mnist_download_url,
        settings.mnist_sha256,
        cache_dir=settings.data_dir / "keras",
    )


@task(name="load-digit-set", **IO_RETRIES)
def load_digit_set_task(path: Path, split: str | None) -> DigitSet:
    return load_digit_set(path, split)


@task(name="train", **COMPUTE)
def train_task(
    train: DigitSet, settings: Settings, client: Any, run_id: str, epochs: int, batch_size: int,
    limit: int | None, augment: str | None = None,
):
    logger = run_logger()
    data = subset(train, limit)
    recipe = get_recipe(augment)
    logger.info("training mnist_convnet on %d digits for %d epochs, augmentation: %s",
                len(data.y), epochs, recipe.name if recipe else "none")

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        tracking.log_metrics(client, run_id, logs, step=epoch)
        logger.info(
            "epoch %d/%d: %s", epoch + 1, epochs, ", ".join(f"{k}={v:.4f}" for k, v in logs.items())
        )

    model, history = fit_convnet(
        data,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=settings.train.validation_split,
        seed=settings.train.seed,
        on_epoch=on_epoch,
        augment=recipe,
    )
    return model, history


@task(name="reframe", **COMPUTE)
def reframe_task(data: DigitSet, method: str) -> np.ndarray:
    # Dataset arrays already hold bright ink on a black background.
    return reframe_many(data.x, method=method, ink="bright")  # type: ignore[arg-type]


@task(name="predict", **COMPUTE)
def predict_task(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    return predict_proba(model, x, batch_size)


@task(name="score-digits", **COMPUTE)
def score_task(y_true: np.ndarray, probs: np.ndarray) -> dict:
    return digit_metrics(y_true, probs.argmax(axis=1))


@task(name="log-evaluation", **IO_RETRIES)
def log_evaluation_task(client: Any, run_id: str, metrics: dict, prefix: str, title: str) -> None:
    """Scalar metrics, the per-class report as JSON and the confusion matrix as a PNG."""
    scalars = {f"{prefix}{k}": metrics[k] for k in
               ("accuracy", "precision_macro", "recall_macro", "f1_macro")}
    tracking.log_metrics(client, run_id, scalars)
    tracking.log_json(client, run_id, metrics["report"], f"{prefix}classification_report.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = save_confusion_png(
            metrics["confusion_matrix"], Path(tmp) / f"{prefix}confusion_matrix.png", title
        )
        client.log_artifact(run_id, str(png))


class _KerasFlavor:
    """mlflow.keras with its save directory created first: mlflow 3.17's keras flavour writes
    the input example before it creates the directory (FileNotFoundError otherwise)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import os

        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


@task(name="log-model", **IO_RETRIES)
def log_model_task(model, run_id: str, sample: np.ndarray) -> str:
    """Log with the Keras flavour, a signature and an input example; returns the model URI."""
    import mlflow
    from mlflow.models import Model, infer_signature

    example = sample[:2].astype(np.float32)
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with mlflow.start_run(run_id=run_id):
        info = Model.log(
            artifact_path=None, name="model", flavor=_KerasFlavor, model=model, signature=signature,
            input_example=example,
        )
    return info.model_uri


@task(name="register-and-promote", **IO_RETRIES)
def register_task(
    client: Any, settings: Settings, model_uri: str, run_id: str, score: float,
    tags: dict[str, str] | None = None, promote: bool = True,
) -> dict:
    """Register a new version, then move the champion alias only if it beats the incumbent
    (never with `promote=False`: the version stays a challenger)."""
    import mlflow

    name, alias = settings.mlflow.registered_model, settings.mlflow.champion_alias
    logger = run_logger()
    incumbent = tracking.champion_score(client, name, alias, MNIST_METRIC)
    mv = mlflow.register_model(
        model_uri, name, tags={MNIST_METRIC: f"{score:.6f}", **(tags or {})}
    )
    version = str(mv.version)
    client.set_model_version_tag(name, version, "run_id", run_id)
    promoted = promote and tracking.is_better(score, incumbent[1] if incumbent else None)
    if promoted:
        tracking.promote(client, name, alias, version)
        logger.info("%s v%s is the new @%s (%.4f vs %s)", name, version, alias, score,
                    f"{incumbent[1]:.4f} (v{incumbent[0]})" if incumbent else "none")
    elif not promote:
        logger.info("%s v%s registered as a challenger (no promotion asked); @%s stays %s",
                    name, version, alias, f"v{incumbent[0]}" if incumbent else "unset")
    else:
        logger.info("%s v%s kept as a challenger: %.4f does not beat v%s's %.4f",
                    name, version, score, incumbent[0], incumbent[1])
    client.set_tag(run_id, "registered_version", version)
    client.set_tag(run_id, "promoted", str(promoted).lower())
    return {
        "version": version,
        "promoted": promoted,
        "champion": version if promoted else (incumbent[0] if incumbent else None),
        "previous_champion": incumbent[0] if incumbent else None,
    }


@task(name="load-model", **IO_RETRIES)
def load_model_task(client: Any, uri: str):
    ref = tracking.resolve_model(client, uri)
    return ref, tracking.load_keras_model(ref)


def architecture_params() -> dict[str, Any]:
    return {"architecture": "keras mnist_convnet", "trainable_params": EXPECTED_PARAMS}
