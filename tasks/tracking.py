"""MLflow tracking and model registry: runs, registered versions, and the champion alias.

Runs are driven through ``MlflowClient`` with explicit run ids, never the fluent active-run
stack, because Prefect may execute tasks on other threads and the fluent API is not
thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import CifrasError
from tasks.settings import Settings

log = logging.getLogger(__name__)

class TrackingUnavailable(RuntimeError):
    """MLflow did not answer (server down, network): transient, so tasks retry it, unlike a
    CifrasError such as a model that does not exist."""


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error means "no answer" rather than "the answer is no"."""
    msg = str(exc)
    return isinstance(exc, OSError) or ("API request to" in msg and (
        "failed with exception" in msg or "Max retries" in msg))


def short_error(exc: BaseException) -> str:
    """The telling part of a long client error ("[Errno 111] Connection refused")."""
    msg = str(exc)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", msg) or re.search(r"Read timed out[^'\")]*", msg)
    return m[0].strip() if m else msg[:160]


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "http_retries",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "http_timeout_s"}
_http_env_ours: dict[str, str] = {}  # the values this process set, as opposed to the operator's


def _bound_http_retries(settings: Settings) -> None:
    """MLflow's HTTP client reads its retries and timeout from the environment on each call."""
    for env, field in _HTTP_ENV.items():
        current = os.environ.get(env)
        if current is not None and _http_env_ours.get(env) != current:
            continue  # set by the operator
        os.environ[env] = _http_env_ours[env] = str(getattr(settings.mlflow, field))


def configure_mlflow(settings: Settings):
    """Point MLflow at the configured store and return a client bound to it."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    _bound_http_retries(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(settings: Settings, experiment: str) -> str | None:
    if settings.mlflow.artifact_root:
        return f"{settings.mlflow.artifact_root.rstrip('/')}/{experiment}"
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        return None  # the tracking server proxies artifacts to its own store
    return f"{settings.mlflow_artifact_root}/{experiment}"


def ensure_experiment(client, settings: Settings, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(settings, name))
        except MlflowException:  # created concurrently by another worker
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
    except MlflowException as exc:
        raise CifrasError(f"MLflow at {settings.mlflow_tracking_uri} failed: {exc.message}") from exc
    except OSError as exc:
        raise CifrasError(f"MLflow at {settings.mlflow_tracking_uri} is unreachable: {exc}") from exc


@contextmanager
def tracked_run(
    client, experiment_id: str, run_name: str, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """Create a run, yield its id, and close it as FINISHED or FAILED."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


@contextmanager
def optional_run(client, experiment_id: str | None, run_name: str, tags: dict[str, str] | None,
                 warn) -> Iterator[str | None]:
    """Like tracked_run, but MLflow not answering yields None (and a warning) instead of
    failing: for the reading pipeline, whose product is the readings in the database, not
    the MLflow run. Errors of the body still propagate."""
    run_id = None
    if experiment_id is not None:
        try:
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        except Exception as exc:
            if not unreachable(exc):
                raise
            warn(f"MLflow unreachable, run not tracked: {short_error(exc)}")
    ok = False
    try:
        yield run_id
        ok = True
    finally:
        if run_id is not None:
            try:
                client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")
            except Exception as exc:
                warn(f"MLflow unreachable, run {run_id} left open: {short_error(exc)}")


def mark_killed(client, run_id: str | None) -> None:
    """End the MLflow run of a run whose process was killed, as KILLED; best effort (the
    results database already says `interrupted`)."""
    if run_id is None:
        return
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    except Exception as exc:  # unreachable, or the run is gone: nothing more to do
        log.warning("MLflow run %s of an interrupted run left as it was: %s", run_id, short_error(exc))


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    clean = [Param(k, str(v)[:6000]) for k, v in params.items() if v is not None]
    if clean:
        client.log_batch(run_id, params=clean)


