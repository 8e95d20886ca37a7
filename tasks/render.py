"""Clean synthetic telegrams: the printed form of a template plus handwritten vote counts.

The page is drawn in template coordinates (template point == page pixel), so every cell box
of the template is exactly where its number is written; scan_effects then moves the page
like a scanner would and reports that motion. Handwriting is composed from real digit images
(digit_pools), never from fonts, because a font-rendered test set would say nothing about
how the model reads people.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Literal

import cv2
import numpy as np

from tasks.digit_pools import DigitPool
from tasks.template import Box, Cell, Template

Align = Literal["left", "center", "right"]
ZeroStyle = Literal["0", "-", ""]

PAPER = 255
# typical width / height of each digit, for sources stretched to fill their box (USPS, optdigits)
_DIGIT_ASPECT = (0.72, 0.32, 0.7, 0.66, 0.72, 0.66, 0.64, 0.66, 0.64, 0.62)
_MARGIN = 3  # px kept free inside a cell box (the box already stops 3 px short of the rule ink)

# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterStyle:
    """How one president of the mesa writes: fixed for a telegram, varied between telegrams."""

    digit_height: float  # fraction of the cell height
    slant: float  # shear: x shift per unit of height, > 0 leans right
    pen_px: float  # stroke width in page pixels
    spacing: float  # gap between digits / digit height; < 0 makes digits touch or overlap
    ink: int  # grey of a full-pressure stroke (0 = black)
    baseline_jitter: float  # per-digit vertical wobble / digit height
    x_position: float  # 0 = left of the cell, 1 = right, for free-form numbers
    header_boxes: bool  # header fields: one digit per printed sub-box, zero padded ("004")
    pad_table: bool  # table cells zero padded to the cell's max_digits ("015")
    zero: ZeroStyle  # a zero count written as "0", a dash, or left empty
    variety: int  # distinct instances per digit this hand uses (people repeat their shapes)
    hand: int  # seed that picks those instances
    overflow_rate: float  # share of cells written too big, across the rules


def sample_writer(rng: np.random.Generator) -> WriterStyle:
    """A random but plausible writer; the ranges follow what real telegrams show."""
    return WriterStyle(
        digit_height=float(rng.uniform(0.45, 0.85)),
        slant=float(np.clip(rng.normal(0.05, 0.13), -0.3, 0.4)),
        pen_px=float(rng.uniform(2.2, 6.0)),
        spacing=float(rng.choice([rng.uniform(-0.12, 0.02), rng.uniform(0.02, 0.4)], p=[0.2, 0.8])),
        ink=int(rng.integers(0, 110)),
        baseline_jitter=float(rng.uniform(0.0, 0.08)),
        x_position=float(rng.choice([rng.uniform(0.35, 0.65), rng.uniform(0.0, 0.35), rng.uniform(0.65, 1.0)],
                                    p=[0.6, 0.25, 0.15])),
        header_boxes=bool(rng.random() < 0.7),
        pad_table=bool(rng.random() < 0.12),
        zero=str(rng.choice(["0", "-", ""], p=[0.5, 0.35, 0.15])),  # type: ignore[arg-type]
        variety=int(rng.integers(3, 13)),
        hand=int(rng.integers(2**31)),
        overflow_rate=float(rng.choice([0.0, rng.uniform(0.01, 0.08)], p=[0.4, 0.6])),
    )


def written_text(value: int, cell: Cell, style: WriterStyle) -> str:
    """What the writer puts in a cell for `value`: "135", "004", "0", "-" or ""."""
    if cell.subboxes and style.header_boxes:
        return str(value).zfill(cell.subboxes)
    if value == 0 and style.zero != "0":
        return style.zero
    if style.pad_table and not cell.subboxes:
        return str(value).zfill(cell.max_digits)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Handwriting
# ---------------------------------------------------------------------------------------------


def _hand_instances(pool: DigitPool, style: WriterStyle) -> list[np.ndarray]:
    """Indices of the few pool instances per digit that this writer's hand uses."""
    hand = np.random.default_rng(style.hand)
    out = []
    for crops in pool.digits:
        k = min(style.variety, len(crops))
        out.append(hand.choice(len(crops), size=k, replace=False))
    return out


