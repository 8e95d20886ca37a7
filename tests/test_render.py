"""The scan generator: plausible vote values, deterministic pages, handwriting where the
template says it is, real digit pools, and a scan matrix that tells where the form landed."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.digit_pools import DigitPool, load_pool
from tasks.errors import CifrasError
from tasks.render import (
    WriterStyle,
    render_handwriting,
    render_telegram,
    sample_mesa_text,
    sample_writer,
    written_text,
)
from tasks.scan_effects import apply_matrix, degrade, encode_jpeg
from tasks.template import Template, load_template
from tasks.vote_values import sample_values

TEMPLATE = "telegrama_nacional_2021"
INK = 200  # a handwriting pixel darker than this is ink
MESA = {"distrito": "SANTA FE", "seccion": "1 - BELGRANO", "circuito": "402 - ARMSTRONG", "mesa": "1",
        "code": "2100100001X0101"}


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def font_pool() -> DigitPool:
    """Digits drawn with a Hershey font: lets the renderer be tested without the shared data."""
    digits = []
    for d in range(10):
        crops = []
        for face in (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX):
            img = np.zeros((40, 32), np.uint8)
            cv2.putText(img, str(d), (4, 34), face, 1.1, 255, 3, cv2.LINE_AA)
            ys, xs = np.nonzero(img > 40)
            crops.append(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy())
        digits.append(tuple(crops))
    return DigitPool("font", tuple(digits))


def _page(template: Template, pool: DigitPool, seed: int) -> tuple[np.ndarray, dict[str, str]]:
    rng = np.random.default_rng(seed)
    values = sample_values(template, rng)
    style = sample_writer(rng)
    return render_telegram(template, values, pool, rng, style, sample_mesa_text(rng))


# --- values ----------------------------------------------------------------------------------


def test_values_satisfy_every_relation_and_stay_in_range(template: Template) -> None:
    for seed in range(300):
        v = sample_values(template, np.random.default_rng(seed))
        assert set(v) == set(template.cell_ids)
        assert template.violations(v) == [], seed
        assert 150 <= v["header/electores"] <= 330
        assert 0 <= v["header/diferencia"] <= 2
        assert v["header/sobres"] == v["header/electores"] + v["header/diferencia"] <= 350
        for cell in template.cells:
            assert 0 <= v[cell.id] < 10**cell.max_digits, cell.id
        for cat in ("senadores", "diputados"):
            assert v[f"{cat}/total"] == v["header/sobres"]
            assert v[f"{cat}/blanco"] <= 15 and v[f"{cat}/nulos"] <= 10
            assert v[f"{cat}/recurridos"] <= 2 and v[f"{cat}/impugnada"] <= 2


def test_values_look_like_a_mesa(template: Template) -> None:
    """A few parties take most votes; recurridos are almost always zero."""
    tops, recurridos = [], []
    for seed in range(300):
        v = sample_values(template, np.random.default_rng(seed))
        parties = sorted((v[c.id] for c in template.cells if c.category == "senadores" and c.row.isdigit()),
                         reverse=True)
        tops.append(sum(parties[:3]) / max(sum(parties), 1))
        recurridos.append(v["senadores/recurridos"])
    assert np.median(tops) > 0.6
    assert np.mean(np.array(recurridos) == 0) > 0.85


# --- rendering -------------------------------------------------------------------------------


def test_same_seed_same_page_and_jpeg(template: Template, font_pool: DigitPool) -> None:
    outs = []
    for _ in range(2):
        page, written = _page(template, font_pool, 5)
        rng = np.random.default_rng(99)
        scan, m = degrade(page, rng, fax_rate=0.5)
        outs.append((page.tobytes(), written, scan.tobytes(), m.tobytes(), encode_jpeg(scan, rng)))
    assert outs[0] == outs[1]
    assert _page(template, font_pool, 6)[0].tobytes() != outs[0][0]


def test_page_and_scan_have_the_template_size(template: Template, font_pool: DigitPool) -> None:
    page, _ = _page(template, font_pool, 1)
    shape = (template.page.height, template.page.width)
    assert page.shape == shape and page.dtype == np.uint8
    assert page.max() == 255 and page.min() == 0  # white paper, black rules
    for seed in range(4):
        scan, m = degrade(page, np.random.default_rng(seed), fax_rate=0.5)
        assert scan.shape == shape and scan.dtype == np.uint8 and m.shape == (2, 3)
        jpg = encode_jpeg(scan, np.random.default_rng(seed))
        assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_GRAYSCALE).shape == shape


def test_written_text_follows_the_writer(template: Template, font_pool: DigitPool) -> None:
    header, table = template.cell("header/diferencia"), template.cell("senadores/503")
    style = sample_writer(np.random.default_rng(0))
    boxes = dataclasses.replace(style, header_boxes=True, pad_table=True, zero="-")
    assert written_text(4, header, boxes) == "004" and written_text(0, header, boxes) == "000"
    assert written_text(15, table, boxes) == "015" and written_text(0, table, boxes) == "-"
    free = dataclasses.replace(style, header_boxes=False, pad_table=False, zero="")
    assert written_text(4, header, free) == "4" and written_text(0, table, free) == ""
    for seed in range(30):
        _, written = _page(template, font_pool, seed)
        values = sample_values(template, np.random.default_rng(seed))
        for cid, text in written.items():
            assert (int(text) if text not in ("", "-") else 0) == values[cid], (seed, cid, text)


def _cell_ink(hand: np.ndarray, box: tuple[int, int, int, int], grow: int) -> int:
    x, y, w, h = box
    return int((hand[max(y - grow, 0) : y + h + grow, max(x - grow, 0) : x + w + grow] < INK).sum())


def test_handwriting_stays_in_its_cell(template: Template, font_pool: DigitPool) -> None:
    """Each cell written alone: >90 % of its ink within its box grown by 4 px, even when the
    writer is made to write every number too big."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        values = sample_values(template, rng)
        style = sample_writer(rng)
        if seed % 2:
            style = dataclasses.replace(style, overflow_rate=1.0)
        for cell in template.cells:
            hand, written = render_handwriting(template, {cell.id: values[cell.id]}, font_pool, rng, style)
            total = int((hand < INK).sum())
            if written[cell.id]:
                assert total > 0, (seed, cell.id)
                assert _cell_ink(hand, cell.box, 4) / total > 0.9, (seed, cell.id, written[cell.id])
            else:
                assert total == 0, (seed, cell.id)


