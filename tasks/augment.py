"""Training-time augmentation of MNIST digits, so the reused CNN reads other handwriting.

Pure numpy/OpenCV on uint8 (n, 28, 28) arrays with ink = 255. Each digit goes through a
named recipe of random changes, then through the same reframing the reading pipeline uses
(`tasks.reframe.reframe(..., method="mnist", ink="bright")`: crop to the ink, fit in 20x20
keeping the aspect, centre of mass at the centre), so the model trains on what it is fed.

The changes, each drawn with its own probability:
- geometry: rotation, shear, scale, translation, a random aspect change, and a "box fill"
  stretch that widens or narrows the digit to a set width/height, as USPS and optdigits
  digits were stretched to fill their box (a "1" becomes a fat bar);
- mild elastic distortion (a smooth random displacement field);
- stroke thickness (dilation or erosion), blur, ink texture (multiplicative noise) and
  binarisation on a coarse grid (jagged strokes, like optdigits' 32x32 bitmaps);
- what cropping a telegram cell leaves behind: a fragment of a ruling line or of a box
  border just beside the digit, and strokes cut off at one side.

Scale and translation alone are cancelled by the reframing; they matter through the ops
that follow them (thickness, lines and cuts are drawn in fixed pixels).

The work runs at twice MNIST's resolution on a 96x96 canvas, so thickness changes come in
half-pixel steps and nothing leaves the canvas. A recipe and a seed fix the result:
`augment_epoch` splits the set into fixed chunks, each with its own generator derived
from (seed, epoch, chunk), so the output does not depend on the number of threads.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from tasks.errors import CifrasError
from tasks.reframe import INK_FLOOR, reframe

UP = 2  # canvas pixels per MNIST pixel
CANVAS = 96
CHUNK = 2048  # digits per generator in augment_epoch
INK = 0.1  # a canvas pixel holds ink above this


@dataclass(frozen=True)
class Recipe:
    """Probabilities and ranges of each change; zero disables it."""

    name: str
    raw: float = 0.0  # share of digits left exactly as they are (MNIST's own framing)
    rotate: float = 0.0  # degrees, uniform in ±rotate
    shear: float = 0.0  # horizontal shear factor, uniform in ±shear
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0  # MNIST pixels, uniform in ±translate
    aspect: tuple[float, float] = (1.0, 1.0)  # width factor, log-uniform
    fill: float = 0.0  # probability of the box-fill stretch
    fill_aspect: tuple[float, float] = (0.6, 0.85)  # width / height after it
    elastic: float = 0.0
    elastic_px: float = 1.0  # largest displacement, MNIST pixels
    thicken: float = 0.0
    thin: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    binarize: float = 0.0
    line: float = 0.0
    line_length: tuple[float, float] = (0.4, 1.2)  # share of the digit's side it runs along
    corner: float = 0.25  # given a line: share that also get the perpendicular border
    cut: float = 0.0
    cut_frac: tuple[float, float] = (0.05, 0.15)  # share of the digit's extent erased
    reframe: bool = True  # re-apply the pipeline's `mnist` reframing

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


_GEOMETRY = {"rotate": 12.0, "shear": 0.2, "scale": (0.8, 1.15), "translate": 2.0,
             "aspect": (0.85, 1.2), "fill": 0.2, "elastic": 0.5}

RECIPES: dict[str, Recipe] = {
    "none": Recipe("none", reframe=False),
    # Only the pipeline's reframing: how much comes from matching the input framing alone.
    "reframe": Recipe("reframe"),
    "geometric": Recipe("geometric", **_GEOMETRY),  # type: ignore[arg-type]
    "telegram": Recipe(
        "telegram", raw=0.1, **_GEOMETRY,  # type: ignore[arg-type]
        thicken=0.3, thin=0.1, blur=0.25, noise=0.2, binarize=0.1, line=0.2, cut=0.15,
    ),
}


def get_recipe(name: str | Recipe | None) -> Recipe | None:
    """The named recipe; None (or "none") means no augmentation at all."""
    if name is None or isinstance(name, Recipe):
        return name if name is None or name.name != "none" else None
    key = name.strip().lower()
    if key not in RECIPES:
        raise CifrasError(f"unknown augmentation {name!r}; choose one of {', '.join(RECIPES)}")
    return None if key == "none" else RECIPES[key]


_ELLIPSE = {k: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) for k in (3, 5)}
_GRID = np.dstack(np.meshgrid(np.arange(CANVAS), np.arange(CANVAS))).astype(np.float32)  # (x, y)


def _ink_box(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), inclusive, of the pixels holding ink; None when there are none."""
    rows = np.flatnonzero((img > INK).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((img > INK).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _crop_to_ink(img: np.ndarray) -> np.ndarray:
    """A crop holding every pixel that `reframe` counts as ink (it crops to those itself, so
    the result is the same; it only works on fewer pixels)."""
    keep = img > 0.5 * INK_FLOOR * float(img.max())
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if rows.size == 0:
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _geometry(src: np.ndarray, r: Recipe, rng: np.random.Generator) -> np.ndarray:
    """Affine warp of a 28x28 float digit onto the canvas (UP times larger)."""
    ys, xs = np.nonzero(src > INK)
    cx, cy = (xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0
    a = math.radians(rng.uniform(-r.rotate, r.rotate))
    shear = rng.uniform(-r.shear, r.shear)
    lin = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array(
        [[1.0, shear], [0.0, 1.0]]
    )
    width = math.exp(rng.uniform(math.log(r.aspect[0]), math.log(r.aspect[1])))
    if rng.random() < r.fill:
        pts = lin @ np.stack([xs - cx, ys - cy])
        w, h = np.ptp(pts[0]) + 1.0, np.ptp(pts[1]) + 1.0
        width = float(np.clip(rng.uniform(*r.fill_aspect) * h / w, 0.6, 4.0))
    lin = UP * rng.uniform(*r.scale) * np.diag([width, 1.0]) @ lin
    shift = UP * rng.uniform(-r.translate, r.translate, 2)
    # The ink box's centre goes to the canvas centre; without re-reframing, it stays where it
    # was in the 28x28 frame instead.
    # (plus half a canvas pixel, so that shrinking it back by UP lands on MNIST's pixel grid)
    home = np.zeros(2) if r.reframe else UP * (np.array([cx, cy]) - 13.5) - (UP - 1) / 2
    t = np.array([CANVAS / 2.0, CANVAS / 2.0]) + home + shift - lin @ np.array([cx, cy])
    m = np.hstack([lin, t[:, None]]).astype(np.float32)
    return cv2.warpAffine(src, m, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderValue=0)


def _elastic(img: np.ndarray, r: Recipe, rng: np.random.Generator) -> np.ndarray:
    """A smooth displacement field: uniform noise on a 5x5 grid, upsampled bicubically."""
    coarse = rng.uniform(-r.elastic_px * UP, r.elastic_px * UP, (5, 5, 2)).astype(np.float32)
    field = cv2.resize(coarse, (CANVAS, CANVAS), interpolation=cv2.INTER_CUBIC)
    return cv2.remap(img, _GRID + field, None, cv2.INTER_LINEAR, borderValue=0)


def _cut(img: np.ndarray, r: Recipe, rng: np.random.Generator) -> np.ndarray:
    """Erase a band of rows or columns at one side of the ink (a stroke cut off by a rule)."""
    box = _ink_box(img)
    if box is None:
        return img
    x0, y0, x1, y1 = box
    side = int(rng.integers(4))
    extent = (y1 - y0 + 1) if side < 2 else (x1 - x0 + 1)
    n = max(1, round(rng.uniform(*r.cut_frac) * extent))
    out = img.copy()
    if side == 0:
        out[y0 : y0 + n] = 0
    elif side == 1:
        out[y1 - n + 1 : y1 + 1] = 0
    elif side == 2:
        out[:, x0 : x0 + n] = 0
    else:
        out[:, x1 - n + 1 : x1 + 1] = 0
    return out if float(out.max()) > 0.5 else img


def draw_line(
    img: np.ndarray, side: int, rng: np.random.Generator, length: tuple[float, float] = (0.4, 1.2)
) -> np.ndarray:
    """A ruling-line or box-border fragment just outside one side of the ink (0 top,
    1 bottom, 2 left, 3 right): 1-2 MNIST pixels thick, overlapping the digit's span."""
    box = _ink_box(img)
    if box is None:
        return img
    x0, y0, x1, y1 = box
    size_y, size_x = img.shape
    horizontal = side < 2
    thick = int(rng.integers(2, 5))
    # Below zero the line touches the strokes. A horizontal fragment may stand apart: the
    # segmenter groups marks that overlap in x. A vertical one stays only if it touches.
    gap = int(rng.integers(-1, 4)) if horizontal else int(rng.integers(-2, 1))
    value = float(rng.uniform(0.6, 1.0))
    lo, hi = (x0, x1) if horizontal else (y0, y1)
    span = hi - lo + 1
    n = max(3, round(rng.uniform(*length) * span))
    start = lo + int(rng.integers(min(0, span - n), max(0, span - n) + 1))
    a, b = max(0, start), min(size_x if horizontal else size_y, start + n)
    if side == 0:
        p = max(0, y0 - gap - thick)
        region = img[p : p + thick, a:b]
    elif side == 1:
        p = min(size_y - thick, y1 + 1 + gap)
        region = img[p : p + thick, a:b]
    elif side == 2:
        p = max(0, x0 - gap - thick)
        region = img[a:b, p : p + thick]
    else:
        p = min(size_x - thick, x1 + 1 + gap)
        region = img[a:b, p : p + thick]
    np.maximum(region, value, out=region)
    return img


def _line(img: np.ndarray, r: Recipe, rng: np.random.Generator) -> np.ndarray:
    img = img.copy()
    side = int(rng.integers(4))
    img = draw_line(img, side, rng, r.line_length)
    if rng.random() < r.corner:  # a box corner: the perpendicular border as well
        img = draw_line(img, int(rng.integers(2)) + (2 if side < 2 else 0), rng, r.line_length)
    return img


def _kept(new: np.ndarray, old: np.ndarray, area: float = 1.0, share: float = 0.5) -> bool:
    """Whether a thinning change left enough of the digit (`area`: new pixels per old one)."""
    return float(new.sum()) >= share * area * float(old.sum())


def augment_digit(x: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """One uint8 28x28 digit (ink = 255) through the recipe; uint8 28x28 out."""
    r = recipe
    if rng.random() < r.raw or not (x > 255 * INK).any():
        return x.copy()
    img = _geometry(x.astype(np.float32) / 255.0, r, rng)
    if rng.random() < r.elastic:
        img = _elastic(img, r, rng)
    if rng.random() < r.thicken:
        img = cv2.dilate(img, _ELLIPSE[int(rng.choice([3, 5]))])
    elif rng.random() < r.thin:
        thinner = cv2.erode(img, _ELLIPSE[3])
        img = thinner if _kept(thinner, img) else img
    if rng.random() < r.cut:
        img = _cut(img, r, rng)
    if rng.random() < r.line:
        img = _line(img, r, rng)
    if rng.random() < r.blur:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.5))
    if rng.random() < r.noise:
        texture = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.clip(img * (1.0 + rng.uniform(0.1, 0.35) * texture), 0.0, 1.0)
    if rng.random() < r.binarize:
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        coarse = (small > rng.uniform(0.35, 0.6)).astype(np.float32)
        img = coarse if _kept(coarse, img, f * f) else img
    if r.reframe:
        out = reframe(_crop_to_ink(img), method="mnist", ink="bright")
    else:  # back to MNIST's 28x28 frame: the canvas centre, at MNIST's resolution
        k = img.shape[0] / CANVAS  # binarisation works on a smaller canvas
        lo = round(img.shape[0] / 2 - 14 * UP * k)
        side = round(28 * UP * k)
        out = cv2.resize(img[lo : lo + side, lo : lo + side], (28, 28), interpolation=cv2.INTER_AREA)
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def augment_digits(
    x: np.ndarray, recipe: Recipe | str, rng: np.random.Generator | int
) -> np.ndarray:
    """A batch (n, 28, 28) uint8 through the recipe, one digit after the other."""
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise ValueError(f"expected uint8 digits of shape (n, 28, 28), got {x.dtype} {x.shape}")
    if r is None:
        return x.copy()
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = augment_digit(x[i], r, gen)
    return out


def augment_epoch(
    x: np.ndarray, recipe: Recipe | str, seed: int, epoch: int, workers: int = 1
) -> np.ndarray:
    """The augmented copy of a training set for one epoch; the same for the same
    (recipe, seed, epoch), whatever `workers` is (OpenCV releases the GIL)."""
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if r is None:
        return np.asarray(x).copy()
    out = np.empty_like(x)
    starts = range(0, len(x), CHUNK)

    def run(k: int, start: int) -> None:
        gen = np.random.default_rng([seed, epoch, k])
        out[start : start + CHUNK] = augment_digits(x[start : start + CHUNK], r, gen)

    if workers <= 1:
        for k, s in enumerate(starts):
            run(k, s)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(run, k, s) for k, s in enumerate(starts)]:
                f.result()
    return out


class EpochStream:
    """Augmented epochs prepared one ahead in a background thread: while the model trains
    on epoch e, epoch e + 1 is being drawn."""

    def __init__(self, x: np.ndarray, recipe: Recipe, seed: int, workers: int = 1) -> None:
        self.x, self.recipe, self.seed, self.workers = x, recipe, seed, workers
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="augment")
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()

    def _submit(self, epoch: int) -> None:
        with self._lock:
            if epoch not in self._pending:
                self._pending[epoch] = self._pool.submit(
                    augment_epoch, self.x, self.recipe, self.seed, epoch, self.workers
                )

    def get(self, epoch: int, prefetch: bool = True) -> np.ndarray:
        self._submit(epoch)
        if prefetch:
            self._submit(epoch + 1)
        with self._lock:
            future = self._pending.pop(epoch)
        return future.result()

    def close(self) -> None:
        with self._lock:
            for f in self._pending.values():
                f.cancel()
            self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> EpochStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
