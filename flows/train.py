"""Training flow: load MNIST, train the reused CNN, evaluate, log, register, maybe promote."""

from __future__ import annotations

import time

from prefect import flow

from tasks import tracking
from tasks.augment import get_recipe
from tasks.model import to_model_input
from tasks.model_tasks import (
    architecture_params,
    attach_onnx_task,
    judge_and_register,
    load_mnist_task,
    load_model_task,
    train_task,
)
from tasks.settings import load_settings


@flow(name="train", log_prints=True)
def train_flow(
    epochs: int | None = None, batch_size: int | None = None, limit: int | None = None,
    augment: str | None = None, promote: bool = True,
) -> dict:
    """Train a new digit-cnn version; the champion alias moves only by the promotion rule
    (tasks/promotion.py), and never with `promote=False` (it is registered as a challenger).

    `augment` names a recipe in `tasks.augment.RECIPES` ("none" or unset: plain MNIST)."""
    settings = load_settings()
    epochs = epochs or settings.train.epochs
    batch_size = batch_size or settings.train.batch_size
    limit = limit if limit is not None else settings.train.limit
    recipe = get_recipe(augment if augment is not None else settings.train.augment)
    augment_name = recipe.name if recipe else "none"

    client = tracking.configure_mlflow(settings)
    experiment = tracking.ensure_experiment(client, settings, settings.mlflow.train_experiment)
    mnist = load_mnist_task(settings)
    started = time.perf_counter()
    with tracking.tracked_run(client, experiment, "train-mnist-convnet") as run_id:
        tracking.log_params(client, run_id, {
            **architecture_params(),
            "epochs": epochs,
            "batch_size": batch_size,
            "validation_split": settings.train.validation_split,
            "optimizer": "adam",
            "seed": settings.train.seed,
            "train_samples": min(limit or len(mnist.train.y), len(mnist.train.y)),
            "mnist_source": mnist.source,
            "augment": augment_name,
            "augment_recipe": recipe.describe() if recipe else None,
            "augment_seed": settings.train.seed if recipe else None,
            "promote": promote,
        })
        model, _history = train_task(
            mnist.train, settings, client, run_id, epochs, batch_size, limit, augment_name
        )
        wall = time.perf_counter() - started
        metrics, _, registry, onnx_tags = judge_and_register(
            client, settings, model, mnist, run_id, {"augment": augment_name}, promote,
            {"train_wall_s": wall})
    return {
        "run_id": run_id,
        "mnist_test": {k: metrics[k] for k in
                       ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro")},
        "wall_s": round(wall, 1),
        "augment": augment_name,
        "onnx_verified": onnx_tags.get("onnx_verified") == "true",
        "winograd_verified": onnx_tags.get("winograd_verified") == "true",
        **registry,
    }


@flow(name="attach-onnx", log_prints=True)
def attach_onnx_flow(model: str | None = None) -> dict:
    """Export, verify and log the ONNX models for an existing version (one registered before
    an export existed), so that readers can use them without retraining."""
    settings = load_settings()
    client = tracking.configure_mlflow(settings)
    mnist = load_mnist_task(settings)
    ref, keras_model = load_model_task(client, model or settings.evaluate.model_uri)
    tags = attach_onnx_task(client, ref, keras_model, to_model_input(mnist.test.x))
    return {"model": ref.label, **tags}
