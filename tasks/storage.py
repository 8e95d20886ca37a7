"""Object storage through fsspec URLs: file:// by default, s3:// via s3fs.

S3 credentials are never passed here: s3fs reads them from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), so they cannot leak into config or logs.

Keys are checked before use: whatever arrives in the scan bucket, and whatever a run's
parameters say, nothing is read or written outside the configured roots (no `..`, absolute
or percent-encoded tricks, no symlinks out of a local root), and an odd or over-long name
becomes a recorded reason instead of a crash.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

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


def modified_time(info: dict[str, Any]) -> datetime | None:
    """An object's modification time from an fsspec listing entry (local, S3 and others name it
    differently), in UTC."""
    for key in ("LastModified", "mtime", "last_modified", "created"):
        v = info.get(key)
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=UTC)
        if isinstance(v, int | float):
            return datetime.fromtimestamp(v, UTC)
    return None


MAX_KEY_BYTES = 1024  # S3's own limit on a key; a local path component allows 255
MAX_PART_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def key_problem(key: str) -> str | None:
    """Why a key (a path relative to a storage root) must not be used, or None. Checked on
    the key as given and percent-decoded (up to three times), since some clients and proxies
    decode `%2e%2e%2f` into `../`."""
    if not key:
        return "empty name"
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(raw) > MAX_KEY_BYTES:
        return f"name too long: {len(raw)} bytes (limit {MAX_KEY_BYTES})"
    forms = [key]
    for _ in range(3):
        nxt = unquote(forms[-1])
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    for form in forms:
        if _CONTROL.search(form):
            return "control character in name"
        if form.startswith(("/", "~")) or _DRIVE.match(form) or "\\" in form:
            return "absolute path or backslash in name"
        parts = form.split("/")
        if any(p in (".", "..") for p in parts):
            return "path traversal ('..' or '.') in name"
        if "" in parts:
            return "empty path segment ('//') in name"
        if form is not key and form.count("/") != key.count("/"):
            return "percent-encoded '/' in name"
    if any(len(p.encode("utf-8")) > MAX_PART_BYTES for p in key.split("/")):
        return f"name too long: a path component over {MAX_PART_BYTES} bytes"
    return None


def printable(text: str) -> str:
    """A name as it can be stored and logged: undecodable bytes and control characters
    escaped (PostgreSQL refuses NUL and invalid UTF-8 in text)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def join(base: str, *parts: str) -> str:
    """base/part/...; a part that would leave `base` is a CifrasError, never a path."""
    clean = [p.rstrip("/") for p in parts]  # a leading "/" is refused, not re-rooted
    for p in clean:
        problem = key_problem(p)
        if problem:
            raise CifrasError(f"refused storage name {printable(p)!r}: {problem}")
    return "/".join([base.rstrip("/"), *clean])


def _local_real(path: str) -> str:
    return os.path.realpath(path)


def within_root(root: str, uri: str, settings: Settings | None = None) -> bool:
    """Whether `uri` is `root` or below it: same storage, no `..` escape, and for local files
    no symlink out of the root."""
    fs_root, root_path = filesystem(root, settings)
    fs_uri, path = filesystem(uri, settings)
    if type(fs_root) is not type(fs_uri):
        return False
    if isinstance(fs_root, LocalFileSystem):
        real_root, real = _local_real(root_path), _local_real(path)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    rel = path[len(root_path.rstrip("/")):] if path.startswith(root_path.rstrip("/")) else None
    if rel is None or (rel and not rel.startswith("/")):
        return False
    rel = rel.strip("/")
    return rel == "" or (key_problem(rel) is None and posixpath.normpath(rel) == rel)


def check_within(root: str, uri: str, what: str, settings: Settings | None = None) -> None:
    if not within_root(root, uri, settings):
        raise CifrasError(f"{what} {printable(uri)} is outside the configured root {root}")


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
