"""Registration: find the template's printed rules in a scan and estimate the affine map from
template to scan (rotation, shift, scale), with a quality score.

Pure functions on grey images. The method is deliberately cheap (a few ms a scan): deskew by
the projection profile of ink, find long rules with morphology, then match the detected rule
positions to the template's by a voted 1-D scale-and-offset fit on each axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import cv2
import numpy as np

from tasks.morphology import min_run, open_rows
from tasks.template import Template

WORK_SCALE = 0.5  # rules are found on a half-size image
MATCH_TOL = 4.0  # px (template scale) for a detected rule to count as a template rule


@dataclass(frozen=True)
class Alignment:
    ok: bool
    matrix: np.ndarray  # 2x3, template -> scan pixel coordinates
    angle_deg: float
    scale: tuple[float, float]
    quality: float  # share of template rules found at their place, 0-1
    residual_px: float
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """Binary ink (255) from a grey scan, robust to uneven light (local mean threshold)."""
    h, w = gray.shape
    cw, ch = max(1, w // 16), max(1, h // 16)
    # a whole 16:1 reduction of the part that divides by 16 (the last < 16 rows and columns are
    # left out of the paper level): OpenCV's integer-ratio path, 5x faster than the fractional
    coarse = cv2.resize(gray[: ch * 16, : cw * 16], (cw, ch), interpolation=cv2.INTER_AREA)
    coarse = cv2.dilate(coarse, np.ones((3, 3), np.uint8))  # paper level, ignoring thin ink
    blur = cv2.resize(cv2.GaussianBlur(coarse, (0, 0), 2), (w, h), interpolation=cv2.INTER_LINEAR)
    # ink is clearly darker than its neighbourhood: gray < blur - 40 (saturating at 0, where
    # nothing is darker anyway), in OpenCV rather than int16 NumPy temporaries
    return cv2.compare(gray, cv2.subtract(blur, 40), cv2.CMP_LT)


def _angle_scorer(mask: np.ndarray, max_points: int) -> Callable[[float], float] | None:
    """Score of an angle: the sum of squares of the ink's projection onto rows turned by it
    (rows of ink line up, the profile peaks), from a random sample of at most `max_points` ink
    pixels; None when there is too little ink to tell."""
    # every k-th column, so that about max_points remain to sample from: a rule of ink keeps
    # its every row, and listing the ink costs k times less
    k = max(1, cv2.countNonZero(mask) // max_points)
    points = cv2.findNonZero(np.ascontiguousarray(mask[:, ::k]) if k > 1 else mask)
    if points is None or len(points) < 100:
        return None
    points = points.reshape(-1, 2)
    xs, ys = points[:, 0] * k, points[:, 1]
    if len(xs) > max_points:
        idx = np.random.default_rng(0).choice(len(xs), max_points, replace=False)
        ys, xs = ys[idx], xs[idx]
    xs = xs.astype(np.float64) - mask.shape[1] / 2
    ys = ys.astype(np.float64)
    a = np.empty_like(ys)
    b = np.empty_like(xs)

    def score(angle: float) -> float:
        t = np.deg2rad(angle)
        np.multiply(ys, np.cos(t), out=a)
        np.multiply(xs, np.sin(t), out=b)
        proj = np.round(np.add(a, b, out=a), out=a).astype(np.int64)
        proj -= proj.min()
        h = np.bincount(proj)
        return float(np.dot(h, h))  # exact: integer counts, far below 2**53

    return score


def _climb(score: Callable[[float], float], lo: float, hi: float, steps: tuple[float, ...]) -> float:
    """Best angle in [lo, hi]: a grid at the first step, then finer grids around the best one
    (each spanning the previous step on either side), each angle scored once. The profile's peak
    is wider than every step but the last, so the grid cannot step over it."""
    seen: dict[float, float] = {}

    def best_of(grid: np.ndarray) -> float:
        for g in np.round(grid, 6):
            if g not in seen:
                seen[g] = score(float(g))
        return max(np.round(grid, 6), key=seen.__getitem__)

    best = best_of(np.arange(lo, hi + steps[0] / 2, steps[0]))
    for coarse, fine in pairwise(steps):
        grid = np.arange(best - coarse + fine, best + coarse - fine / 2, fine)
        best = best_of(grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)])
    return float(best)


def estimate_skew(mask: np.ndarray, lo: float = -4.0, hi: float = 4.0,
                  steps: tuple[float, ...] = (0.5, 0.1, 0.05), max_points: int = 60000) -> float:
    """Angle (degrees, positive = counter-clockwise content) in [lo, hi] that makes rows of ink
    horizontal, searched coarse to fine (27 angles for the default ±4 degrees to 0.05, where a
    0.05 grid over the range took 44 with the same result)."""
    score = _angle_scorer(mask, max_points)
    return 0.0 if score is None else _climb(score, lo, hi, steps)


def _turn(shape: tuple[int, ...], angle: float) -> np.ndarray:
    """The 2x3 map turning an image of `shape` by `angle` degrees about its centre."""
    h, w = shape[:2]
    return cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)


def _rotate(img: np.ndarray, angle: float) -> np.ndarray:
    h, w = img.shape
    return cv2.warpAffine(img, _turn(img.shape, angle), (w, h), flags=cv2.INTER_NEAREST, borderValue=0)


def opened_profile(mask: np.ndarray, length: int) -> np.ndarray:
    """Ink pixels per row after an OpenCV opening by a 1 x `length` rectangle (default anchor
    and borders: outside the image counts as ink for the erosion, as paper for the dilation),
    computed from the runs of ink instead of two O(length) filters over the whole image.

    For a run [s, e] of a row of width w, with anchor a = length // 2, the erosion keeps x where
    the window [x - a, x - a + length - 1] holds only the run (or the outside), and the dilation
    then covers [x + a - length + 1, x + a]: the run itself (shifted by one for even lengths,
    and clipped at the borders). Runs are apart, so their covers are too, and the row's count
    is the sum of theirs. Float64, as find_rules used it."""
    h, w = mask.shape
    a = length // 2
    ink = mask > 0
    rows = np.flatnonzero(np.count_nonzero(ink, axis=1) >= min_run(length, w))
    profile = np.zeros(h, np.float64)
    if len(rows) == 0:
        return profile
    edges = np.zeros((len(rows), w + 2), np.int8)
    edges[:, 1:-1] = ink[rows]
    step = np.diff(edges, axis=1)
    r, s = np.nonzero(step == 1)  # run starts, row-major
    e = np.nonzero(step == -1)[1] - 1  # run ends (inclusive), in the same order
    x0 = np.where(s == 0, 0, s + a)
    x1 = np.where(e == w - 1, w - 1, e + a - length + 1)
    x0, x1 = np.maximum(x0, 0), np.minimum(x1, w - 1)
    kept = x0 <= x1
    lo = np.maximum(x0 + a - length + 1, 0)
    hi = np.minimum(x1 + a, w - 1)
    count = np.where(kept, hi - lo + 1, 0)
    profile[rows] = np.bincount(r, weights=count, minlength=len(rows))
    return profile


def find_rules(mask: np.ndarray, axis: int, min_len: int) -> np.ndarray:
    """Centre positions of long straight rules: axis 0 = horizontal rules (their y)."""
    if axis == 0:  # rows of ink: from their runs, several times faster than the filters, on
        # every other column at half the length (a rule's row stays whole; error 1.254 -> 1.253 px)
        profile = 2 * opened_profile(mask[:, ::2], min_len // 2)
    else:  # columns: OpenCV's vertical filters cost less than transposing for the runs. On
        # every other row, at half the length: a printed rule stays whole and the cost is a
        # quarter (`cifras registration-error`, 400 scans: mean worst-cell error 1.252 -> 1.254 px)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1, min_len // 2))
        lines = cv2.morphologyEx(mask[::2], cv2.MORPH_OPEN, kernel)
        profile = 2 * (lines > 0).sum(axis=0).astype(np.float64)
    # each run of rule rows (columns) gives one rule, at the run's ink-weighted centre
    edges = np.diff((profile >= min_len).astype(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.array([float((np.arange(i, j) * profile[i:j]).sum() / profile[i:j].sum())
                     for i, j in zip(starts, ends, strict=True)])


def _nearest_distance(ordered: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Distance from each prediction to its nearest found rule. Only the two sorted neighbours
    can be nearest, so this is exactly the all-pairs minimum at a fraction of its cost (the
    all-pairs version was half of registration's time)."""
    i = np.searchsorted(ordered, pred)
    left = ordered[np.clip(i - 1, 0, len(ordered) - 1)]
    right = ordered[np.clip(i, 0, len(ordered) - 1)]
    return np.minimum(np.abs(left - pred), np.abs(right - pred))