def test_empty_cells_have_no_handwriting(template: Template, font_pool: DigitPool) -> None:
    seen_empty = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        values = sample_values(template, rng)
        style = dataclasses.replace(sample_writer(rng), zero="", overflow_rate=0.0)
        hand, written = render_handwriting(template, values, font_pool, rng, style)
        for cell in template.cells:
            if written[cell.id] == "":
                seen_empty += 1
                assert _cell_ink(hand, cell.box, 0) == 0, (seed, cell.id)
            else:
                assert _cell_ink(hand, cell.box, 0) > 0, (seed, cell.id)
    assert seen_empty > 20


def test_render_telegram_draws_the_handwriting_layer(template: Template, font_pool: DigitPool) -> None:
    rng = np.random.default_rng(3)
    values = sample_values(template, rng)
    style: WriterStyle = sample_writer(rng)
    state = rng.bit_generator.state
    page, written = render_telegram(template, values, font_pool, rng, style, MESA, signatures=False)
    rng.bit_generator.state = state
    hand, written2 = render_handwriting(template, values, font_pool, rng, style)
    assert written == written2
    assert np.all(page <= hand)  # every handwriting pixel is on the page, composited by minimum


def test_render_is_fast_enough(template: Template, font_pool: DigitPool) -> None:
    _page(template, font_pool, 0)  # printed form cached
    start = time.perf_counter()
    for seed in range(3):
        page, _ = _page(template, font_pool, seed)
        rng = np.random.default_rng(seed)
        encode_jpeg(degrade(page, rng)[0], rng)
    assert (time.perf_counter() - start) / 3 < 1.0  # ~0.04 s on a 2-core machine; generous for CI


# --- the scan matrix -------------------------------------------------------------------------


def _rule_y(img: np.ndarray, x: float, y: float) -> float:
    """Centre of the dark rule crossing column x near y (ink-weighted, over a 7 px wide strip)."""
    xi, yi = round(x), round(y)
    prof = 255.0 - img[yi - 9 : yi + 10, xi - 3 : xi + 4].astype(np.float64).mean(axis=1)
    prof[prof < 0.35 * prof.max()] = 0
    return yi - 9 + float((np.arange(len(prof)) * prof).sum() / prof.sum())


def _rule_x(img: np.ndarray, x: float, y: float) -> float:
    xi, yi = round(x), round(y)
    prof = 255.0 - img[yi - 3 : yi + 4, xi - 9 : xi + 10].astype(np.float64).mean(axis=0)
    prof[prof < 0.35 * prof.max()] = 0
    return xi - 9 + float((np.arange(len(prof)) * prof).sum() / prof.sum())


