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
from tasks.ingest_tasks import read_options
from tasks.metrics import digit_metrics, save_confusion_png
from tasks.model import EXPECTED_PARAMS, to_model_input
from tasks.prefect_utils import COMPUTE, IO_RETRIES, run_logger
from tasks.promotion import Scores, decide
from tasks.reframe import reframe_many
from tasks.settings import Settings
from tasks.template import Template, load_template
from tasks.training import fit_convnet, subset
from tasks.validation import ValidationSet, load_validation_set, score_on_validation, validation_listing

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
                      ) -> tuple[dict[str, bytes], dict[str, str], dict[str, float]]:
    """Export the model to ONNX twice (Keras' exporter, and the Winograd graph of the same
    weights) and compare ONNX Runtime's argmax with Keras' on every MNIST test digit. Returns
    ({artifact path: .onnx bytes}, version tags, run metrics); an export that fails or
    disagrees is recorded as unverified, so the reader does not use it."""
    from tasks.inference import EXPORT_ARTIFACTS, OnnxModel, argmax_agreement, export_bytes

    artifacts: dict[str, bytes] = {}
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for kind, artifact in EXPORT_ARTIFACTS.items():
        try:
            data = export_bytes(model, kind)
            probs = predict_proba(OnnxModel(data, kind=kind), x_test, batch_size)
        except Exception as exc:  # onnxruntime/tf2onnx missing, or an op an exporter refuses
            tags |= {f"{kind}_verified": "false", f"{kind}_error": f"{type(exc).__name__}: {exc}"[:250]}
            continue
        agreement = argmax_agreement(probs, keras_probs)
        artifacts[artifact] = data
        tags |= {f"{kind}_artifact": artifact, f"{kind}_verified": str(agreement == 1.0).lower(),
                 f"{kind}_argmax_agreement": f"{agreement:.6f}",
                 f"{kind}_checked_on": f"mnist_test:{len(x_test)}"}
        metrics |= {f"{kind}_argmax_agreement": agreement,
                    f"{kind}_max_abs_prob_diff": float(np.abs(probs - keras_probs).max())}
    return artifacts, tags, metrics


@task(name="log-onnx", **IO_RETRIES)
def log_onnx_task(model, client: Any, run_id: str, x_test: np.ndarray, keras_probs: np.ndarray
                  ) -> dict[str, str]:
    """Export, verify and log the ONNX models beside the Keras one in the run; returns the tags
    for the model version, which tell the reader which export it may use."""
    from tasks.inference import EXPORT_ARTIFACTS

    logger = run_logger()
    artifacts, tags, metrics = export_and_verify(model, x_test, keras_probs)
    with tempfile.TemporaryDirectory() as tmp:
        for artifact, data in artifacts.items():
            path = Path(tmp) / Path(artifact).name
            path.write_bytes(data)
            client.log_artifact(run_id, str(path), artifact_path=str(Path(artifact).parent))
    tracking.log_metrics(client, run_id, metrics)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    for kind in EXPORT_ARTIFACTS:
        if tags.get(f"{kind}_verified") == "true":
            logger.info("%s export logged: same argmax as Keras on all %d MNIST test digits",
                        kind, len(x_test))
        else:
            why = tags.get(f"{kind}_error") or f"argmax agreement {tags.get(f'{kind}_argmax_agreement')}"
            logger.warning("%s export not verified (%s); readers will not use it", kind, why)
    return tags


@task(name="judge-candidate", **COMPUTE)
def judge_task(client: Any, settings: Settings, model, mnist: dict, run_id: str) -> dict:
    """Score the candidate and the champion on the validation telegrams (read in this run),
    apply the promotion rule, and log the comparison to the candidate's run."""
    logger = run_logger()
    name, alias = settings.mlflow.registered_model, settings.mlflow.champion_alias
    champion = tracking.champion_scores(client, name, alias)
    vs = validation_set_for(settings)
    comparison: dict[str, Any] = {
        "candidate": {"mnist_accuracy": mnist["accuracy"], "mnist_f1": mnist["f1_macro"]},
        "champion": None, "validation": None,
    }
    cand_val = champ_val = None
    if vs is not None:
        tpl, opt = vs_template_and_options(settings)
        cand = score_on_validation(vs, model, tpl, opt)
        cand_val = cand["number_accuracy"]
        comparison["candidate"]["validation"] = cand
        comparison["validation"] = {"uri": vs.uri, "fingerprint": vs.fingerprint,
                                    "telegrams": len(vs.prepared), "cells": vs.cells,
                                    "unreadable": vs.unreadable}
        if champion is not None:
            ref = tracking.resolve_model(client, f"models:/{name}/{champion['version']}")
            champ = score_on_validation(vs, tracking.load_keras_model(ref), tpl, opt)
            champ_val = champ["number_accuracy"]
            champion["validation"] = champ
    else:
        logger.warning("no validation set at %s: promotion compares MNIST test only "
                       "(make one with `cifras build-validation`)", settings.validation_uri)
    comparison["champion"] = champion
    decision = decide(
        Scores(mnist["accuracy"], mnist["f1_macro"], cand_val),
        Scores(champion["mnist_accuracy"], champion["mnist_f1"], champ_val) if champion else None,
        settings.promotion.min_mnist_accuracy,
    )
    comparison["decision"] = decision.as_dict()
    tracking.log_metrics(client, run_id, {
        "validation_number_accuracy": cand_val, "champion_validation_number_accuracy": champ_val,
        "validation_digit_accuracy": (comparison["candidate"].get("validation") or {}).get("digit_accuracy"),
    })
    tracking.log_json(client, run_id, comparison, "promotion_comparison.json")
    logger.info("promotion: %s (%s)", "yes" if decision.promote else "no", decision.reason)
    return comparison


