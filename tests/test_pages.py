"""Multi-page scans: a multi-page TIFF or a PDF holds one telegram per page. Each page is
decoded under the same guards as a single image, read, stored and labelled on its own, and
traceable to (file content hash, page)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.decode import decode_pages
from tasks.read import mesa_code_for_page, page_uri


def tiff_bytes(pages: list[np.ndarray], compression: str = "tiff_deflate") -> bytes:
    ims = [Image.fromarray(p) for p in pages]
    buf = io.BytesIO()
    ims[0].save(buf, format="TIFF", save_all=True, append_images=ims[1:], compression=compression)
    return buf.getvalue()


def pdf_bytes(images: list[Image.Image], dpi: int = 200) -> bytes:
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return buf.getvalue()


def with_huge_page(pdf: bytes, at: int, side_pt: float = 5000.0) -> bytes:
    """The PDF with a blank page of side_pt x side_pt points inserted at index `at`: at 200 dpi
    that is 13,889^2 = 193 MP, a bomb if rendered."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    doc.new_page(side_pt, side_pt).close()  # appended last
    order = list(range(len(doc) - 1))
    order.insert(at, len(doc) - 1)
    out = pdfium.PdfDocument.new()
    out.import_pages(doc, order)
    buf = io.BytesIO()
    out.save(buf)
    return buf.getvalue()


def corrupt_tiff_page(data: bytes, index: int) -> bytes:
    """Zero the compressed strips of one page (its directory stays valid)."""
    out = bytearray(data)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(index)
        for offset, length in zip(im.tag_v2[273], im.tag_v2[279], strict=True):
            out[offset : offset + length] = bytes(length)
    return bytes(out)


def test_multipage_tiff_gives_each_page_and_a_reason_for_the_corrupt_one():
    pages = [np.full((300, 200), v, np.uint8) for v in (10, 100, 200)]
    decoded = decode_pages(corrupt_tiff_page(tiff_bytes(pages), 1))
    assert [(d.page, d.pages) for d in decoded] == [(1, 3), (2, 3), (3, 3)]
    assert decoded[0].ok and decoded[0].gray.mean() == 10
    assert not decoded[1].ok and "corrupt TIFF page" in decoded[1].reason
    assert decoded[2].ok and decoded[2].gray.mean() == 200


def test_page_limits_apply_before_decoding():
    pages = [np.full((300, 200), 7, np.uint8)] * 3
    over = decode_pages(tiff_bytes(pages), max_pages=2)
    assert len(over) == 1 and not over[0].ok and "too many pages" in over[0].reason
    small = decode_pages(tiff_bytes(pages), max_pixels=300 * 200 - 1)
    assert all(not d.ok and "too large" in d.reason for d in small) and len(small) == 3
    # a 16-bit page is scaled to 8 bits, not clipped
    deep = decode_pages(tiff_bytes([np.full((300, 200), 32768, np.uint16)] * 2, "raw"))
    assert all(d.ok and d.gray.dtype == np.uint8 and d.gray.mean() == 127 for d in deep)


def test_pdf_pages_render_at_scan_resolution_and_a_huge_page_is_refused_unrendered():
    grey = [Image.fromarray(np.full((400, 300), v, np.uint8)) for v in (30, 220)]
    decoded = decode_pages(with_huge_page(pdf_bytes(grey), at=1))
    assert len(decoded) == 3
    assert decoded[0].ok and decoded[0].gray.shape == (400, 300) and abs(decoded[0].gray.mean() - 30) < 2
    assert not decoded[1].ok and "page too large: 13889x13889" in decoded[1].reason
    assert decoded[2].ok and abs(decoded[2].gray.mean() - 220) < 2
    assert not decode_pages(pdf_bytes(grey), max_pages=1)[0].ok
    for bad in (b"%PDF-1.7\n" + b"\x00" * 500, pdf_bytes(grey)[:300]):
        d = decode_pages(bad)
        assert len(d) == 1 and not d[0].ok and "PDF" in d[0].reason


