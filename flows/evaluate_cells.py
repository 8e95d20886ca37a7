"""`cifras evaluate-cells`: read images that each hold one handwritten number and score them,
logging one MLflow run in the cell-eval experiment."""

from __future__ import annotations

from pathlib import Path

import cv2
from prefect import flow

from tasks import tracking
from tasks.cell_reader import misread_cells, read_cells, read_label_file, score_numbers
from tasks.settings import load_settings

EXPERIMENT = "cell-eval"


@flow(name="evaluate-cells")
def evaluate_cells_flow(images: str, labels: str, model: str | None = None, split: str | None = None,
                        max_digits: int = 6) -> dict:
    settings = load_settings()
    root, labels_path = Path(images), Path(labels)
    cells, skipped = read_label_file(labels_path, split)
    client = tracking.configure_mlflow(settings)
    ref = tracking.resolve_model(client, model or settings.evaluate.model_uri)
    model = tracking.load_reader_model(ref, settings.read.inference)  # as the pipeline reads
    imgs, kept, missing = [], [], 0
    for c in cells:
        img = cv2.imread(str(root / c.file), cv2.IMREAD_GRAYSCALE)
        if img is None:
            missing += 1
            continue
        imgs.append(img)
        kept.append(c)
    readings = read_cells(imgs, model, max_digits, settings.read.ok_threshold,
                          settings.read.reframe, settings.read.batch_size, settings.read.second_look,
                          settings.read.second_look_margin)
    report = score_numbers(readings, [c.label for c in kept])
    misread = misread_cells(readings, kept)
    report.update({"skipped_not_numbers": skipped, "missing_images": missing, "model": ref.label,
                   "misread_ok": sum(m["status"] == "ok" for m in misread)})
    experiment = tracking.ensure_experiment(client, settings, EXPERIMENT)
    with tracking.tracked_run(client, experiment, f"{root.name}:{split or 'all'}") as run_id:
        tracking.log_params(client, run_id, {"images": str(root.resolve()), "labels": str(labels_path),
                                             "split": split, "model_version": ref.label,
                                             "ok_threshold": settings.read.ok_threshold,
                                             "second_look": settings.read.second_look,
                                             "second_look_margin": settings.read.second_look_margin})
        tracking.log_metrics(client, run_id, {k: report[k] for k in
                                              ("n", "number_accuracy", "review", "accuracy_when_ok")})
        tracking.log_json(client, run_id, report, "report.json")
        tracking.log_json(client, run_id, misread, "misread.json")  # each wrong cell, ok ones first
    report["mlflow_run_id"] = run_id
    return report
