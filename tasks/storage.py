"""Object storage through fsspec URLs: file:// by default, s3:// via s3fs.

S3 credentials are never passed here: s3fs reads them from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), so they cannot leak into config or logs.
"""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import CifrasError
from tasks.settings import Settings


def storage_options(uri: str, settings: Settings | None) -> dict[str, Any]:
    if uri.startswith("s3://") and settings is not None and settings.storage.s3_endpoint_url:
        return {"client_kwargs": {"endpoint_url": settings.storage.s3_endpoint_url}}
    return {}


def filesystem(uri: str, settings: Settings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL."""
    try:
        return url_to_fs(uri, **storage_options(uri, settings))
    except (ValueError, ImportError) as exc:
        raise CifrasError(f"cannot open storage {uri}: {exc}") from exc


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes(uri: str, data: bytes, settings: Settings | None = None) -> None:
    """Write atomically where the backend allows it: readers never see half a scan."""
    fs, path = filesystem(uri, settings)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.part"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)  # an S3 PUT is atomic


def write_file(uri: str, local_path: str, settings: Settings | None = None) -> None:
    """Copy a local file to storage in a stream (`write_bytes` for files too big to hold)."""
    fs, path = filesystem(uri, settings)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    target = f"{path}.part" if isinstance(fs, LocalFileSystem) else path
    with open(local_path, "rb") as src, fs.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    if target != path:
        fs.mv(target, path)


def read_bytes(uri: str, settings: Settings | None = None) -> bytes:
    fs, path = filesystem(uri, settings)
    return fs.cat_file(path)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
