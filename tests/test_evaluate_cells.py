import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.cell_reader import (
    TIGHT_SPLIT_COST,
    clean_margins,
    keep_writing,
    likelier,
    prepare_cell,
    prepare_cell_versions,
    read_label_csv,
    slant_of,
    strip_underlines,
    writing_fills_crop,
)
from tasks.compose import CellReading


def test_label_csv_skips_labels_that_are_not_plain_numbers():
    cells, skipped = read_label_csv("file,label\na.jpg,12\nb.jpg,4a\nc.jpg,-\nd.jpg,7\n")
    assert [(c.file, c.label) for c in cells] == [("a.jpg", 12), ("d.jpg", 7)] and skipped == 2
    cells, _ = read_label_csv("split,file,label\ntrain,a.jpg,1\nval,b.jpg,2\n", "val")
    assert [c.file for c in cells] == ["b.jpg"]
    with pytest.raises(ValueError, match="file,label"):
        read_label_csv("name,value\na,1\n")


def test_the_slant_of_the_writing_is_measured():
    cell = np.full((80, 140), 255, np.uint8)
    for x in (40, 70, 100):  # strokes whose top is 20 px right of their foot, 40 px up
        cv2.line(cell, (x + 10, 20), (x - 10, 60), 0, 3)
    assert slant_of(cell) == pytest.approx(0.5, abs=0.05)
    assert slant_of(cv2.flip(cell, 1)) == pytest.approx(-0.5, abs=0.05)
    assert slant_of(np.full((80, 140), 255, np.uint8)) == 0.0


def test_black_scanner_margin_is_painted_white():
    img = np.full((60, 100), 230, np.uint8)
    img[:, :25] = 5  # scanner background at the left
    cv2.line(img, (50, 15), (50, 45), 20, 3)  # the writing
    out = clean_margins(img)
    assert out[:, :25].min() == 255 and out[30, 50] < 60


def test_dark_writing_touching_the_edge_of_the_crop_is_not_a_scanner_margin():
    img = np.full((60, 100), 200, np.uint8)
    cv2.line(img, (30, 0), (30, 50), 10, 9)  # a felt-pen stroke running off the top edge
    cv2.line(img, (30, 0), (60, 0), 10, 9)
    out = clean_margins(img)
    assert out[20:50, 27:34].max() < 60  # kept: it runs along a fifth of the top, not half