def test_mesa_code_of_each_page():
    assert mesa_code_for_page("s3://b/2114100001X.jpg", 1, 1) == "2114100001X"
    listed = "file:///s/2114100001X_2114100009X_2114100004X.tif"
    assert [mesa_code_for_page(listed, p, 3) for p in (1, 2, 3)] == [
        "2114100001X", "2114100009X", "2114100004X"]
    ranged = "file:///s/2114100008X-2114100010X.pdf"
    assert [mesa_code_for_page(ranged, p, 3) for p in (1, 2, 3)] == [
        "2114100008X", "2114100009X", "2114100010X"]
    # a name that does not account for every page links none of them
    assert mesa_code_for_page(ranged, 1, 4) is None
    assert mesa_code_for_page(listed, 1, 2) is None
    assert mesa_code_for_page("file:///s/2114100001X-2114200003X.pdf", 1, 3) is None  # two secciones
    assert mesa_code_for_page("file:///s/2114100001X.pdf", 1, 2) is None
    assert page_uri("file:///s/a.pdf", 2, 3) == "file:///s/a.pdf#page=2"
    assert page_uri("file:///s/a.jpg", 1, 1) == "file:///s/a.jpg"


@pytest.mark.slow
def test_ingest_reads_each_page_as_a_telegram(reading_env: Path, monkeypatch, template):
    """Five generated telegrams scanned as a 2-page TIFF and a 3-page PDF (with a bomb page in
    place of the fourth telegram) go through the real ingest flow."""
    from sqlalchemy import select

    from flows.generate import generate_flow, mesa_for
    from flows.ingest import ingest_flow
    from tasks.db import Reading, Scan, Telegram, session_scope
    from tasks.settings import load_settings

    data = reading_env
    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "1")
    seed = 41
    generate_flow(count=5, seed=seed)
    scans = data / "scans"
    codes = [mesa_for(seed, i).code for i in range(5)]
    jpgs = [scans / f"{c}.jpg" for c in codes]
    tif_pages = [np.asarray(Image.open(p).convert("L")) for p in jpgs[:2]]
    (scans / f"{codes[0]}_{codes[1]}.tif").write_bytes(tiff_bytes(tif_pages))
    pdf = with_huge_page(pdf_bytes([Image.open(jpgs[2]), Image.open(jpgs[4])]), at=1)
    (scans / f"{codes[2]}-{codes[4]}.pdf").write_bytes(pdf)
    for p in jpgs:
        p.unlink()
    db_url = load_settings().db_url
    cells = len(template.cells)

    result = ingest_flow()
    assert result["scans"] == 2 and result["read"] == 4 and result["unreadable"] == 1
    with session_scope(db_url) as s:
        rows = s.execute(select(Scan.uri, Scan.page, Scan.pages, Scan.status, Scan.reason,
                                Telegram.mesa_code, Telegram.scan_uri)
                         .outerjoin(Telegram, Telegram.id == Scan.telegram_id)
                         .order_by(Scan.uri, Scan.page)).all()
        per_page = {(r.uri.rsplit("/", 1)[-1], r.page): r for r in rows}
        readings = s.execute(select(Reading.scan_uri, Reading.page, Reading.content_hash,
                                    Telegram.mesa_code)
                             .join(Telegram, Telegram.id == Reading.telegram_id)).all()
    pdf_name, tif_name = f"{codes[2]}-{codes[4]}.pdf", f"{codes[0]}_{codes[1]}.tif"
    assert set(per_page) == {(pdf_name, 1), (pdf_name, 2), (pdf_name, 3), (tif_name, 1), (tif_name, 2)}
    bomb = per_page[(pdf_name, 2)]
    assert bomb.status == "unreadable" and "page too large" in bomb.reason and bomb.pages == 3
    expected = {(tif_name, 1): codes[0], (tif_name, 2): codes[1], (pdf_name, 1): codes[2],
                (pdf_name, 3): codes[4]}
    for key, code in expected.items():
        row = per_page[key]
        assert row.status == "ok" and row.mesa_code == code, (key, row)
        assert row.scan_uri == f"{row.uri}#page={key[1]}"
    assert len(readings) == 4 * cells
    assert {(u.rsplit("/", 1)[-1], p): c for u, p, _, c in readings} == expected
    # every page scored against its own telegram's labels: mislinked pages would score ~10 %
    assert result["cells_scored"] == 4 * cells and result["digit_accuracy"] > 0.7

    # idempotent: the next night reads nothing; a forced re-read replaces, never adds
    assert ingest_flow()["scans"] == 0
    forced = ingest_flow(force=True)
    assert forced["scans"] == 2 and forced["read"] == 4
    with session_scope(db_url) as s:
        assert len(s.execute(select(Reading.id)).all()) == 4 * cells
        assert len(s.execute(select(Scan.id)).all()) == 5