def _count_bounds(template_pos: np.ndarray, ordered: np.ndarray, scales: np.ndarray,
                  which: np.ndarray, offsets: np.ndarray, tols: tuple[float, ...]) -> list[np.ndarray]:
    """For each proposal (scale `scales[which]`, integer offset o) and each tolerance: how many
    template rules t have a found rule f with |f - (s*t + o)| <= tol, counted over the union of
    the integer intervals [f - s*t - tol, f - s*t + tol] of each template rule (one histogram
    for all scales)."""
    c = ordered[None, None, :] - scales[:, None, None] * template_pos[None, :, None]  # (s, t, f)
    out = []
    for tol in tols:
        lo, hi = np.ceil(c - tol), np.floor(c + tol)
        # the found rules are sorted, so each interval starts after the previous one starts:
        # cut its overlap with the previous one, so that a template rule counts once per offset
        lo[..., 1:] = np.maximum(lo[..., 1:], hi[..., :-1] + 1)
        valid = lo <= hi
        base = float(lo.min()) if lo.size else 0.0
        span = int(hi.max() - base) + 2
        row = np.arange(len(scales))[:, None, None] * span
        starts = (lo - base).astype(np.int64) + row
        ends = (hi + 1 - base).astype(np.int64) + row
        delta = (np.bincount(starts[valid], minlength=len(scales) * span)
                 - np.bincount(ends[valid], minlength=len(scales) * span))
        counts = np.cumsum(delta.reshape(len(scales), span), axis=1)
        idx = (offsets - base).astype(np.int64)
        inside = (idx >= 0) & (idx < span)
        bound = np.zeros(len(idx), counts.dtype)
        bound[inside] = counts[which[inside], idx[inside]]
        out.append(bound)
    return out


