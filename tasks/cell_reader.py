"""Reading images that each hold one handwritten number (a cropped cell), without a form
template: the same segmentation, reframing, model and composition as the telegram pipeline.

Real crops come with scanner margins and ruling lines; these are cleaned first so that only
the writing is left for segmentation.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.compose import CellReading, compose, contenders_of
from tasks.errors import CifrasError
from tasks.inference import predict_proba, second_look
from tasks.reframe import reframe_many
from tasks.segment import Segmentation, hysteresis, segment_cell, speck_area

PAD = 8
DARK = 60  # grey level below which a border-touching region is scanner background
# share of a side of the crop that a scanner margin runs along, at least. A tight crop's dark
# felt-pen digits touching its edge (a cheque's "97") are as dark and as big, but touch it
# along a stroke's width or two: painted white, "97" was read "4". Chosen on ORAND train with
# val watched (531 -> 533 of 1,080, 79 -> 81 of 128); Danish val reads the same.
MARGIN_CONTACT = 0.5


def clean_margins(gray: np.ndarray) -> np.ndarray:
    """Paint black scanner margins (large dark regions along a side of the crop) white."""
    dark = (gray < DARK).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=4)
    h, w = gray.shape
    out = gray.copy()
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if touches and area > 0.02 * h * w:
            region = labels == i
            if _side_contact(region) >= MARGIN_CONTACT:
                out[region] = 255
    return out


def _side_contact(region: np.ndarray) -> float:
    """The largest share of one side of the crop that a region runs along."""
    h, w = region.shape
    return max(np.count_nonzero(region[0]) / w, np.count_nonzero(region[-1]) / w,
               np.count_nonzero(region[:, 0]) / h, np.count_nonzero(region[:, -1]) / h)


INK_CONTRAST = 40  # grey levels under the local paper level from which a pixel is ink
# A thin pen's strokes (a register written with a fine nib, faded) fall under INK_CONTRAST
# where they are thinnest, and break into pieces, of which `_keep` kept only those on the
# line of the biggest: a "5." became its top bar, read as 1. Where the strokes are thin,
# fainter ink (from FAINT_CONTRAST) that joins broken or speck-sized pieces is added, as
# `segment.hysteresis` does in telegram cells. Thick strokes (a cheque's felt pen) are left
# as they are: there the fainter ink joined printed background to the digits. Decided on
# Danish val (numbers right 88.02 -> 89.51 %), with ORAND val watched (56.25 -> 57.03 %; the
# same join without the thin-stroke condition: 89.69 % and 44.53 %); the Danish *train* split,
# not used to decide, went from 74.53 to 79.59 % (docs/models.md, session 13).
FAINT_CONTRAST = 24
THIN_STROKE = 2.5  # px: ink pixels per pixel of the strokes' centre lines


def stroke_width(ink: np.ndarray) -> float:
    """Typical width of the ink's strokes: its pixels per pixel of their centre lines (the
    ridge of the distance to paper). 0 without ink."""
    on = ink > 0
    dist = cv2.distanceTransform(on.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ridge = np.count_nonzero((dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8))) & on)
    return float(np.count_nonzero(on) / ridge) if ridge else 0.0


def _ink_and_lines(gray: np.ndarray, vertical_share: float = 0.4
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local-contrast ink (with faint ink joining thin broken strokes), the long horizontal
    and vertical runs in it (ruling lines; vertical ones from `vertical_share` of the height),
    and the vertical ones alone."""
    h, w = gray.shape
    background = cv2.dilate(cv2.GaussianBlur(gray, (0, 0), 3), np.ones((9, 9), np.uint8))
    contrast = background.astype(np.int16) - gray
    ink = (contrast > INK_CONTRAST).astype(np.uint8) * 255
    if 0 < stroke_width(ink) <= THIN_STROKE:
        pieces, labels = cv2.connectedComponents(ink, connectivity=8)
        faint = (contrast > FAINT_CONTRAST).astype(np.uint8) * 255
        ink = hysteresis(ink, faint, speck_area(h, w), pieces, labels)
    vertical = cv2.morphologyEx(cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((5, 1), np.uint8)),
                                cv2.MORPH_OPEN, np.ones((max(3, int(vertical_share * h)), 1), np.uint8))
    lines = vertical | cv2.morphologyEx(cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((1, 5), np.uint8)),
                                        cv2.MORPH_OPEN, np.ones((1, max(3, int(0.3 * w))), np.uint8))
    return ink, lines, vertical


