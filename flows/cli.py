"""The `cifras` command-line program: each subcommand runs one flow.

User mistakes (bad paths, missing data, no model yet) print one `error:` line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from tasks.errors import CifrasError

# Without PREFECT_API_URL, each command starts Prefect's ephemeral server, which gives up after
# 20 s by default; on a busy 2-core machine (a training run beside a backfill) that is too
# short, and the whole command would fail before reading anything.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="cifras: read handwritten vote counts on scanned electoral telegrams.",
)


def _run(job: Callable[[], Any], as_json: bool, render: Callable[[Any], str] | None = None,
         runs_flows: bool = True) -> Any:
    """Run a flow; with --json only the JSON result reaches stdout (logs go to stderr). A job
    that `runs_flows` gets its temporary Prefect server (none with PREFECT_API_URL) up front,
    with a reaper that stops it if this process is killed."""
    try:
        if runs_flows:
            from tasks.prefect_utils import quiet_user_errors, temporary_server_reaped

            quiet_user_errors()
            temporary_server_reaped()
        if as_json:
            with contextlib.redirect_stdout(sys.stderr):
                result = job()
            items = result if isinstance(result, list) else [result]  # lists: one object a line
            sys.stdout.write("".join(json.dumps(item, default=str) + "\n" for item in items))
        else:
            result = job()
            typer.echo(render(result) if render else json.dumps(result, indent=2, default=str))
        return result
    except CifrasError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def train(
    epochs: int = typer.Option(None, help="Epochs (default from conf: 15)."),
    batch_size: int = typer.Option(None, help="Batch size (default from conf: 128)."),
    limit: int = typer.Option(None, help="Train on the first N MNIST digits only."),
    augment: str = typer.Option(None, help="Augmentation recipe: none, reframe, geometric, telegram."),
    promote: bool = typer.Option(True, "--promote/--no-promote",
                                 help="--no-promote: register as a challenger, never move @champion."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Train the reused MNIST CNN, register it, and promote it if it beats the champion."""
    from flows.train import train_flow

    _run(lambda: train_flow(epochs=epochs, batch_size=batch_size, limit=limit, augment=augment,
                            promote=promote), as_json)


