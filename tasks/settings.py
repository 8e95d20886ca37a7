"""Typed settings: conf/default.yaml, overridden by CIFRAS_* environment variables.

Strict and frozen so that a typo in a YAML key or an env var value is an error, not a silent
default. The YAML file is `conf/default.yaml` next to the code unless CIFRAS_CONFIG names
another one. Secrets (database URL with its password, S3 keys) come only from the environment
or from the file named by CIFRAS_SECRETS_FILE, which must live outside the repository.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from tasks.errors import CifrasError

REPO_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = Path(os.environ.get("CIFRAS_CONF_DIR", REPO_DIR / "conf"))
SECRETS_FILE_ENV = "CIFRAS_SECRETS_FILE"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def config_file() -> Path:
    return Path(os.environ.get("CIFRAS_CONFIG", CONF_DIR / "default.yaml"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowSettings(_Section):
    tracking_uri: str | None = None
    artifact_root: str | None = None
    registered_model: str = "digit-cnn"
    champion_alias: str = "champion"
    train_experiment: str = "digit-train"
    eval_experiment: str = "digit-eval"
    # An MLflow server that does not answer: MLflow's own client retries 7 times with backoff
    # (4 minutes a call), and each task retries that; these bound one call to ~3 attempts.
    # MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT set in the environment win over them.
    http_retries: int = Field(default=2, ge=0)
    http_timeout_s: int = Field(default=30, ge=1)


class TrainSettings(_Section):
    epochs: int = 15
    batch_size: int = 128
    validation_split: float = 0.1
    seed: int = 1
    limit: int | None = None
    # Augmentation recipe (tasks/augment.py): None or "none" trains on plain MNIST.
    augment: str | None = None


class EvaluateSettings(_Section):
    model_uri: str = "models:/digit-cnn@champion"
    batch_size: int = Field(default=1024, ge=1)
    reframe: Literal["mnist", "paper"] = "mnist"


class StorageSettings(_Section):
    # fsspec URLs: file:// (default, under data_dir) or s3://bucket/prefix.
    scans_uri: str | None = None
    exports_uri: str | None = None
    # S3-compatible endpoint (SeaweedFS, MinIO); empty means AWS. Keys come only from the
    # environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never from this file.
    s3_endpoint_url: str | None = None


class GenerateSettings(_Section):
    digits: str = "mnist"
    count: int = 100
    seed: int = 0


class ReadSettings(_Section):
    pad: int = Field(default=8, ge=0)
    ok_threshold: float = Field(default=0.99, ge=0, le=1)
    reframe: Literal["mnist", "paper"] = "mnist"
    batch_size: int = Field(default=2048, ge=1)
    chunk_size: int = Field(default=25, ge=1)
    max_pixels: int = Field(default=80_000_000, ge=1)
    checksum: bool = True
    # Digits whose top probability is under this are read again, shifted a pixel each way and
    # turned 8 degrees each way, and the seven readings averaged; 0 turns it off.
    second_look: float = Field(default=0.5, ge=0, le=1)
    # ... but only digits of a reading still in play: of a blob's hypotheses (whole, or split
    # into touching digits) those scoring within this many log-units of its best. None: all.
    second_look_margin: float | None = Field(default=1.0, ge=0)
    # auto: ONNX Runtime when the version has a verified ONNX export, else Keras (direct call).
    inference: Literal["auto", "winograd", "onnx", "keras"] = "auto"
    # Scans of a chunk prepared (decode to reframe) in parallel threads; OpenCV and NumPy
    # release the GIL for most of that work. 1: one after another.
    threads: int = Field(default=2, ge=1)
    # Worker processes preparing scans (decode to reframe), shared by all chunks of a process;
    # 0: prepare in the `threads` above, in this process. Threads then only fetch.
    workers: int = Field(default=2, ge=0)
    # A scan a worker process has not prepared this long after its turn came is recorded
    # unreadable with that reason, and the worker stopped (workers > 0 only: a thread cannot be).
    scan_timeout_s: float = Field(default=120, gt=0)
    max_pages: int = Field(default=100, ge=1)
    pdf_dpi: int = Field(default=200, ge=36, le=600)
    suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".pdf")
    experiment: str = "telegram-ingest"
    # A run still `running` with no chunk stored for this long is marked `interrupted` by the
    # next run: a process killed outright cannot mark its own run ended.
    stale_run_s: int = Field(default=3600, ge=1)


class DaskSettings(_Section):
    # Scale-out of the chunked read stage. `address` (tcp://host:8786) sends chunks to a running
    # Dask scheduler; otherwise `local_workers` > 0 starts a LocalCluster of that many worker
    # processes for the run; both empty/0: chunks are read one after another in the flow process.
    address: str | None = None
    local_workers: int = Field(default=0, ge=0)
    threads_per_worker: int = Field(default=1, ge=1)

    @property
    def enabled(self) -> bool:
        return bool(self.address) or self.local_workers > 0


class ValidationSpec(_Section):
    digits: str  # handwriting pool, validation splits only (never MNIST: it is what we reuse)
    seed: int
    count: int = Field(ge=1)


class PromotionSettings(_Section):
    # The fixed validation set of telegram cells (scans + labels*.csv), any fsspec URL; empty:
    # <data_dir>/validation. Without one, promotion compares MNIST test only.
    validation_uri: str | None = None
    # What `cifras build-validation` generates there.
    validation_sets: tuple[ValidationSpec, ...] = (
        ValidationSpec(digits="optdigits:cv", seed=900, count=100),
        ValidationSpec(digits="orand:val", seed=902, count=100),
    )
    # A version never becomes champion below this MNIST test accuracy and macro F1.
    min_mnist_accuracy: float = Field(default=0.99, ge=0.0, le=1.0)


class FineTuneSettings(_Section):
    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=128, ge=1)
    # Adam's step, a tenth of the original training's so the MNIST features are kept.
    learning_rate: float = Field(default=1e-4, gt=0)
    # MNIST training digits mixed in per weakly labelled digit, against forgetting.
    mnist_ratio: float = Field(default=1.0, ge=0)
    # squeezed pairs of weak digits (target: uniform) per weak digit; 0: none
    pair_share: float = Field(default=0.0, ge=0, le=1)
    seed: int = 1
    experiment: str = "digit-finetune"


class Target(_Section):
    """One of the accuracy targets (issue #5) that `cifras targets` measures: the figures of one
    evaluation and the least each may be. Paths are under `shared_data`."""

    name: str
    kind: Literal["digits", "cells", "reference"]
    data: str  # a digit set (.npz), a folder of cell images, or the reference scan
    labels: str | None = None  # cells: the CSV of file,label
    split: str | None = None
    at_least: dict[str, float] = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CIFRAS_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        env_parse_none_str="null",  # as in the YAML: CIFRAS_TRAIN__LIMIT=null is None
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path(".cifras")
    shared_data: Path | None = None
    # CIFRAS_MNIST_PATH: an mnist.npz or a folder with the four IDX .gz files.
    mnist_path: Path | None = None
    mnist_download_url: str
    mnist_sha256: str | None = None
    # SQLAlchemy URL of the results database (CIFRAS_DATABASE_URL); empty: SQLite in data_dir.
    database_url: str | None = None
    template: str = "telegrama_nacional_2021"
    storage: StorageSettings = StorageSettings()
    generate: GenerateSettings = GenerateSettings()
    read: ReadSettings = ReadSettings()
    mlflow: MlflowSettings = MlflowSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    dask: DaskSettings = DaskSettings()
    promotion: PromotionSettings = PromotionSettings()
    fine_tune: FineTuneSettings = FineTuneSettings()
    targets: list[Target] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config_file(), deep_merge=True)
        return (init_settings, env_settings, yaml_source)

    # Derived locations: kept here so every entry point agrees on them.
    @property
    def mlflow_tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> str:
        if self.mlflow.artifact_root:
            return self.mlflow.artifact_root
        return (self.data_dir / "mlartifacts").resolve().as_uri()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cifras.db').resolve()}"

    @property
    def scans_uri(self) -> str:
        return self.storage.scans_uri or (self.data_dir / "scans").resolve().as_uri()

    @property
    def exports_uri(self) -> str:
        return self.storage.exports_uri or (self.data_dir / "exports").resolve().as_uri()

    @property
    def validation_uri(self) -> str:
        return self.promotion.validation_uri or (self.data_dir / "validation").resolve().as_uri()

    def shared_path(self, *parts: str) -> Path | None:
        """A file in the shared development data, or None where that folder is absent."""
        if self.shared_data is None:
            return None
        path = self.shared_data.joinpath(*parts)
        return path if path.exists() else None


def load_secrets_file(path: Path | None = None) -> list[str]:
    """Export the KEY=VALUE lines of the secrets file (CIFRAS_SECRETS_FILE) into the
    environment, where settings, s3fs and MLflow read them; a variable already set wins.
    Returns the names set, never the values. The file must be outside the repository (so that
    it cannot be committed) and readable by its owner only, like an SSH key; errors name the
    line, never its content."""
    if path is None:
        name = os.environ.get(SECRETS_FILE_ENV)
        if not name:
            return []
        path = Path(name)
    path = path.expanduser().resolve()
    if not path.is_file():
        raise CifrasError(f"secrets file {path} not found ({SECRETS_FILE_ENV})")
    if path.is_relative_to(REPO_DIR) or path.is_relative_to(CONF_DIR.resolve()):
        raise CifrasError(f"secrets file {path} is inside the repository: keep it outside "
                          f"(e.g. /etc/cifras/secrets.env, mode 600)")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise CifrasError(f"secrets file {path} is readable by other users: chmod 600 {path}")
    found: dict[str, str] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _ENV_NAME.match(key):
            raise CifrasError(f"secrets file {path}, line {no}: expected NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    names = [k for k in found if k not in os.environ]
    for k in names:
        os.environ[k] = found[k]
    return names


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad file or value becomes one CifrasError line."""
    load_secrets_file()
    path = config_file()
    if not path.is_file():
        raise CifrasError(f"configuration file {path} not found (set CIFRAS_CONFIG)")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CifrasError(f"invalid setting {where!r} in {path} or CIFRAS_* env: {first['msg']}") from exc
    except SettingsError as exc:  # a CIFRAS_* value a list or table setting cannot parse (not JSON)
        raise CifrasError(f"invalid CIFRAS_* environment value: {exc}; lists and tables are "
                          "written as JSON, e.g. CIFRAS_READ__SUFFIXES='[\".jpg\"]'") from exc
    except yaml.YAMLError as exc:
        raise CifrasError(f"configuration file {path} is not valid YAML: "
                          f"{str(exc).splitlines()[0]}") from exc
