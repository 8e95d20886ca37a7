import copy

import cv2
import numpy as np
import pytest
import yaml

from tasks.errors import CifrasError
from tasks.overlay import draw_template
from tasks.reference import reference_values
from tasks.settings import CONF_DIR
from tasks.template import load_template, parse_template, template_path


@pytest.fixture
def raw():
    return yaml.safe_load(template_path("telegrama_nacional_2021").read_text())


def test_national_form_has_every_cell_and_relation(template):
    ids = set(template.cell_ids)
    assert len(ids) == 31
    rows = ["87", *[str(r) for r in range(501, 509)], "blanco", "nulos", "recurridos", "impugnada", "total"]
    for category in ("senadores", "diputados"):
        assert template.rows(category) == rows
    assert {"header/sobres", "header/electores", "header/diferencia"} <= ids
    assert template.cell("header/sobres").subboxes == 3
    assert {r.name for r in template.relations} == {
        "senadores_sum", "diputados_sum", "senadores_total_is_sobres", "diputados_total_is_sobres",
        "diferencia"}


def test_reference_transcription_satisfies_the_relations(template, reference_scan):
    _, truth = reference_scan
    values = reference_values(truth)
    assert template.violations(values) == []
    values["senadores/503"] += 1
    assert set(template.violations(values)) == {"senadores_sum"}


def test_overlapping_cells_are_refused(raw):
    bad = copy.deepcopy(raw)
    bad["cells"][4]["box"] = list(bad["cells"][3]["box"])
    with pytest.raises(CifrasError, match="overlap"):
        parse_template(bad)


def test_box_off_the_page_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["cells"][0]["box"] = [1650, 100, 100, 50]
    with pytest.raises(CifrasError, match="off the 1700x2800 page"):
        parse_template(bad)


def test_relation_with_unknown_cell_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["relations"][0]["terms"]["senadores/999"] = 1
    with pytest.raises(CifrasError, match="unknown cell senadores/999"):
        parse_template(bad)


def test_malformed_box_is_one_clear_error(raw):
    bad = copy.deepcopy(raw)
    bad["cells"][0]["box"] = [1, 2, 3]
    with pytest.raises(CifrasError, match=r"cells\.0\.box"):
        parse_template(bad)


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(CifrasError, match="telegrama_nacional_2021"):
        load_template("no_such_form", CONF_DIR)


def ink(gray: np.ndarray, box, inset: int = 4) -> float:
    x, y, w, h = box
    patch = gray[y + inset : y + h - inset, x + inset : x + w - inset]
    return float((patch < 128).mean())


def test_reference_handwriting_falls_inside_the_cells(template, reference_scan):
    scan, truth = reference_scan
    gray = cv2.imread(str(scan), cv2.IMREAD_GRAYSCALE)
    assert gray.shape == (template.page.height, template.page.width)
    values = reference_values(truth)
    for cell in template.cells:
        assert cell.id in values
        # every cell of the reference holds writing (a number or a dash)
        assert ink(gray, cell.box) > 0.004, cell.id
        # the same box moved into the blank right margin holds none
        _, y, w, h = cell.box
        margin = (1562, y, min(w, 125), h)  # right of the table: blank paper
        assert ink(gray, margin) < 0.002, cell.id
    # the table's empty areas: the row just above the value cells and the page margins
    assert ink(gray, (1580, 700, 100, 1200)) < 0.002


def test_overlay_draws_on_a_copy(template):
    page = np.full((template.page.height, template.page.width), 255, np.uint8)
    out = draw_template(page, template)
    assert out.shape == (2800, 1700, 3)
    x, y, w, _ = template.cell("senadores/503").box
    assert (out[y, x + w // 2] != 255).any()  # the box edge is drawn
    assert page.min() == 255
