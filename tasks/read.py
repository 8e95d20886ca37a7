"""Reading scans end to end, as pure functions: decode, register, crop, segment, reframe,
then one batched inference across many scans and the composition of each cell's number.

`prepare_scan` is everything before the model, per scan; `infer_and_compose` feeds the digits
of a whole chunk of scans to the model at once, which is where batching pays.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tasks.checksum import apply_checksum
from tasks.compose import CellReading, compose, contenders_of
from tasks.decode import Decoded, decode_pages, decode_scan
from tasks.inference import predict_proba, second_look
from tasks.reframe import reframe_many
from tasks.register import register_upright
from tasks.segment import Segmentation, crop_cell, segment_cells
from tasks.template import Template

MESA_CODE = re.compile(r"^(\d{2})(\d{3})(\d{5})X$")


@dataclass
class ReadOptions:
    pad: int = 8
    ok_threshold: float = 0.99
    reframe: str = "mnist"
    batch_size: int = 2048
    max_pixels: int = 80_000_000
    checksum: bool = True  # decode each telegram under the form's relations
    second_look: float = 0.0  # digits with a top probability under this are read again, moved
    # ... unless their blob's hypothesis scores this far (log-probability) behind its best
    second_look_margin: float | None = None
    max_pages: int = 100
    pdf_dpi: int = 200


@dataclass
class PreparedScan:
    uri: str
    content_hash: str
    status: str  # "ok" or why it cannot be read: "unreadable", "unaligned"
    reason: str | None = None
    quality: float = 0.0
    notes: list[str] = field(default_factory=list)
    segs: dict[str, Segmentation] = field(default_factory=dict)
    crops: dict[str, np.ndarray] = field(default_factory=dict)  # grey cell crops (numbers dataset)
    inputs: np.ndarray | None = None  # (n_digits, 28, 28, 1) for all cells, in cell order
    owners: list[str] = field(default_factory=list)  # cell id of each row of `inputs`
    timings: dict[str, float] = field(default_factory=dict)
    page: int = 1  # 1-based page of the file (multi-page TIFF or PDF)
    pages: int = 1

    @property
    def page_uri(self) -> str:
        return page_uri(self.uri, self.page, self.pages)


@dataclass
class ScanReading:
    uri: str
    content_hash: str
    status: str
    reason: str | None
    quality: float
    notes: list[str]
    cells: dict[str, CellReading]
    crops: dict[str, np.ndarray] = field(default_factory=dict)
    digit_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    page: int = 1
    pages: int = 1

    @property
    def page_uri(self) -> str:
        return page_uri(self.uri, self.page, self.pages)


def page_uri(uri: str, page: int, pages: int) -> str:
    """Where a telegram is: the file's URI, with `#page=N` when the file holds several."""
    return uri if pages <= 1 else f"{uri}#page={page}"


def prepare_scan(
    data: bytes, uri: str, content_hash: str, template: Template, opt: ReadOptions
) -> PreparedScan:
    """Decode, register, crop and segment one single-image scan; never raises for bad input."""
    t0 = time.perf_counter()
    decoded = decode_scan(data, max_pixels=opt.max_pixels)
    return _prepare_decoded(decoded, uri, content_hash, template, opt, time.perf_counter() - t0)


def prepare_pages(
    data: bytes, uri: str, content_hash: str, template: Template, opt: ReadOptions
) -> list[PreparedScan]:
    """Every page of a scan file (one for a JPEG or PNG), each prepared as one telegram."""
    t0 = time.perf_counter()
    pages = decode_pages(data, max_pixels=opt.max_pixels, max_pages=opt.max_pages, pdf_dpi=opt.pdf_dpi)
    t_decode = (time.perf_counter() - t0) / len(pages)
    # a refused file is one record (page 1 of 1), whatever page count it claims
    return [_prepare_decoded(d if d.ok or len(pages) > 1 else Decoded(None, d.reason), uri,
                             content_hash, template, opt, t_decode) for d in pages]


