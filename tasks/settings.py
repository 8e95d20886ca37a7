"""Typed settings: conf/default.yaml, overridden by CIFRAS_* environment variables.

Strict and frozen so that a typo in a YAML key or an env var value is an error, not a silent
default. The YAML file is `conf/default.yaml` next to the code unless CIFRAS_CONFIG names
another one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tasks.errors import CifrasError

CONF_DIR = Path(os.environ.get("CIFRAS_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))


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
    batch_size: int = 1024
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
    pad: int = 8
    ok_threshold: float = 0.9
    reframe: Literal["mnist", "paper"] = "mnist"
    batch_size: int = 2048
    chunk_size: int = 25
    max_pixels: int = 80_000_000
    checksum: bool = True
    # auto: ONNX Runtime when the version has a verified ONNX export, else Keras (direct call).
    inference: Literal["auto", "onnx", "keras"] = "auto"
    # Scans of a chunk prepared (decode to reframe) in parallel threads; OpenCV and NumPy
    # release the GIL for most of that work. 1: one after another.
    threads: int = Field(default=2, ge=1)
    suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
    experiment: str = "telegram-ingest"


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CIFRAS_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
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

    def shared_path(self, *parts: str) -> Path | None:
        """A file in the shared development data, or None where that folder is absent."""
        if self.shared_data is None:
            return None
        path = self.shared_data.joinpath(*parts)
        return path if path.exists() else None


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad file or value becomes one CifrasError line."""
    path = config_file()
    if not path.is_file():
        raise CifrasError(f"configuration file {path} not found (set CIFRAS_CONFIG)")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CifrasError(f"invalid setting {where!r} in {path} or CIFRAS_* env: {first['msg']}") from exc