def writing_fills_crop(gray: np.ndarray, share: float = 0.3) -> bool:
    """A tight crop of a written number (a cheque amount, say): wider than tall, and much of
    its ink, ruling lines aside, in marks at least half its height. keep_writing's size rules
    are relative to the crop, so such a crop is cleaned inside a margin of paper."""
    h, w = gray.shape
    if w < h:
        return False
    ink, lines, _ = _ink_and_lines(gray)
    straight = cv2.morphologyEx(lines, cv2.MORPH_OPEN, np.ones((max(3, int(0.9 * h)), 1), np.uint8))
    straight |= cv2.morphologyEx(lines, cv2.MORPH_OPEN, np.ones((1, max(3, int(0.9 * w))), np.uint8))
    ink &= ~cv2.dilate(straight, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    marks = [(int(stats[i][4]), int(stats[i][3])) for i in range(1, n) if stats[i][4] >= 12]
    total = sum(a for a, _ in marks)
    return total > 0 and sum(a for a, mh in marks if mh >= 0.5 * h) / total > share


def _sliver(stat: np.ndarray, h: int) -> bool:
    """A thin upright piece taller than any digit: what is left of a broken ruling line."""
    return bool(stat[3] > 0.3 * h and stat[2] < 0.15 * stat[3])


UNDERLINE_ANGLES = tuple(range(-15, 16, 5))  # degrees from horizontal
# a stroke this many times the writing's median mark height: longer than a digit's strokes.
# Chosen on Danish val and ORAND val (1.3, 1.0, 0.8, 0.7: Danish 83.06, 83.43, 83.54, 83.54 %;
# ORAND 55.5 % at 1.0, 57.0 % at 0.8; neither set read as is: 82.57 % and 55.47 %)
UNDERLINE_LENGTH = 0.8


@functools.lru_cache(maxsize=256)
def _line_kernel(length: int, angle: float) -> np.ndarray:
    kernel = np.zeros((length, length), np.uint8)
    c = (length - 1) / 2
    dx, dy = c * np.cos(np.deg2rad(angle)), c * np.sin(np.deg2rad(angle))
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1, 1)
    return kernel