def log_metrics(client, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    clean = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if clean:
        client.log_batch(run_id, metrics=clean)


def log_json(client, run_id: str, obj: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        client.log_artifact(run_id, str(path))


@dataclass(frozen=True)
class ModelRef:
    """A registry model resolved to one concrete version."""

    uri: str  # as asked, e.g. models:/digit-cnn@champion
    name: str | None
    version: str | None  # None for run or path URIs outside the registry

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.name and self.version else self.uri

    @property
    def label(self) -> str:
        return f"{self.name}/v{self.version}" if self.name and self.version else self.uri


def resolve_model(client, uri: str) -> ModelRef:
    """Resolve an alias or version URI so that every reading names the exact version."""
    from mlflow.exceptions import MlflowException

    m = _MODEL_URI.match(uri)
    if not m:
        from tasks.db import MODEL_LABEL_LENGTH

        if len(uri) > MODEL_LABEL_LENGTH:  # every reading records it, in columns of that width
            raise CifrasError(f"model reference too long to record ({len(uri)} characters, at most "
                              f"{MODEL_LABEL_LENGTH}): register the model and pass models:/NAME/VERSION")
        return ModelRef(uri=uri, name=None, version=None)
    name = m["name"]
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(name, m["alias"])
        else:
            mv = client.get_model_version(name, m["version"])
    except MlflowException as exc:
        if unreachable(exc):
            raise TrackingUnavailable(f"MLflow registry unreachable, cannot resolve {uri}: "
                                      f"{short_error(exc)}") from exc
        raise CifrasError(
            f"no model at {uri} in the registry; train one with `cifras train` "
            f"or pass --model with an existing version"
        ) from exc
    return ModelRef(uri=uri, name=name, version=str(mv.version))


_model_cache: dict[str, Any] = {}
_model_lock = threading.Lock()


def load_keras_model(ref: ModelRef):
    """Load a model once per process (per worker), keyed by its pinned version."""
    import mlflow
    import mlflow.keras

    key = f"{mlflow.get_registry_uri()} {ref.pinned_uri}"
    with _model_lock:
        if key not in _model_cache:
            from mlflow.exceptions import MlflowException

            try:
                _model_cache[key] = mlflow.keras.load_model(ref.pinned_uri)
            except MlflowException as exc:
                if unreachable(exc):
                    raise TrackingUnavailable(f"MLflow unreachable, cannot load {key}: "
                                              f"{short_error(exc)}") from exc
                raise
            except OSError as exc:
                raise CifrasError(f"cannot load model {key}: {exc}") from exc
            log.info("loaded model %s", key)
        return _model_cache[key]


@dataclass(frozen=True)
class OnnxExport:
    """What registration recorded about one of a version's ONNX exports (model version tags)."""

    run_id: str
    artifact: str
    verified: bool


def onnx_exports(ref: ModelRef) -> dict[str, OnnxExport]:
    """The version's ONNX exports by kind (`inference.EXPORT_ARTIFACTS`); none for a version
    registered before exports, or a run/path URI outside the registry."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.inference import EXPORT_ARTIFACTS

    if not ref.name or not ref.version:
        return {}
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    try:
        mv = client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        if unreachable(exc):
            raise TrackingUnavailable(f"MLflow unreachable, cannot look up {ref.label}: "
                                      f"{short_error(exc)}") from exc
        raise
    if not mv.run_id:
        return {}
    return {kind: OnnxExport(mv.run_id, mv.tags[f"{kind}_artifact"],
                             mv.tags.get(f"{kind}_verified") == "true")
            for kind in EXPORT_ARTIFACTS if mv.tags.get(f"{kind}_artifact")}


def load_reader_model(ref: ModelRef, mode: str = "auto"):
    """The model the reader runs: one of the version's verified ONNX exports under ONNX Runtime
    when `mode` allows it (see `inference.choose_backend`), else the Keras model. Cached per
    process like `load_keras_model`."""
    import mlflow

    from tasks.inference import BACKEND_NAMES, OnnxModel, choose_backend, onnx_runtime_available

    key = f"{mlflow.get_registry_uri()} {ref.pinned_uri} {mode}"
    with _model_lock:
        cached = _model_cache.get(key)
    if cached is not None:
        return cached
    exports = onnx_exports(ref) if mode != "keras" else {}
    try:
        backend = choose_backend(mode, {k: e.verified for k, e in exports.items()},  # type: ignore[arg-type]
                                 onnx_runtime_available())
    except RuntimeError as exc:
        raise CifrasError(f"{ref.label}: {exc}") from exc
    if backend != "keras":
        export = exports[backend]
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=export.run_id,
                                                           artifact_path=export.artifact, dst_path=tmp)
            except (MlflowException, OSError) as exc:
                if unreachable(exc):
                    raise TrackingUnavailable(f"MLflow unreachable, cannot load the ONNX export of "
                                              f"{ref.label}: {short_error(exc)}") from exc
                raise
            model = OnnxModel(Path(path).read_bytes(), kind=backend)
        log.info("reading %s with %s", ref.label, BACKEND_NAMES[backend])
    else:
        model = load_keras_model(ref)
    with _model_lock:
        _model_cache[key] = model
    return model


def champion_scores(client, name: str, alias: str) -> dict | None:
    """The champion's version and MNIST test figures (accuracy, macro F1), or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    acc = metrics.get("test_accuracy", float(mv.tags.get("mnist_test_accuracy", "nan")))
    return {"version": str(mv.version), "mnist_accuracy": float(acc),
            "mnist_f1": float(metrics.get("test_f1_macro", acc))}


def promote(client, name: str, alias: str, version: str) -> None:
    """Move the alias and read it back, so a silent registry failure cannot go unnoticed."""
    client.set_registered_model_alias(name, alias, version)
    now = client.get_model_version_by_alias(name, alias)
    if str(now.version) != str(version):
        raise CifrasError(f"alias {alias} points at v{now.version}, expected v{version}")
