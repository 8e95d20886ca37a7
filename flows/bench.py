"""`cifras bench`: end-to-end and inference benchmarks on this machine, printed as a table and
one JSON object. Figures are compared within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from tasks import tracking
from tasks.inference import OnnxModel, backend_of, export_bytes, predict_proba
from tasks.model import to_model_input
from tasks.settings import load_settings


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def inference_backends(model, x: np.ndarray, batch: int = 1024, onnx_model=None, winograd_model=None,
                       pipeline_model=None, reps: int = 5) -> dict[str, dict]:
    """Keras predict (at `batch`, and at its default batch of 32, the way `model.predict(x)` is
    usually called), a direct call, ONNX Runtime on Keras' export and on the Winograd graph, and
    the pipeline's own path on the same inputs; each with its argmax agreement with Keras
    predict. `onnx_model` / `winograd_model` are the exports logged in MLflow; without them the
    Keras model is exported here.

    Throughput is the best of `reps` passes over `x`, the backends taking turns pass by pass,
    so that the load of a shared machine falls on all of them alike."""
    out: dict[str, dict] = {}
    fns = {"keras_predict": lambda a: model.predict(a, batch_size=batch, verbose=0),
           "keras_predict_default": lambda a: model.predict(a, verbose=0),
           "keras_direct": lambda a: predict_proba(model, a, batch)}  # compiled graph (compiled_call)
    exports = (("onnxruntime", "onnx", onnx_model), ("onnx_winograd", "winograd", winograd_model))
    for name, kind, given in exports:
        try:  # each export on its own: one that fails does not take the other's figure with it
            session = given if given is not None else OnnxModel(export_bytes(model, kind), kind=kind)
        except Exception as exc:  # onnxruntime not installed, or export unsupported
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        fns[name] = lambda a, session=session: predict_proba(session, a, batch)
    if pipeline_model is not None:
        pipeline_batch = load_settings().read.batch_size
        fns["pipeline"] = lambda a: predict_proba(pipeline_model, a, pipeline_batch)
    best = dict.fromkeys(fns, float("inf"))
    probs: dict[str, np.ndarray] = {}
    for fn in fns.values():
        fn(x[:batch])  # warm up
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            probs[name] = fn(x)
            best[name] = min(best[name], time.perf_counter() - t0)

    def latency(fn, n: int) -> float:
        one = x[:1]
        fn(one)
        t0 = time.perf_counter()
        for _ in range(n):
            fn(one)
        return (time.perf_counter() - t0) / n * 1000

    reference = probs["keras_predict"].argmax(1)
    for name, fn in fns.items():
        out[name] = {"digits_per_s": _rate(len(x), best[name]),
                     "latency_ms": round(latency(fn, 10 if name.startswith("keras_predict") else 50), 3),
                     "same_argmax": bool((probs[name].argmax(1) == reference).all())}
    if "pipeline" in out:
        out["pipeline"]["backend"] = backend_of(pipeline_model)
        for ref in ("keras_predict", "keras_predict_default"):
            out["pipeline"][f"over_{ref}"] = round(
                out["pipeline"]["digits_per_s"] / out[ref]["digits_per_s"], 2)
    return out


def tesseract_baseline(db_url: str, run_id: str, files: list[Path], cells: int = 600) -> dict:
    """Tesseract and cifras on the same cell crops (the pipeline's own crops of the first scans,
    prepared again by the same pure function) with the official labels."""
    from tasks import tesseract
    from tasks.ingest_tasks import read_options
    from tasks.persist import run_cells
    from tasks.read import prepare_scan
    from tasks.scoring import effective_value
    from tasks.storage import content_hash
    from tasks.template import load_template

    if tesseract.tesseract_binary() is None:
        return {"error": "tesseract not installed (apt-get install tesseract-ocr)"}
    settings = load_settings()
    template = load_template(settings.template)
    by_cell = {(uri, cell): (label, value, status)
               for cell, label, _digits, value, status, uri in run_cells(db_url, run_id) if label is not None}
    crops, labels, ours = [], [], []
    for f in files:
        if len(crops) >= cells:
            break
        data = f.read_bytes()
        uri = f.resolve().as_uri()
        prep = prepare_scan(data, uri, content_hash(data), template, read_options(settings))
        for cell_id, crop in prep.crops.items():
            if (uri, cell_id) in by_cell:
                label, value, status = by_cell[(uri, cell_id)]
                crops.append(crop)
                labels.append(label)
                ours.append(effective_value(value, status) == label)
    if not crops:  # a baseline of nothing would print as a figure
        return {"error": f"no labelled readings of run {run_id} for the first scans"}
    t0 = time.perf_counter()
    values = tesseract.read_cells(crops)
    t = time.perf_counter() - t0
    return {"cells": len(crops), "number_accuracy": tesseract.number_accuracy(values, labels),
            "cells_per_s": _rate(len(crops), t), "processes": 2, "args": " ".join(tesseract.ARGS),
            "cifras_number_accuracy": float(np.mean(ours)) if ours else None}


def _decode_pass(paths: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds to read and decode every scan to grey in one thread."""
    t0, c0 = time.perf_counter(), _cpu_s()
    for p in paths:
        cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_GRAYSCALE)
    return time.perf_counter() - t0, _cpu_s() - c0


