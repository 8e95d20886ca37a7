"""Tesseract as a peer baseline: what a user would get from the usual OCR tool on the same
cell crops cifras reads (digits whitelist, single text line).

Cells go to one `tesseract` process as a list of images, so process start-up is paid once and
cells per second measures recognition, not forks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ARGS = ["--psm", "7", "-c", "tessedit_char_whitelist=0123456789"]


def tesseract_binary() -> str | None:
    return shutil.which("tesseract")


def parse_number(text: str) -> int | None:
    """Tesseract's line to a number: its digits joined, or None when it read none."""
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else None


def _run(binary: str, paths: list[str], listing: Path, timeout: float) -> list[int | None]:
    listing.write_text("\n".join(paths) + "\n")
    # one OpenMP thread per process: on images this small more threads only add overhead
    out = subprocess.run([binary, str(listing), "stdout", *ARGS], capture_output=True, text=True,
                         timeout=timeout, check=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    pages = out.stdout.split("\f")  # one page per image, ended by a form feed
    if len(pages) < len(paths):
        raise RuntimeError(f"tesseract returned {len(pages)} pages for {len(paths)} cells")
    return [parse_number(p) for p in pages[: len(paths)]]


def read_cells(images: list[np.ndarray], processes: int = 2, binary: str | None = None,
               timeout: float = 900) -> list[int | None]:
    """Read grey cell crops (dark ink on light paper) with Tesseract, one number per cell;
    `processes` Tesseract processes share the cells, as cifras' reader uses both cores."""
    binary = binary or tesseract_binary()
    if binary is None:
        raise FileNotFoundError("tesseract not installed (Debian: apt-get install tesseract-ocr)")
    if not images:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i, img in enumerate(images):
            path = folder / f"cell-{i:05d}.png"
            cv2.imwrite(str(path), img)
            paths.append(str(path))
        n = max(1, min(processes, len(paths)))
        shares = [paths[k::n] for k in range(n)]
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(lambda k: _run(binary, shares[k], folder / f"list-{k}.txt", timeout),
                                  range(n)))
    out: list[int | None] = [None] * len(images)
    for k, values in enumerate(parts):
        out[k::n] = values
    return out


def number_accuracy(values: list[int | None], labels: list[int]) -> float | None:
    """Exact-number accuracy; nothing read counts as 0, as a blank cell means none on the form."""
    if not labels:
        return None
    right = [(0 if v is None else v) == y for v, y in zip(values, labels, strict=True)]
    return float(np.mean(right))
