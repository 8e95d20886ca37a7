"""Digit arrays from local files: MNIST (.npz, IDX folder, or the Keras download) and any
`x`/`y` dataset. Arrays follow MNIST's convention: uint8, ink = 255, background = 0.

Every failure becomes a one-line CifrasError naming the file and what to do, because these
paths come straight from users and configuration.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import CifrasError

log = logging.getLogger(__name__)

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DigitSet:
    x: np.ndarray  # (n, h, w) uint8, ink = 255
    y: np.ndarray  # (n,) int labels 0-9
    name: str

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise CifrasError(
                f"dataset {self.name}: expected x of shape (n, h, w) and y of shape (n,), "
                f"got {self.x.shape} and {self.y.shape}"
            )


@dataclass(frozen=True)
class Mnist:
    train: DigitSet
    test: DigitSet
    source: str


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError as exc:
        raise CifrasError(f"dataset file {path} does not exist") from exc
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CifrasError(f"cannot read {path}: not a valid .npz file ({exc})") from exc


def load_digit_set(path: Path, split: str | None = None) -> DigitSet:
    """Read `x`/`y`, or `x_<split>`/`y_<split>`, from an .npz of digit images."""
    arrays = _open_npz(path)
    xk, yk = ("x", "y") if split is None else (f"x_{split}", f"y_{split}")
    if xk not in arrays and split is None and "x_test" in arrays:
        xk, yk = "x_test", "y_test"
    if xk not in arrays or yk not in arrays:
        splits = sorted(k[2:] for k in arrays if k.startswith("x_"))
        hint = f"; splits present: {', '.join(splits)}" if splits else ""
        raise CifrasError(f"{path} has no arrays {xk!r} and {yk!r}{hint}")
    x = arrays[xk]
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    name = path.stem if xk == "x" else f"{path.stem}:{xk[2:]}"
    return DigitSet(x=x, y=arrays[yk].astype(np.int64), name=name)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad IDX magic number")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise CifrasError(f"cannot read IDX file {path}: {exc}") from exc


def _load_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CifrasError(f"MNIST folder {folder} lacks {stem}.gz")
        arrays[key] = _read_idx(found)
    return arrays


def _download_mnist(url: str, sha256: str | None, cache_dir: Path) -> Path:
    import keras  # heavy import, only on this path

    try:
        return Path(
            keras.utils.get_file(
                fname="mnist.npz",
                origin=url,
                file_hash=sha256,
                cache_dir=str(cache_dir.resolve()),
                cache_subdir="datasets",
            )
        )
    except Exception as exc:  # keras wraps network errors in several types
        raise CifrasError(
            "MNIST is not available: no local copy and the download failed "
            f"({type(exc).__name__}); set CIFRAS_MNIST_PATH to an mnist.npz or a folder "
            "of the four MNIST IDX .gz files"
        ) from exc


def load_mnist(
    path: Path | None, download_url: str, sha256: str | None, cache_dir: Path
) -> Mnist:
    """MNIST from a local path when given, else the Keras download (cached in cache_dir)."""
    if path is None:
        path = _download_mnist(download_url, sha256, cache_dir)
    if path.is_dir():
        arrays = _load_idx_folder(path)
    elif path.is_file():
        arrays = _open_npz(path)
    else:
        raise CifrasError(f"CIFRAS_MNIST_PATH={path} does not exist")
    missing = [k for k in IDX_FILES if k not in arrays]
    if missing:
        raise CifrasError(f"{path} lacks MNIST arrays {', '.join(missing)}")
    log.info("MNIST loaded from %s", path)
    return Mnist(
        train=DigitSet(arrays["x_train"], arrays["y_train"].astype(np.int64), "mnist:train"),
        test=DigitSet(arrays["x_test"], arrays["y_test"].astype(np.int64), "mnist:test"),
        source=str(path),
    )


def mnist_source(path: Path | None, download_url: str, sha256: str | None, cache_dir: Path) -> Path:
    """The local MNIST (file or IDX folder): the configured path, else the cached download."""
    return path if path is not None else _download_mnist(download_url, sha256, cache_dir)
