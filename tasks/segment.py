"""Cropping template cells out of a registered scan, and segmenting each cell into digits.

Pure functions on grey images (dark ink on light paper). A cell crop includes a small pad
around the template box so that digits crossing the printed rules are not cut; the rules
themselves are removed before digits are looked for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np

from tasks.morphology import open_columns, open_rows
from tasks.template import Box

MIN_CONTRAST = 60  # grey levels between paper and the darkest ink for a cell to hold ink
SCRIBBLE_SHARE = 0.30  # ink over this share of the cell: scribbled over, not digits
MIN_PAIR_RATIO = 0.9  # a blob narrower than this (width / height) holds one digit
NARROWEST_DIGIT = 0.4  # width / height of the narrowest digit but a "1", to bound the count
# ink strength (0-1 of the cell's paper-to-darkest range) from which a pixel is ink: low enough
# to keep a faint or thin side of a loop. Chosen on the validation telegrams (0.45, 0.35, 0.25:
# 82.7, 84.7, 84.0 % of numbers right) and Danish val (80.6, 81.8, 82.0 %)
INK_LEVEL = 0.35
# fainter ink (from this strength) is added where it joins strong ink that is broken or only
# speck-sized: a thin, light "1" otherwise breaks into specks that are dropped ("14." read as
# 4). Digits whose strokes are whole keep their strong ink alone (no faint halo). Swept on the
# validation telegrams (numbers right: off 86.05 %, 0.3 86.89, 0.25 87.15, 0.2 87.58, 0.15
# 88.35, 0.1 88.00) and Danish val (87.65 % off, 87.91-88.02 % on); 0.15 and 0.1 broke the one
# real scan (a dash read as 75, 11 cells to review), 0.2 kept it whole, and 0.25 leaves a margin
# from there. With the join limited to the ink's box: 87.10 %, ok cells 99.66 % right. None: off
INK_JOIN: float | None = 0.25
JOIN_MARGIN = 4  # px around the strong ink where faint ink may join it


def crop_cell(gray: np.ndarray, matrix: np.ndarray, box: Box, pad: int) -> np.ndarray:
    """The template box (plus `pad` px around it) resampled from the scan, upright."""
    x, y, w, h = box
    shift = np.array([[1, 0, x - pad], [0, 1, y - pad], [0, 0, 1]], np.float64)
    m = (np.vstack([matrix, [0, 0, 1]]) @ shift)[:2]
    return cv2.warpAffine(
        gray, m, (w + 2 * pad, h + 2 * pad),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=255,
    )


@dataclass
class Segmentation:
    kind: str  # "digits", "dash", "empty" or "unreadable"
    # every candidate digit image (ink-bright float) and its box in crop coordinates
    digits: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    # per blob, left to right: its hypotheses (one digit, or 2..k touching digits), each a
    # list of indices into `digits`
    groups: list[list[list[int]]] = field(default_factory=list)
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    # log-probability cost of a hypothesis (keyed by its digit indices) beyond the split penalty
    costs: dict[tuple[int, ...], float] = field(default_factory=dict)
    # hypotheses that read two neighbouring marks apart (`merge_pieces`): their second mark is
    # no split, so it pays no split penalty
    apart: set[tuple[int, ...]] = field(default_factory=set)

    def extra_digits(self, h: list[int]) -> int:
        """How many more digits than marks a hypothesis reads: what a split penalty is for."""
        return max(0, len(h) - 1 - (1 if self.apart and tuple(h) in self.apart else 0))


def percentile_u8(img: np.ndarray, q: float) -> float:
    """`np.percentile(img.astype(np.float32), q)` for an 8-bit image, from its histogram: the
    same value (NumPy's linear interpolation between order statistics, in float32) without
    sorting, which took a fifth of a cell's segmentation."""
    if img.dtype != np.uint8 or img.size == 0:
        return float(np.percentile(img.astype(np.float32), q))
    cum = np.cumsum(cv2.calcHist([img], [0], None, [256], [0, 256]).ravel())
    n, share = int(cum[-1]), q / 100
    rank = n * share + (1 + share * -1) - 1  # NumPy's virtual index, in its order of operations
    lo = int(np.floor(rank))
    # the values at sorted positions lo and lo + 1: the first levels with more pixels at or below
    a, b = (np.float32(np.searchsorted(cum, k, side="right")) for k in (lo, min(lo + 1, n - 1)))
    t = rank - lo  # a Python float, which NumPy casts to float32 wherever it meets a or b
    return float(a + (b - a) * np.float32(t) if t < 0.5 else b - (b - a) * np.float32(1 - t))


def ink_levels(cell: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The ink strength (0-1, relative to this cell's paper level) of each of the 256 grey
    levels of an 8-bit cell, and the cell's contrast; no table when it has no contrast.
    Strength depends on the grey level alone, so the table gives the per-pixel arithmetic
    exactly, at the cost of a lookup and only where it is needed (the digits' boxes)."""
    paper = percentile_u8(cell, 90)
    # the darkest stroke, after a blur so that a lone dark pixel does not count as ink
    dark = float(cv2.blur(cell, (3, 3)).min())
    contrast = paper - dark
    if contrast <= 0:
        return None, 0.0
    grey = np.arange(256, dtype=np.float32)
    return np.clip((paper - grey) / max(contrast, MIN_CONTRAST), 0, 1), contrast


def speck_area(h: int, w: int) -> int:
    """Pixels under which a piece of ink in an h x w cell is a speck: 0.12 % of the cell, at
    least 10."""
    return max(10, int(0.0012 * h * w))


def hysteresis(strong: np.ndarray, weak: np.ndarray, speck: int, ns: int, pieces: np.ndarray
                ) -> np.ndarray:
    """`strong`, where a weak component holds only broken or speck-sized strong ink replaced
    by that whole weak component; elsewhere the strong ink alone (no faint halo is added to
    a digit whose strokes are whole). `pieces` labels strong's `ns` components; `weak` must
    hold all of strong."""
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    if n <= 1:
        return strong
    on = strong > 0
    weak_of = labels[on]
    # a strong component lies within one weak component (strong ink is weak ink too): the weak
    # label of any of its pixels is the one
    home = np.zeros(ns, np.int32)
    home[pieces[on]] = weak_of
    count = np.bincount(home[1:], minlength=n)  # strong components in each weak one
    held = np.bincount(weak_of, minlength=n)  # and their pixels
    grow = (count >= 2) | ((held > 0) & (held < speck))
    grow[0] = False
    if not grow.any():
        return strong
    return np.where(grow[labels], np.uint8(255), strong)


def rule_lines(binary: np.ndarray, pad: int, subbox_edges: list[int]) -> np.ndarray:
    """The printed rules, to erase: long horizontal lines, full-height vertical lines, and the
    dotted separators of printed sub-boxes (at known x positions, crop coordinates)."""
    h, w = binary.shape
    # close small gaps first: on dithered or fax scans a printed rule is a row of dots
    lines = open_rows(cv2.morphologyEx(binary, cv2.MORPH_CLOSE, ROW_GAP), _long_row(w, pad))
    lines |= open_columns(cv2.morphologyEx(binary, cv2.MORPH_CLOSE, COLUMN_GAP), _long_column(h, pad))
    if subbox_edges:
        lines |= _dotted(binary, pad, subbox_edges)
    return cv2.dilate(lines, DILATE_3)


ROW_GAP = np.ones((1, 7), np.uint8)
COLUMN_GAP = np.ones((7, 1), np.uint8)
DILATE_3 = np.ones((3, 3), np.uint8)
DOT_GAP = np.ones((9, 1), np.uint8)  # the gaps of a dotted sub-box separator
BESIDE = np.ones((1, 3), np.uint8)


def _long_row(w: int, pad: int) -> int:
    return max(3, int(0.45 * (w - 2 * pad)))


def _long_column(h: int, pad: int) -> int:
    return max(3, int(0.85 * (h - 2 * pad)))


def _dotted(binary: np.ndarray, pad: int, subbox_edges: list[int]) -> np.ndarray:
    """The dotted separators of printed sub-boxes, near their known x positions."""
    h = binary.shape[0]
    closed = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, DOT_GAP)
    dotted = cv2.morphologyEx(closed, cv2.MORPH_OPEN, cv2.getStructuringElement(
        cv2.MORPH_RECT, (1, max(3, int(0.6 * (h - 2 * pad))))))
    band = np.zeros_like(binary)
    for x in subbox_edges:
        band[:, max(0, x - 5) : x + 6] = 255
    return dotted & band & cv2.dilate(binary, BESIDE)


def rule_lines_many(binaries: list[np.ndarray], pad: int, subbox_edges: list[list[int]]
                    ) -> list[np.ndarray]:
    """`rule_lines` of many crops, exactly, in a few OpenCV calls. Each filter acts along rows
    alone or along columns alone, with the crop's own length and borders: so crops of one
    width are stacked one above the other for the row filters, crops of one height side by
    side for the column filters, and the last 3 x 3 dilation runs on all of them at once,
    apart by blank rows (a dilation adds nothing from blank pixels, as from the border)."""
    lines = [np.zeros_like(b) for b in binaries]
    for along, gap, length, opening in ((1, ROW_GAP, _long_row, open_rows),
                                        (0, COLUMN_GAP, _long_column, open_columns)):
        across = 1 - along  # rows: crops of one width stacked; columns: of one height side by side
        for size, group in _by(binaries, along).items():
            stack = np.concatenate([binaries[i] for i in group], axis=across)
            found = opening(cv2.morphologyEx(stack, cv2.MORPH_CLOSE, gap), length(size, pad))
            cuts = np.cumsum([binaries[i].shape[across] for i in group])[:-1]
            for i, part in zip(group, np.split(found, cuts, axis=across), strict=True):
                lines[i] |= part
    for i, edges in enumerate(subbox_edges):
        if edges:
            lines[i] |= _dotted(binaries[i], pad, edges)
    return _dilate_each(lines)


def _by(images: list[np.ndarray], axis: int) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape[axis], []).append(i)
    return groups


def _dilate_each(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask dilated by 3 x 3, in one call over a mosaic of them."""
    if not masks:
        return []
    width = max(m.shape[1] for m in masks)
    tops = np.cumsum([0, *(m.shape[0] + 2 for m in masks)])
    mosaic = np.zeros((int(tops[-1]), width), np.uint8)
    for top, m in zip(tops, masks, strict=False):
        mosaic[top : top + m.shape[0], : m.shape[1]] = m
    grown = cv2.dilate(mosaic, DILATE_3)
    return [grown[top : top + m.shape[0], : m.shape[1]] for top, m in zip(tops, masks, strict=False)]


def _merge_groups(stats: list[tuple[int, int, int, int, int, int]]) -> list[list[int]]:
    """Group the pieces of one digit that broke apart (a 5's flag above its body, a gap in a
    stroke), but not two digits side by side that a slant makes overlap a little ("18")."""
    order = sorted(range(len(stats)), key=lambda i: stats[i][0])
    groups: list[list[int]] = []
    spans: list[list[int]] = []  # x0, x1, y0, y1 of each group
    for i in order:
        x, y, w, h, _, _ = stats[i]
        if spans:
            gx0, gx1, gy0, gy1 = spans[-1]
            ox = min(gx1, x + w) - max(gx0, x)
            oy = min(gy1, y + h) - max(gy0, y)
            narrow, short = min(w, gx1 - gx0), min(h, gy1 - gy0)
            # one above the other: a 5's flag, or the halves of a slanted stroke with a gap
            stacked = oy < 0.25 * short and ox >= min(-2.0, -0.1 * short)
            inside = ox >= 0.8 * narrow  # one within the other's columns
            fragment = ox > -2 and w < 0.25 * (gx1 - gx0) and h < 0.5 * (gy1 - gy0)
            if stacked or inside or fragment:
                groups[-1].append(i)
                spans[-1] = [min(gx0, x), max(gx1, x + w), min(gy0, y), max(gy1, y + h)]
                continue
        groups.append([i])
        spans.append([x, x + w, y, y + h])
    return groups


# log-probability cost of reading a blob cut in two at another short column than its shortest
# (`_split_touching`'s alternatives): the model may prefer it, when its pieces read clearly
# better. Chosen on Danish val with one alternative (costs 0, 0.1, 0.2, 0.3, 0.5, 1: 2,436,
# 2,435, 2,435, 2,433, 2,433, 2,426 rows right against 2,426 without; ORAND val 75, 78, 79,
# 79, 79, 78 strings against 77); docs/models.md, session 14
ALTERNATIVE_CUT_COST = 0.2


def _split_touching(mask: np.ndarray, parts: int, shear: float = 0.0, alternatives: int = 0
                    ) -> list[list[np.ndarray]]:
    """Cut a blob of several touching digits where the ink is shortest (its vertical extent is
    small where two digits join, even when the join itself is thick) near the even splits.
    With a `shear` (the writing's slant, x shift per unit of height), the cuts follow the
    slant: slanted digits overlap in every upright column. With `alternatives`, a blob cut in
    two is also cut at up to that many other short columns: ways to read it for the model to
    choose among. Returns each way's pieces, the shortest cut first."""
    if shear:
        h, w = mask.shape
        extra = int(np.ceil(abs(shear) * h / 2)) + 1
        m = np.array([[1, shear, extra - shear * h / 2], [0, 1, 0]], np.float32)
        upright = cv2.warpAffine(mask.astype(np.uint8), m, (w + 2 * extra, h), flags=cv2.INTER_NEAREST)
        cols = np.flatnonzero(upright.any(axis=0))
        if len(cols) == 0:
            return [[mask]]
        x0 = int(cols[0])
        ways = []
        for pieces in _split_touching(upright[:, x0 : cols[-1] + 1], parts, 0.0, alternatives):
            out = []
            for piece in pieces:
                full = np.zeros_like(upright)
                full[:, x0 : x0 + piece.shape[1]] = piece
                back = cv2.warpAffine(full, m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
                out.append(np.where(back > 0, mask, 0).astype(mask.dtype))
            ways.append(out)
        return ways
    h, w = mask.shape
    rows = np.arange(h)[:, None]
    present = mask > 0
    top = np.where(present, rows, h).min(axis=0)
    bottom = np.where(present, rows, -1).max(axis=0)
    extent = np.clip(bottom - top + 1, 0, None).astype(np.float64)
    cols = extent + 0.25 * present.sum(axis=0)
    cuts = [0]
    others: list[int] = []
    for k in range(1, parts):
        centre = k * w / parts
        # wide search: a "1" joined to the next digit is much narrower than an even share
        lo, hi = int(centre - 0.7 * w / parts), int(centre + 0.7 * w / parts) + 1
        # no piece narrower than 0.3 of the height: the cheapest column is often a lead-in
        # stroke at the blob's edge, which left a sliver and one digit holding two. Chosen on
        # the validation telegrams (85.2 -> 85.5 %) and Danish val (82.3 -> 82.8 %); ORAND
        # val lost 4 of 128 strings
        edge = max(2, int(0.3 * h))
        lo, hi = max(lo, cuts[-1] + edge), min(hi, w - edge)
        cuts.append(lo + int(np.argmin(cols[lo:hi])) if hi > lo else int(centre))
        if parts == 2 and alternatives and hi - lo > 2:
            window = cols[lo:hi]
            # columns no longer than either neighbour, shortest first, 3 px or more from the cuts
            # already taken: the far end of the same flat join counts (the valley's first column
            # alone read 2,429 Danish val rows right, against 2,435)
            inner = np.flatnonzero((window[1:-1] <= window[:-2]) & (window[1:-1] <= window[2:])) + 1
            for i in inner[np.argsort(window[inner], kind="stable")]:
                x = lo + int(i)
                if all(abs(x - c) > 2 for c in [cuts[-1], *others]):
                    others.append(x)
                    if len(others) == alternatives:
                        break
    cuts.append(w)
    ways = []
    for cut in [cuts, *([0, x, w] for x in others)]:
        out = []
        for a, b in itertools.pairwise(cut):
            piece = np.zeros_like(mask)
            piece[:, a:b] = mask[:, a:b]
            out.append(piece)
        ways.append(out)
    return ways


@dataclass
class _Ink:
    cell: np.ndarray  # 8-bit grey
    levels: np.ndarray  # ink strength of each grey level (ink_levels)
    binary: np.ndarray  # ink at INK_LEVEL, 0/255


def _ink(cell: np.ndarray, pad: int) -> _Ink | Segmentation:
    """A cell's ink, or its verdict when there is none to segment (empty, scribbled over)."""
    if cell.dtype != np.uint8:  # crops are 8-bit grey; anything else is brought to it
        cell = np.clip(np.round(cell), 0, 255).astype(np.uint8)
    levels, contrast = ink_levels(cell)
    h, w = cell.shape
    if levels is None or contrast < MIN_CONTRAST:
        return Segmentation("empty", reason="no ink in the cell")
    binary = cv2.LUT(cell, np.where(levels > INK_LEVEL, 255, 0).astype(np.uint8))
    core = binary[pad : h - pad, pad : w - pad]
    core_share = cv2.countNonZero(core) / core.size if core.size else float("nan")
    if core_share > SCRIBBLE_SHARE:
        return Segmentation("unreadable", reason=f"scribbled over: ink covers {core_share:.0%} of the cell")
    return _Ink(cell, levels, binary)


def segment_cell(cell: np.ndarray, pad: int, max_digits: int, subbox_edges: list[int] | None = None,
                 shear: float = 0.0, alternative_cuts: int = 0, merge_pieces: bool = False,
                 optional_end: bool = False) -> Segmentation:
    """Find the handwritten digits in one cell crop: empty, a dash, digits, or unreadable. With
    `alternative_cuts`, a blob of two touching digits is also cut at that many other short
    columns (at ALTERNATIVE_CUT_COST each); with `merge_pieces`, two neighbouring marks that
    fit in one digit's width are also read as one (at MERGE_COST); with `optional_end`, a short
    last mark may also be read as no digit (at TRAIL_COST). The model chooses."""
    ink = _ink(cell, pad)
    if isinstance(ink, Segmentation):
        return ink
    return _segment_ink(ink, rule_lines(ink.binary, pad, subbox_edges or []), pad, max_digits,
                        subbox_edges, shear, alternative_cuts, merge_pieces, optional_end)


def segment_cells(cells: list[np.ndarray], pad: int, max_digits: list[int],
                  subbox_edges: list[list[int]]) -> list[Segmentation]:
    """`segment_cell` of each crop (no shear), with the rules of all found at once
    (`rule_lines_many`): the same segmentations, a tenth faster (OpenCV's per-call costs
    weigh on crops this small)."""
    inks = [_ink(c, pad) for c in cells]
    live = [(i, ink) for i, ink in enumerate(inks) if isinstance(ink, _Ink)]
    lines = rule_lines_many([ink.binary for _, ink in live], pad, [subbox_edges[i] for i, _ in live])
    done = {i: _segment_ink(ink, ln, pad, max_digits[i], subbox_edges[i], 0.0)
            for (i, ink), ln in zip(live, lines, strict=True)}
    return [done[i] if isinstance(ink, _Ink) else ink for i, ink in enumerate(inks)]


def _segment_ink(ink: _Ink, lines: np.ndarray, pad: int, max_digits: int,
                 subbox_edges: list[int] | None, shear: float, alternative_cuts: int = 0,
                 merge_pieces: bool = False, optional_end: bool = False) -> Segmentation:
    """The rest of `segment_cell`, once the cell's ink and its printed rules are known."""
    cell, levels, binary = ink.cell, ink.levels, ink.binary
    h, w = cell.shape
    core_h, core_w = h - 2 * pad, w - 2 * pad
    binary &= ~lines
    # components of the ink's box only (the same labels, in the same raster order): the rules
    # are gone, so the box is a fraction of the crop, and OpenCV's statistics cost as much per
    # pixel as the labelling. With INK_JOIN, a margin around it where faint ink may join.
    bx, by, ink_w, ink_h = cv2.boundingRect(binary)
    if ink_w == 0:
        return Segmentation("empty", reason="no ink in the cell")
    margin = JOIN_MARGIN if INK_JOIN is not None else 0
    ox, oy = max(0, bx - margin), max(0, by - margin)
    ex, ey = min(w, bx + ink_w + margin), min(h, by + ink_h + margin)
    box = binary[oy:ey, ox:ex]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
    speck = speck_area(core_h, core_w)
    if INK_JOIN is not None:
        weak = cv2.LUT(cell[oy:ey, ox:ex], np.where(levels > INK_JOIN, 255, 0).astype(np.uint8))
        grown = hysteresis(box, weak & ~lines[oy:ey, ox:ex], speck, n, labels)
        if grown is not box:
            n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    stats[:, 0] += ox
    stats[:, 1] += oy
    rows = stats.tolist()  # Python ints: the loops below index them one by one
    inside = []
    for i in range(1, n):
        x, y, bw, bh, _ = rows[i]
        cx, cy = x + bw / 2, y + bh / 2
        if pad - 2 <= cx <= w - pad + 2 and pad - 2 <= cy <= h - pad + 2:
            inside.append(i)  # the rest belongs to the neighbouring cell or the rule
    # a speck is small for the cell and short for the writing: in a tall crop with small
    # writing (a register row), a thin "1" is shorter than a quarter of the crop. Half the
    # writing's height was chosen on the Danish validation rows (+0.5 points); at least 8 px,
    # so that a cell of nothing but dust stays empty
    writing_h = max([8, *(int(rows[i][3]) for i in inside)])
    keep = [i for i in inside
            if not (rows[i][4] < speck and rows[i][3] < min(0.25 * core_h, 0.5 * writing_h))]
    if not keep:
        return Segmentation("empty", reason="no ink in the cell")
    if subbox_edges:
        # printed sub-boxes hold one digit each: group the marks by the box they sit in
        bounds = [pad, *subbox_edges, w - pad]
        slots: dict[int, list[int]] = {}
        for j, i in enumerate(keep):
            cx = rows[i][0] + rows[i][2] / 2
            slot = int(np.searchsorted(bounds, cx)) - 1
            slots.setdefault(slot, []).append(j)
        groups = [slots[k] for k in sorted(slots)]
    else:
        groups = _merge_groups([(*rows[i], i) for i in keep])  # type: ignore[misc]
    boxes_masks = []
    chosen = np.zeros(n, bool)  # a lookup table over labels: np.isin's mask, faster
    for g in groups:
        ids = [keep[j] for j in g]
        chosen[:] = False
        chosen[ids] = True
        # the group's box is the union of its components' boxes; its mask, within that box
        x0, y0 = (int(min(rows[i][k] for i in ids)) for k in (0, 1))
        x1, y1 = (int(max(rows[i][k] + rows[i][k + 2] for i in ids)) for k in (0, 1))
        boxes_masks.append(((x0, y0, x1 - x0, y1 - y0), chosen[labels[y0 - oy : y1 - oy, x0 - ox : x1 - ox]]))
    heights = sorted(b[3] for b, _ in boxes_masks)
    tallest = heights[-1]
    # a dash: flat single strokes only, much wider than tall (a 0 or "none" written as "-")
    if all(b[3] < 0.3 * core_h and b[2] > 1.8 * b[3] and one_stroke(m) for b, m in boxes_masks):
        return Segmentation("dash", reason=None)
    seg = Segmentation("digits")
    marks = []
    for (bx, by, bw, bh), sub in boxes_masks:
        if bh < 0.3 * tallest and bw < 0.3 * tallest:
            seg.notes.append("dropped a small mark (dot or comma)")
            continue
        if bh < 0.3 * tallest and bw > 1.5 * bh:
            # a cheque's "1500 -", a stroke through a ditto: no digit is this flat. On the
            # validation telegrams +1.1 points of numbers right, ORAND val +2.3, Danish val -0.05
            seg.notes.append("dropped a flat mark (a dash beside the digits)")
            continue
        marks.append(((bx, by, bw, bh), sub))
    units = (_neighbour_pairs([b for b, _ in marks], tallest) if merge_pieces and not subbox_edges
             else [(k,) for k in range(len(marks))])
    for unit in units:
        ways = [w for w in (_mark_hypotheses(seg, cell, levels, *marks[k], tallest, max_digits,
                                             bool(subbox_edges), shear, alternative_cuts)
                            for k in unit) if w]
        if len(ways) == 2:
            hypotheses = []
            for a in ways[0]:
                for b in ways[1]:
                    both = (*a, *b)
                    seg.apart.add(both)
                    cost = seg.costs.get(tuple(a), 0.0) + seg.costs.get(tuple(b), 0.0)
                    if cost:
                        seg.costs[both] = cost
                    hypotheses.append(list(both))
            whole = _add_merged(seg, cell, levels, [marks[k] for k in unit])
            if whole is not None:
                hypotheses.insert(0, whole)
                seg.costs[tuple(whole)] = MERGE_COST
            seg.groups.append(hypotheses)
        elif ways:
            if (optional_end and len(unit) == 1 and unit == units[-1] and len(marks) > 1
                    and marks[unit[0]][0][3] < TRAIL_SHORT * tallest):
                ways[0].append([])  # not a digit at all: read without it
                seg.costs[()] = TRAIL_COST
            seg.groups.append(ways[0])
    if not seg.digits:
        return Segmentation("empty", reason="only specks in the cell")
    return seg


def _mark_hypotheses(seg: Segmentation, cell: np.ndarray, levels: np.ndarray,
                     box: tuple[int, int, int, int], sub: np.ndarray, tallest: int, max_digits: int,
                     in_subbox: bool, shear: float, alternative_cuts: int) -> list[list[int]]:
    """The ways to read one mark (whole, or cut into touching digits): their digit images are
    added to `seg`, and the ways returned as lists of digit indices."""
    bx, by, bw, bh = box
    hypotheses = []
    ways = [(parts, rank, pieces)
            for parts in candidate_splits(bw, bh, tallest, max_digits, in_subbox)
            for rank, pieces in enumerate(
                _split_touching(sub, parts, shear, alternative_cuts) if parts > 1 else [[sub]])]
    for parts, rank, pieces in ways:
        idx = []
        for piece in pieces:
            x0, y0, pw, ph = cv2.boundingRect(piece.view(np.uint8))  # of its ink
            if pw == 0 or (parts > 1 and ph < FLAT_PIECE * bh and pw > 1.5 * ph):
                continue  # nothing, or a flat end of a cut: a tail or a joining stroke
            x1, y1 = x0 + pw, y0 + ph
            region = levels[cell[by + y0 : by + y1, bx + x0 : bx + x1]] * piece[y0:y1, x0:x1]
            idx.append(len(seg.digits))
            seg.digits.append(region.astype(np.float32))
            seg.boxes.append((int(bx + x0), int(by + y0), int(x1 - x0), int(y1 - y0)))
        if idx:
            hypotheses.append(idx)
            if rank:  # not the shortest cut
                seg.costs[tuple(idx)] = ALTERNATIVE_CUT_COST
    return hypotheses


# two neighbouring marks are also read as one digit (`merge_pieces`) when together they are at
# most MERGE_WIDTH of the tallest mark's height wide, with at most MERGE_GAP of it between
# them: a digit that broke apart (a cheque's textured paper cut its strokes, a "4" written in
# two strokes), which was read as two digits. Reading them as one costs MERGE_COST in
# log-probability. Chosen on ORAND train and Danish val (rows right of 1,080 / 2,697; none:
# 561 / 2,435): cost 0, 0.25, 0.5, 1: 578 / 2,431, 578 / 2,434, 576 / 2,435, 565 / 2,435;
# at cost 0.5, width 0.7 and 1.0: 570 / 2,434 and 577 / 2,434, gap 0 and 0.2: 573 / 2,435 and
# 576 / 2,434. ORAND val watched: 83 of 128 without, 86 at the chosen values.
MERGE_WIDTH = 0.8
MERGE_GAP = 0.1
MERGE_COST = 0.5
# the last mark of a number, when shorter than TRAIL_SHORT of the tallest, may also be no digit
# at all (`optional_end`): a cheque's amount ends with "=", "-", ":" or a period, which were
# read as digits ("839 =" as 8392). Reading without it costs TRAIL_COST, so the model drops it
# when its best reading as digits is under exp(-0.1) = 0.9 likely. Chosen on ORAND train and
# Danish val (rows right of 1,080 / 2,697; without: 576 / 2,435): shortness 0.3 / 0.4 / 0.45 /
# 0.5 / 0.6 at cost 0.1: 579 / 595 / 596 / 593 / 581 and 2,436 / 2,436 / 2,436 / 2,435 / 2,431;
# cost 0.02 / 0.2 / 0.36 at 0.5: 597 / 589 / 588 and 2,433 / 2,435 / 2,435. ORAND val watched:
# 86 of 128 without, 87 at the chosen values.
TRAIL_SHORT = 0.45
TRAIL_COST = 0.1


def _neighbour_pairs(boxes: list[tuple[int, int, int, int]], tallest: int) -> list[tuple[int, ...]]:
    """The marks, left to right, in units of one or two: each neighbour pair narrow enough to be
    one digit is a unit, the narrower union first."""
    def fits(i: int) -> float | None:
        (ax, _, aw, _), (bx, _, bw, _) = boxes[i], boxes[i + 1]
        width = max(ax + aw, bx + bw) - min(ax, bx)
        gap = bx - (ax + aw)
        return width if width <= MERGE_WIDTH * tallest and gap <= MERGE_GAP * tallest else None

    widths = [fits(i) for i in range(len(boxes) - 1)]
    units: list[tuple[int, ...]] = []
    i = 0
    while i < len(boxes):
        here = widths[i] if i < len(widths) else None
        after = widths[i + 1] if i + 1 < len(widths) else None
        if here is not None and (after is None or here <= after):
            units.append((i, i + 1))
            i += 2
        else:
            units.append((i,))
            i += 1
    return units


def _add_merged(seg: Segmentation, cell: np.ndarray, levels: np.ndarray,
                marks: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> list[int] | None:
    """Add the digit image of several marks read as one; its index, as a hypothesis."""
    x0 = min(b[0] for b, _ in marks)
    y0 = min(b[1] for b, _ in marks)
    x1 = max(b[0] + b[2] for b, _ in marks)
    y1 = max(b[1] + b[3] for b, _ in marks)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for (bx, by, bw, bh), sub in marks:
        mask[by - y0 : by - y0 + bh, bx - x0 : bx - x0 + bw] |= sub
    if not mask.any():
        return None
    seg.digits.append((levels[cell[y0:y1, x0:x1]] * mask).astype(np.float32))
    seg.boxes.append((x0, y0, x1 - x0, y1 - y0))
    return [len(seg.digits) - 1]


# a piece of a cut blob flatter than this share of the blob's height (and wider than tall) is
# a tail or a joining stroke, not a digit. Danish val: the tail of an "18" made every split of
# it too wide to win
FLAT_PIECE = 0.3
# share of a mark's columns that may cross its ink more than once for it to be one stroke
# (a dash's hooked end) rather than loops (a small number joined to its underline, flat in a
# tall crop). Danish val: 1.5 % of the rows were such numbers read as a dash
MULTI_CROSSING = 0.25


def one_stroke(mask: np.ndarray) -> bool:
    """Whether a mark is a single stroke: few of its columns cross its ink more than once."""
    ink = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 1), np.uint8)) > 0  # pinholes
    crossings = np.count_nonzero(ink[1:] & ~ink[:-1], axis=0) + ink[0]
    inked = crossings > 0
    return not inked.any() or np.count_nonzero(crossings > 1) <= MULTI_CROSSING * np.count_nonzero(inked)


def candidate_splits(w: int, h: int, tallest: int, max_digits: int, in_subbox: bool) -> list[int]:
    """How many digits a blob may hold: 1, and for a wide blob also 2..k touching digits.

    The model picks among these later (recognition-based segmentation): a wide "7" stays one
    digit because it reads well whole, a "00" written joined splits because its halves do.
    """
    if in_subbox or h < 0.6 * tallest or w < MIN_PAIR_RATIO * h:
        return [1]
    # as many pieces as whole narrowest digits fit (rounding up, a blob 0.9 h wide was also cut
    # in three: 113 digit images a telegram, not 85, for 85.21 % of the validation telegrams'
    # numbers right against 85.32 %; Danish val and ORAND val read the same)
    most = int(np.clip(np.floor(w / (NARROWEST_DIGIT * h)), 2, max_digits))
    return list(range(1, most + 1))
