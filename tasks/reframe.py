"""Reframing: any grey digit image to the model's 28x28 input (ink bright, float in [0, 1]).

Two methods, both pure functions:
- ``paper``: the source paper's four stages: grey, pad to square, add an MNIST-like margin,
  resize to 28x28 and invert so ink is bright.
- ``mnist``: MNIST's own construction: crop to the ink, fit it in a 20x20 box keeping the
  aspect ratio, then place it in 28x28 with its centre of mass at the centre.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import cv2
import numpy as np

Method = Literal["mnist", "paper"]
Ink = Literal["dark", "bright"]
METHODS: tuple[str, ...] = ("mnist", "paper")

SIZE = 28
BOX = 20  # MNIST fits each digit in 20x20, leaving a 4-pixel margin
INK_FLOOR = 0.08  # below this peak intensity an image holds no ink at all


def _ink_bright_and_peak(image: np.ndarray, ink: Ink) -> tuple[np.ndarray, float]:
    """`to_ink_bright` and the result's maximum (0 when empty), found once. An image that is
    ink-bright float32 in [0, 1] already (the segmenter's digits) is not copied."""
    img = np.asarray(image)
    if ink == "bright" and img.ndim == 2 and img.dtype == np.float32 and img.size:
        lo, hi, _, _ = cv2.minMaxLoc(img)
        if lo >= 0.0 and hi <= 1.0:
            return img, hi
    out = to_ink_bright(img, ink)
    return out, float(out.max()) if out.size else 0.0


def to_ink_bright(image: np.ndarray, ink: Ink = "dark") -> np.ndarray:
    """Grey float32 in [0, 1] with ink = 1, from grey or BGR, uint8/uint16/float input."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3].astype(np.float32), cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    else:
        out = img.astype(np.float32)
        top = float(out.max()) if out.size else 0.0
        if top > 1.0:
            out = out / 255.0
    out = np.minimum(np.maximum(out, 0.0, out=out), 1.0, out=out)  # np.clip, without its overhead
    return 1.0 - out if ink == "dark" else out


def _pad_to_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side = max(h, w)
    out = np.zeros((side, side), np.float32)
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = img
    return out


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    shrinking = w < img.shape[1] or h < img.shape[0]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def reframe_paper(img: np.ndarray) -> np.ndarray:
    """Pad to square, add the MNIST margin (4 of 28 each side), resize to 28x28."""
    square = _pad_to_square(img)
    margin = round(square.shape[0] * (SIZE - BOX) / 2 / BOX)
    framed = cv2.copyMakeBorder(square, margin, margin, margin, margin, cv2.BORDER_CONSTANT, 0)
    return _resize(framed, SIZE, SIZE)


def reframe_mnist(img: np.ndarray, peak: float | None = None) -> np.ndarray:
    """Crop to ink, fit in 20x20 keeping aspect, centre of mass at the 28x28 centre (`peak`:
    the image's maximum, when the caller has it)."""
    peak = float(img.max()) if peak is None else peak
    x0, y0, bw, bh = cv2.boundingRect((img > INK_FLOOR * peak).view(np.uint8))
    crop = img[y0 : y0 + bh, x0 : x0 + bw]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = _resize(crop, nw, nh)
    total = float(small.sum())
    # the same int64 x float32 products as with np.mgrid, broadcast instead of materialised
    yy, xx = np.arange(nh)[:, None], np.arange(nw)[None, :]
    cy, cx = float((yy * small).sum() / total), float((xx * small).sum() / total)
    shift = np.float32([[1, 0, SIZE / 2 - 0.5 - cx], [0, 1, SIZE / 2 - 0.5 - cy]])
    return cv2.warpAffine(small, shift, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0)


def reframe(image: np.ndarray, method: Method = "mnist", ink: Ink = "dark") -> np.ndarray:
    """One digit image to a (28, 28) float32 model input; a blank image gives all zeros."""
    img, peak = _ink_bright_and_peak(image, ink)
    if peak < INK_FLOOR:
        return np.zeros((SIZE, SIZE), np.float32)
    if method == "paper":
        out = reframe_paper(img)
    elif method == "mnist":
        out = reframe_mnist(img, peak)
    else:
        raise ValueError(f"unknown reframing {method!r}; choose one of {', '.join(METHODS)}")
    peak = float(out.max())
    return out / peak if peak > 0 else out


def reframe_many(
    images: Iterable[np.ndarray] | Sequence[np.ndarray], method: Method = "mnist", ink: Ink = "dark"
) -> np.ndarray:
    """Stack reframed digits into a (n, 28, 28, 1) float32 batch."""
    out = [reframe(img, method, ink) for img in images]
    if not out:
        return np.zeros((0, SIZE, SIZE, 1), np.float32)
    return np.stack(out)[..., None]
