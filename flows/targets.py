"""`cifras targets`: every accuracy target of issue #5 measured for one model, in one table,
each row with the command that measures it alone. The evaluations run as subflows (each
logs its own MLflow run as when run alone); the table is logged as one run of its own."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow

from flows.evaluate import evaluate_digits_flow
from flows.evaluate_cells import evaluate_cells_flow
from flows.read_telegram import read_telegrams
from tasks import tracking
from tasks.errors import CifrasError
from tasks.prefect_utils import run_logger
from tasks.reference import transcribed_values
from tasks.settings import Settings, Target, load_settings
from tasks.targets import TargetRow, command_for, judge, reference_score

EXPERIMENT = "targets"


def _measure(target: Target, data: Path, labels: Path | None, model: str | None) -> dict:
    if target.kind == "digits":
        return evaluate_digits_flow(str(data), target.split, model)
    if target.kind == "cells":
        assert labels is not None
        return evaluate_cells_flow(str(data), str(labels), model=model, split=target.split)
    truth = transcribed_values(data)
    reading = read_telegrams([str(data)], None, model)[0]
    return {**reference_score(reading["cells"], truth), "model": reading["model"]}


def measure_target(settings: Settings, target: Target, model: str | None
                   ) -> tuple[list[TargetRow], str | None]:
    """The target's rows, and the model version that was measured. Absent data or a failed
    evaluation gives unmet rows that say why; the other targets go on."""
    data = settings.shared_path(target.data)
    labels = settings.shared_path(target.labels) if target.labels else None
    root = settings.shared_data or Path(".")
    shown_labels = str(root / target.labels) if target.labels else None
    command = command_for(target, str(root / target.data), shown_labels)
    if data is None or (target.kind == "cells" and labels is None):
        return judge(target, None, command, "data not found under shared_data"), None
    try:
        figures = _measure(target, data, labels, model)
    except CifrasError as exc:
        return judge(target, None, command, f"failed: {exc}"[:200]), None
    return judge(target, figures, command, _details(target, figures)), figures.get("model")


def _details(target: Target, figures: dict) -> str | None:
    """What a reader of the table wants beside the bounded figures."""
    if target.kind == "cells":
        return f"{figures['n']} numbers, {figures['review']:.1%} sent to review"
    if target.kind == "reference":
        return f"{figures['right']} of {figures['cells']} cells right, {figures['review']} in review"
    return f"{figures['n']} digits"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@flow(name="targets", log_prints=True)
def targets_flow(model: str | None = None, only: list[str] | None = None) -> dict:
    """Measure the configured targets (`targets` in conf; `only`: these names) for `model`
    (default: the champion)."""
    settings = load_settings()
    logger = run_logger()
    chosen = [t for t in settings.targets if not only or t.name in only]
    if only and len(chosen) != len(set(only)):
        known = ", ".join(t.name for t in settings.targets)
        raise CifrasError(f"unknown target in {only}; the targets are: {known}")
    rows: list[TargetRow] = []
    versions: set[str] = set()
    for target in chosen:
        got, version = measure_target(settings, target, model)
        rows += got
        versions |= {version} if version else set()
        for r in got:
            logger.info("%s %s: %s (at least %s) %s", r.target, r.metric, r.value, r.at_least,
                        "met" if r.met else "NOT MET" + (f", {r.note}" if r.note else ""))
    label = ", ".join(sorted(versions)) or None
    client = tracking.configure_mlflow(settings)
    experiment = tracking.ensure_experiment(client, settings, EXPERIMENT)
    table = [r.as_dict() for r in rows]
    with tracking.tracked_run(client, experiment, label or "targets") as run_id:
        tracking.log_params(client, run_id, {"model_version": label,
                                             "model_uri": model or settings.evaluate.model_uri})
        tracking.log_metrics(client, run_id, {f"{_slug(r.target)}.{r.metric}": r.value for r in rows
                                              if r.value is not None}
                             | {"targets_met": float(sum(r.met for r in rows)), "targets": float(len(rows))})
        tracking.log_json(client, run_id, table, "targets.json")
    return {"model": label, "met": bool(rows) and all(r.met for r in rows), "rows": table,
            "mlflow_run_id": run_id}