@task(name="register-and-promote", **IO_RETRIES)
def register_task(
    client: Any, settings: Settings, model_uri: str, run_id: str, score: float,
    tags: dict[str, str] | None = None, promote: bool = True, decision: dict | None = None,
) -> dict:
    """Register a new version; move the champion alias only when the promotion rule said so
    (`decision`, from `judge_task`), and never with `promote=False` (it stays a challenger)."""
    import mlflow

    name, alias = settings.mlflow.registered_model, settings.mlflow.champion_alias
    logger = run_logger()
    incumbent = tracking.champion_scores(client, name, alias)
    mv = mlflow.register_model(
        model_uri, name, tags={MNIST_METRIC: f"{score:.6f}", **(tags or {})}
    )
    version = str(mv.version)
    client.set_model_version_tag(name, version, "run_id", run_id)
    if decision is not None:
        client.set_model_version_tag(name, version, "promotion", decision["reason"][:5000])
    promoted = promote and bool(decision and decision["promote"])
    if promoted:
        tracking.promote(client, name, alias, version)
        logger.info("%s v%s is the new @%s (%s)", name, version, alias, decision["reason"])
    elif not promote:
        logger.info("%s v%s registered as a challenger (no promotion asked); @%s stays %s",
                    name, version, alias, f"v{incumbent['version']}" if incumbent else "unset")
    else:
        client.set_registered_model_alias(name, "challenger", version)
        logger.info("%s v%s kept as @challenger: %s", name, version,
                    decision["reason"] if decision else "no decision")
    client.set_tag(run_id, "registered_version", version)
    client.set_tag(run_id, "promoted", str(promoted).lower())
    return {
        "version": version,
        "promoted": promoted,
        "champion": version if promoted else (incumbent["version"] if incumbent else None),
        "previous_champion": incumbent["version"] if incumbent else None,
        "promotion_reason": decision["reason"] if decision else "not judged",
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


def judge_and_register(client: Any, settings: Settings, model, mnist: Mnist, run_id: str,
                       tags: dict[str, str], promote: bool, extra_metrics: dict[str, float] | None = None
                       ) -> tuple[dict, dict, dict, dict[str, str]]:
    """What every new version goes through once trained, whatever made it: MNIST test scores,
    the promotion judgement, the Keras model and its checked ONNX export, registration.
    Returns (MNIST metrics, comparison, registry result, ONNX tags)."""
    x_test = to_model_input(mnist.test.x)
    probs = predict_task(model, x_test, settings.evaluate.batch_size)
    metrics = score_task(mnist.test.y, probs)
    log_evaluation_task(client, run_id, metrics, "test_", "MNIST test")
    tracking.log_metrics(client, run_id, {MNIST_METRIC: metrics["accuracy"], **(extra_metrics or {})})
    comparison = judge_task(client, settings, model, metrics, run_id)
    model_uri = log_model_task(model, run_id, x_test[:2])
    onnx_tags = log_onnx_task(model, client, run_id, x_test, probs)
    registry = register_task(client, settings, model_uri, run_id, metrics["accuracy"],
                             tags={**tags, **onnx_tags}, promote=promote,
                             decision=comparison["decision"])
    return metrics, comparison, registry, onnx_tags


_validation_cache: dict[str, ValidationSet | None] = {}


def vs_template_and_options(settings: Settings) -> tuple[Template, Any]:
    return load_template(settings.template), read_options(settings)


def validation_set_for(settings: Settings) -> ValidationSet | None:
    """The validation telegrams, prepared once per process while their files stay the same
    (reading them is the slow part)."""
    listing = validation_listing(settings.validation_uri, settings)
    if not listing:
        return None
    key = f"{settings.validation_uri} {settings.template} {settings.read!r} {hash(listing)}"
    if key not in _validation_cache:
        tpl, opt = vs_template_and_options(settings)
        _validation_cache.clear()
        _validation_cache[key] = load_validation_set(settings.validation_uri, settings, tpl, opt)
    return _validation_cache[key]


def validation_accuracy(side: dict | None) -> float | None:
    """Numbers right on the validation telegrams, from one side of a judge_task comparison."""
    return ((side or {}).get("validation") or {}).get("number_accuracy")


def architecture_params() -> dict[str, Any]:
    return {"architecture": "keras mnist_convnet", "trainable_params": EXPECTED_PARAMS}
