"""Fine-tuning flow: the champion, trained further on digits the official results labelled,
judged against the champion on the validation telegrams, registered as a challenger and
promoted only by the promotion rule. Also `harvest-cells`, which turns folders of labelled
cell crops into the same digit shards."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task

from tasks import tracking
from tasks.cell_reader import read_label_file
from tasks.errors import CifrasError
from tasks.fine_tuning import fine_tune, squeezed_pairs, training_mix, with_pairs
from tasks.model_tasks import (
    architecture_params,
    judge_and_register,
    load_mnist_task,
    load_model_task,
    validation_accuracy,
    validation_set_for,
)
from tasks.prefect_utils import COMPUTE, IO_RETRIES, run_logger
from tasks.settings import Settings, load_settings
from tasks.storage import join, write_bytes
from tasks.weak_labels import WeakDigits, harvest_cells, load_shards, shard_bytes


@task(name="load-digit-shards", **IO_RETRIES)
def load_shards_task(uris: list[str], settings: Settings, newest_per_scan: bool = False
                     ) -> tuple[WeakDigits, list[str]]:
    try:
        return load_shards(uris, settings, newest_per_scan)
    except (ValueError, FileNotFoundError) as exc:
        raise CifrasError(str(exc)) from exc


@task(name="fine-tune", **COMPUTE)
def fine_tune_task(base, x, y, settings: Settings, client, run_id: str, epochs: int,
                   learning_rate: float):
    logger = run_logger()

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        tracking.log_metrics(client, run_id, logs, step=epoch)
        logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                    ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))

    return fine_tune(base, x, y, epochs=epochs, batch_size=settings.fine_tune.batch_size,
                     learning_rate=learning_rate, seed=settings.fine_tune.seed, on_epoch=on_epoch)


@flow(name="fine-tune", log_prints=True)
def fine_tune_flow(shards: list[str], model: str | None = None, epochs: int | None = None,
                   learning_rate: float | None = None, mnist_ratio: float | None = None,
                   promote: bool = True, pair_share: float | None = None,
                   newest_per_scan: bool = False) -> dict:
    """Fine-tune `model` (default: the champion) on the digit shards at `shards` (ingest runs'
    exports/datasets/<run>/digits, or `cifras harvest-cells` output). Digits from the
    validation telegrams are dropped by scan hash, so the judge never sees its own lessons.
    `newest_per_scan`: a scan read by several runs counts once, from its newest shard."""
    settings = load_settings()
    ft = settings.fine_tune
    epochs, learning_rate = epochs or ft.epochs, learning_rate or ft.learning_rate
    mnist_ratio = ft.mnist_ratio if mnist_ratio is None else mnist_ratio
    pair_share = ft.pair_share if pair_share is None else pair_share
    logger = run_logger()
    client = tracking.configure_mlflow(settings)
    ref, base = load_model_task(client, model or settings.evaluate.model_uri)
    weak, files = load_shards_task(shards, settings, newest_per_scan)
    vs = validation_set_for(settings)
    held_out = vs.hashes if vs is not None else set()
    kept = weak.without(held_out)
    if not len(kept):
        raise CifrasError(f"no weakly labelled digits to fine-tune on in {', '.join(shards)}")
    logger.info("fine-tuning %s on %d weak digits from %d shard(s) (%d from validation "
                "telegrams dropped)", ref.label, len(kept), len(files), len(weak) - len(kept))
    mnist = load_mnist_task(settings)
    x, y = training_mix(kept.x, kept.y, mnist.train.x, mnist.train.y, mnist_ratio, ft.seed)
    pairs = squeezed_pairs(kept.x, round(pair_share * len(kept)), ft.seed)
    if len(pairs):
        x, y = with_pairs(x, y, pairs, ft.seed)
    experiment = tracking.ensure_experiment(client, settings, ft.experiment)
    started = time.perf_counter()
    with tracking.tracked_run(client, experiment, f"fine-tune-{ref.label}",
                              tags={"fine_tuned_from": ref.label}) as run_id:
        tracking.log_params(client, run_id, {
            **architecture_params(), "base_model": ref.label, "epochs": epochs,
            "learning_rate": learning_rate, "mnist_ratio": mnist_ratio, "seed": ft.seed,
            "pair_share": pair_share, "squeezed_pairs": len(pairs),
            "batch_size": ft.batch_size, "shards": ", ".join(shards), "shard_files": len(files),
            "weak_digits": len(kept), "dropped_validation_digits": len(weak) - len(kept),
            "train_samples": len(y), "mnist_source": mnist.source,
        })
        tuned, _ = fine_tune_task(base, x, y, settings, client, run_id, epochs, learning_rate)
        metrics, comparison, registry, _ = judge_and_register(
            client, settings, tuned, mnist, run_id, {"fine_tuned_from": ref.label}, promote,
            {"train_wall_s": time.perf_counter() - started})
    return {
        "run_id": run_id, "base": ref.label, "weak_digits": len(kept),
        "dropped_validation_digits": len(weak) - len(kept),
        "mnist_test": {k: metrics[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")},
        "validation_number_accuracy": validation_accuracy(comparison["candidate"]),
        "champion_validation_number_accuracy": validation_accuracy(comparison["champion"]),
        "wall_s": round(time.perf_counter() - started, 1),
        **registry,
    }


@flow(name="harvest-cells")
def harvest_cells_flow(images: str, labels: str, out: str, model: str | None = None,
                       split: str | None = None, max_digits: int | None = None) -> dict:
    """Weakly labelled digits from a folder of labelled cell crops, as one digit shard."""
    settings = load_settings()
    root, labels_path = Path(images), Path(labels)
    cells, skipped = read_label_file(labels_path, split)
    client = tracking.configure_mlflow(settings)
    ref, keras_model = load_model_task(client, model or settings.evaluate.model_uri)
    data, kept, missing = [], [], 0
    for c in cells:
        path = root / c.file
        if not path.is_file():
            missing += 1
            continue
        data.append(path.read_bytes())
        kept.append(c.label)
    max_digits = max_digits or max((len(str(v)) for v in kept), default=1)
    weak, counts = harvest_cells(data, kept, keras_model, max_digits, settings.read.reframe,
                                 settings.read.batch_size)
    target = out if out.endswith(".npz") else join(out, "digits.npz")
    write_bytes(target, shard_bytes(weak), settings)
    return {**counts, "not_numbers": skipped, "missing_images": missing, "model": ref.label,
            "out": target}
