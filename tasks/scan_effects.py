"""Turn a clean rendered page into something that looks scanned, and say how it moved.

The returned 2x3 affine maps template (= clean page) coordinates to scan coordinates, so tests
and the registration code can check that they find the form where it really landed.
"""

from __future__ import annotations

import cv2
import numpy as np

_BAYER8 = np.array(
    [[0, 32, 8, 40, 2, 34, 10, 42], [48, 16, 56, 24, 50, 18, 58, 26], [12, 44, 4, 36, 14, 46, 6, 38],
     [60, 28, 52, 20, 62, 30, 54, 22], [3, 35, 11, 43, 1, 33, 9, 41], [51, 19, 59, 27, 49, 17, 57, 25],
     [15, 47, 7, 39, 13, 45, 5, 37], [63, 31, 55, 23, 61, 29, 53, 21]], np.float32) / 64.0


def scan_matrix(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A scanner's placement error: rotation up to ±3° (mostly small), ±3 % scale, ±25 px shift."""
    h, w = shape
    angle = float(np.clip(rng.normal(0.0, 1.2), -3.0, 3.0))
    scale = float(rng.uniform(0.97, 1.03))
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[:, 2] += rng.uniform(-25.0, 25.0, size=2)
    return m


def _lighting(shape: tuple[int, int], rng: np.random.Generator, depth: float) -> np.ndarray:
    """Smooth uneven illumination as a uint8 gain (255 = full light), built at low resolution."""
    h, w = shape
    gy, gx = np.mgrid[0:1:24j, 0:1:16j].astype(np.float32)
    a, b = rng.uniform(-1, 1, size=2)
    cx, cy = rng.uniform(0, 1, size=2)
    field = a * gx + b * gy - 0.8 * ((gx - cx) ** 2 + (gy - cy) ** 2)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    gain = 1.0 - depth * field
    return cv2.resize((gain * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def _fax(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bilevel ordered dither, like the reference scan: ink black, paper white, greys dotted."""
    lo, hi = float(rng.uniform(50, 90)), float(rng.uniform(170, 205))
    h, w = img.shape
    thr = np.tile(((lo + _BAYER8 * (hi - lo))).astype(np.uint8), (h // 8 + 1, w // 8 + 1))[:h, :w]
    return np.where(img > thr, 255, 0).astype(np.uint8)


def degrade(page: np.ndarray, rng: np.random.Generator,
            fax_rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The page as a scanner returns it (same size) and the 2x3 matrix page -> scan."""
    h, w = page.shape
    m = scan_matrix((h, w), rng)
    fax = rng.random() < fax_rate
    out = cv2.warpAffine(page, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=255)
    sigma = float(rng.uniform(0.3, 0.6 if fax else 1.1))
    out = cv2.GaussianBlur(out, (0, 0), sigma)
    out = cv2.multiply(out, _lighting((h, w), rng, float(rng.uniform(0.02, 0.06 if fax else 0.10))),
                       scale=1.0 / 255)
    # sensor noise: generated at half resolution (cheaper, and real grain is not pixel-white)
    sd = float(rng.uniform(1.5, 5.0))
    noise = rng.standard_normal((h // 2 + 1, w // 2 + 1), dtype=np.float32) * sd
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.add(out, noise, dtype=cv2.CV_8U)
    if fax:
        out = _fax(out, rng)
    return out, m


def encode_jpeg(img: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG bytes at a random quality (60-95), as scanners and upload portals vary."""
    quality = int(rng.integers(60, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def apply_matrix(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (n, 2) template points through a 2x3 affine."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]
