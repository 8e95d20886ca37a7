"""Scan generator flow: realistic telegrams from real handwriting, with their official results.

Each telegram i of a seed gets its own random stream (seed, i), so output is deterministic and
chunks can be rendered in any order or in parallel. Mesa identities: sección = 100 + seed mod
900 (real sections of the reference district are below 100, so a generated mesa never takes a
real one's code), mesa = i + 1. So codes are unique among seeds that differ by less than 900:
seeds s and s + 900 give the same codes (and file names), and must go to different folders or
databases (the development sets do: seeds 900-914 and 0-14 never share one).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
from prefect import flow, task

from tasks.db import migrate
from tasks.digit_data import mnist_source
from tasks.digit_pools import load_pool
from tasks.official_results import Label, MesaId, labels_to_csv, store_labels, upsert_telegram
from tasks.prefect_utils import COMPUTE, IO_RETRIES, run_logger
from tasks.render import render_telegram, sample_mesa_text, sample_writer
from tasks.scan_effects import degrade, encode_jpeg
from tasks.settings import Settings, load_settings
from tasks.storage import join, write_bytes
from tasks.template import Template, load_template
from tasks.vote_values import sample_values

DISTRITO = 21  # Santa Fe, the reference telegram's district


def mesa_for(seed: int, index: int) -> MesaId:
    return MesaId(DISTRITO, 100 + seed % 900, str(400 + seed % 600), index + 1)


def render_scan(template: Template, pool, seed: int, index: int
                ) -> tuple[MesaId, dict[str, int], bytes, np.ndarray]:
    """One telegram: values obeying the form's relations, handwriting, scan effects, JPEG; and
    the true template -> scan map, for measuring registration."""
    rng = np.random.default_rng([seed, index])
    mesa = mesa_for(seed, index)
    values = sample_values(template, rng)
    text = sample_mesa_text(rng)
    text.update({"mesa": str(mesa.mesa), "code": mesa.code, "circuito": mesa.circuito})
    page, _written = render_telegram(template, values, pool, rng, sample_writer(rng), text)
    scan, matrix = degrade(page, rng)
    return mesa, values, encode_jpeg(scan, rng), matrix


def render_one(template: Template, pool, seed: int, index: int) -> tuple[MesaId, dict[str, int], bytes]:
    mesa, values, jpeg, _matrix = render_scan(template, pool, seed, index)
    return mesa, values, jpeg


@task(name="render-chunk", **COMPUTE)
def render_chunk_task(settings: Settings, template_name: str, digits: str, seed: int,
                      indices: list[int]) -> list[tuple[MesaId, dict[str, int], bytes]]:
    template = load_template(template_name)
    mnist = None
    if digits.split(":")[0] == "mnist":
        mnist = mnist_source(settings.mnist_path, settings.mnist_download_url, settings.mnist_sha256,
                             settings.data_dir / "keras")
    pool = load_pool(digits, settings.shared_data, mnist)
    return [render_one(template, pool, seed, i) for i in indices]


@task(name="write-scans", **IO_RETRIES)
def write_scans_task(settings: Settings, out: str, items: list[tuple[MesaId, dict[str, int], bytes]]
                     ) -> list[str]:
    uris = []
    for mesa, _, data in items:
        uri = join(out, f"{mesa.code}.jpg")
        write_bytes(uri, data, settings)
        uris.append(uri)
    return uris


@task(name="store-labels", **IO_RETRIES)
def store_labels_task(db_url: str, template: Template, items: list[tuple[MesaId, dict[str, int], bytes]],
                      uris: list[str], received: datetime, source: str) -> int:
    from tasks.db import session_scope
    from tasks.storage import content_hash

    with session_scope(db_url) as s:
        for (mesa, _, data), uri in zip(items, uris, strict=True):
            upsert_telegram(s, mesa, template.name, uri, content_hash(data), received)
    labels = [Label(mesa, cell, value) for mesa, values, _ in items for cell, value in values.items()]
    return store_labels(db_url, labels, template, source)["labels"]


@flow(name="generate")
def generate_flow(count: int | None = None, out: str | None = None, seed: int | None = None,
                  digits: str | None = None, db: str | None = None, chunk: int = 20) -> dict:
    """Render `count` telegrams to `out` and their labels to the results database."""
    settings = load_settings()
    log = run_logger()
    count = settings.generate.count if count is None else count
    seed = settings.generate.seed if seed is None else seed
    digits = digits or settings.generate.digits
    out = out or settings.scans_uri
    db_url = db or settings.db_url
    template = load_template(settings.template)
    migrate(db_url)
    received = datetime.now(UTC)
    started = time.perf_counter()
    n_labels, sizes, all_labels = 0, [], []
    for start in range(0, count, chunk):
        indices = list(range(start, min(count, start + chunk)))
        items = render_chunk_task(settings, template.name, digits, seed, indices)
        uris = write_scans_task(settings, out, items)
        n_labels += store_labels_task(db_url, template, items, uris, received, f"generated:seed={seed}")
        sizes.extend(len(d) for _, _, d in items)
        all_labels.extend(Label(m, c, v) for m, vals, _ in items for c, v in vals.items())
        log.info("generated %d/%d telegrams", indices[-1] + 1, count)
    write_bytes(join(out, f"labels-seed{seed}.csv"), labels_to_csv(all_labels).encode(), settings)
    wall = time.perf_counter() - started
    return {"telegrams": count, "labels": n_labels, "out": out, "seed": seed, "digits": digits,
            "wall_s": round(wall, 2), "telegrams_per_s": round(count / wall, 2) if wall else None,
            "mean_scan_kb": round(float(np.mean(sizes)) / 1024, 1) if sizes else None}