def strip_underlines(ink: np.ndarray) -> np.ndarray:
    """Ink without the long, nearly straight strokes under the middle of the writing (an
    underline, a flourish): joined to the digits they make one mark of a number, read as one
    digit. A 7's or a 5's top bar is above the middle, and a digit's own strokes are shorter.
    Returns `ink` itself when it finds none."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    heights = [int(stats[i][3]) for i in range(1, n) if stats[i][4] >= 12]
    if not heights:
        return ink
    length = max(9, int(UNDERLINE_LENGTH * float(np.median(heights))))
    strokes = np.zeros_like(ink)
    for angle in UNDERLINE_ANGLES:
        strokes |= cv2.morphologyEx(ink, cv2.MORPH_OPEN, _line_kernel(length, angle))
    rows = np.flatnonzero(((ink > 0) & (strokes == 0)).any(axis=1))
    if not strokes.any() or len(rows) == 0:
        return ink
    m, labels, sstats, _ = cv2.connectedComponentsWithStats(strokes, connectivity=8)
    low = np.zeros(m, bool)
    low[1:] = sstats[1:, 1] >= np.median(rows)
    return ink & ~(low[labels].astype(np.uint8) * 255) if low.any() else ink


# a thin mark this many writing heights away from the number is not part of it. Chosen on
# Danish val (1.5, 1.0, 0.6, 0.4, 0.25: 84.02, 84.61, 84.98, 84.87, 84.76 % of numbers right,
# 83.54 % keeping them all) and ORAND val (57.03 % at 1.0 and 0.6, 56.25 % at 0.4)
APART = 0.6


def _apart(line: list[int], main: int, stats: np.ndarray) -> list[int]:
    """Thin upright marks (a page edge's shadow, a stroke of the next column) standing apart
    from the number, read as a leading or trailing "1" otherwise: the number grows from its
    main mark by the marks within APART writing heights of it, thin marks beyond are dropped."""
    height = float(stats[main][3])
    x0, x1 = int(stats[main][0]), int(stats[main][0] + stats[main][2])
    rest = sorted((i for i in line if i != main), key=lambda i: stats[i][0])
    grown = True
    while grown:
        grown = False
        for i in list(rest):
            gap = max(int(stats[i][0]) - x1, x0 - int(stats[i][0] + stats[i][2]))
            if gap <= APART * height or stats[i][2] >= 0.35 * stats[i][3]:
                x0, x1 = min(x0, int(stats[i][0])), max(x1, int(stats[i][0] + stats[i][2]))
                rest.remove(i)
                grown = True
    return rest


THIN = 0.15  # width / height of an upright line rather than a written mark


def _keep(gray: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The grey writing of the ink's marks on the main line of writing (not underlines apart,
    flourishes, printed text, stains), stretched so the darkest stroke is black."""
    h = gray.shape[0]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    parts = [i for i in range(1, n) if stats[i][4] >= 12 and stats[i][3] < 0.7 * h
             and not _sliver(stats[i], h)]
    out = np.full_like(gray, 255)
    if not parts:
        return out
    # the number's main mark: the biggest, but not a thin upright line (a piece of a rule or
    # of the page's edge) when the crop holds anything else, which a number written as "1" or
    # "11" never needs: its line of writing keeps the thin marks beside the main one
    shaped = [i for i in parts if stats[i][2] > THIN * stats[i][3]] or parts
    main = max(shaped, key=lambda i: stats[i][4] * min(stats[i][3], 0.5 * h))
    y0, y1 = stats[main][1], stats[main][1] + stats[main][3]
    line = [i for i in parts
            if min(y1, stats[i][1] + stats[i][3]) - max(y0, stats[i][1]) >= 0.4 * min(stats[i][3], y1 - y0)]
    dropped = set(_apart(line, main, stats))
    for i in line:
        if i not in dropped:
            out[labels == i] = gray[labels == i]
    # faint pencil or faded ink: stretch so the darkest stroke is black
    depth = 255 - int(out.min())
    if depth > 0:
        out = (255 - (255 - out.astype(np.float32)) * (255 / depth)).clip(0, 255).astype(np.uint8)
    return out


RULE_BAND = 3  # px either side of a vertical ruling line's column


def drop_rule_fragments(ink: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Ink without the marks that lie wholly in the columns of a vertical ruling line: pieces
    of the line where it breaks, bends or fades, too short to be found as a line. Thin and
    upright, such a piece was taken for the number and read as a "1"."""
    near = cv2.dilate(vertical.any(axis=0).astype(np.uint8)[None, :],
                      np.ones((1, 2 * RULE_BAND + 1), np.uint8)).ravel() > 0
    if not near.any():
        return ink
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    drop = np.zeros(n, bool)
    for i in range(1, n):
        x, _, w, _, _ = stats[i]
        drop[i] = bool(near[x : x + w].all())
    return ink & ~(drop[labels].astype(np.uint8) * 255) if drop.any() else ink


def writing_versions(gray: np.ndarray, without_underlines: bool = False,
                     vertical_share: float = 0.4) -> list[np.ndarray]:
    """The handwritten number alone: local-contrast ink minus long ruling lines and their
    fragments, then `_keep`. With `without_underlines`, also the same without the strokes
    `strip_underlines` finds, when it finds any (one version otherwise)."""
    ink, lines, vertical = _ink_and_lines(gray, vertical_share)
    ink &= ~cv2.dilate(lines, np.ones((3, 3), np.uint8))
    ink = drop_rule_fragments(ink, vertical)
    versions = [_keep(gray, ink)]
    if without_underlines:
        stripped = strip_underlines(ink)
        if stripped is not ink:
            versions.append(_keep(gray, stripped))
    return versions


def keep_writing(gray: np.ndarray) -> np.ndarray:
    """Keep only the handwritten number (`writing_versions`, as it is)."""
    return writing_versions(gray)[0]


SHEARS = np.linspace(-0.8, 0.8, 17)  # horizontal shear per unit of height to try
# share of the measured slant the cuts between touching digits follow: the projection
# overestimates it on short numbers. Chosen on the Danish validation rows (0, 0.5, 0.65, 0.8, 1:
# 79.5, 80.5, 80.65, 80.6, 80.2 % of numbers right)
SLANT_SHARE = 0.65


# In a tight crop (`writing_fills_crop`), cleaned inside a margin of paper as tall as the crop
# (so twice its height in all): a vertical ruling line there crosses the whole crop, a "1" seldom
# does. At 0.4 of the padded height (0.8 of the crop's), a cheque's tall "1"s were taken for
# lines and removed: "10.000" was read "00000". Chosen on ORAND train with val watched (with
# MARGIN_CONTACT: 533 -> 550 of 1,080, 81 -> 83 of 128; 1.0, no vertical lines at all: 550,
# 82); Danish rows are never tight crops.
TIGHT_VERTICAL = 0.5
# log-probability cost of each extra digit when a blob of a tight crop is read as touching
# digits, beyond compose.SPLIT_PENALTY: a cheque's broad digits, written big, have wide loops
# whose halves read well on their own ("0" as "07"). Chosen on ORAND train with val watched
# (0, 0.1, 0.25, 0.4, 0.7: 550, 554, 561, 557, 538 of 1,080; 83, 84, 83, 82, 78 of 128).
TIGHT_SPLIT_COST = 0.25


# other cuts of a blob of two touching digits to offer the model (segment.segment_cell). Small
# slanted handwriting joins its digits where no single column is clearly the shortest: "30"
# was cut through its 3 and read "0". Only here: the telegram path reads exactly as before,
# at the speed issue #7 measures. Chosen on Danish val (ORAND val watched): 1 alternative
# 2,435 rows right, 2: 2,432, 3: 2,431, none: 2,426 (docs/models.md, session 14)
ALTERNATIVE_CUTS = 1
# and two neighbouring marks as one digit (segment.MERGE_WIDTH says which, and why), and a short
# last mark as punctuation (segment.TRAIL_SHORT): only here
MERGE_PIECES = True
OPTIONAL_END = True


def slant_of(clean: np.ndarray, shears: np.ndarray = SHEARS) -> float:
    """The shear that makes the writing most upright: the one whose vertical projection of the
    ink is sharpest (largest sum of squared column sums)."""
    ink = (255 - clean.astype(np.float32)) / 255
    ys, xs = np.nonzero(ink > 0.3)
    if len(xs) < 20:
        return 0.0
    w = ink[ys, xs]
    yc = float(np.average(ys, weights=w))
    best, best_score = 0.0, -1.0
    for s in shears:
        cols = np.round(xs + s * (ys - yc)).astype(np.int64)
        cols -= cols.min()
        score = float((np.bincount(cols, weights=w) ** 2).sum())
        if score > best_score * (1 + 1e-9):
            best, best_score = float(s), score
    return best


def prepare_cell_versions(gray: np.ndarray, max_digits: int, without_underlines: bool = False
                          ) -> list[Segmentation]:
    """Segmentations of one cell image (grey, dark ink on light paper): of its writing, and
    with `without_underlines` also of its writing without underlines, when it has some."""
    gray = clean_margins(gray)
    tight = writing_fills_crop(gray)
    if tight:
        pad = gray.shape[0] // 2
        paper = int(np.percentile(gray, 90))
        roomy = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=paper)
        versions = [v[pad:-pad, pad:-pad]
                    for v in writing_versions(roomy, without_underlines, TIGHT_VERTICAL)]
    else:
        versions = writing_versions(gray, without_underlines)
    segs = []
    for clean in versions:
        framed = cv2.copyMakeBorder(clean, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
        framed[:PAD], framed[-PAD:], framed[:, :PAD], framed[:, -PAD:] = 255, 255, 255, 255
        seg = segment_cell(framed, PAD, max_digits, shear=SLANT_SHARE * slant_of(clean),
                           alternative_cuts=ALTERNATIVE_CUTS, merge_pieces=MERGE_PIECES,
                           optional_end=OPTIONAL_END)
        if tight:
            _charge_splits(seg, TIGHT_SPLIT_COST)
        segs.append(seg)
    return segs


def _charge_splits(seg: Segmentation, cost: float) -> None:
    """Add `cost` per extra digit to every reading of a blob as touching digits."""
    for hypotheses in seg.groups:
        for h in hypotheses:
            extra = seg.extra_digits(h)
            if extra:
                seg.costs[tuple(h)] = seg.costs.get(tuple(h), 0.0) + cost * extra


def prepare_cell(gray: np.ndarray, max_digits: int) -> Segmentation:
    """Segmentation of one cell image's writing, as it is."""
    return prepare_cell_versions(gray, max_digits)[0]


@dataclass(frozen=True)
class LabelledCell:
    file: str
    label: int


def read_label_csv(text: str, split: str | None = None) -> tuple[list[LabelledCell], int]:
    """(cells with plain-number labels, how many rows were skipped as not plain numbers)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and ("file" not in rows[0] or "label" not in rows[0]):
        raise ValueError("labels CSV needs the columns file,label")
    out, skipped = [], 0
    for r in rows:
        if split is not None and r.get("split") not in (None, split):
            continue
        label = r["label"].strip()
        if not label.isdigit():
            skipped += 1
            continue
        out.append(LabelledCell(r["file"], int(label)))
    return out, skipped


def read_label_file(path: Path, split: str | None = None) -> tuple[list[LabelledCell], int]:
    """read_label_csv on a file, with one clear error for the user when it is not usable."""
    if not path.is_file():
        raise CifrasError(f"labels file {path} not found")
    try:
        return read_label_csv(path.read_text(encoding="utf-8-sig"), split)
    except ValueError as exc:
        raise CifrasError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class KeptReading:
    """The version of a cell the reader keeps: its segmentation, its digits' model inputs and
    probabilities, and its reading."""

    seg: Segmentation
    inputs: np.ndarray  # (n, 28, 28, 1)
    probs: np.ndarray  # (n, 10)
    reading: CellReading


def read_cell_versions(images: list[np.ndarray | None], model, max_digits: int, ok_threshold: float,
                       reframe: str = "mnist", batch_size: int = 2048, look_again: float = 0.0,
                       look_margin: float | None = None) -> list[KeptReading | None]:
    """Read many cell images with one batched inference. Each cell is read twice, as it is and
    without its underlines, and the likelier reading is kept: the model decides whether a long
    low stroke was part of a digit (as between one digit and several touching ones).
    Outside the form a lone dash goes to review (see `compose`). None for a missing image."""
    versions = [prepare_cell_versions(img, max_digits, without_underlines=True) if img is not None
                else [] for img in images]
    segs = [s for v in versions for s in v]
    digits = [d for s in segs for d in s.digits]
    x = reframe_many(digits, reframe, ink="bright")  # type: ignore[arg-type]
    probs = predict_proba(model, x, batch_size) if len(x) else np.zeros((0, 10), np.float32)
    among = None
    if look_again > 0 and look_margin is not None and len(x):
        among = contenders_of(segs, probs.max(axis=1), look_margin)
    probs = second_look(model, x, probs, look_again, batch_size, among)
    read, offset = [], 0
    for s in segs:
        mine = slice(offset, offset + len(s.digits))
        offset = mine.stop
        reading = compose(s, probs[mine], max_digits, ok_threshold, dash_is_zero=False)
        read.append(KeptReading(s, x[mine], probs[mine], reading))
    out: list[KeptReading | None] = []
    start = 0
    for v in versions:
        mine = read[start : start + len(v)]
        start += len(v)
        out.append(mine[likelier([r.reading for r in mine])] if mine else None)
    return out


def read_cells(images: list[np.ndarray], model, max_digits: int, ok_threshold: float,
               reframe: str = "mnist", batch_size: int = 2048, look_again: float = 0.0,
               look_margin: float | None = None) -> list[CellReading]:
    """The kept reading of each cell image (`read_cell_versions`)."""
    kept = read_cell_versions(images, model, max_digits, ok_threshold, reframe, batch_size, look_again,
                              look_margin)
    return [k.reading for k in kept if k is not None]


def likelier(readings: list[CellReading]) -> int:
    """Which reading of a cell's versions to keep: the model's most confident one, as it is
    when they tie. A dash or a blank has confidence 1 by rule, not by the model, so it wins
    only when no version reads digits: in a tall crop a number whose underline joins it is
    a flat mark, a "dash", that would otherwise beat the same number read without the line."""
    read = [i for i, r in enumerate(readings) if r.digits.isdigit()]
    return max(read or range(len(readings)), key=lambda i: readings[i].confidence)


def misread_cells(readings: list[CellReading], cells: list[LabelledCell]) -> list[dict]:
    """The cells read wrong, wrong-and-ok first (the errors an operator would not see), then
    by confidence: what a developer opens first after an evaluation."""
    rows = [{"file": c.file, "label": c.label, "read": r.digits, "value": r.value, "status": r.status,
             "confidence": round(float(r.confidence), 4), "reason": r.reason}
            for r, c in zip(readings, cells, strict=True) if r.value != c.label]
    return sorted(rows, key=lambda row: (row["status"] != "ok", -row["confidence"]))


def score_numbers(readings: list[CellReading], labels: list[int]) -> dict:
    """The evaluate-cells report: exact-number accuracy overall and by length, review share,
    accuracy among the cells marked ok."""
    right = [r.value == y for r, y in zip(readings, labels, strict=True)]
    by_len: dict[str, list[bool]] = {}
    for ok, y in zip(right, labels, strict=True):
        by_len.setdefault(str(len(str(y))), []).append(ok)
    ok_cells = [ok for ok, r in zip(right, readings, strict=True) if r.status == "ok"]
    n = len(labels)
    return {
        "n": n,
        "number_accuracy": float(np.mean(right)) if n else None,
        "by_length": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(by_len.items())},
        "review": float(np.mean([r.status != "ok" for r in readings])) if n else None,
        "accuracy_when_ok": float(np.mean(ok_cells)) if ok_cells else None,
    }
