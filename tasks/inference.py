"""Batched digit inference on the reused model, with Keras or ONNX Runtime.

ONNX Runtime runs the same weights 2.4-2.9x faster than Keras `predict` here, and the
Winograd graph of the same weights (`tasks.winograd`) another ~1.25x, so the reader uses the
fastest export the registered version carries that was checked against Keras (same argmax on
every MNIST test digit) at registration.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import numpy as np

from tasks.model import to_model_input

Backend = Literal["winograd", "onnx", "keras"]
InferenceMode = Literal["auto", "winograd", "onnx", "keras"]
OnnxKind = Literal["winograd", "onnx"]
ONNX_ARTIFACT = "onnx/model.onnx"  # run artifact paths, beside the run's Keras model
WINOGRAD_ARTIFACT = "onnx/winograd.onnx"
# the ONNX exports a version may carry, fastest first; each is tagged `<kind>_artifact`,
# `<kind>_verified`, ... on the model version
EXPORT_ARTIFACTS: dict[OnnxKind, str] = {"winograd": WINOGRAD_ARTIFACT, "onnx": ONNX_ARTIFACT}


class OnnxModel:
    """An ONNX Runtime session over the exported model, accepted wherever a Keras model is.

    Runs of 64 digits (their activations stay in cache), each on a single-threaded run, one
    run per core at a time from a small thread pool (ONNX Runtime releases the GIL). On these
    shared 2-core machines, MNIST test in turns: 67,000 digits/s this way, against 42,000 for
    one two-thread session on the same runs of 64, 34,000 on runs of 256, and ~23,000 for
    Keras `predict` at batch 1,024. Spinning intra-op threads were slower still under load
    (~10,000 digits/s at load ~11). The Winograd graph, with many small operators over larger
    intermediates, is fastest on runs of 32 (AVX-512 EPYC, session 17: 49,000 digits/s on 32,
    47,000 on 48, 45,000 on 16)."""

    SUB_BATCH: ClassVar[dict[str, int]] = {"onnx": 64, "winograd": 32}

    def __init__(self, model: bytes | str, threads: int | None = None, kind: OnnxKind = "onnx") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.kind: OnnxKind = kind
        self.sub_batch = self.SUB_BATCH[kind]
        self.workers = max(1, threads or os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def proba(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        runs = [x[i : i + self.sub_batch] for i in range(0, len(x), self.sub_batch)]
        if not runs:
            return np.zeros((0, 10), np.float32)
        if self.workers == 1 or len(runs) == 1:
            return np.concatenate([self._run(r) for r in runs])
        if self._pool is None or self._pool_size != self.workers:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx")
            self._pool_size = self.workers
        return np.concatenate(list(self._pool.map(self._run, runs)))


_compiled_calls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_call(model) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model's forward pass as one compiled TensorFlow graph, built once per model.

    Why: an eager `model(x)` dispatches each layer's ops one by one, ~16,000 digits/s and 4 ms
    for one digit here; the compiled graph runs ~28,000 digits/s and 0.6 ms, with the same
    argmax on MNIST test. Not `predict_on_batch`: a model compiled with XLA would recompile
    for every new batch size. `reduce_retracing` keeps one graph for any batch size."""
    import keras

    if not isinstance(model, keras.Model):  # any other callable model is called as it is
        return lambda a: np.asarray(model(a, training=False))
    fn = _compiled_calls.get(model)
    if fn is None:
        import tensorflow as tf

        ref = weakref.ref(model)  # the cache entry must not keep its own key alive
        graph = tf.function(lambda a: ref()(a, training=False), reduce_retracing=True)
        fn = _compiled_calls.setdefault(model, lambda a: graph(a).numpy())
    return fn


