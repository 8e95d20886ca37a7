"""`cifras bench`: end-to-end and inference benchmarks on this machine, printed as a table and
one JSON object. Figures are compared within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from tasks import tracking
from tasks.inference import predict_proba
from tasks.model import to_model_input
from tasks.settings import load_settings


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def inference_backends(model, x: np.ndarray, batch: int = 1024) -> dict[str, dict]:
    """Keras predict, a direct call, and ONNX Runtime on the same inputs."""
    import keras

    out: dict[str, dict] = {}
    one = x[:1]

    def timed(fn, reps: int = 3) -> tuple[float, np.ndarray]:
        fn(x[:batch])  # warm up
        best, result = float("inf"), None
        for _ in range(reps):
            t0 = time.perf_counter()
            result = fn(x)
            best = min(best, time.perf_counter() - t0)
        return best, result

    def latency(fn, reps: int = 50) -> float:
        fn(one)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(one)
        return (time.perf_counter() - t0) / reps * 1000

    predict = lambda a: model.predict(a, batch_size=batch, verbose=0)  # noqa: E731
    direct = lambda a: predict_proba(model, a, batch)  # noqa: E731
    t_pred, p_pred = timed(predict)
    t_dir, p_dir = timed(direct)
    out["keras_predict"] = {"digits_per_s": _rate(len(x), t_pred),
                            "latency_ms": round(latency(predict, 10), 2)}
    out["keras_direct"] = {"digits_per_s": _rate(len(x), t_dir), "latency_ms": round(latency(direct), 2),
                           "same_argmax": bool((p_dir.argmax(1) == p_pred.argmax(1)).all())}
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "model.onnx")
            model.export(path, format="onnx", verbose=False)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def onnx(a: np.ndarray) -> np.ndarray:
            return np.concatenate([sess.run(None, {name: a[i : i + batch]})[0]
                                   for i in range(0, len(a), batch)])

        t_onnx, p_onnx = timed(onnx)
        out["onnxruntime"] = {"digits_per_s": _rate(len(x), t_onnx), "latency_ms": round(latency(onnx), 3),
                              "same_argmax": bool((p_onnx.argmax(1) == p_pred.argmax(1)).all())}
    except Exception as exc:  # onnx extras not installed, or export unsupported
        out["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    del keras
    return out


def run_bench(count: int = 1000, seed: int = 4242, data_dir: str | None = None) -> dict:
    """Generate `count` telegrams (once), time decoding alone, then a full forced ingest."""
    import os

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.digit_data import load_mnist

    base = Path(data_dir or tempfile.mkdtemp(prefix="cifras-bench-"))
    settings = load_settings()
    os.environ["CIFRAS_DATA_DIR"] = str(base)
    os.environ.setdefault("CIFRAS_MLFLOW__TRACKING_URI", settings.mlflow_tracking_uri)
    scans = base / "scans"
    if len(list(scans.glob("*.jpg"))) < count:
        generate_flow(count=count, seed=seed)
    files = sorted(scans.glob("*.jpg"))[:count]
    t0 = time.perf_counter()
    for f in files:
        cv2.imdecode(np.frombuffer(f.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    decode_only = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = ingest_flow(force=True)
    wall = time.perf_counter() - t0
    from sqlalchemy import select

    from tasks.db import Reading, Run, session_scope

    with session_scope(load_settings().db_url) as s:
        metrics = s.get(Run, summary["run_id"]).metrics
        read = s.scalars(select(Reading.digits).where(Reading.run_id == summary["run_id"])).all()
    stages = {k[6:-2]: round(v, 2) for k, v in metrics.items() if k.startswith("stage_")}
    digits = sum(len(d) for d in read if d.isdigit())
    mnist = load_mnist(settings.mnist_path, settings.mnist_download_url, settings.mnist_sha256,
                       settings.data_dir / "keras")
    client = tracking.configure_mlflow(settings)
    model = tracking.load_keras_model(tracking.resolve_model(client, settings.evaluate.model_uri))
    inference = inference_backends(model, to_model_input(mnist.test.x))
    return {
        "telegrams": len(files),
        "telegrams_per_s": _rate(len(files), wall),
        "digits_per_s": _rate(digits, wall) if digits else None,
        "decode_only_s": round(decode_only, 2),
        "wall_s": round(wall, 2),
        "wall_over_decode": round(wall / decode_only, 2),
        "stage_s": stages,
        "orchestration_overhead": round(max(0.0, wall - sum(stages.values())) / wall, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "inference": inference,
        "data_dir": str(base),
    }


def render(r: dict) -> str:
    lines = [f"{'telegrams':<26}{r['telegrams']}",
             f"{'telegrams/s':<26}{r['telegrams_per_s']}",
             f"{'digits/s':<26}{r['digits_per_s']}",
             f"{'decode only (s)':<26}{r['decode_only_s']}",
             f"{'wall (s)':<26}{r['wall_s']}  ({r['wall_over_decode']}x decode)",
             f"{'orchestration overhead':<26}{r['orchestration_overhead']:.1%}",
             f"{'peak RSS (MB)':<26}{r['peak_rss_mb']}", "", "stage seconds:"]
    lines += [f"  {k:<24}{v}" for k, v in sorted(r["stage_s"].items(), key=lambda kv: -kv[1])]
    lines += ["", "inference (MNIST test, 10,000 digits):"]
    for k, v in r["inference"].items():
        lines.append(f"  {k:<24}{v}")
    return "\n".join(lines)
