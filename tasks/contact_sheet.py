"""A contact sheet of scans side by side, so anyone can judge the generator's realism."""

from __future__ import annotations

import cv2
import numpy as np


def contact_sheet(scans: list[tuple[str, np.ndarray]], width: int = 560) -> np.ndarray:
    """Grey scans scaled to `width`, captioned, in one row."""
    tiles = []
    for caption, gray in scans:
        h = round(gray.shape[0] * width / gray.shape[1])
        tile = cv2.resize(gray, (width, h), interpolation=cv2.INTER_AREA)
        tile = cv2.copyMakeBorder(tile, 36, 6, 6, 6, cv2.BORDER_CONSTANT, value=255)
        cv2.putText(tile, caption, (10, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 0, 2, cv2.LINE_AA)
        tiles.append(tile)
    height = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=255)
             for t in tiles]
    return np.hstack(tiles)
