"""Digit evaluation flow: any x/y dataset through reframing and the model, scored and logged."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks import tracking
from tasks.inference import second_look
from tasks.model_tasks import (
    load_digit_set_task,
    load_model_task,
    log_evaluation_task,
    predict_task,
    reframe_task,
    score_task,
)
from tasks.settings import load_settings

RESULT_KEYS = ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix")


@flow(name="evaluate-digits", log_prints=True)
def evaluate_digits_flow(
    dataset: str, split: str | None = None, model: str | None = None, reframe: str | None = None,
    look_again: float | None = None,
) -> dict:
    """Reframe, predict in batches, score; one MLflow run in the digit-eval experiment. The
    digits are read as the pipeline reads them, with its second look at unsure digits
    (`read.second_look`, or `look_again`); `accuracy_single_look` is the model's own."""
    settings = load_settings()
    model_uri = model or settings.evaluate.model_uri
    method = reframe or settings.evaluate.reframe
    below = settings.read.second_look if look_again is None else look_again
    client = tracking.configure_mlflow(settings)
    experiment = tracking.ensure_experiment(client, settings, settings.mlflow.eval_experiment)

    data = load_digit_set_task(Path(dataset), split)
    ref, keras_model = load_model_task(client, model_uri)
    x = reframe_task(data, method)
    single = predict_task(keras_model, x, settings.evaluate.batch_size)
    probs = second_look(keras_model, x, single, below, settings.evaluate.batch_size)
    metrics = score_task(data.y, probs)
    single_accuracy = float((single.argmax(axis=1) == data.y).mean()) if len(data.y) else 0.0
    with tracking.tracked_run(client, experiment, f"{data.name}:{method}") as run_id:
        tracking.log_params(client, run_id, {
            "dataset": data.name,
            "dataset_path": str(Path(dataset).resolve()),
            "split": split,
            "model_uri": model_uri,
            "model_version": ref.label,
            "reframe": method,
            "second_look": below,
            "n": metrics["n"],
        })
        tracking.log_metrics(client, run_id, {"accuracy_single_look": single_accuracy})
        log_evaluation_task(client, run_id, metrics, "", f"{data.name} ({method})")
    return {
        "dataset": data.name,
        "model": ref.label,
        "reframe": method,
        "second_look": below,
        **{k: metrics[k] for k in RESULT_KEYS},
        "accuracy_single_look": single_accuracy,
        "mlflow_run_id": run_id,
    }
