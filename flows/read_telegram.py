"""`cifras read-telegram`: read scans on the spot and print what each cell says.

No database and no flow run: this is the operator's magnifying glass, for one scan or a few.
"""

from __future__ import annotations

from tasks import tracking
from tasks.errors import CifrasError
from tasks.ingest_tasks import read_options
from tasks.read import infer_and_compose, prepare_pages
from tasks.settings import load_settings
from tasks.storage import content_hash, read_bytes
from tasks.template import load_template


def read_telegrams(scans: list[str], template: str | None, model: str | None) -> list[dict]:
    settings = load_settings()
    tpl = load_template(template or settings.template)
    client = tracking.configure_mlflow(settings)
    ref = tracking.resolve_model(client, model or settings.evaluate.model_uri)
    reader = tracking.load_reader_model(ref, settings.read.inference)  # as the ingest reads
    opt = read_options(settings)
    prepared = []
    for uri in scans:
        try:
            data = read_bytes(uri, settings)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CifrasError(f"scan {uri} not found") from exc
        prepared.extend(prepare_pages(data, uri, content_hash(data), tpl, opt))
    readings, _ = infer_and_compose(prepared, tpl, reader, opt)
    out = []
    for r in readings:
        out.append({
            "scan": r.page_uri, "status": r.status, "reason": r.reason, "model": ref.label,
            "alignment_quality": round(r.quality, 3), "notes": r.notes,
            "cells": {cid: {"value": c.value, "digits": c.digits, "confidence": c.confidence,
                            "status": c.status, "reason": c.reason} for cid, c in r.cells.items()},
        })
    return out


def render_readings(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r['scan']}: {r['status']}" + (f" ({r['reason']})" if r["reason"] else ""))
        for cid, c in r["cells"].items():
            value = "" if c["value"] is None else c["value"]
            lines.append(f"  {cid:<22}{value!s:>5}  {c['digits']:<5}{c['confidence']:>6.2f}  {c['status']}"
                         + (f"  {c['reason']}" if c["reason"] else ""))
    return "\n".join(lines)