def _decode_floor(files: list[Path]) -> tuple[float, float]:
    """The floor: `_decode_pass` in a process set up as the reader's workers are (one OpenCV
    thread, glibc keeping large blocks: a third faster than a default process). Not in this
    process, whose allocator the ingest's memory figures must see unchanged."""
    from tasks import workers

    with workers.new_pool(1) as pool:
        return pool.submit(_decode_pass, [str(f) for f in files]).result()


def run_bench(count: int = 1000, seed: int = 4242, data_dir: str | None = None,
              baselines: bool = True, repeat: int = 1) -> dict:
    """Generate `count` telegrams (once), time decoding alone, then a full forced ingest; then
    (with `baselines`) the inference backends and Tesseract on the same machine.

    With `repeat` N, decoding and the ingest take turns N times (each ingest bracketed by the
    decode passes before and after it) and the ingest with the median wall / decode is
    reported, with every repeat's figures: on a shared machine the same work's CPU time drifts
    by a fifth within an hour, as much as a real change moves it."""
    from flows.generate import generate_flow
    from tasks.digit_data import load_mnist

    base = Path(data_dir or tempfile.mkdtemp(prefix="cifras-bench-"))
    settings = load_settings()
    os.environ["CIFRAS_DATA_DIR"] = str(base)
    os.environ.setdefault("CIFRAS_MLFLOW__TRACKING_URI", settings.mlflow_tracking_uri)
    scans = base / "scans"
    if len(list(scans.glob("*.jpg"))) < count:
        generate_flow(count=count, seed=seed)
    files = sorted(scans.glob("*.jpg"))
    if len(files) != count:
        raise ValueError(f"{scans} holds {len(files)} scans, not {count}: ingest reads them all; "
                         f"use another --data-dir")
    _warm_up()  # start the (temporary) Prefect API outside the timed run, as a server would be
    from tasks import workers

    rss_before = _peak_rss_mb()
    floors = [_decode_floor(files)]
    runs = []
    for _ in range(max(1, repeat)):
        runs.append(_timed_ingest())
        # decoding again after each ingest brackets it: a shared machine's speed drifts
        floors.append(_decode_floor(files))
    ratios = [r["wall"] / ((floors[i][0] + floors[i + 1][0]) / 2) for i, r in enumerate(runs)]
    k = sorted(range(len(runs)), key=ratios.__getitem__)[(len(runs) - 1) // 2]  # the median run
    run = runs[k]
    summary, wall, flow_cpu, worker_cpu, api_cpu = (run[f] for f in ("summary", "wall", "flow_cpu",
                                                                      "worker_cpu", "api_cpu"))
    decode_before, decode_after = floors[k], floors[k + 1]
    metrics, digits = run["metrics"], run["digits"]
    peak_rss = _peak_rss_mb()  # before the baselines below load anything else
    worker_rss = workers.peak_rss_mb()  # the worker processes preparing scans, if any
    settings = load_settings()
    decode_only = (decode_before[0] + decode_after[0]) / 2
    decode_cpu = (decode_before[1] + decode_after[1]) / 2
    stages = {k[6:-2]: round(v, 2) for k, v in metrics.items() if k.startswith("stage_")}
    prepare_wall = stages.pop("wall_prepare", None)
    # Stages overlap (scans in threads, the next chunk read while this one is stored), so the
    # work is the wall time during which any stage ran (`busy_s`, a union of spans), and
    # orchestration is what is left of the flow's wall time.
    work = metrics.get("busy_s") or sum(stages.values())
    out = {
        "telegrams": len(files),
        "telegrams_per_s": _rate(len(files), wall),
        "digits_per_s": _rate(digits, wall) if digits else None,
        "decode_only_s": round(decode_only, 2),
        "wall_s": round(wall, 2),
        "wall_over_decode": round(wall / decode_only, 2),
        "decode_only_cpu_s": round(decode_cpu, 2),
        "decode_only_passes_s": [round(decode_before[0], 2), round(decode_after[0], 2)],
        "cpu_s": {"flow_process": round(flow_cpu, 2), "workers": round(worker_cpu, 2),
                  "total": round(flow_cpu + worker_cpu, 2),
                  # the temporary Prefect API this process started (none with a server URL):
                  # not the reader's work, but it shares the cores during the run
                  "prefect_api": api_cpu},
        # the ingest's CPU over decoding's: what wall / decode would be on one free core
        "cpu_over_decode": round((flow_cpu + worker_cpu) / decode_cpu, 2) if decode_cpu > 0 else None,
        "stage_s": stages,
        "prepare_wall_s": round(prepare_wall, 2) if prepare_wall is not None else None,
        "prepare_threads": settings.read.threads,
        "work_s": round(work, 2),
        "orchestration_overhead": round(max(0.0, wall - work) / wall, 3),
        "peak_rss_mb": peak_rss,
        "prepare_workers": settings.read.workers,
        "workers_peak_rss_mb": worker_rss,
        # this process plus every worker at its own peak: an upper bound of the machine's share
        "total_peak_rss_mb": round(peak_rss + sum(worker_rss.values()), 1),
        "rss_before_ingest_mb": rss_before,
        "digit_accuracy": summary.get("digit_accuracy"),
        "number_accuracy": summary.get("number_accuracy"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "machine": _machine(),
        "data_dir": str(base),
    }
    if len(runs) > 1:
        out["repeats"] = [{"decode_only_s": round((floors[i][0] + floors[i + 1][0]) / 2, 2),
                           "wall_s": round(r["wall"], 2), "wall_over_decode": round(ratios[i], 2),
                           "digits_per_s": _rate(r["digits"], r["wall"]) if r["digits"] else None,
                           "cpu_s": round(r["flow_cpu"] + r["worker_cpu"], 2)} for i, r in enumerate(runs)]
    if baselines:
        mnist = load_mnist(settings.mnist_path, settings.mnist_download_url, settings.mnist_sha256,
                           settings.data_dir / "keras")
        client = tracking.configure_mlflow(settings)
        ref = tracking.resolve_model(client, settings.evaluate.model_uri)
        model = tracking.load_keras_model(ref)
        exports = tracking.onnx_exports(ref)
        logged = {kind: tracking.load_reader_model(ref, kind) if kind in exports else None
                  for kind in ("onnx", "winograd")}
        pipeline_model = tracking.load_reader_model(ref, settings.read.inference)
        out["inference"] = inference_backends(model, to_model_input(mnist.test.x),
                                              onnx_model=logged["onnx"], winograd_model=logged["winograd"],
                                              pipeline_model=pipeline_model)
        for name, kind in (("onnxruntime", "onnx"), ("onnx_winograd", "winograd")):
            if name in out["inference"]:
                out["inference"][name]["source"] = "mlflow" if kind in exports else "exported by bench"
        # on the cells of the last ingest: a forced ingest replaces the readings of the one
        # before (one row per cell and model version), so the median run's may be gone, and
        # every repeat reads the same scans with the same model
        out["tesseract"] = tesseract_baseline(settings.db_url, runs[-1]["summary"]["run_id"], files)
        out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _timed_ingest() -> dict:
    """A forced ingest of the bench's scans: its summary, wall and CPU seconds (this process,
    the reader's workers, the temporary Prefect API)."""
    from flows.ingest import ingest_flow
    from tasks import workers

    # CPU seconds of this process (all threads) and of the worker processes: on a shared
    # machine the wall time depends on what else runs, the CPU time much less
    t0, c0, w0, a0 = time.perf_counter(), _cpu_s(), workers.cpu_seconds(), _api_server_cpu_s()
    summary = ingest_flow(force=True)
    wall = time.perf_counter() - t0
    flow_cpu = _cpu_s() - c0
    worker_cpu = workers.cpu_seconds() - w0  # workers started during the run count from 0
    a1 = _api_server_cpu_s()
    api_cpu = round(a1 - a0, 2) if a0 is not None and a1 is not None else None
    from sqlalchemy import select

    from tasks.db import Reading, Run, session_scope

    # now: the next forced ingest replaces these readings (one row per cell and model version)
    with session_scope(load_settings().db_url) as s:
        metrics = s.get(Run, summary["run_id"]).metrics
        read = s.scalars(select(Reading.digits).where(Reading.run_id == summary["run_id"])).all()
    return {"summary": summary, "wall": wall, "flow_cpu": flow_cpu, "worker_cpu": worker_cpu,
            "api_cpu": api_cpu, "metrics": metrics, "digits": sum(len(d) for d in read if d.isdigit())}


def _warm_up() -> None:
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        return None

    warm_up()


def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _api_server_cpu_s(marker: bytes = b"prefect.server") -> float | None:
    """User + system CPU seconds of the temporary Prefect API server that this process started
    (a child process whose command line holds `marker`); None when there is none, or off
    Linux."""
    from tasks.workers import process_stat

    me, total, found = os.getpid(), 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        stat = process_stat(int(pid))
        if stat is None or stat[0] != me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker not in f.read():
                    continue
        except OSError:
            continue
        total += stat[1]
        found = True
    return total if found else None


# the vector instructions that decide how fast convolutions and JPEG decoding run: the same
# code's ratios differ between machines with and without AVX-512 (docs/performance.md)
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def machine_info(cpuinfo: str, cores: int | None) -> dict:
    """The CPU a bench ran on, from the text of /proc/cpuinfo: its model name, the cores, and
    which of `VECTOR_FLAGS` it has. The figures are ratios within one run, but which
    stage bounds the speed, and by how much, depends on these."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name") or fields.get("Processor") or "unknown",
            "family_model": f"{fields['cpu family']}/{fields['model']}"
            if "cpu family" in fields and "model" in fields else None,
            "cores": cores, "vector": [f for f in VECTOR_FLAGS if f in flags]}


def _machine() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        text = ""
    return machine_info(text, os.cpu_count())


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _machine_line(m: dict | None) -> str:
    if not m:
        return "unknown"
    return f"{m['cpu']} ({m['family_model'] or '?'}), {m['cores']} cores, {' '.join(m['vector']) or 'no AVX'}"


def render(r: dict) -> str:
    """The benchmark as a plain table: end to end, stages, inference backends, Tesseract."""
    lines = [f"{'telegrams':<26}{r['telegrams']}",
             f"{'telegrams/s':<26}{r['telegrams_per_s']}",
             f"{'digits/s':<26}{r['digits_per_s']}",
             f"{'decode only (s)':<26}{r['decode_only_s']}  (before / after: "
             f"{' / '.join(str(v) for v in r.get('decode_only_passes_s', []))})",
             f"{'wall (s)':<26}{r['wall_s']}  ({r['wall_over_decode']}x decode)"
             + (f", the median of {', '.join(str(x['wall_over_decode']) for x in r['repeats'])}x"
                if r.get("repeats") else ""),
             f"{'CPU (s) / over decode':<26}{r.get('cpu_s')} / {r.get('cpu_over_decode')}x",
             f"{'orchestration overhead':<26}{r['orchestration_overhead']:.1%}",
             f"{'peak RSS (MB)':<26}{r['peak_rss_mb']} (with workers: {r.get('total_peak_rss_mb')})",
             f"{'digit / number accuracy':<26}{r['digit_accuracy']} / {r['number_accuracy']}",
             f"{'load average':<26}{r['load_average']}",
             f"{'machine':<26}{_machine_line(r.get('machine'))}", "",
             f"stage seconds (summed over threads and processes; {r.get('prepare_workers')} worker "
             f"processes / {r['prepare_threads']} threads prepare scans, "
             f"busy {r['work_s']} s of wall):"]
    lines += [f"  {k:<24}{v}" for k, v in sorted(r["stage_s"].items(), key=lambda kv: -kv[1])]
    if "inference" in r:
        lines += ["", "inference (MNIST test, 10,000 digits):"]
        lines += [f"  {k:<24}{v}" for k, v in r["inference"].items()]
    if "tesseract" in r:
        lines += ["", "Tesseract on the same cells:", f"  {r['tesseract']}"]
    return "\n".join(lines)