def _prepare_decoded(
    decoded: Decoded, uri: str, content_hash: str, template: Template, opt: ReadOptions, t_decode: float
) -> PreparedScan:
    t: dict[str, float] = {"decode": t_decode}
    where = {"page": decoded.page, "pages": decoded.pages}
    if not decoded.ok:
        return PreparedScan(uri, content_hash, "unreadable", decoded.reason, timings=t, **where)
    t0 = time.perf_counter()
    alignment, gray = register_upright(decoded.gray, template)
    t["register"] = time.perf_counter() - t0
    if not alignment.ok:
        return PreparedScan(uri, content_hash, "unaligned", alignment.reason, alignment.quality,
                            timings=t, **where)
    prep = PreparedScan(uri, content_hash, "ok", None, alignment.quality, list(alignment.notes),
                        timings=t, **where)
    t0 = time.perf_counter()
    crops = [crop_cell(gray, alignment.matrix, cell.box, opt.pad) for cell in template.cells]
    t1 = time.perf_counter()
    # the cells' rules are found all at once; segmentation itself is per cell
    segs = segment_cells(crops, opt.pad, [cell.max_digits for cell in template.cells],
                         [[e - cell.box[0] + opt.pad for e in cell.subbox_edges] for cell in template.cells])
    t["crop"], t["segment"] = t1 - t0, time.perf_counter() - t1
    digit_images: list[np.ndarray] = []
    for cell, crop, seg in zip(template.cells, crops, segs, strict=True):
        prep.segs[cell.id] = seg
        prep.crops[cell.id] = crop
        digit_images.extend(seg.digits)
        prep.owners.extend([cell.id] * len(seg.digits))
    t0 = time.perf_counter()
    prep.inputs = reframe_many(digit_images, opt.reframe, ink="bright")  # type: ignore[arg-type]
    t["reframe"] = time.perf_counter() - t0
    # the digit images live on reframed in `inputs`; kept, they were 40 % of what a worker
    # process pickled back for each scan and of what a chunk held until it was stored
    for seg in prep.segs.values():
        seg.digits = []
    return prep


def infer_and_compose(
    prepared: list[PreparedScan], template: Template, model, opt: ReadOptions
) -> tuple[list[ScanReading], dict[str, float]]:
    """One model call over the digits of all scans, then each cell's reading."""
    timings: dict[str, float] = {}
    ready = [p for p in prepared if p.status == "ok" and p.inputs is not None]
    t0 = time.perf_counter()
    batch = np.concatenate([p.inputs for p in ready]) if ready else np.zeros((0, 28, 28, 1), np.float32)
    probs = predict_proba(model, batch, opt.batch_size) if len(batch) else np.zeros((0, 10), np.float32)
    among = None
    if opt.second_look > 0 and opt.second_look_margin is not None and len(batch):
        # a scan's digits are its cells', in template order
        among = contenders_of([p.segs[c.id] for p in ready for c in template.cells], probs.max(axis=1),
                              opt.second_look_margin)
    probs = second_look(model, batch, probs, opt.second_look, opt.batch_size, among)
    timings["infer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out: list[ScanReading] = []
    offset = 0
    for p in prepared:
        if p.status != "ok" or p.inputs is None:
            out.append(ScanReading(p.uri, p.content_hash, p.status, p.reason, p.quality, p.notes, {},
                                   page=p.page, pages=p.pages))
            continue
        n = len(p.owners)
        mine, inputs = probs[offset : offset + n], p.inputs
        offset += n
        rows: dict[str, list[int]] = defaultdict(list)
        for i, owner in enumerate(p.owners):
            rows[owner].append(i)
        cells = {}
        digit_inputs = {}
        for cell in template.cells:
            idx = rows.get(cell.id, [])
            cells[cell.id] = compose(p.segs[cell.id], mine[idx], cell.max_digits, opt.ok_threshold)
            if idx:
                digit_inputs[cell.id] = inputs[idx]
        if opt.checksum:
            cells = apply_checksum(template, cells, opt.ok_threshold)
        out.append(ScanReading(p.uri, p.content_hash, "ok", None, p.quality, p.notes, cells,
                               p.crops, digit_inputs, p.page, p.pages))
    timings["compose"] = time.perf_counter() - t0
    return out, timings


def mesa_code_from_uri(uri: str) -> str | None:
    """Scans are named by the telegram code printed under the barcode, e.g. 2100100001X.jpg."""
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem if MESA_CODE.match(stem) else None


def mesa_code_for_page(uri: str, page: int, pages: int) -> str | None:
    """The telegram code of one page. A single-page file is named by its code; a file of N
    pages names its N codes in page order, joined by `_` (2100100001X_2100100007X.pdf), or as
    an inclusive range of consecutive mesas of one sección (2100100001X-2100100020X.tif).
    A name that does not account for every page links no page: a wrong label is worse than
    none."""
    if pages <= 1:
        return mesa_code_from_uri(uri)
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    codes = stem.split("_")
    if len(codes) == pages and all(MESA_CODE.match(c) for c in codes):
        return codes[page - 1]
    ends = [MESA_CODE.match(c) for c in stem.split("-")]
    if len(ends) == 2 and ends[0] and ends[1] and ends[0][1] + ends[0][2] == ends[1][1] + ends[1][2]:
        first, last = int(ends[0][3]), int(ends[1][3])
        if last - first + 1 == pages:
            return f"{ends[0][1]}{ends[0][2]}{first + page - 1:05d}X"
    return None
