"""Pools of real handwritten digits for the scan generator, one list of crops per digit 0-9.

Every crop is tight to its ink and follows the MNIST convention (uint8, ink = 255 on 0), so the
renderer can scale any source to any cell. MNIST contributes only its test split: the model was
trained on the rest, and a generator fed with training digits would flatter it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from tasks.digit_data import load_digit_set, load_mnist
from tasks.errors import CifrasError

SOURCES = ("mnist", "usps", "optdigits", "orand")
DEFAULT_SPLIT = {"mnist": "test", "usps": "train", "optdigits": "tra", "orand": "train"}
_INK_MIN = 40  # crop threshold: fainter pixels are anti-aliasing or noise, not the digit's extent


@dataclass(frozen=True)
class DigitPool:
    """Crops per digit; `stretched` marks sources whose digits were stretched to fill their box
    (USPS, optdigits), so the renderer must choose a plausible width itself."""

    name: str
    digits: tuple[tuple[np.ndarray, ...], ...]  # digits[d] = crops of digit d
    stretched: bool = False

    def __post_init__(self) -> None:
        if len(self.digits) != 10:
            raise CifrasError(f"digit pool {self.name}: expected 10 digit lists, got {len(self.digits)}")

    def counts(self) -> list[int]:
        return [len(crops) for crops in self.digits]

    def sample(self, digit: int, rng: np.random.Generator) -> np.ndarray:
        crops = self.digits[digit]
        if not crops:
            raise CifrasError(f"digit pool {self.name} has no instance of digit {digit}")
        return crops[int(rng.integers(len(crops)))]


def crop_to_ink(img: np.ndarray, threshold: int = _INK_MIN) -> np.ndarray | None:
    """The ink bounding box of one digit image, or None if it holds no ink."""
    ys, xs = np.nonzero(img >= threshold)
    if len(ys) == 0:
        return None
    return np.ascontiguousarray(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def _group(name: str, images: list[np.ndarray], labels: list[int], stretched: bool) -> DigitPool:
    per_digit: list[list[np.ndarray]] = [[] for _ in range(10)]
    for img, label in zip(images, labels, strict=True):
        crop = crop_to_ink(img)
        if crop is not None and min(crop.shape) >= 2 and 0 <= label <= 9:
            per_digit[label].append(crop)
    missing = [d for d in range(10) if not per_digit[d]]
    if missing:
        raise CifrasError(f"digit pool {name}: no instance of digit(s) {missing}")
    return DigitPool(name=name, digits=tuple(tuple(p) for p in per_digit), stretched=stretched)


def _smooth_binary(x: np.ndarray) -> list[np.ndarray]:
    """Upsample 2x and blur binary bitmaps: scaled as they are they print as jagged blocks."""
    out = []
    for img in x:
        big = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.GaussianBlur(big, (0, 0), 1.2))
    return out


def _npz_pool(name: str, path: Path, split: str, binary: bool) -> DigitPool:
    if not path.is_file():
        raise CifrasError(f"digit source {name}: {path} not found (is the shared data path right?)")
    ds = load_digit_set(path, split)
    images = _smooth_binary(ds.x) if binary else list(ds.x)
    return _group(f"{name}:{split}", images, ds.y.tolist(), stretched=name in ("usps", "optdigits"))


def _clean_cheque(grey: np.ndarray) -> np.ndarray:
    """Dark ink on patterned cheque paper -> ink-bright digits on a zero background.

    A grey closing (wider than a pen stroke) estimates the paper, so the faint security
    pattern and uneven light cancel out; Otsu on what is left separates strokes from it."""
    paper = cv2.morphologyEx(grey, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    ink = cv2.subtract(paper, grey)
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lo = max(float(otsu) * 0.6, 12.0)
    strong = float(np.percentile(ink[ink > otsu], 90)) if np.any(ink > otsu) else lo + 1.0
    scaled = (ink.astype(np.float32) - lo) * (255.0 / max(strong - lo, 1.0))
    out = np.clip(scaled, 0, 255).astype(np.uint8)
    out = cv2.morphologyEx(out, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # 1 px hatching, not strokes
    return _remove_guide_lines(out)


def _remove_guide_lines(ink: np.ndarray) -> np.ndarray:
    """Erase the cheque's printed guide lines: long and at most 3 px thick, unlike any stroke."""
    mask = (ink >= _INK_MIN).astype(np.uint8)
    long_runs = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (45, 1)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(long_runs, 8)
    thin = [i for i in range(1, n) if stats[i, cv2.CC_STAT_HEIGHT] <= 3]
    if not thin:
        return ink
    return np.where(np.isin(labels, thin), 0, ink).astype(np.uint8)