def _cheque_amount() -> tuple[np.ndarray, list[int]]:
    """'104' written to fill the height of a grey, grainy, cheque-like strip, and the centre
    column of each digit."""
    rng = np.random.default_rng(3)
    img = (175 + rng.normal(0, 4, (56, 170))).clip(0, 255).astype(np.uint8)
    centres = []
    for i, d in enumerate("104"):
        mask = np.zeros_like(img)
        cv2.putText(mask, d, (12 + 52 * i, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.9, 255, 4)
        img[mask > 0] = 35
        centres.append(int(np.nonzero(mask.any(0))[0].mean()))
    return img, centres


def test_a_tight_crop_keeps_digits_that_fill_its_height():
    tight, centres = _cheque_amount()
    assert writing_fills_crop(tight)
    seg = prepare_cell(tight, 6)
    assert seg.kind == "digits"
    for x in centres:  # every digit is still there (boxes are in framed coordinates, +8)
        assert any(bx <= x + 8 <= bx + bw for bx, _, bw, _ in seg.boxes), x
    plain = keep_writing(tight)  # cleaned as a loose crop, the marks taller than 0.7h vanish
    assert (plain[:, centres[0] - 3 : centres[0] + 4] > 200).all()
    loose = np.full((200, 140), 230, np.uint8)  # a register cell: small writing, ruling line
    cv2.line(loose, (130, 0), (130, 199), 20, 3)
    cv2.putText(loose, "27", (40, 110), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 20, 2)
    assert not writing_fills_crop(loose)


def test_in_a_tight_crop_reading_a_blob_as_touching_digits_costs_more():
    rng = np.random.default_rng(5)
    joined = (175 + rng.normal(0, 4, (56, 150))).clip(0, 255).astype(np.uint8)
    for x in (50, 80):  # "00" written joined, filling the crop's height
        cv2.ellipse(joined, (x, 28), (15, 22), 0, 0, 360, 35, 4)
    assert writing_fills_crop(joined)
    seg = prepare_cell(joined, 6)
    splits = [h for g in seg.groups for h in g if len(h) > 1]
    assert splits and all(seg.costs.get(tuple(h), 0.0) >= TIGHT_SPLIT_COST * (len(h) - 1) for h in splits)
    roomy = cv2.copyMakeBorder(joined, 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=230)
    assert not writing_fills_crop(roomy)  # the same blob in a loose crop: no such charge
    seg = prepare_cell(roomy, 6)
    splits = [h for g in seg.groups for h in g if len(h) > 1]
    assert splits and all(seg.costs.get(tuple(h), 0.0) < TIGHT_SPLIT_COST for h in splits)


def test_a_broken_ruling_line_is_not_taken_for_the_writing():
    cell = np.full((200, 140), 230, np.uint8)
    cv2.line(cell, (120, 60), (120, 175), 40, 2)  # a piece of the cell's right rule
    cv2.putText(cell, "2", (50, 110), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 20, 2)
    out = keep_writing(cell)
    assert out[:, 110:130].min() > 200  # the sliver is gone
    assert out[85:112, 45:75].min() < 60  # the digit is kept


def test_a_short_piece_of_a_ruling_line_where_it_bends_is_not_taken_for_the_writing():
    # a register row: small writing near the top, the column's rule down the right side,
    # its lowest piece shifted 2 px (too short to be found as a line on its own)
    cell = np.full((240, 145), 230, np.uint8)
    cv2.line(cell, (130, 0), (130, 175), 40, 2)
    cv2.line(cell, (132, 180), (132, 214), 40, 2)
    cv2.putText(cell, "66", (60, 80), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 20, 2)
    out = keep_writing(cell)
    assert out[:, 120:].min() > 200  # no piece of the rule
    assert out[60:82, 55:95].min() < 60  # the number


def test_a_thin_upright_line_is_not_the_main_mark_when_the_crop_holds_writing():
    # "17" in small writing, and lower down a longer straight stroke (a piece of the page's
    # edge): bigger than the 7, yet the number is the 7 and the thin 1 on its line
    cell = np.full((240, 145), 230, np.uint8)
    cv2.putText(cell, "7", (75, 80), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 20, 2)
    cv2.line(cell, (64, 66), (64, 80), 20, 2)
    cv2.line(cell, (40, 180), (40, 216), 40, 3)
    out = keep_writing(cell)
    assert out[60:84, 72:95].min() < 60 and out[64:82, 62:67].min() < 60  # the 7 and the 1
    assert out[170:230, 30:50].min() > 200  # not the stroke


@pytest.mark.slow
def test_evaluate_cells_on_mnist_digits_drawn_as_cells(use_registry, mnist_sample, tmp_path):
    x, y = mnist_sample
    rows = ["file,label"]
    for i in range(40):
        cell = np.full((70, 140), 235, np.uint8)
        digit = cv2.resize(255 - x[i], (40, 40))
        cell[15:55, 50:90] = np.minimum(cell[15:55, 50:90], digit)
        cv2.imwrite(str(tmp_path / f"{i}.png"), cell)
        rows.append(f"{i}.png,{y[i]}")
    rows.append("bad.png,x1")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = CliRunner().invoke(app, ["evaluate-cells", "--images", str(tmp_path), "--labels",
                                   str(tmp_path / "labels.csv"), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n"] == 40 and report["skipped_not_numbers"] == 1
    assert set(report) >= {"n", "number_accuracy", "by_length", "review", "accuracy_when_ok"}
    assert report["by_length"]["1"]["n"] == 40
    assert report["number_accuracy"] > 0.7
    # every wrong cell is in the run's misread.json, the wrong-and-ok ones first
    from mlflow import MlflowClient

    from tasks.settings import load_settings

    client = MlflowClient(load_settings().mlflow_tracking_uri)
    path = client.download_artifacts(report["mlflow_run_id"], "misread.json", str(tmp_path / "art"))
    misread = json.loads(Path(path).read_text())
    assert len(misread) == round(40 * (1 - report["number_accuracy"]))
    assert all(m["value"] != m["label"] == y[int(m["file"][:-4])] for m in misread)
    statuses = [m["status"] == "ok" for m in misread]
    assert statuses == sorted(statuses, reverse=True) and sum(statuses) == report["misread_ok"]


@pytest.mark.slow
def test_a_lone_dash_is_sent_to_review_outside_the_form(use_registry):
    from tasks import tracking
    from tasks.cell_reader import read_cells
    from tasks.settings import load_settings

    settings = load_settings()
    client = tracking.configure_mlflow(settings)
    model = tracking.load_reader_model(tracking.resolve_model(client, settings.evaluate.model_uri))
    dash = np.full((70, 140), 235, np.uint8)
    cv2.line(dash, (50, 36), (95, 38), 20, 3)  # a ditto mark in a register: not a zero
    seven = np.full((70, 140), 235, np.uint8)
    cv2.putText(seven, "7", (55, 55), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 20, 4)
    got = read_cells([dash, seven], model, 6, 0.5)
    assert (got[0].digits, got[0].status) == ("-", "review") and "dash" in got[0].reason
    assert got[1].status == "ok" and got[1].value == 7


def _components(ink: np.ndarray) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    return sum(1 for i in range(1, n) if stats[i][4] >= 12)


def test_an_underline_joined_to_the_digits_is_stripped_and_the_digits_come_apart():
    ink = np.zeros((90, 160), np.uint8)
    cv2.putText(ink, "30", (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 3)
    cv2.line(ink, (30, 62), (130, 57), 255, 3)  # a slanted underline touching both digits' feet
    assert _components(ink) == 1
    out = strip_underlines(ink)
    assert _components(out) >= 2
    for rows, cols in ((slice(58, 66), slice(28, 40)), (slice(53, 61), slice(118, 133))):  # its ends
        assert out[rows, cols].sum() < 0.1 * ink[rows, cols].sum()
    np.testing.assert_array_equal(out[:48], ink[:48])  # the digits above their feet are untouched


@pytest.mark.parametrize("text", ["77", "69", "0"])
def test_digits_without_a_long_low_stroke_keep_all_their_ink(text):
    ink = np.zeros((90, 160), np.uint8)
    cv2.putText(ink, text, (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 3)
    np.testing.assert_array_equal(strip_underlines(ink), ink)


def test_a_long_base_of_a_2_is_stripped_too_which_is_why_both_readings_are_scored():
    ink = np.zeros((90, 160), np.uint8)
    cv2.putText(ink, "2", (60, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 3)
    assert strip_underlines(ink)[50:62].sum() < ink[50:62].sum()


def test_a_lone_dash_is_not_stripped():
    ink = np.zeros((70, 140), np.uint8)
    cv2.line(ink, (50, 36), (95, 38), 255, 3)
    np.testing.assert_array_equal(strip_underlines(ink), ink)


def test_a_thin_mark_standing_apart_from_the_number_is_dropped_but_a_near_1_is_kept():
    cell = np.full((200, 140), 235, np.uint8)
    cv2.putText(cell, "15", (70, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 20, 3)
    alone = keep_writing(cell)
    assert (alone[:, 60:130] < 128).sum() > 200  # the number, its 1 included
    cv2.line(cell, (20, 80), (21, 118), 20, 2)  # a page edge's shadow, far left of the number
    np.testing.assert_array_equal(keep_writing(cell), alone)


def test_a_blank_cell_and_a_number_without_underline_are_read_once_a_blank_one_empty():
    blank = np.full((200, 140), 235, np.uint8)
    segs = prepare_cell_versions(blank, 6, without_underlines=True)
    assert [(s.kind, s.reason) for s in segs] == [("empty", "no ink in the cell")]
    plain = np.full((200, 300), 235, np.uint8)  # wide: the underline is no ruling line
    cv2.putText(plain, "70", (120, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 20, 3)
    assert len(prepare_cell_versions(plain, 6, without_underlines=True)) == 1  # nothing to strip
    underlined = plain.copy()
    cv2.line(underlined, (116, 117), (168, 115), 20, 3)
    cv2.line(underlined, (132, 108), (132, 117), 20, 3)  # the 7's foot joins the underline
    assert len(prepare_cell_versions(underlined, 6, without_underlines=True)) == 2


def underlined_tall_cells() -> list[np.ndarray]:
    """Numbers in tall register-like crops, each underlined with its last digit joined to the
    line: as they are, the number and its line make one flat mark."""
    cells = []
    for text in ("70", "25", "36", "58", "93"):
        cell = np.full((200, 300), 235, np.uint8)
        cv2.putText(cell, text, (120, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 20, 3)
        cv2.line(cell, (110, 118), (175, 116), 20, 3)
        cv2.line(cell, (150, 100), (150, 118), 20, 3)
        cells.append(cell)
    return cells


def test_a_number_joined_to_its_underline_is_no_dash_and_comes_apart_without_the_line():
    # flat for its tall crop, but its columns cross the ink twice or more: loops, not a dash
    for cell in underlined_tall_cells():
        as_is, stripped = prepare_cell_versions(cell, 6, without_underlines=True)
        assert as_is.kind == "digits" and len(as_is.groups) == 1
        assert stripped.kind == "digits" and len(stripped.groups) == 2


def test_the_kept_reading_is_the_models_likeliest_and_a_dash_never_beats_digits():
    dash = CellReading(0, "-", 1.0, "review")
    blank = CellReading(None, "", 1.0, "empty")
    digits = [CellReading(70, "70", c, "review") for c in (0.6, 0.8, 0.8)]
    assert likelier([dash, digits[0]]) == 1  # the rule's confidence of 1 does not count
    assert likelier([blank, digits[0]]) == 1
    assert likelier([digits[0], digits[1]]) == 1
    assert likelier([digits[1], digits[2]]) == 0  # a tie keeps the cell as it is
    assert likelier([dash, blank]) == 0


def _five(width: int) -> np.ndarray:
    """A "5" in a register cell: its top bar and its bowl dark, the stem that joins them faint
    (local contrast ~30 grey levels, under the ink threshold of 40), strokes `width` px wide."""
    cell = np.full((200, 120), 200, np.uint8)
    cv2.line(cell, (50, 60), (75, 60), 110, width)  # top bar
    cv2.line(cell, (50, 60), (53, 92), 165, width)  # stem, faint, down to the bowl
    cv2.ellipse(cell, (60, 108), (14, 18), 0, -120, 150, 110, width)  # bowl
    return cell


def test_faint_ink_joins_the_broken_strokes_of_thin_writing_only():
    """A fine nib's "5" whose stem is fainter than the ink threshold broke into its top bar and
    its bowl, and only the bowl's line of writing was kept (then misread). With thin strokes
    the faint stem joins them and the whole digit is kept; thick strokes are left as they are
    (on cheques, faint ink joined printed background to the digits)."""
    thin = keep_writing(_five(1))
    assert thin[58:63, 55:75].min() < 80  # the top bar is kept
    assert thin[95:125, 45:75].min() < 80  # and the bowl
    thick = keep_writing(_five(3))
    assert thick[95:128, 42:78].min() < 80
    assert thick[55:66, 55:75].min() > 180  # the bar stays apart, on another line: dropped


def test_the_width_of_strokes_is_measured():
    from tasks.cell_reader import stroke_width

    for thickness, width in ((1, 1), (3, 5), (5, 7)):  # OpenCV's thickness 3 draws 5 px
        ink = np.zeros((100, 200), np.uint8)
        cv2.line(ink, (20, 50), (180, 50), 255, thickness)
        assert np.count_nonzero(ink.any(axis=1)) == width
        assert stroke_width(ink) == pytest.approx(width, rel=0.1)
    assert stroke_width(np.zeros((10, 10), np.uint8)) == 0.0


def test_a_fine_nibs_digits_in_a_real_register_are_kept_whole(shared_data):
    """Danish val, page K2845_0162a: "5.", "7." and "6" in a faint, thin hand, each kept whole
    (at least 17 px of writing height; before, 12, 11 and 6 px of fragments: a "5" kept as its
    top bar, a "6" as the bottom of its loop)."""
    folder = shared_data / "danish_rowid_val" / "images"
    for row in (0, 1, 2):
        gray = cv2.imread(str(folder / f"died_K2845_0162a-DM_row_id_{row}.Jpg"), cv2.IMREAD_GRAYSCALE)
        assert gray is not None
        ys = np.nonzero(keep_writing(clean_margins(gray)) < 128)[0]
        assert ys.max() - ys.min() + 1 >= 17, row


def test_a_cheques_tall_1s_are_not_taken_for_ruling_lines(shared_data):
    """ORAND train, "21312" in felt pen: both "1"s span 0.9 of the tight crop's height (the
    labelled boxes put them at columns 45-53 and 106-114). Taken for vertical rules, they were
    removed and the number read "2312"."""
    root = shared_data / "orand_car_a" / "images" / "train2017"
    gray = cv2.imread(str(root / "a_car_000996_png.rf.5605b9c391e7bbbcde4208c5fed27df4.jpg"),
                      cv2.IMREAD_GRAYSCALE)
    assert gray is not None and writing_fills_crop(clean_margins(gray))
    centres = [bx - 8 + bw / 2 for bx, _, bw, _ in prepare_cell(gray, 6).boxes]  # framed: +8
    for x0, x1 in ((45, 53), (106, 114)):
        assert any(x0 <= c <= x1 for c in centres), (x0, centres)


def test_misread_cells_lists_wrong_cells_the_unseen_ones_first():
    from tasks.cell_reader import LabelledCell, misread_cells
    from tasks.compose import CellReading

    readings = [CellReading(12, "12", 0.99, "ok"), CellReading(17, "17", 0.6, "review", "unsure"),
                CellReading(40, "40", 0.95, "ok"), CellReading(None, "", 0.0, "review", "empty"),
                CellReading(18, "18", 0.97, "ok")]
    cells = [LabelledCell(f"{i}.png", y) for i, y in enumerate((12, 11, 46, 5, 13))]
    got = misread_cells(readings, cells)
    assert [m["file"] for m in got] == ["4.png", "2.png", "1.png", "3.png"]
    assert got[0] == {"file": "4.png", "label": 13, "read": "18", "value": 18, "status": "ok",
                      "confidence": 0.97, "reason": None}
