"""Guarded scan decoding: every failure is a reason, never an exception for the batch.

The image header is read first (Pillow, lazily) so that a decompression bomb is refused
before any pixel is decoded; OpenCV then decodes to grey, applying EXIF orientation.
Multi-page TIFFs and PDFs give one image per page (a batch of telegrams scanned into one
file), under a page-count limit and a per-page pixel limit checked before rendering.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

MAX_PIXELS = 80_000_000  # a 600 dpi A4 scan is ~35 MP; OpenCV itself refuses 2^30
MAX_BYTES = 200_000_000


@dataclass(frozen=True)
class Decoded:
    gray: np.ndarray | None
    reason: str | None = None
    page: int = 1  # 1-based page of the file
    pages: int = 1  # pages in the file

    @property
    def ok(self) -> bool:
        return self.gray is not None


def decode_scan(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Decoded:
    """Grey uint8 image from file bytes, or a reason why not."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own limit below applies, from the header alone
    if not data:
        return Decoded(None, "empty file (0 bytes)")
    if len(data) > max_bytes:
        return Decoded(None, f"file too large: {len(data)} bytes (limit {max_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                fmt = im.format
                alpha = "A" in im.mode or "transparency" in im.info
    except UnidentifiedImageError:
        return Decoded(None, "not an image: format not recognised")
    except Exception as exc:  # Pillow raises many types on hostile headers
        return Decoded(None, f"unreadable image header: {type(exc).__name__}")
    if w * h > max_pixels:
        return Decoded(None, f"image too large: {w}x{h} pixels (limit {max_pixels})")
    if w < 100 or h < 100:
        return Decoded(None, f"image too small to be a scan: {w}x{h} pixels")
    if alpha:
        gray = _on_white(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
    else:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return Decoded(None, f"corrupt {fmt or 'image'}: cannot be decoded")
    return Decoded(gray)


def _on_white(img: np.ndarray | None) -> np.ndarray | None:
    """An image with an alpha channel laid on white paper, in grey. A greyscale decode drops
    alpha, so ink kept as opacity over black pixels became a black page ("blank: no ink")."""
    if img is None:
        return None
    if img.dtype == np.uint16:  # 16-bit PNG
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None
    if img.ndim == 2:
        return img
    if img.shape[2] not in (2, 4):
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[..., 0].copy()
    colour, a = img[..., :-1], img[..., -1].astype(np.float32) / 255.0
    grey = colour[..., 0] if colour.shape[2] == 1 else cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    return np.rint(grey * a + 255.0 * (1.0 - a)).astype(np.uint8)


MAX_PAGES = 100  # a batch of telegrams scanned into one file; more is refused, not truncated
PDF_DPI = 200  # telegrams are scanned at ~200 dpi (1700x2800 px); PDF pages render at that
_PDF_LOCK = threading.Lock()  # PDFium is not thread-safe


def decode_pages(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
                 max_pages: int = MAX_PAGES, pdf_dpi: int = PDF_DPI) -> list[Decoded]:
    """One Decoded per page of a scan file: a multi-page TIFF or a PDF holds one telegram per
    page. A problem of the whole file is one Decoded (page 1) with its reason; a bad page is a
    reason for that page only. Limits apply before any pixel of a page is decoded."""
    if not data:
        return [Decoded(None, "empty file (0 bytes)")]
    if len(data) > max_bytes:
        return [Decoded(None, f"file too large: {len(data)} bytes (limit {max_bytes})")]
    if data[:1024].lstrip().startswith(b"%PDF-"):
        return _pdf_pages(data, max_pixels, max_pages, pdf_dpi)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        pages = _tiff_pages(data, max_pixels, max_pages)
        if pages is not None:
            return pages
    return [decode_scan(data, max_pixels, max_bytes)]


def _count_frames(im, max_pages: int) -> int:
    """Frames in a multi-frame image, counting no further than max_pages + 1 (a hostile TIFF
    can chain IFDs without end)."""
    n = 0
    for i in range(max_pages + 1):
        try:
            im.seek(i)
        except EOFError:
            break
        n = i + 1
    return n


def _tiff_pages(data: bytes, max_pixels: int, max_pages: int) -> list[Decoded] | None:
    """The pages of a multi-page TIFF; None for a single-page TIFF (decoded like any image)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                n = _count_frames(im, max_pages)
                if n <= 1:
                    return None
                if n > max_pages:
                    return [Decoded(None, f"too many pages: more than {max_pages} (limit {max_pages})",
                                    pages=n)]
                return [_tiff_frame(im, i, n, max_pixels) for i in range(n)]
    except Exception:  # a header the single-image path will explain
        return None


def _tiff_frame(im, index: int, pages: int, max_pixels: int) -> Decoded:
    from PIL import ImageOps

    page = index + 1
    try:
        im.seek(index)
        w, h = im.size  # from this page's directory, before its pixels
        if w * h > max_pixels:
            return Decoded(None, f"image too large: {w}x{h} pixels (limit {max_pixels})", page, pages)
        if w < 100 or h < 100:
            return Decoded(None, f"image too small to be a scan: {w}x{h} pixels", page, pages)
        frame = ImageOps.exif_transpose(im.copy())
        return Decoded(_to_gray(frame), None, page, pages)
    except Exception as exc:
        return Decoded(None, f"corrupt TIFF page: {type(exc).__name__}", page, pages)


def _to_gray(frame) -> np.ndarray:
    """Grey uint8 from any Pillow mode; 16-bit pages are scaled, not clipped."""
    if frame.mode.startswith("I;16") or frame.mode in ("I", "F"):
        arr = np.asarray(frame, dtype=np.float64)
        top = 65535.0 if frame.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    return np.asarray(frame.convert("L"), dtype=np.uint8).copy()


def _pdf_pages(data: bytes, max_pixels: int, max_pages: int, dpi: int) -> list[Decoded]:
    import pypdfium2 as pdfium

    scale = dpi / 72.0
    with _PDF_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except Exception as exc:
            return [Decoded(None, f"corrupt PDF: {str(exc)[:120] or type(exc).__name__}")]
        try:
            n = len(pdf)
            if n == 0:
                return [Decoded(None, "PDF without pages")]
            if n > max_pages:
                return [Decoded(None, f"too many pages: {n} (limit {max_pages})", pages=n)]
            out = []
            for i in range(n):
                out.append(_pdf_page(pdf, i, n, scale, max_pixels))
            return out
        finally:
            pdf.close()


def _pdf_page(pdf, index: int, pages: int, scale: float, max_pixels: int) -> Decoded:
    page_no = index + 1
    try:
        page = pdf[index]
        try:
            w_pt, h_pt = page.get_size()
            w, h = round(w_pt * scale), round(h_pt * scale)  # the bitmap size, before rendering
            if not (w > 0 and h > 0) or w * h > max_pixels:
                return Decoded(None, f"page too large: {w}x{h} pixels at this dpi (limit {max_pixels})",
                               page_no, pages)
            if w < 100 or h < 100:
                return Decoded(None, f"page too small to be a scan: {w}x{h} pixels", page_no, pages)
            bitmap = page.render(scale=scale, grayscale=True)
            gray = np.ascontiguousarray(bitmap.to_numpy().reshape(bitmap.height, bitmap.width, -1)[..., 0])
            bitmap.close()
            return Decoded(gray, None, page_no, pages)
        finally:
            page.close()
    except Exception as exc:
        return Decoded(None, f"corrupt PDF page: {type(exc).__name__}", page_no, pages)
