"""Guarded scan decoding: every failure is a reason, never an exception for the batch.

The image header is read first (Pillow, lazily) so that a decompression bomb is refused
before any pixel is decoded; OpenCV then decodes to grey, applying EXIF orientation.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

MAX_PIXELS = 80_000_000  # a 600 dpi A4 scan is ~35 MP; OpenCV itself refuses 2^30
MAX_BYTES = 200_000_000


@dataclass(frozen=True)
class Decoded:
    gray: np.ndarray | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.gray is not None


def decode_scan(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Decoded:
    """Grey uint8 image from file bytes, or a reason why not."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own limit below applies, from the header alone
    if not data:
        return Decoded(None, "empty file (0 bytes)")
    if len(data) > max_bytes:
        return Decoded(None, f"file too large: {len(data)} bytes (limit {max_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                fmt = im.format
    except UnidentifiedImageError:
        return Decoded(None, "not an image: format not recognised")
    except Exception as exc:  # Pillow raises many types on hostile headers
        return Decoded(None, f"unreadable image header: {type(exc).__name__}")
    if w * h > max_pixels:
        return Decoded(None, f"image too large: {w}x{h} pixels (limit {max_pixels})")
    if w < 100 or h < 100:
        return Decoded(None, f"image too small to be a scan: {w}x{h} pixels")
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return Decoded(None, f"corrupt {fmt or 'image'}: cannot be decoded")
    return Decoded(gray)