def _pen(alpha: np.ndarray, pen_px: float) -> np.ndarray:
    """Bring a scaled digit's strokes to the writer's pen width and give them crisp edges.

    Sources differ (optdigits strokes are fat, ORAND thin), so the width is measured
    (2 * area / border length of the stroke mask) and corrected by erosion or dilation;
    the fractional rest moves the threshold of the final edge ramp."""
    mask = (alpha >= 128).astype(np.uint8)
    area = int(mask.sum())
    if area == 0:
        return alpha
    border = area - int(cv2.erode(mask, None).sum())
    width = 2.0 * area / max(border, 1)
    steps = round((pen_px - width) / 2.0)
    steps = max(steps, -int((width - 1.5) // 2))  # never erode a stroke away
    if steps > 0:
        alpha = cv2.dilate(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * steps + 1,) * 2))
    elif steps < 0:
        alpha = cv2.erode(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * -steps + 1,) * 2))
    rest = float(np.clip(pen_px - width - 2 * steps, -1.0, 1.0))
    threshold = 128.0 - 55.0 * rest
    ramp = (alpha.astype(np.float32) - threshold) * 3.2 + 128.0
    return np.clip(ramp, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Glyph:
    char: str
    src: np.ndarray | None  # pool crop (None for a dash)
    aspect: float  # width / height before shear
    slant: float
    scale: float  # per-glyph size wobble


def _plan_glyphs(text: str, pool: DigitPool, hands: list[np.ndarray], style: WriterStyle,
                 rng: np.random.Generator) -> list[_Glyph]:
    glyphs = []
    for ch in text:
        slant = style.slant + float(rng.normal(0, 0.04))
        if ch == "-":
            glyphs.append(_Glyph(ch, None, float(rng.uniform(0.6, 1.4)), slant, 1.0))
            continue
        d = int(ch)
        src = pool.digits[d][int(hands[d][int(rng.integers(len(hands[d])))])]
        aspect = src.shape[1] / src.shape[0]
        if pool.stretched:
            aspect = min(aspect, _DIGIT_ASPECT[d] * float(rng.uniform(0.85, 1.15)))
        else:
            aspect *= float(rng.uniform(0.92, 1.08))
        glyphs.append(_Glyph(ch, src, aspect, slant, float(rng.uniform(0.93, 1.06))))
    return glyphs


def _render_glyph(g: _Glyph, h: float, style: WriterStyle,
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Alpha image (ink = 255) of one glyph of height ~h, and its padding on every side."""
    pad = math.ceil(style.pen_px) + 2
    hh = h * g.scale
    if g.src is None:  # a dash: one short stroke, a little tilted and curved
        length = g.aspect * h
        canvas = np.zeros((int(hh) + 2 * pad, int(length) + 2 * pad), np.uint8)
        y = pad + hh * float(rng.uniform(0.45, 0.65))
        tilt, bow = float(rng.normal(0, 0.06)) * length, float(rng.normal(0, 0.05)) * length
        ts = np.linspace(0, 1, 8)
        pts = np.stack([pad + ts * length, y + ts * tilt - bow * 4 * ts * (1 - ts)], axis=1)
        cv2.polylines(canvas, [np.round(pts * 16).astype(np.int32)], False, 255,
                      max(1, round(style.pen_px)), cv2.LINE_AA, shift=4)
        return canvas, pad
    sh, sw = g.src.shape
    tw = max(g.aspect * hh, 2.0)
    sx, sy = tw / sw, hh / sh
    shear_w = abs(g.slant) * hh
    off = pad + max(g.slant, 0.0) * hh
    m = np.array([[sx, -g.slant * sy, off], [0.0, sy, pad]], np.float32)
    size = (math.ceil(tw + shear_w) + 2 * pad, math.ceil(hh) + 2 * pad)
    src = g.src
    if sy < 0.7:  # warpAffine cannot area-average: pre-shrink big sources (ORAND, optdigits)
        src = cv2.resize(src, (max(2, round(sw * sx)), max(2, round(hh))), interpolation=cv2.INTER_AREA)
        m[0, 0], m[0, 1], m[1, 1] = tw / src.shape[1], -g.slant * hh / src.shape[0], hh / src.shape[0]
    alpha = cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR)
    return _pen(alpha, style.pen_px * float(rng.uniform(0.9, 1.1))), pad


def _stamp(layer: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Max-composite an alpha patch into the page-sized alpha layer, clipped to the page."""
    h, w = alpha.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, layer.shape[1]), min(y + h, layer.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    region = layer[y0:y1, x0:x1]
    np.maximum(region, alpha[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def _write_in_box(layer: np.ndarray, glyphs: list[_Glyph], box: Box, style: WriterStyle,
                  rng: np.random.Generator, big: bool, centred: bool) -> None:
    """Lay out glyphs as one number inside box; `big` lets it cross the rules a little."""
    bx, by, bw, bh = box
    avail_w, avail_h = bw - 2 * _MARGIN, bh - 2 * _MARGIN
    h = style.digit_height * bh * float(rng.uniform(0.93, 1.07))
    h = bh * float(rng.uniform(0.95, 1.12)) if big else min(h, avail_h / 1.06)
    gaps = [style.spacing + float(rng.normal(0, 0.05)) for _ in glyphs[1:]]
    # sheared digits stand side by side at their upright width; the shear adds once, at the end
    rel_w = sum(g.aspect * g.scale for g in glyphs) + sum(gaps) + max(abs(g.slant) for g in glyphs)
    limit = bw * 1.05 if big else avail_w
    if rel_w * h > limit:
        h = limit / rel_w
    width = rel_w * h
    slack = max(avail_w - width, 0.0)
    pos = 0.5 + float(rng.normal(0, 0.08)) if centred else style.x_position + float(rng.normal(0, 0.07))
    x = bx + _MARGIN + slack * float(np.clip(pos, 0, 1)) - (max(width - avail_w, 0) / 2)
    top = by + (bh - h) / 2 + float(rng.normal(0, 0.05)) * bh
    lo, hi = (by - 0.08 * bh, by + bh * 1.08 - h) if big else (by + _MARGIN, by + bh - _MARGIN - h * 1.06)
    top = float(np.clip(top, lo, max(lo, hi)))
    for i, g in enumerate(glyphs):
        alpha, pad = _render_glyph(g, h, style, rng)
        gh = h * g.scale
        dy = float(rng.normal(0, style.baseline_jitter)) * h + (h - gh)
        gy = float(np.clip(top + dy, lo, max(lo, hi + (h - gh))))
        pressure = float(rng.uniform(0.82, 1.0))
        if pressure < 1.0:
            alpha = (alpha.astype(np.float32) * pressure).astype(np.uint8)
        _stamp(layer, alpha, round(x) - pad, round(gy) - pad)
        x += g.aspect * g.scale * h
        if i < len(gaps):
            x += gaps[i] * h


def _subboxes(cell: Cell) -> list[Box]:
    x, y, w, h = cell.box
    edges = [x, *cell.subbox_edges, x + w]
    return [(a, y, b - a, h) for a, b in itertools.pairwise(edges)]


def render_handwriting(template: Template, values: dict[str, int], pool: DigitPool,
                       rng: np.random.Generator, style: WriterStyle) -> tuple[np.ndarray, dict[str, str]]:
    """Handwriting alone on blank paper (uint8, 255 = paper) and the text written per cell.

    render_telegram draws exactly this layer (same rng draws), so tests can measure ink per
    cell without the printed form in the way."""
    layer = np.zeros((template.page.height, template.page.width), np.uint8)
    hands = _hand_instances(pool, style)
    written: dict[str, str] = {}
    for cell in template.cells:
        if cell.id not in values:
            continue
        text = written_text(int(values[cell.id]), cell, style)
        written[cell.id] = text
        if not text:
            continue
        big = rng.random() < style.overflow_rate
        if cell.subboxes and style.header_boxes and len(text) == cell.subboxes:
            for ch, sub in zip(text, _subboxes(cell), strict=True):
                glyphs = _plan_glyphs(ch, pool, hands, style, rng)
                _write_in_box(layer, glyphs, sub, style, rng, big=False, centred=True)
        else:
            glyphs = _plan_glyphs(text, pool, hands, style, rng)
            _write_in_box(layer, glyphs, cell.box, style, rng, big=big, centred=False)
    lut = (PAPER - np.arange(256) * (PAPER - style.ink) / 255.0).round().astype(np.uint8)
    return cv2.LUT(layer, lut), written


# ---------------------------------------------------------------------------------------------
# Printed form
# ---------------------------------------------------------------------------------------------

# Parts of the form the template does not describe, measured on the reference scan.
_LOGO = (150, 106)  # top-left of the Correo Argentino emblem
_DEST_BOX = (135, 268, 1421, 65)
_DEST_SPLITS = (457, 1290)
_DISTRITO_BOX = (135, 352, 139, 113)
_SECCION_BOX = (304, 352, 404, 113)
_MESA_BOX = (740, 352, 192, 114)
_LABEL_ROW_H = 33
_NOTE_Y = 1904
_INFO_Y = 1961
_SIGN_BOXES = (
    ("PRESIDENTE DE MESA", (128, 1999, 696, 278), True),
    ("1° - VOCAL", (851, 2001, 703, 278), True),
    ("2° VOCAL", (127, 2296, 695, 282), True),
    ("FISCALES PARTIDARIOS PRESENTES", (850, 2298, 703, 280), False),
)
_BAND = (128, 2597, 1426, 62)
_NOTE = ("SR. PRESIDENTE DE MESA: LA SUMA DE LOS TOTALES POR COLUMNA (CATEGORIA) DEBE COINCIDIR CON LA "
         "CANTIDAD DE SOBRES UTILIZADOS QUE SE EXTRAJERON DE LA URNA")
_INFO = "INFORMACION INDISPENSABLE PARA EL COBRO DE LA COMPENSACION - ART. 72 DEL CODIGO ELECTORAL NACIONAL"
_SMALL_NOTES = {
    "blanco": "(Discriminados por categoria)",
    "nulos": "(Discriminados por categoria)",
    "recurridos": "(Discriminados por categoria)",
    "impugnada": "(en todas las columnas debe asentar la misma cantidad)",
}


@dataclass(frozen=True)
class _Font:
    face: int
    weight: float  # stroke thickness / cap height
    condense: float  # horizontal squeeze (Hershey has no condensed faces)


SANS = _Font(cv2.FONT_HERSHEY_SIMPLEX, 0.065, 0.86)
SANS_BOLD = _Font(cv2.FONT_HERSHEY_DUPLEX, 0.14, 0.9)
CONDENSED = _Font(cv2.FONT_HERSHEY_DUPLEX, 0.2, 0.56)  # the heavy Impact-like party names
MONO = _Font(cv2.FONT_HERSHEY_PLAIN, 0.1, 0.9)


def _ascii(text: str) -> str:
    """Hershey fonts are ASCII only: SEGÚN prints as SEGUN."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


@cache
def _cap_unit(face: int) -> float:
    """Ink height of 'H' at scale 1 (getTextSize's height includes more than the cap)."""
    canvas = np.zeros((80, 60), np.uint8)
    cv2.putText(canvas, "H", (10, 60), face, 1.0, 255, 1, cv2.LINE_8)
    ys = np.nonzero(canvas.any(axis=1))[0]
    return float(ys.max() - ys.min() + 1)


@cache
def _text_alpha(text: str, cap: float, font: _Font) -> np.ndarray:
    """Anti-aliased alpha of a text line with cap height `cap`, drawn at 2x then reduced."""
    scale = 2.0 * cap / _cap_unit(font.face)
    thick = max(1, round(font.weight * 2.0 * cap))
    parts = text.split("°")
    (tw, th), base = cv2.getTextSize(_ascii(text.replace("°", "")), font.face, scale, thick)
    ring = 0.22 * 2 * cap
    width = tw + int(len(parts) * (2 * ring + 3 * thick)) + 4 * thick + 8
    canvas = np.zeros((th + base + 4 * thick + 8, width), np.uint8)
    x, y = 2 * thick + 4, th + 2 * thick + 4
    for i, part in enumerate(parts):
        part = _ascii(part)
        if part:
            cv2.putText(canvas, part, (x, y), font.face, scale, 255, thick, cv2.LINE_AA)
            x += cv2.getTextSize(part, font.face, scale, thick)[0][0]
        if i < len(parts) - 1:  # a degree sign: Hershey fonts have none
            cv2.circle(canvas, (int(x + ring + thick), int(y - th + ring)), int(ring), 255,
                       max(1, thick // 2 + 1), cv2.LINE_AA)
            x += int(2 * ring + 3 * thick)
    ys, xs = np.nonzero(canvas)
    if len(ys) == 0:
        return np.zeros((1, 1), np.uint8)
    crop = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    size = (max(1, round(crop.shape[1] * font.condense / 2)), max(1, round(crop.shape[0] / 2)))
    out = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def _paint(page: np.ndarray, alpha: np.ndarray, x: int, y: int, color: int) -> None:
    """Composite alpha in `color`: darken for dark colours, lighten for white text on a band."""
    h, w = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, page.shape[1]), min(y + h, page.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.uint16)
    region = page[y0:y1, x0:x1]
    if color >= 128:
        np.maximum(region, (a * color // 255).astype(np.uint8), out=region)
    else:
        np.minimum(region, (255 - a * (255 - color) // 255).astype(np.uint8), out=region)


def draw_text(page: np.ndarray, text: str, box: Box, cap: float, font: _Font = SANS, align: Align = "left",
              inset: int = 0, color: int = 0, dy: int = 0) -> None:
    """Typed text in a box, vertically centred, squeezed to the box width if it would overflow."""
    alpha = _text_alpha(text, float(cap), font)
    bx, by, bw, bh = box
    room = max(bw - 2 * inset, 1)
    if alpha.shape[1] > room:
        alpha = cv2.resize(alpha, (room, alpha.shape[0]), interpolation=cv2.INTER_AREA)
    w = alpha.shape[1]
    x = {"left": bx + inset, "center": bx + (bw - w) // 2, "right": bx + bw - inset - w}[align]
    _paint(page, alpha, x, by + (bh - alpha.shape[0]) // 2 + dy, color)


def _tint(page: np.ndarray, box: Box, grey: int) -> None:
    """A printed grey area (header cells, title bands); a fax-look scan dithers it like the
    reference, a grey scan keeps it grey."""
    x, y, w, h = box
    region = page[y : y + h, x : x + w]
    np.minimum(region, grey, out=region)


def _rect(page: np.ndarray, box: Box, thick: int = 2, color: int = 0) -> None:
    x, y, w, h = box
    cv2.rectangle(page, (x, y), (x + w, y + h), color, thick, cv2.LINE_8)


Point = tuple[float, float]


def _seg(page: np.ndarray, p0: Point, p1: Point, thick: int, color: int = 0) -> None:
    a = (round(p0[0] * 16), round(p0[1] * 16))
    b = (round(p1[0] * 16), round(p1[1] * 16))
    cv2.line(page, a, b, color, thick, cv2.LINE_AA, shift=4)


def _dotted(page: np.ndarray, p0: Point, p1: Point, thick: int = 2, step: float = 6.0, dash: float = 3.0,
            color: int = 70) -> None:
    """A printed dotted rule: short square dashes (anti-aliased round caps would look like beads)."""
    length = math.hypot(p1[0] - p0[0], p1[1] - p0[1])
    ux, uy = (p1[0] - p0[0]) / length, (p1[1] - p0[1]) / length
    vertical = abs(uy) > abs(ux)
    w, h = (thick, round(dash)) if vertical else (round(dash), thick)
    t = 0.0
    while t < length:
        x, y = p0[0] + ux * t, p0[1] + uy * t
        x0, y0 = (round(x - thick / 2), round(y)) if vertical else (round(x), round(y - thick / 2))
        region = page[y0 : y0 + h, x0 : x0 + w]
        np.minimum(region, color, out=region)
        t += step


class _Frame:
    """Draws one family of rules (table or header) where the reference scan has them.

    The template lists each rule by one coordinate of the skewed reference scan, measured
    at the middle of the family (x_ref for horizontal rules, y_ref for vertical ones); the
    rules are straight lines in the frame tasks.register deskews to (rotation by
    registration.skew_deg about the page centre), so they are drawn there and mapped back."""

    def __init__(self, template: Template, x_ref: float, y_ref: float) -> None:
        centre = (template.page.width / 2.0, template.page.height / 2.0)
        self.to_template = cv2.getRotationMatrix2D(centre, -_skew_deg(template), 1.0)
        self.to_straight = cv2.getRotationMatrix2D(centre, _skew_deg(template), 1.0)
        self.x_ref, self.y_ref = x_ref, y_ref

    @staticmethod
    def _apply(m: np.ndarray, x: float, y: float) -> Point:
        return (m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2])

    def _sx(self, x: float) -> float:
        return self._apply(self.to_straight, x, self.y_ref)[0]

    def _sy(self, y: float) -> float:
        return self._apply(self.to_straight, self.x_ref, y)[1]

    def hline(self, page: np.ndarray, y: float, x0: float, x1: float, thick: int, color: int = 0) -> None:
        ys = self._sy(y)
        p0 = self._apply(self.to_template, self._sx(x0), ys)
        p1 = self._apply(self.to_template, self._sx(x1), ys)
        _seg(page, p0, p1, thick, color)

    def vline(self, page: np.ndarray, x: float, y0: float, y1: float, thick: int, color: int = 0,
              dotted: bool = False) -> None:
        xs = self._sx(x)
        p0 = self._apply(self.to_template, xs, self._sy(y0))
        p1 = self._apply(self.to_template, xs, self._sy(y1))
        if dotted:
            _dotted(page, p0, p1, thick, step=5.0, dash=2.0, color=color)
        else:
            _seg(page, p0, p1, thick, color)


def _skew_deg(template: Template) -> float:
    reg = template.registration
    return float(getattr(reg, "skew_deg", None) or (reg.model_extra or {}).get("skew_deg", 0.0))


def _draw_table(page: np.ndarray, template: Template) -> None:
    reg, printed = template.registration, template.printed
    hr, vr = list(reg.horizontal_rules), list(reg.vertical_rules)
    sk = _Frame(template, (vr[0] + vr[-1]) / 2, (hr[0] + hr[-1]) / 2)
    left, code_sep, values_x, cat_sep, right = vr[0], vr[1], vr[2], vr[3], vr[-1]
    rows = printed.get("rows", [])
    heads = printed.get("column_headers", [])
    # rules above the category headers (SENADORES ...) but below the table top cover the value columns only
    cat_head_top = min((h["box"][1] for h in heads if "category" in h), default=hr[0])
    coded = [r for r in rows if r.get("code_box")]
    code_bottom = max(r["code_box"][1] + r["code_box"][3] for r in coded) if coded else hr[0]
    code_rule = min((y for y in hr if y >= code_bottom), default=hr[-1])
    # the total row is its own box: consecutive rules a few px apart leave a gap no vertical crosses
    spans, start = [], hr[0]
    for a, b in itertools.pairwise(hr):
        if b - a < 20:
            spans.append((start, a))
            start = b
    spans.append((start, hr[-1]))
    body_bottom = spans[0][1]
    cat_top = next((y for y in hr if hr[0] < y < cat_head_top), hr[0])
    # cv2 line thickness 3 prints ~5 px, like the reference's rules; 2 prints ~3 px, 1 one px
    for y in hr:
        if hr[0] < y < cat_head_top:  # under CANTIDAD DE VOTOS OBTENIDOS: value columns only
            sk.hline(page, y, values_x, right, 2)
        elif code_rule < y < body_bottom:  # the lower rows' rules are printed thin in the name area
            sk.hline(page, y, left, values_x, 1)
            sk.hline(page, y, values_x, right, 2)
        else:
            sk.hline(page, y, left, right, 3)
    for y0, y1 in spans:
        for x, top in ((left, y0), (values_x, y0), (cat_sep, max(y0, cat_top)), (right, y0)):
            sk.vline(page, x, top, y1, 3)
    sk.vline(page, code_sep, hr[0], code_rule, 2, color=60, dotted=True)

    for head in heads:
        box = tuple(head["box"])
        if "category" in head:
            _tint(page, box, 205)
            top, name = head["text"].split(" ", 1)[0], head["text"].split(" ", 1)[-1]
            x, y, w, h = box
            draw_text(page, top, (x, y + 4, w, h // 2 - 2), 19, CONDENSED, "center")
            draw_text(page, name, (x, y + h // 2, w, h // 2 - 4), 19, CONDENSED, "center")
        elif head["text"].startswith("CANTIDAD"):
            draw_text(page, head["text"], box, 11, SANS_BOLD, "center")
        elif head["text"].startswith("N"):
            draw_text(page, "N°", box, 16, SANS, "center")
        else:
            draw_text(page, "Partido Político /Alianza", box, 16, SANS, "left", inset=14, dy=-6)
    for row in rows:
        name_box = tuple(row["name_box"])
        if row.get("code"):
            draw_text(page, row["code"], tuple(row["code_box"]), 21, CONDENSED, "center")
            draw_text(page, row["name"], name_box, 31, CONDENSED, "left", inset=14)
        else:
            x, y, w, h = name_box
            label = (x + 93, y, w - 93, h)
            draw_text(page, row["name"], label, 19, SANS, "left", dy=-2)
            note = _SMALL_NOTES.get(row["row"])
            if note:
                lw = _text_alpha(row["name"], 19.0, SANS).shape[1]
                draw_text(page, note, (x + 93 + lw + 6, y + 4, w - 93 - lw - 6, h), 7, SANS, "left")
    for cat, dot_x in printed.get("value_cell_dot_marks_x", {}).items():
        for c in template.cells:
            if c.category == cat and c.row != "total":
                yc = c.box[1] + c.box[3] // 2
                for k in range(-2, 3):
                    cv2.circle(page, (int(dot_x), yc + 5 * k), 1, 225, -1)


def _draw_header(page: np.ndarray, template: Template) -> None:
    extra = template.registration.model_extra or {}
    hh, hv = extra.get("header_horizontal_rules"), extra.get("header_vertical_rules")
    if not hh or not hv:
        return
    sk = _Frame(template, (hv[0] + hv[-1]) / 2, (hh[0] + hh[-1]) / 2)
    for i, y in enumerate(hh):
        sk.hline(page, y, hv[0], hv[-1], 3 if i in (0, len(hh) - 1) else 2)
    for x in hv:
        sk.vline(page, x, hh[0], hh[-1], 3)
    for c in template.cells:
        for e in c.subbox_edges:
            sk.vline(page, e, c.box[1] + 2, c.box[1] + c.box[3] - 2, 2, color=120, dotted=True)
    for lab in template.printed.get("header_label_boxes", []):
        draw_text(page, lab["text"], tuple(lab["box"]), 13, SANS, "left", inset=10)


def _draw_logo(page: np.ndarray) -> None:
    x, y = _LOGO
    cx, cy = x + 62, y + 42
    cv2.ellipse(page, (cx, cy), (30, 30), 0, 0, 360, 90, 11, cv2.LINE_AA)
    cv2.rectangle(page, (x, cy - 14), (x + 24, cy - 7), 90, -1)
    cv2.rectangle(page, (x, cy - 1), (x + 24, cy + 6), 90, -1)
    cv2.ellipse(page, (cx - 8, cy + 20), (58, 38), 0, 20, 160, 90, 12, cv2.LINE_AA)
    draw_text(page, "Correo", (x + 135, y, 240, 50), 30, _Font(cv2.FONT_HERSHEY_SIMPLEX, 0.1, 1.0), color=100)
    draw_text(page, "Argentino", (x + 135, y + 48, 240, 52), 30, _Font(cv2.FONT_HERSHEY_SIMPLEX, 0.1, 1.0),
              color=100)


def _draw_static(template: Template) -> np.ndarray:
    page = np.full((template.page.height, template.page.width), PAPER, np.uint8)
    _draw_logo(page)
    x, y, w, h = _DEST_BOX
    _rect(page, _DEST_BOX, 2, 60)
    for sx in _DEST_SPLITS:
        cv2.line(page, (sx, y), (sx, y + h), 60, 2)
    draw_text(page, "DESTINATARIO:", (x, y + 4, _DEST_SPLITS[0] - x, 32), 17, SANS, "right", inset=8)
    draw_text(page, "CON COPIA:", (x, y + 36, _DEST_SPLITS[0] - x, 26), 11, SANS, "right", inset=8)
    draw_text(page, "DIRECCION NACIONAL ELECTORAL", (_DEST_SPLITS[0], y + 36, 700, 26), 13, SANS_BOLD,
              inset=14)
    draw_text(page, "HOJA 1/1", (_DEST_SPLITS[1], y, x + w - _DEST_SPLITS[1], h), 25, SANS_BOLD, "center")
    labels = (("DISTRITO", _DISTRITO_BOX), ("SECCION / CIRCUITO", _SECCION_BOX), ("MESA N°:", _MESA_BOX))
    for label, box in labels:
        bx, by, bw, _ = box
        _rect(page, box, 2, 40)
        cv2.line(page, (bx, by + _LABEL_ROW_H), (bx + bw, by + _LABEL_ROW_H), 40, 2)
        draw_text(page, label, (bx, by, bw, _LABEL_ROW_H), 14, SANS, "center")
    title = tuple(template.printed.get("title_box", (961, 353, 595, 115)))
    tx, ty, tw, th = title
    _rect(page, title, 2, 40)
    draw_text(page, "ELECCIONES GENERALES - 14 DE NOVIEMBRE DE 2021", (tx, ty + 8, tw, th // 2 - 8), 19,
              CONDENSED, "center")
    draw_text(page, "TELEGRAMA DEL PRESIDENTE DE MESA", (tx, ty + th // 2, tw, th // 2 - 6), 28, CONDENSED,
              "center")
    _draw_header(page, template)
    _draw_table(page, template)
    right = template.registration.vertical_rules[-1]
    left = template.registration.vertical_rules[0]
    draw_text(page, _NOTE, (left, _NOTE_Y, right - left, 14), 9, SANS, "center", color=90)
    draw_text(page, _INFO, (left, _INFO_Y, right - left, 20), 17, CONDENSED, "center")
    draw_text(page, "(Por favor: COMPLETAR CON LETRA IMPRENTA)", (left, _INFO_Y + 24, right - left, 12), 9,
              SANS_BOLD, "center")
    for title_text, box, form in _SIGN_BOXES:
        _draw_sign_box(page, title_text, box, form)
    _tint(page, _BAND, 125)
    draw_text(page, "NO INTRODUCIR EN LA URNA - ENTREGAR AL AGENTE DE CORREOS", _BAND, 25, SANS, "center",
              color=255)
    page.setflags(write=False)
    return page


def _draw_sign_box(page: np.ndarray, title: str, box: Box, form: bool) -> None:
    """The signature boxes under the table: letter cells, name, signature and ID number."""
    x, y, w, h = box
    _tint(page, (x, y, w, 30), 195)
    draw_text(page, title, (x, y, w, 30), 18, SANS_BOLD, "center")
    _rect(page, box, 3)
    cv2.line(page, (x, y + 30), (x + w, y + 30), 0, 2)
    if not form:
        return
    for row_y in (y + 69, y + 108):
        cv2.line(page, (x, row_y), (x + w, row_y), 60, 1)
        for tx in range(x + 26, x + w - 10, 26):
            cv2.line(page, (tx, row_y - 12), (tx, row_y), 60, 1)
    draw_text(page, "Apellido y Nombres", (x, y + 110, w, 28), 11, SANS_BOLD, "center")
    cv2.line(page, (x, y + 138), (x + w, y + 138), 40, 2)
    split = x + int(w * 0.615)
    cv2.line(page, (split, y + 138), (split, y + h), 40, 2)
    cv2.line(page, (x, y + 246), (x + w, y + 246), 40, 2)
    for tx in range(split + 31, x + w - 5, 31):
        cv2.line(page, (tx, y + 230), (tx, y + 246), 60, 1)
    draw_text(page, "Firma", (x, y + 248, split - x, 28), 11, SANS_BOLD, "center")
    draw_text(page, "N° Documento", (split, y + 248, x + w - split, 28), 11, SANS_BOLD, "center")


_STATIC: dict[str, np.ndarray] = {}


def printed_form(template: Template) -> np.ndarray:
    """The empty printed form (read-only, cached per template): the costly part of a page."""
    key = template.model_dump_json()
    if key not in _STATIC:
        _STATIC[key] = _draw_static(template)
    return _STATIC[key]


def _barcode_widths(code: str) -> list[int]:
    """Bar/space widths (in modules) derived from the code's hash: same code, same bars."""
    digest = hashlib.sha256(code.encode()).digest() * 4
    widths = [2, 1, 1, 2]  # a fixed start guard, like real symbologies
    for byte in digest:
        widths += [1 + (byte & 3), 1 + ((byte >> 2) & 1), 1 + ((byte >> 4) & 3), 1 + ((byte >> 6) & 1)]
        if sum(widths) >= 260:
            break
    if len(widths) % 2 == 0:
        widths.append(2)
    return widths


def draw_mesa(page: np.ndarray, template: Template, mesa_text: dict[str, str]) -> None:
    """The per-mesa printed fields: district, section/circuit, mesa number, barcode and code."""
    distrito = mesa_text.get("distrito", "")
    y = _DEST_BOX[1]
    draw_text(page, f"JUNTA ELECTORAL NACIONAL - Distrito - {distrito}", (_DEST_SPLITS[0], y + 4, 820, 32),
              16, SANS_BOLD, inset=14)
    bx, by, bw, bh = _DISTRITO_BOX
    value_h = bh - _LABEL_ROW_H
    draw_text(page, distrito, (bx, by + _LABEL_ROW_H, bw, value_h), 21, CONDENSED, "center", inset=6)
    bx, by, bw, bh = _SECCION_BOX
    half = (bh - _LABEL_ROW_H) // 2
    top = by + _LABEL_ROW_H
    draw_text(page, mesa_text.get("seccion", ""), (bx, top + 2, bw, half), 19, SANS, inset=12)
    draw_text(page, mesa_text.get("circuito", ""), (bx, top + half, bw, half), 16, SANS, inset=12)
    bx, by, bw, bh = _MESA_BOX
    draw_text(page, mesa_text.get("mesa", ""), (bx, by + _LABEL_ROW_H, bw, bh - _LABEL_ROW_H), 30,
              SANS_BOLD, "center", inset=8)
    code = mesa_text.get("code", "")
    bx, by, bw, bh = tuple(template.printed.get("barcode_box", (905, 118, 554, 66)))
    widths = _barcode_widths(code)
    unit = bw / sum(widths)
    pos = 0.0
    for i, wd in enumerate(widths):
        if i % 2 == 0:
            x0, x1 = round(bx + pos * unit), round(bx + (pos + wd) * unit)
            page[by : by + bh, x0 : max(x1, x0 + 1)] = 0
        pos += wd
    draw_text(page, code, (bx, by + bh + 4, bw, 16), 11, MONO, "center")


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

_SECCIONES = ("BELGRANO", "CASEROS", "CASTELLANOS", "CONSTITUCION", "GARAY", "GENERAL LOPEZ",
              "GENERAL OBLIGADO", "IRIONDO", "LA CAPITAL", "LAS COLONIAS", "NUEVE DE JULIO", "ROSARIO",
              "SAN CRISTOBAL", "SAN JAVIER", "SAN JERONIMO", "SAN JUSTO", "SAN LORENZO", "SAN MARTIN", "VERA")
_LOCALIDADES = ("ARMSTRONG", "LAS PAREJAS", "CANADA DE GOMEZ", "TORTUGAS", "MONTES DE OCA", "ESPERANZA",
                "RAFAELA", "RECONQUISTA", "VENADO TUERTO", "SAN JORGE", "CORONDA", "FIRMAT", "CASILDA",
                "GALVEZ", "SUNCHALES", "VILLA CONSTITUCION", "GRANADERO BAIGORRIA", "SAN GENARO")


def sample_mesa_text(rng: np.random.Generator, distrito: str = "SANTA FE") -> dict[str, str]:
    """Printed identification of a random mesa (Santa Fe style), incl. the barcode digits."""
    sec = int(rng.integers(len(_SECCIONES)))
    circ = int(rng.integers(1, 1000))
    mesa = int(rng.integers(1, 9000))
    return {
        "distrito": distrito,
        "seccion": f"{sec + 1} - {_SECCIONES[sec]}",
        "circuito": f"{circ} - {_LOCALIDADES[int(rng.integers(len(_LOCALIDADES)))]}",
        "mesa": str(mesa),
        "code": f"21{sec + 1:03d}{mesa:05d}X0101",
    }


_SURNAMES = ("GONZALEZ", "RODRIGUEZ", "GOMEZ", "FERNANDEZ", "LOPEZ", "DIAZ", "MARTINEZ", "PEREZ",
             "GARCIA", "SANCHEZ", "ROMERO", "SOSA", "ALVAREZ", "TORRES", "RUIZ", "RAMIREZ", "FLORES",
             "BENITEZ", "ACOSTA", "MEDINA", "BRECCIA", "ABREGU", "HERRERA", "AGUIRRE", "GIMENEZ", "MOLINA")
_NAMES = ("MARIA", "JUAN", "CARLOS", "ANA", "LUCIA", "JORGE", "SOFIA", "DIEGO", "LAURA", "PABLO", "BRENDA",
          "DAIANA", "MARTIN", "PAULA", "JOSE", "NATALIA", "HUGO", "SILVIA", "MIGUEL", "ROCIO")
_LETTER_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_PLAIN)


def _scribble(layer: np.ndarray, box: Box, rng: np.random.Generator, pen: int) -> None:
    """A signature: a few loops along a wavy baseline (only its ink matters, not its look)."""
    x, y, w, h = box
    t = np.linspace(0, 1, 160)
    loops = float(rng.uniform(3, 9))
    xs = x + w * (0.1 + 0.7 * t) + 0.06 * w * np.sin(2 * np.pi * loops * t + rng.uniform(0, 6))
    ys = y + h * (0.5 + 0.3 * np.sin(2 * np.pi * loops * t * float(rng.uniform(0.8, 1.3)))
                  + 0.1 * np.sin(2 * np.pi * float(rng.uniform(0.5, 1.5)) * t))
    pts = np.round(np.stack([xs, ys], axis=1) * 16).astype(np.int32)
    cv2.polylines(layer, [pts], False, 255, pen, cv2.LINE_AA, shift=4)


def _letters(layer: np.ndarray, word: str, x: int, y_bottom: int, pitch: int, rng: np.random.Generator,
             pen: int) -> None:
    """Block capitals, one per printed letter cell."""
    font = _LETTER_FONTS[int(rng.integers(len(_LETTER_FONTS)))]
    scale = 24.0 / _cap_unit(font) * float(rng.uniform(0.8, 1.1))
    for i, ch in enumerate(word):
        org = (x + i * pitch + int(rng.integers(3, 8)), y_bottom - int(rng.integers(4, 9)))
        cv2.putText(layer, ch, org, font, scale, 255, pen, cv2.LINE_AA)


def _form_writing(layer: np.ndarray, pool: DigitPool, style: WriterStyle, rng: np.random.Generator) -> None:
    """Names, signatures and ID numbers of the mesa authorities, as on every real telegram: ink
    outside the vote cells that the reader must ignore."""
    pen = max(1, round(style.pen_px * 0.6))
    hands = _hand_instances(pool, style)
    for i, (_, (x, y, w, _h), form) in enumerate(_SIGN_BOXES):
        if not form:
            for k in range(int(rng.integers(0, 4))):
                area = (x + 20 + (k % 2) * w // 2, y + 40 + (k // 2) * 110, w // 2 - 40, 90)
                _scribble(layer, area, rng, pen)
            continue
        if rng.random() > (0.97, 0.9, 0.5)[i]:
            continue
        _letters(layer, str(rng.choice(_SURNAMES)), x, y + 69, 26, rng, pen)
        _letters(layer, str(rng.choice(_NAMES)), x, y + 108, 26, rng, pen)
        split = x + int(w * 0.615)
        _scribble(layer, (x + 30, y + 146, split - x - 60, 90), rng, pen)
        dni = str(int(rng.integers(10_000_000, 46_000_000)))
        for k, ch in enumerate(dni):
            glyphs = _plan_glyphs(ch, pool, hands, style, rng)
            box = (split + 31 * k, y + 212, 31, 34)
            _write_in_box(layer, glyphs, box, style, rng, big=False, centred=True)


def render_telegram(template: Template, values: dict[str, int], pool: DigitPool, rng: np.random.Generator,
                    style: WriterStyle, mesa_text: dict[str, str], signatures: bool = True,
                    ) -> tuple[np.ndarray, dict[str, str]]:
    """The clean page (uint8 grey, template size, 255 paper) and the text written per cell.

    The vote cells are written first, with the same rng draws as render_handwriting; the
    authorities' names and signatures (signatures=True) come after, outside every cell."""
    page = printed_form(template).copy()
    draw_mesa(page, template, mesa_text)
    hand, written = render_handwriting(template, values, pool, rng, style)
    np.minimum(page, hand, out=page)
    if signatures:
        layer = np.zeros_like(page)
        _form_writing(layer, pool, style, rng)
        lut = (PAPER - np.arange(256) * (PAPER - style.ink) / 255.0).round().astype(np.uint8)
        np.minimum(page, cv2.LUT(layer, lut), out=page)
    return page, written