def test_degrade_matrix_says_where_the_rules_land(template: Template, font_pool: DigitPool) -> None:
    """Points on printed rules of the clean page, mapped by the returned matrix, fall on
    those rules in the scan (grey and fax-look scans alike)."""
    page, _ = render_telegram(template, {}, font_pool, np.random.default_rng(0),
                              sample_writer(np.random.default_rng(0)), MESA, signatures=False)
    # points in the value columns and along the table's sides, away from printed text
    h_pts = [(1230.0, y) for y in (856, 1092, 1329, 1896)] + [(1450.0, 934), (1450.0, 1642)]
    v_pts = [(x, 1200.0) for x in (1116, 1343, 1552)] + [(131.0, 1600.0)]
    h_pts = [(x, _rule_y(page, x, y)) for x, y in h_pts]  # the rule on the clean page
    v_pts = [(_rule_x(page, x, y), y) for x, y in v_pts]
    for seed in range(8):
        scan, m = degrade(page, np.random.default_rng(seed), fax_rate=0.5)
        for x, y in h_pts:
            (u, v), = apply_matrix(m, np.array([[x, y]]))
            assert abs(_rule_y(scan, u, v) - v) < 1.5, (seed, x, y)
        for x, y in v_pts:
            (u, v), = apply_matrix(m, np.array([[x, y]]))
            assert abs(_rule_x(scan, u, v) - u) < 1.5, (seed, x, y)


def test_printed_rules_match_the_template(template: Template, font_pool: DigitPool) -> None:
    """The clean page draws the table rules where the template (measured on the real scan)
    says; cell boxes are clear of rule ink."""
    page, _ = render_telegram(template, {}, font_pool, np.random.default_rng(0),
                              sample_writer(np.random.default_rng(0)), MESA, signatures=False)
    for y in template.registration.horizontal_rules[2:]:
        assert abs(_rule_y(page, 840, y) - y) <= 1.0, y
    for x in template.registration.vertical_rules[2:]:
        assert abs(_rule_x(page, x, 1285) - x) <= 1.0, x
    for cell in template.cells:
        x, y, w, h = cell.box
        inner = page[y : y + h, x : x + w].copy()
        for e in cell.subbox_edges:  # the header's dotted sub-box separators are inside its box
            inner[:, e - x - 2 : e - x + 2] = 255
        assert (inner < 128).sum() == 0, cell.id


# --- digit pools -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mnist", "usps", "optdigits", "orand", "usps:test", "orand:val"])
def test_pool_sources_load_all_digits(source: str, shared_data: Path) -> None:
    mnist = shared_data / "mnist" / "mnist.npz"
    needed = {"mnist": mnist, "usps": shared_data / "usps", "optdigits": shared_data / "optdigits",
              "orand": shared_data / "orand_car_a"}[source.split(":")[0]]
    if not needed.exists():
        pytest.skip(f"{needed} not in the shared data")
    pool = load_pool(source, shared_data, mnist)
    assert len(pool.digits) == 10 and all(n > 0 for n in pool.counts()), pool.counts()
    rng = np.random.default_rng(0)
    for d in range(10):
        crop = pool.sample(d, rng)
        assert crop.dtype == np.uint8 and crop.ndim == 2 and crop.max() > 128
        ink = crop >= 40  # tight: ink on every side of the crop
        assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
    assert load_pool(source, shared_data, mnist) is pool  # cached


def test_mnist_pool_is_the_test_split(mnist_npz: Path) -> None:
    pool = load_pool("mnist", None, mnist_npz)
    assert pool.name == "mnist:test" and sum(pool.counts()) == 10000
    with pytest.raises(CifrasError, match="test split"):
        load_pool("mnist:train", None, mnist_npz)


def test_pool_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CifrasError, match="unknown digit source"):
        load_pool("emnist", tmp_path)
    with pytest.raises(CifrasError, match="not found"):
        load_pool("usps", tmp_path)
    with pytest.raises(CifrasError, match="not found"):
        load_pool("orand", tmp_path)
    with pytest.raises(CifrasError, match="mnist"):
        load_pool("mnist", tmp_path, None)


def test_renders_with_every_real_pool(template: Template, shared_data: Path) -> None:
    mnist = shared_data / "mnist" / "mnist.npz"
    for source in ("mnist", "usps", "optdigits", "orand"):
        try:
            pool = load_pool(source, shared_data, mnist)
        except CifrasError:
            continue
        page, written = _page(template, pool, 11)
        assert page.shape == (template.page.height, template.page.width)
        assert set(written) == set(template.cell_ids)
