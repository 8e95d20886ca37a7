"""The README's main job on embedded defaults (local files, SQLite, MLflow on SQLite, Prefect
without a server): make sure a champion model exists, generate telegrams, add the real
reference telegram with its transcription, read them all, and print what happened.
"""

from __future__ import annotations

from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from tasks import tracking
from tasks.db import migrate
from tasks.errors import CifrasError
from tasks.official_results import Label, store_labels
from tasks.reference import REFERENCE_MESA, load_reference
from tasks.settings import Settings, load_settings
from tasks.storage import join, read_bytes, write_bytes
from tasks.template import load_template

DEMO_TELEGRAMS = 100


def has_champion(settings: Settings) -> bool:
    client = tracking.configure_mlflow(settings)
    try:
        tracking.resolve_model(client, settings.evaluate.model_uri)
        return True
    except CifrasError:
        return False


def add_reference(settings: Settings) -> bool:
    """Copy the real telegram among the scans and load its transcription as its labels."""
    folder = settings.shared_path("telegram_reference")
    found = load_reference(folder) if folder else None
    if found is None:
        return False
    scan, values = found
    template = load_template(settings.template)
    write_bytes(join(settings.scans_uri, f"{REFERENCE_MESA.code}.jpg"), read_bytes(str(scan)), settings)
    migrate(settings.db_url)
    store_labels(settings.db_url, [Label(REFERENCE_MESA, c, v) for c, v in values.items()], template,
                 source=f"transcription:{scan.name}", create_mesas=True)
    return True


def run_demo(count: int = DEMO_TELEGRAMS) -> dict:
    settings = load_settings()
    trained = None if has_champion(settings) else train_flow()
    generated = generate_flow(count=count)
    reference = add_reference(settings)
    summary = ingest_flow(force=True)  # a re-run of the demo re-reads (idempotently) and reports again
    return {"trained": trained, "generated": generated, "reference_added": reference,
            "ingest": summary, "tracking_uri": settings.mlflow_tracking_uri,
            "database_url": settings.db_url}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def render(result: dict) -> str:
    s = result["ingest"]
    lines = []
    if result["trained"]:
        t = result["trained"]
        lines.append(f"trained digit-cnn v{t['version']} in {t['wall_s']} s "
                     f"(MNIST test accuracy {t['mnist_test']['accuracy']:.4f})")
    g = result["generated"]
    lines.append(f"generated {g['telegrams']} telegrams ({g['telegrams_per_s']}/s)"
                 + (" + the real reference telegram" if result["reference_added"] else ""))
    rows = [
        ("telegrams read", f"{s['read']} of {s['scans']} new scans "
                           f"({s['unreadable']} unreadable, {s['unaligned']} not aligned)"),
        ("cells", f"{s['cells']} ({s['cells_scored']} with official results)"),
        ("digit accuracy", _pct(s["digit_accuracy"])),
        ("digit macro P / R / F1", " / ".join(_pct(s[k]) for k in (
            "digit_precision_macro", "digit_recall_macro", "digit_f1_macro"))),
        ("number accuracy", _pct(s["number_accuracy"])),
        ("accuracy of cells marked ok", _pct(s["accuracy_when_ok"])),
        ("cells to review", f"{s['status_counts'].get('review', 0)} ({_pct(s['review_share'])})"),
        ("model", s["model"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    uri = result["tracking_uri"]
    lines += [
        "",
        "Open the results:",
        f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
        "  Prefect UI: .venv/bin/prefect server start --host 127.0.0.1   (then http://127.0.0.1:4200)",
        f"  Readings:   {result['database_url']} (tables readings, scans, runs)",
    ]
    return "\n".join(lines)
