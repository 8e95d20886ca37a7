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
from tasks.inference import ONNX_ARTIFACT, predict_proba
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


def export_and_verify(model, x_test: np.ndarray, keras_probs: np.ndarray, batch_size: int = 1024
                      ) -> tuple[bytes | None, dict[str, str], dict[str, float]]:
    """Export the model to ONNX and compare ONNX Runtime's argmax with Keras' on every MNIST
    test digit. Returns (the .onnx bytes or None, version tags, run metrics); an export that
    fails or disagrees is recorded as unverified, so the reader keeps using Keras."""
    from tasks.inference import OnnxModel, argmax_agreement, export_onnx

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "model.onnx")
            export_onnx(model, path)
            data = Path(path).read_bytes()
        probs = predict_proba(OnnxModel(data), x_test, batch_size)
    except Exception as exc:  # onnxruntime/tf2onnx missing, or an op the exporter refuses
        return None, {"onnx_verified": "false", "onnx_error": f"{type(exc).__name__}: {exc}"[:250]}, {}
    agreement = argmax_agreement(probs, keras_probs)
    verified = agreement == 1.0
    tags = {"onnx_artifact": ONNX_ARTIFACT, "onnx_verified": str(verified).lower(),
            "onnx_argmax_agreement": f"{agreement:.6f}", "onnx_checked_on": f"mnist_test:{len(x_test)}"}
    metrics = {"onnx_argmax_agreement": agreement,
               "onnx_max_abs_prob_diff": float(np.abs(probs - keras_probs).max())}
    return data, tags, metrics


@task(name="log-onnx", **IO_RETRIES)
def log_onnx_task(model, client: Any, run_id: str, x_test: np.ndarray, keras_probs: np.ndarray
                  ) -> dict[str, str]:
    """Export, verify and log the ONNX model beside the Keras one in the run; returns the tags
    for the model version, which tell the reader whether it may use the export."""
    logger = run_logger()
    data, tags, metrics = export_and_verify(model, x_test, keras_probs)
    if data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(ONNX_ARTIFACT).name
            path.write_bytes(data)
            client.log_artifact(run_id, str(path), artifact_path=str(Path(ONNX_ARTIFACT).parent))
    tracking.log_metrics(client, run_id, metrics)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    if tags["onnx_verified"] == "true":
        logger.info("ONNX export logged: same argmax as Keras on all %d MNIST test digits", len(x_test))
    else:
        logger.warning("ONNX export not verified (%s); readers will use Keras",
                       tags.get("onnx_error") or f"argmax agreement {tags.get('onnx_argmax_agreement')}")
    return tags


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


@task(name="attach-onnx", **IO_RETRIES)
def attach_onnx_task(client: Any, ref: tracking.ModelRef, model, x_test: np.ndarray) -> dict[str, str]:
    """Give a version registered before ONNX exports one now: export, verify, log it in the
    version's run and tag the version, so `read.inference: auto` picks it up."""
    if not ref.name or not ref.version:
        raise ValueError(f"{ref.uri} is not a registered version")
    mv = client.get_model_version(ref.name, ref.version)
    keras_probs = predict_proba(model, x_test)
    tags = log_onnx_task.fn(model, client, mv.run_id, x_test, keras_probs)
    for k, v in tags.items():
        client.set_model_version_tag(ref.name, ref.version, k, v)
    return tags


def architecture_params() -> dict[str, Any]:
    return {"architecture": "keras mnist_convnet", "trainable_params": EXPECTED_PARAMS}