def predict_proba(model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (n, 10) for model inputs. A Keras model runs its compiled graph per
    batch, which avoids `predict`'s per-call cost (50 ms to a few hundred ms here); an
    `OnnxModel` runs its session per batch."""
    x = to_model_input(x)
    if len(x) == 0:
        return np.zeros((0, 10), np.float32)
    call = model.proba if isinstance(model, OnnxModel) else compiled_call(model)
    out = [call(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32, copy=False)


def _moved(x: np.ndarray) -> list[np.ndarray]:
    """The digits shifted by one pixel each way and turned by 8 degrees each way: the small
    changes a writer's hand or a crop makes, which MNIST's centring does not undo. The shifts
    are slices (what warpAffine gives for whole pixels, at a fraction of the cost)."""
    import cv2

    views = []
    for axis, step in ((2, 1), (2, -1), (1, 1), (1, -1)):
        v = np.zeros_like(x)
        src = [slice(None)] * 4
        dst = [slice(None)] * 4
        src[axis], dst[axis] = (slice(0, -1), slice(1, None)) if step > 0 else (slice(1, None), slice(0, -1))
        v[tuple(dst)] = x[tuple(src)]
        views.append(v)
    for angle in (-8, 8):
        m = cv2.getRotationMatrix2D((13.5, 13.5), angle, 1.0)
        views.append(np.stack([cv2.warpAffine(img, m, (28, 28), flags=cv2.INTER_LINEAR, borderValue=0)
                               for img in x[..., 0]])[..., None])
    return views


def second_look(model, x: np.ndarray, probs: np.ndarray, below: float, batch_size: int = 1024,
                among: np.ndarray | None = None) -> np.ndarray:
    """Digits the model is unsure of (top probability under `below`) read again, moved a little
    six ways, and their probabilities averaged over the seven views. The same model, only
    looking twice where one look was not enough; sure digits keep their single reading.
    `among`: only these digits (a mask) may be looked at again."""
    if below <= 0 or len(x) == 0:
        return probs
    unsure_mask = probs.max(axis=1) < below
    if among is not None:
        unsure_mask &= among
    unsure = np.flatnonzero(unsure_mask)
    if len(unsure) == 0:
        return probs
    x = to_model_input(x)[unsure]
    views = [probs[unsure]] + [predict_proba(model, v, batch_size) for v in _moved(x)]
    out = probs.copy()
    out[unsure] = np.mean(views, axis=0)
    return out


def backend_of(model) -> Backend:
    return model.kind if isinstance(model, OnnxModel) else "keras"


BACKEND_NAMES: dict[str, str] = {"winograd": "ONNX Runtime (Winograd graph)", "onnx": "ONNX Runtime",
                                 "keras": "Keras"}


def export_onnx(model, path: str) -> None:
    """Write the Keras model as ONNX (Keras' own exporter, tf2onnx underneath)."""
    model.export(path, format="onnx", verbose=False)


def export_bytes(model, kind: OnnxKind) -> bytes:
    """The Keras model as ONNX bytes of one kind: Keras' own export, or the Winograd graph of
    its weights (`tasks.winograd`)."""
    if kind == "winograd":
        from tasks.winograd import winograd_onnx

        return winograd_onnx(model.get_weights())
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        export_onnx(model, path)
        return Path(path).read_bytes()


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows where two probability arrays pick the same class."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} rows")
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) if len(a) else 1.0


def onnx_runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(mode: InferenceMode, exports: dict[str, bool], runtime: bool) -> Backend:
    """The reader's backend. `exports`: the ONNX exports the version carries (kind: verified
    against Keras at registration). `auto` takes the fastest verified export when ONNX Runtime
    is installed, else Keras (older versions have none). `winograd` or `onnx` insists, so a
    missing export is an error rather than a silent slowdown."""
    if mode == "keras":
        return "keras"
    if mode in EXPORT_ARTIFACTS:
        if not runtime:
            raise RuntimeError(f"read.inference={mode} but onnxruntime is not installed")
        if mode not in exports:
            kind = "Winograd ONNX" if mode == "winograd" else "ONNX"
            raise RuntimeError(f"read.inference={mode} but this model version has no {kind} export")
        return mode  # type: ignore[return-value]
    if runtime:
        for kind in EXPORT_ARTIFACTS:
            if exports.get(kind):
                return kind
    return "keras"