def _keep_main_strokes(crop: np.ndarray) -> np.ndarray:
    """Drop specks, and slivers of neighbouring digits that a tight box also catches: narrow
    pieces on the box's left or right side (a 5's separate top bar is wide, so it stays)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((crop >= _INK_MIN).astype(np.uint8), 8)
    if n <= 2:
        return crop
    areas = stats[1:, cv2.CC_STAT_AREA]
    left, width = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_WIDTH]
    sliver = ((left == 0) | (left + width >= crop.shape[1])) & (width < 0.35 * crop.shape[1])
    drop = (areas < 0.06 * areas.max()) | (sliver & (areas < 0.5 * areas.max()))
    keep = np.flatnonzero(~drop) + 1
    mask = np.isin(labels, keep)
    return np.where(mask, crop, 0).astype(np.uint8)


def _normalise(crop: np.ndarray) -> np.ndarray:
    """Full ink for this digit's own strokes: a lightly written digit next to a heavy one
    would otherwise fall apart when the renderer sets its pen width."""
    ink = crop[crop >= _INK_MIN]
    if ink.size == 0:
        return crop
    top = max(float(np.percentile(ink, 85)), 1.0)
    return np.clip(crop.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)


def _orand_pool(root: Path, split: str) -> DigitPool:
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        raise CifrasError(f"digit source orand: {labels_csv} not found (is the shared data path right?)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    with labels_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    if not rows:
        raise CifrasError(f"digit source orand: no rows with split {split!r} in {labels_csv}")
    for row in rows:
        grey = cv2.imread(str(root / row["file"]), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise CifrasError(f"digit source orand: cannot read image {root / row['file']}")
        ink = _clean_cheque(grey)
        for x, y, w, h, digit in json.loads(row["digit_boxes_xywh_label"]):
            crop = ink[max(y, 0) : y + h, max(x, 0) : x + w]
            if crop.size:
                images.append(_normalise(_keep_main_strokes(crop)))
                labels.append(int(digit))
    return _group(f"orand:{split}", images, labels, stretched=False)


def parse_source(source: str) -> tuple[str, str]:
    """'usps' -> ('usps', 'train'); 'usps:test' -> ('usps', 'test')."""
    name, _, split = source.partition(":")
    if name not in SOURCES:
        raise CifrasError(f"unknown digit source {name!r} (known: {', '.join(SOURCES)})")
    split = split or DEFAULT_SPLIT[name]
    if name == "mnist" and split != "test":
        raise CifrasError(
            "digit source mnist: only the test split may be rendered (the model was trained on the rest)"
        )
    return name, split


@cache
def _load_cached(name: str, split: str, shared_data: Path | None, mnist_path: Path | None) -> DigitPool:
    if name == "mnist":
        if mnist_path is None:
            raise CifrasError("digit source mnist needs an mnist.npz path (set CIFRAS_MNIST_PATH)")
        if mnist_path.is_dir():  # the four IDX files
            test = load_mnist(mnist_path, "", None, mnist_path).test
            return _group("mnist:test", list(test.x), test.y.tolist(), stretched=False)
        return _npz_pool("mnist", mnist_path, split, binary=False)
    if shared_data is None:
        raise CifrasError(f"digit source {name} needs the shared data folder (set CIFRAS_SHARED_DATA)")
    if name == "usps":
        return _npz_pool("usps", shared_data / "usps" / "usps.npz", split, binary=False)
    if name == "optdigits":
        return _npz_pool("optdigits", shared_data / "optdigits" / "optdigits.npz", split, binary=True)
    return _orand_pool(shared_data / "orand_car_a", split)


def load_pool(source: str, shared_data: Path | None, mnist_path: Path | None = None) -> DigitPool:
    """The digit pool for `source` ('mnist', 'usps', 'optdigits', 'orand', optional ':split'),
    cached per source and path for the life of the process (loading ORAND decodes ~1000 JPEGs)."""
    name, split = parse_source(source)
    return _load_cached(
        name,
        split,
        Path(shared_data) if shared_data is not None and name != "mnist" else None,
        Path(mnist_path) if mnist_path is not None and name == "mnist" else None,
    )