@app.command("evaluate-digits")
def evaluate_digits(
    dataset: str = typer.Argument(..., help="An .npz with x/y or x_<split>/y_<split> (ink = 255)."),
    split: str = typer.Option(None, help="Which x_<split>/y_<split> arrays to read."),
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    reframe: str = typer.Option(None, help="Reframing: mnist or paper (default from conf)."),
    second_look: float = typer.Option(None, min=0, max=1, help=(
        "Read again the digits whose top probability is under this, as the pipeline does "
        "(default read.second_look); 0: the model's single reading.")),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Score the model on a digit dataset and log the run in the digit-eval experiment."""
    from flows.evaluate import evaluate_digits_flow

    if reframe is not None and reframe not in ("mnist", "paper"):
        typer.echo(f"error: unknown reframing {reframe!r}; choose mnist or paper", err=True)
        raise typer.Exit(code=2)
    _run(lambda: evaluate_digits_flow(dataset, split=split, model=model, reframe=reframe,
                                      look_again=second_look), as_json)


@app.command()
def demo(
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """The main job on embedded defaults: champion, 100 generated telegrams + the real one, read."""
    from flows.demo import render, run_demo

    _run(run_demo, as_json, render)


@app.command("draw-template")
def draw_template_cmd(
    scan: str = typer.Argument(..., help="Scan image (any URL fsspec reads)."),
    out: str = typer.Option(..., "--out", help="PNG to write."),
    template: str = typer.Option(None, help="Template name (default from conf)."),
) -> None:
    """Draw the template's cells and rules over a scan, to check the geometry by eye."""
    import cv2
    import numpy as np

    from tasks.overlay import draw_template
    from tasks.settings import load_settings
    from tasks.storage import read_bytes, write_bytes
    from tasks.template import load_template

    def job() -> dict:
        settings = load_settings()
        tpl = load_template(template or settings.template)
        try:
            data = read_bytes(scan, settings)
        except FileNotFoundError as exc:
            raise CifrasError(f"scan {scan} not found") from exc
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise CifrasError(f"{scan} is not an image OpenCV can decode")
        _, png = cv2.imencode(".png", draw_template(img, tpl))
        write_bytes(out, png.tobytes(), settings)
        return {"scan": scan, "template": tpl.name, "cells": len(tpl.cells), "out": out}

    _run(job, as_json=False, runs_flows=False)


@app.command("load-results")
def load_results(
    csv_file: str = typer.Argument(..., help="Official results CSV (one row per mesa x category x party)."),
    template: str = typer.Option(None, help="Template name (default from conf)."),
    db: str = typer.Option(None, "--db", help="SQLAlchemy URL (default from conf)."),
    create_mesas: bool = typer.Option(False, help="Register mesas not yet in the database."),
) -> None:
    """Load official results as labels, in one transaction: the whole file or nothing."""
    from tasks.db import migrate
    from tasks.official_results import parse_results_csv, store_labels
    from tasks.settings import load_settings
    from tasks.storage import read_bytes
    from tasks.template import load_template

    def job() -> dict:
        settings = load_settings()
        url = db or settings.db_url
        tpl = load_template(template or settings.template)
        try:
            text = read_bytes(csv_file, settings).decode("utf-8-sig")
        except FileNotFoundError as exc:
            raise CifrasError(f"results file {csv_file} not found") from exc
        except UnicodeDecodeError as exc:
            raise CifrasError(f"results file {csv_file} is not UTF-8 text") from exc
        labels = parse_results_csv(text, tpl)
        migrate(url)
        return store_labels(url, labels, tpl, source=csv_file, create_mesas=create_mesas)

    _run(job, as_json=False, runs_flows=False)


@app.command("evaluate-cells")
def evaluate_cells(
    images: str = typer.Option(..., "--images", help="Folder the CSV's file paths are relative to."),
    labels: str = typer.Option(..., "--labels", help="CSV with columns file,label (others ignored)."),
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    split: str = typer.Option(None, help="Keep only rows whose `split` column has this value."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Read images that each hold one handwritten number; report exact-number accuracy."""
    from flows.evaluate_cells import evaluate_cells_flow

    _run(lambda: evaluate_cells_flow(images, labels, model=model, split=split), as_json)


@app.command()
def generate(
    count: int = typer.Option(None, help="How many telegrams (default from conf: 100)."),
    out: str = typer.Option(None, help="Where to write scans: a path or URL (default: the scans URI)."),
    seed: int = typer.Option(None, help="Random seed; the same seed gives identical files."),
    digits: str = typer.Option(None, help="Handwriting pool: mnist (test split), usps, optdigits, orand."),
    db: str = typer.Option(None, "--db", help="SQLAlchemy URL for the labels (default from conf)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Generate realistic telegram scans from real handwriting, with their official results."""
    from flows.generate import generate_flow

    _run(lambda: generate_flow(count=count, out=out, seed=seed, digits=digits, db=db), as_json)


@app.command("contact-sheet")
def contact_sheet_cmd(
    out: str = typer.Option(..., "--out", help="PNG to write."),
    count: int = typer.Option(6, help="Generated telegrams to show."),
    seed: int = typer.Option(0, help="Generator seed."),
    digits: str = typer.Option(None, help="Handwriting pool (default from conf)."),
) -> None:
    """Generated telegrams next to the real reference scan, to judge realism by eye."""
    import cv2
    import numpy as np

    from flows.generate import render_one
    from tasks.contact_sheet import contact_sheet
    from tasks.digit_data import mnist_source
    from tasks.digit_pools import load_pool
    from tasks.settings import load_settings
    from tasks.storage import write_bytes
    from tasks.template import load_template

    def job() -> dict:
        settings = load_settings()
        tpl = load_template(settings.template)
        source = digits or settings.generate.digits
        mnist = mnist_source(settings.mnist_path, settings.mnist_download_url, settings.mnist_sha256,
                             settings.data_dir / "keras") if source.startswith("mnist") else None
        pool = load_pool(source, settings.shared_data, mnist)
        scans = []
        folder = settings.shared_path("telegram_reference")
        real = sorted(folder.glob("*.jpg")) if folder else []
        if real:
            scans.append(("REAL: " + real[0].name, cv2.imread(str(real[0]), cv2.IMREAD_GRAYSCALE)))
        for i in range(count):
            mesa, _, data = render_one(tpl, pool, seed, i)
            scans.append((f"generated {mesa.code} ({source})",
                          cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)))
        _, png = cv2.imencode(".png", contact_sheet(scans))
        write_bytes(out, png.tobytes(), settings)
        return {"out": out, "generated": count, "real": len(real[:1])}

    _run(job, as_json=False, runs_flows=False)


@app.command("read-telegram")
def read_telegram(
    scans: list[str] = typer.Argument(..., help="Scan files or URLs."),
    template: str = typer.Option(None, help="Template name (default from conf)."),
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per scan."),
) -> None:
    """Read scans now, without storing anything: per cell value, digits, confidence, status."""
    from flows.read_telegram import read_telegrams, render_readings

    _run(lambda: read_telegrams(scans, template, model), as_json, render_readings)


@app.command()
def ingest(
    source: str = typer.Option(None, help="A folder under the configured scans root (default: the root)."),
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    force: bool = typer.Option(False, help="Re-read scans already read by this model."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """The nightly job: read every new scan, store, score and track the run."""
    from flows.ingest import ingest_flow

    _run(lambda: ingest_flow(source=source, model=model, force=force), as_json)


@app.command()
def backfill(
    since: str = typer.Option(..., help="First day (YYYY-MM-DD), by when the scan was received."),
    until: str = typer.Option(..., help="Day after the last (YYYY-MM-DD)."),
    force: bool = typer.Option(False, help="Re-read scans already read (e.g. after a new champion)."),
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    source: str = typer.Option(None, help="A folder under the configured scans root (default: the root)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Re-read the scans of a period on demand."""
    from datetime import date

    from flows.ingest import backfill_flow

    try:
        lo, hi = date.fromisoformat(since), date.fromisoformat(until)
    except ValueError:
        typer.echo("error: --since and --until take dates as YYYY-MM-DD", err=True)
        raise typer.Exit(code=2) from None
    _run(lambda: backfill_flow(lo, hi, force=force, model=model, source=source), as_json)


@app.command()
def targets(
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    only: list[str] = typer.Option(None, "--only", help="Measure only this target (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Measure every accuracy target in conf (`targets`) for one model: one table, each row
    with the command that measures it alone."""
    from flows.targets import targets_flow
    from tasks.targets import render_targets

    _run(lambda: targets_flow(model=model, only=only or None), as_json, render_targets)


@app.command("export-onnx")
def export_onnx_cmd(
    model: str = typer.Option(None, help="MLflow model URI (default models:/digit-cnn@champion)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Give an existing version its verified ONNX exports, plain and Winograd (new versions get
    both when trained)."""
    from flows.train import attach_onnx_flow

    _run(lambda: attach_onnx_flow(model=model), as_json)


@app.command()
def bench(
    count: int = typer.Option(1000, help="Generated telegrams to read end to end."),
    data_dir: str = typer.Option(None, help="Where to keep the generated scans between runs."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="--no-baselines: end to end only (e.g. a memory run)."),
    repeat: int = typer.Option(1, min=1, help=(
        "Ingests, each between two decode passes; the median one is reported (shared machines "
        "drift).")),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """End-to-end, inference and Tesseract benchmark on this machine (table, or JSON)."""
    from flows.bench import render, run_bench

    _run(lambda: run_bench(count=count, data_dir=data_dir, baselines=baselines, repeat=repeat),
         as_json, render)


@app.command("registration-error")
def registration_error_cmd(
    count: int = typer.Option(200, help="Generated scans to register."),
    seed: int = typer.Option(777, help="Generator seed (keep it apart from evaluation seeds)."),
    digits: str = typer.Option("usps:train", help="Handwriting pool of the generated scans."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """How far registration puts the cells from their true place, on generated scans."""
    from flows.registration_error import registration_error

    _run(lambda: registration_error(count, seed, digits), as_json)


@app.command("fine-tune")
def fine_tune_cmd(
    shards: list[str] = typer.Argument(..., help="Digit shards: npz files or folders (URLs)."),
    model: str = typer.Option(None, help="Model to start from (default: the champion)."),
    epochs: int = typer.Option(None, help="Epochs (default from conf)."),
    learning_rate: float = typer.Option(None, help="Adam learning rate (default from conf)."),
    mnist_ratio: float = typer.Option(None, help="MNIST digits mixed in per weak digit."),
    promote: bool = typer.Option(True, help="--no-promote registers a challenger only."),
    pair_share: float = typer.Option(None, help="Squeezed pairs of weak digits, trained towards "
                                     "'no one digit', per weak digit (default from conf: 0)."),
    newest_per_scan: bool = typer.Option(False, "--newest-per-scan", help=(
        "A scan read by several runs (forced re-reads) counts once, from its newest shard.")),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Fine-tune the champion on weakly labelled digits; promote only by the promotion rule."""
    from flows.fine_tune import fine_tune_flow

    _run(lambda: fine_tune_flow(shards, model=model, epochs=epochs, learning_rate=learning_rate,
                                mnist_ratio=mnist_ratio, promote=promote,
                                pair_share=pair_share, newest_per_scan=newest_per_scan), as_json)


@app.command("harvest-cells")
def harvest_cells_cmd(
    images: str = typer.Option(..., "--images", help="Folder the CSV's file paths are relative to."),
    labels: str = typer.Option(..., "--labels", help="CSV with columns file,label."),
    out: str = typer.Option(..., "--out", help="Where to write the digit shard (folder or .npz URL)."),
    model: str = typer.Option(None, help="Model that segments and reads (default: the champion)."),
    split: str = typer.Option(None, help="Keep only rows whose `split` column has this value."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Weakly label the digits of labelled cell crops, for fine-tuning."""
    from flows.fine_tune import harvest_cells_flow

    _run(lambda: harvest_cells_flow(images, labels, out, model=model, split=split), as_json)


@app.command("build-validation")
def build_validation(
    out: str = typer.Option(None, help="Where (default: promotion.validation_uri)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Generate the fixed validation telegrams that decide promotions (conf: promotion)."""
    import tempfile

    from flows.generate import generate_flow
    from tasks.settings import load_settings
    from tasks.storage import join

    def job() -> dict:
        settings = load_settings()
        root = out or settings.validation_uri
        made = []
        with tempfile.TemporaryDirectory() as tmp:  # labels go beside the scans, not into the results db
            for spec in settings.promotion.validation_sets:
                target = join(root, f"{spec.digits.replace(':', '-')}-seed{spec.seed}")
                made.append(generate_flow(count=spec.count, out=target, seed=spec.seed,
                                          digits=spec.digits, db=f"sqlite:///{tmp}/labels.db"))
        return {"out": root, "sets": [{k: m[k] for k in ("out", "digits", "seed", "telegrams")}
                                      for m in made]}

    _run(job, as_json)


@app.command()
def promote(
    model: str = typer.Argument(..., help="Registered version, e.g. models:/digit-cnn/6."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Judge a registered version against the champion; promote it only by the rule."""
    from flows.promote import promote_flow

    _run(lambda: promote_flow(model), as_json)


@app.command()
def calibrate(
    model: str = typer.Option(None, help="MLflow model URI (default: the champion)."),
    target: float = typer.Option(0.99, help="Wanted accuracy of the cells marked ok."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Reliability of `read.ok_threshold` on the validation telegrams, and the lowest
    threshold whose ok cells reach --target."""
    from tasks import tracking
    from tasks.errors import CifrasError
    from tasks.model_tasks import validation_set_for, vs_template_and_options
    from tasks.settings import load_settings
    from tasks.validation import recommend_threshold, reliability

    def job() -> dict:
        settings = load_settings()
        vs = validation_set_for(settings)
        if vs is None:
            raise CifrasError(f"no validation telegrams at {settings.validation_uri}; "
                              "run `cifras build-validation` first")
        client = tracking.configure_mlflow(settings)
        ref = tracking.resolve_model(client, model or settings.evaluate.model_uri)
        tpl, opt = vs_template_and_options(settings)
        rows = reliability(vs, tracking.load_keras_model(ref), tpl, opt)
        return {"model": ref.label, "validation": vs.uri, "telegrams": len(vs.prepared),
                "current": settings.read.ok_threshold, "target": target, "table": rows,
                "recommended": recommend_threshold(rows, target)}

    def render(r: dict) -> str:
        lines = [f"{r['model']} on {r['telegrams']} validation telegrams ({r['validation']})",
                 "threshold  ok share  right when ok  review  numbers right"]
        for row in r["table"]:
            lines.append(f"{row['ok_threshold']:>9}  {row['ok_share']:>8.1%}  "
                         f"{row['accuracy_when_ok'] or 0:>13.2%}  {row['review_share']:>6.1%}  "
                         f"{row['number_accuracy']:>13.2%}")
        rec = r["recommended"]
        lines.append(f"lowest threshold with ok cells >= {r['target']:.1%} right: "
                     + (f"{rec['ok_threshold']} (set read.ok_threshold)" if rec else "none"))
        return "\n".join(lines)

    _run(job, as_json, render)


def main() -> None:
    from tasks import workers

    workers.stop_on_sigterm()
    app()


if __name__ == "__main__":
    main()
