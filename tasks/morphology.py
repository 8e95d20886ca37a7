"""Morphological opening by a line, done only on the rows (or columns) where one can be.

An opening by a 1 x L rectangle acts on each row alone, and keeps ink only in a row holding a
long enough run of ink. Opening just the rows with that much ink gives exactly OpenCV's result
for the whole image at half its cost in a cell crop, where only the printed rules qualify.
The same holds for columns and an L x 1 rectangle: in a cell crop, where a vertical rule must
run nearly the crop's height, few columns can hold one, and their opening done as rows costs
less than a third of OpenCV's on the whole crop (32 -> ~10 us a cell). On a whole page, where
many columns qualify, gathering them costs what the filter saves.
"""

from __future__ import annotations

import cv2
import numpy as np


def min_run(length: int, size: int) -> int:
    """Fewest ink pixels a row of `size` pixels needs to keep any ink after OpenCV's opening by
    a 1 x `length` line. OpenCV's erosion counts the outside as ink, so a run touching the
    image's edge survives with min(length - a, a + 1) pixels for the anchor a = length // 2."""
    a = length // 2
    return min(length - a, a + 1, size)


def _can_hold(binary: np.ndarray, length: int, axis: int) -> np.ndarray:
    """The rows (axis 1) or columns (axis 0) of a 0/255 image where an opening by a line of
    `length` along them can keep ink: those with `length` ink pixels, or whose first or last
    `min_run` pixels are all ink (a run touching the edge). Counting alone let through every
    column of a cell that a digit's stroke crossed for half the crop's height."""
    size = binary.shape[axis]
    edge = min_run(length, size)
    ink = cv2.reduce(binary, axis, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()  # 255 a pixel
    hold = ink >= min(length, size) * 255
    maybe = np.flatnonzero(~hold & (ink >= edge * 255))  # enough ink for a run at an edge
    if len(maybe) and edge > 0:
        lines = (binary[:, maybe] if axis == 0 else binary[maybe].T) > 0  # (size, k)
        hold[maybe] = lines[:edge].all(axis=0) | lines[size - edge :].all(axis=0)
    return np.flatnonzero(hold)


def open_rows(binary: np.ndarray, length: int) -> np.ndarray:
    """`cv2.morphologyEx(binary, MORPH_OPEN, 1 x length rectangle)` for a 0/255 uint8 image."""
    out = np.zeros_like(binary)
    rows = _can_hold(binary, length, 1)
    if len(rows):
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
        out[rows] = cv2.morphologyEx(binary[rows], cv2.MORPH_OPEN, kernel)
    return out


def open_columns(binary: np.ndarray, length: int) -> np.ndarray:
    """`cv2.morphologyEx(binary, MORPH_OPEN, length x 1 rectangle)` for a 0/255 uint8 image."""
    out = np.zeros_like(binary)
    cols = _can_hold(binary, length, 0)
    if len(cols):  # as rows: OpenCV's row filter is ~3x faster than its column filter here
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
        out[:, cols] = cv2.morphologyEx(np.ascontiguousarray(binary[:, cols].T), cv2.MORPH_OPEN, kernel).T
    return out