def _line_fit(t: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """Least-squares f = s*t + b (what `np.polyfit(t, f, 1)` gives, to ~1e-12, at a fifth of
    its cost)."""
    tm, fm = t.mean(), f.mean()
    dt = t - tm
    s = float(np.dot(dt, f - fm) / np.dot(dt, dt))
    return s, float(fm - s * tm)


def fit_axis(
    template_pos: np.ndarray, found: np.ndarray, scales: np.ndarray
) -> tuple[float, float, int, float]:
    """Best (scale, offset) mapping template positions onto found ones; (s, b, inliers, rms).

    Every (template rule, found rule) pair proposes an offset at each scale; the proposal with
    most template rules landing within tolerance wins, then a least-squares fit on those.
    """
    if len(found) == 0 or len(template_pos) == 0:
        return 1.0, 0.0, 0, float("inf")
    s, b = vote(template_pos, found, scales)
    # shrink the tolerance while refitting, so that a rule matched to its close neighbour
    # (two rules 13 px apart at the table's foot) does not drag the fit
    count, rms = 0, float("inf")
    for tol_now in (MATCH_TOL * 1.5, MATCH_TOL, MATCH_TOL / 2):
        d = np.abs(found[None, :] - (s * template_pos[:, None] + b))
        keep = d.min(axis=1) <= tol_now
        if keep.sum() < 2:
            break
        t, f = template_pos[keep], found[d[keep].argmin(axis=1)]
        s, b = _line_fit(t, f)
        res = np.abs(f - (s * t + b))
        count, rms = int((res <= MATCH_TOL).sum()), float(np.sqrt((res ** 2).mean()))
    return s, b, count, rms


def vote(template_pos: np.ndarray, found: np.ndarray, scales: np.ndarray) -> tuple[float, float]:
    """The (scale, integer offset) proposal under which most template rules land within
    tolerance of a found rule; of equals, the least mean distance, then the first scale and
    offset. (1, 0) when there is nothing to propose."""
    if len(found) == 0 or len(template_pos) == 0:
        return 1.0, 0.0
    tol = MATCH_TOL * 1.5
    ordered = np.sort(found)
    # each scale's proposed offsets, rounded and unique: one sort for all scales, then all
    # scales' proposals in one flat list (scale by scale, offsets ascending)
    proposals = np.sort(np.round(ordered[None, None, :] - scales[:, None, None] * template_pos[None, :, None]
                                 ).reshape(len(scales), -1), axis=1)
    fresh = np.ones(proposals.shape, bool)
    fresh[:, 1:] = proposals[:, 1:] != proposals[:, :-1]
    which, offsets = np.nonzero(fresh)[0], proposals[fresh]
    # Only proposals that may match as many rules as the best one are scored. Bounds of each
    # proposal's count (a template rule counts when some found rule lies within tol of its
    # prediction) come from integer intervals, a hair wider and narrower than tol so that
    # rounding cannot exclude the winner; the winner and its score are exactly as if every
    # proposal had been scored (the bounds only skip proposals that cannot win).
    if len(template_pos) * len(found) > 100:  # few pairs (the vertical rules): score them all
        upper, lower = _count_bounds(template_pos, ordered, scales, which, offsets,
                                     (tol + 1e-6, tol - 1e-6))
        keep = upper >= lower.max()
        which, offsets = which[keep], offsets[keep]
    s, b = 1.0, 0.0
    if len(offsets):
        pred = scales[which][:, None] * template_pos[None, :] + offsets[:, None]  # (o, t)
        near = _nearest_distance(ordered, pred)  # (o, t)
        hits = near <= tol
        count = hits.sum(axis=1)
        err = np.where(hits, near, 0).sum(axis=1) / np.maximum(count, 1)
        # most rules matched, then the least error; of equals the first scale, then offset
        k = int(np.lexsort((err, -count))[0])
        s, b = float(scales[which[k]]), float(offsets[k])
    return s, b


def register(gray: np.ndarray, template: Template) -> Alignment:
    """Align a grey scan to the template; `ok` is False with a reason when it cannot."""
    identity = np.eye(3)[:2]
    if gray.size == 0:
        return Alignment(False, identity, 0.0, (1.0, 1.0), 0.0, float("inf"), "empty image")
    small = cv2.resize(gray, None, fx=WORK_SCALE, fy=WORK_SCALE, interpolation=cv2.INTER_AREA)
    mask = ink_mask(small)
    ink_share = cv2.countNonZero(mask) / mask.size  # (mask > 0).mean(): the same division
    if ink_share < 0.003:
        return Alignment(False, identity, 0.0, (1.0, 1.0), 0.0, float("inf"), "blank page: no ink found")
    reg = template.registration
    tw = reg.table_box[2]
    # Samples of 10,000 ink pixels for the first angle and 10,000 rule pixels to refine it
    # (60,000 for both in session 4, then 20,000 and 30,000): ~2 ms less a scan, and the cells
    # land nearly as close to their true place (`cifras registration-error --count 300`, seeds
    # 777 and 778: mean worst-cell error 1.264 px against 1.254). The validation telegrams
    # read 85.13 % of numbers right, inside the 85.05-85.37 % that the sampling seed alone gives.
    angle = estimate_skew(mask, max_points=10000)
    # refine on the long rules alone, which are straighter than the text around them: the
    # rules of the scan turned by `angle` lean by what is left, and turns about one centre add
    straight = _rotate(mask, angle)
    rules = open_rows(straight, int(tw * WORK_SCALE * 0.2))
    angle += estimate_skew(rules, -0.3, 0.3, (0.06, 0.02), max_points=10000)
    # The rules are found in this frame, and the map takes the refined angle: what is left of
    # the lean (under 0.1 degree) moves a rule's centre by a fraction of a pixel, while turning
    # the mask a second time (nearest pixel) cost 0.8 ms and placed the cells worse
    # (`cifras registration-error --count 300`, seeds 777 and 778: mean worst-cell error 1.09
    # px against 1.26). Validation telegrams: 84.97 % of numbers right (85.21 %), ok cells
    # 99.69 % right (99.62 %).
    rot = _turn(mask.shape, angle)
    horiz = find_rules(straight, 0, int(tw * WORK_SCALE * 0.35))
    vert = find_rules(straight, 1, int(reg.table_box[3] * WORK_SCALE * 0.35))
    scales = np.arange(0.94, 1.0601, 0.004)
    # the table's rows repeat every ~79 px, so the header box's rules are added: without them a
    # fit shifted by a few whole rows could match nearly as many rules as the true one
    extra = getattr(reg, "header_horizontal_rules", None) or []
    ty = np.array(sorted({*reg.horizontal_rules, *extra}), float) * WORK_SCALE
    tx = np.array(reg.vertical_rules, float) * WORK_SCALE
    sy, by, ny, ry = fit_axis(ty, horiz, scales)
    sx, bx, nx, rx = fit_axis(tx, vert, scales)
    quality = (ny + nx) / (len(ty) + len(tx))
    # template (full res) -> straightened small -> small -> full res
    a = np.array([[sx, 0, bx], [0, sy, by], [0, 0, 1.0]])
    to_small = np.diag([WORK_SCALE, WORK_SCALE, 1.0])
    rot3 = np.vstack([rot, [0, 0, 1]])
    unrot = np.linalg.inv(rot3)
    full = np.diag([1 / WORK_SCALE, 1 / WORK_SCALE, 1.0])
    page_centre = (template.page.width / 2, template.page.height / 2)
    straighten = np.vstack([cv2.getRotationMatrix2D(page_centre, reg.skew_deg, 1.0), [0, 0, 1]])
    matrix = (full @ unrot @ a @ to_small @ straighten)[:2]
    residual = float(max(ry, rx) / WORK_SCALE)
    ok = ny >= max(4, 0.6 * len(ty)) and nx >= max(3, 0.6 * len(tx)) and residual < 6
    reason = None
    if not ok:
        reason = (f"form not recognised: {ny}/{len(ty)} horizontal and {nx}/{len(tx)} vertical "
                  f"rules of {template.name} found (another form, upside down or not a telegram)")
    return Alignment(ok, matrix, angle, (sx, sy), float(quality), residual, reason)


ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def register_upright(gray: np.ndarray, template: Template) -> tuple[Alignment, np.ndarray]:
    """Register, also trying the scan turned by 90/180/270 degrees when it does not fit as is.

    Returns the alignment and the (possibly turned) image it applies to; a turned scan that
    aligns is read, with a note saying how it was turned.
    """
    portrait_page = template.page.height >= template.page.width
    portrait_scan = gray.shape[0] >= gray.shape[1]
    order = [0, 180, 90, 270] if portrait_page == portrait_scan else [90, 270, 0, 180]
    first: Alignment | None = None
    for turn in order:
        img = gray if turn == 0 else cv2.rotate(gray, ROTATIONS[turn])
        a = register(img, template)
        if a.ok:
            if turn:
                a.notes.append(f"scan was turned {turn} degrees; read after turning it upright")
            return a, img
        if first is None:
            first = a
        if a.reason and a.reason.startswith("blank page"):
            break
    assert first is not None
    return first, gray
