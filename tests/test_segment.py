"""Digit segmentation on crafted cells (dark ink on white, 8 px pad around a 200x60 box)."""

import cv2
import numpy as np
import pytest

from tasks.segment import (
    ALTERNATIVE_CUT_COST,
    MERGE_COST,
    TRAIL_COST,
    _split_touching,
    candidate_splits,
    crop_cell,
    one_stroke,
    percentile_u8,
    rule_lines,
    rule_lines_many,
    segment_cell,
    segment_cells,
)

PAD = 8
H, W = 60 + 2 * PAD, 200 + 2 * PAD


def blank() -> np.ndarray:
    return np.full((H, W), 255, np.uint8)


def with_rules(img: np.ndarray) -> np.ndarray:
    """The printed rules around the cell, as a slightly misregistered crop would show them."""
    img = img.copy()
    cv2.line(img, (0, 4), (W - 1, 4), 0, 3)
    cv2.line(img, (0, H - 5), (W - 1, H - 5), 0, 3)
    cv2.line(img, (3, 0), (3, H - 1), 0, 3)
    cv2.line(img, (W - 4, 0), (W - 4, H - 1), 0, 3)
    return img


def one(img, x, y, h=36, w=14):
    cv2.line(img, (x + w // 2, y), (x + w // 2, y + h), 0, 4)


def zero(img, cx, cy):
    cv2.ellipse(img, (cx, cy), (11, 18), 0, 0, 360, 0, 4)


def test_empty_cell_is_empty_even_with_rules():
    seg = segment_cell(with_rules(blank()), PAD, 3)
    assert seg.kind == "empty" and seg.digits == []
    assert "no ink" in seg.reason


def test_rules_are_removed_and_digits_found_in_order():
    img = with_rules(blank())
    one(img, 60, 20)
    zero(img, 110, 38)
    seg = segment_cell(img, PAD, 3)
    assert seg.kind == "digits" and [len(g) for g in seg.groups] == [1, 1]
    xs = [b[0] for b in seg.boxes]
    assert xs == sorted(xs)
    assert all(b[3] < 45 for b in seg.boxes)  # no rule glued to a digit


def test_dash_is_recognised():
    img = with_rules(blank())
    cv2.line(img, (80, 40), (130, 42), 0, 4)
    assert segment_cell(img, PAD, 3).kind == "dash"


def test_a_dash_is_one_stroke_even_with_pinholes_and_a_hooked_end():
    dash = np.zeros((12, 60), np.uint8)
    cv2.line(dash, (2, 6), (57, 5), 1, 4)
    dash[6, 10:50:6] = 0  # pinholes of a dry pen
    cv2.line(dash, (57, 5), (53, 10), 1, 2)  # a hook
    assert one_stroke(dash)
    loops = np.zeros((24, 60), np.uint8)
    cv2.putText(loops, "58", (2, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 1, 2)
    cv2.line(loops, (0, 22), (36, 22), 1, 2)  # joined to its underline: flat, but loops
    assert not one_stroke(loops)


def test_touching_pair_offers_a_split_hypothesis():
    img = blank()
    zero(img, 90, 38)
    zero(img, 112, 38)  # overlapping ellipses: one blob, two digits
    seg = segment_cell(img, PAD, 3)
    assert len(seg.groups) == 1
    whole, pair = seg.groups[0][0], seg.groups[0][1]
    assert len(whole) == 1 and len(pair) == 2
    widths = [seg.boxes[i][2] for i in pair]
    assert abs(widths[0] - widths[1]) < 10 and sum(widths) <= seg.boxes[whole[0]][2] + 2


def test_a_blob_is_cut_into_no_more_pieces_than_whole_narrow_digits_fit():
    # NARROWEST_DIGIT is 0.4 of the height: a blob as wide as tall holds two such digits, not three
    assert candidate_splits(80, 100, 100, 3, False) == [1]
    assert candidate_splits(100, 100, 100, 3, False) == [1, 2]
    assert candidate_splits(115, 100, 100, 3, False) == [1, 2]
    assert candidate_splits(125, 100, 100, 3, False) == [1, 2, 3]
    assert candidate_splits(300, 100, 100, 3, False) == [1, 2, 3]  # never more than the cell holds
    assert candidate_splits(300, 100, 100, 3, True) == [1]  # a printed sub-box holds one digit
    assert candidate_splits(300, 50, 100, 3, False) == [1]  # a short mark beside taller digits


def test_a_flat_tail_cut_off_a_blob_is_no_digit_of_its_split():
    img = blank()
    one(img, 88, 20)
    zero(img, 112, 38)
    cv2.line(img, (95, 38), (101, 38), 0, 4)  # the 1 joined to the 0
    cv2.line(img, (123, 50), (150, 50), 0, 4)  # and a long tail after it, low and flat
    seg = segment_cell(img, PAD, 3)
    assert len(seg.groups) == 1 and len(seg.groups[0]) >= 2
    whole = seg.boxes[seg.groups[0][0][0]]
    for hypothesis in seg.groups[0][1:]:
        for i in hypothesis:  # every digit of every split is a digit's height, not a stroke's
            assert seg.boxes[i][3] >= 0.3 * whole[3]


def test_narrow_digit_has_no_split_hypothesis():
    img = blank()
    one(img, 100, 20)
    seg = segment_cell(img, PAD, 3)
    assert seg.groups == [[[0]]]


def test_broken_stroke_stays_one_digit():
    img = blank()
    cv2.line(img, (100, 20), (100, 35), 0, 4)
    cv2.line(img, (100, 39), (100, 56), 0, 4)  # a "1" with a gap
    seg = segment_cell(img, PAD, 3)
    assert seg.groups == [[[0]]]


def test_specks_are_dropped():
    img = blank()
    for x, y in ((30, 20), (150, 50), (170, 25)):
        img[y : y + 2, x : x + 2] = 0
    assert segment_cell(img, PAD, 3).kind == "empty"


def test_scribbled_cell_is_unreadable():
    img = blank()
    rng = np.random.default_rng(0)
    for _ in range(60):
        p = rng.integers([PAD, PAD], [W - PAD, H - PAD], size=(2, 2))
        cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), 0, 6)
    seg = segment_cell(img, PAD, 3)
    assert seg.kind == "unreadable" and "scribbled" in seg.reason


def test_sub_boxes_hold_one_digit_each():
    img = blank()
    edges = [PAD + 66, PAD + 133]
    for x in edges:  # dotted printed separators
        for y in range(PAD, H - PAD, 6):
            cv2.line(img, (x, y), (x, y + 2), 0, 2)
    zero(img, PAD + 30, 38)
    zero(img, PAD + 100, 38)
    one(img, PAD + 160, 20)
    seg = segment_cell(img, PAD, 3, edges)
    assert [len(g) for g in seg.groups] == [1, 1, 1] and len(seg.digits) == 3


def test_crop_follows_the_affine_map():
    page = np.full((300, 400), 255, np.uint8)
    page[100:120, 200:210] = 0
    shift = np.array([[1, 0, 15], [0, 1, -10]], np.float64)  # scan = template + (15, -10)
    moved = cv2.warpAffine(page, shift, (400, 300), borderValue=255)
    crop = crop_cell(moved, shift, (190, 90, 40, 40), pad=0)
    ys, xs = np.nonzero(crop < 128)
    assert (ys.min(), xs.min()) == (10, 10)


def test_a_flat_mark_beside_the_digits_is_dropped():
    img = blank()
    one(img, 60, 20)
    zero(img, 110, 38)
    cv2.line(img, (140, 40), (175, 41), 0, 4)  # "10 -", as a cheque amount ends
    seg = segment_cell(img, PAD, 3)
    assert len(seg.groups) == 2 and all(b[0] < 135 for b in seg.boxes)
    assert any("flat mark" in n for n in seg.notes)


def test_a_thin_digit_in_a_tall_crop_is_not_a_speck():
    # a register row: writing 20 px tall in a 200 px crop; the "1" is a thin stroke whose
    # area is under the crop's speck size and shorter than a quarter of the crop
    img = np.full((200 + 2 * PAD, 130 + 2 * PAD), 255, np.uint8)
    cv2.line(img, (60, 100), (60, 119), 0, 1)
    cv2.ellipse(img, (80, 110), (6, 10), 0, 0, 360, 0, 2)
    seg = segment_cell(img, PAD, 3)
    assert seg.kind == "digits" and len(seg.groups) == 2
    dust = np.full_like(img, 255)
    for x, y in ((40, 50), (90, 150)):
        dust[y : y + 2, x : x + 2] = 0
    assert segment_cell(dust, PAD, 3).kind == "empty"


def test_cuts_between_slanted_touching_digits_follow_the_slant():
    img = blank()
    strokes = [((100, 20), (80, 60)), ((118, 20), (98, 60))]  # leaning right, 0.5 px per row
    for top, foot in strokes:
        cv2.line(img, top, foot, 0, 3)
    cv2.line(img, (90, 40), (108, 40), 0, 3)  # joined at mid-height

    def has(s, i, point):  # the cut-out digit i holds ink at this cell point
        bx, by, bw, bh = s.boxes[i]
        x, y = point[0] - bx, point[1] - by
        near = s.digits[i][max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        return 0 <= x < bw and 0 <= y < bh and near.max() > 0

    def whole_strokes(s):  # each piece of the pair holds both ends of one stroke, none of the other
        pair = next(h for h in s.groups[0] if len(h) == 2)
        return all(has(s, i, top) and has(s, i, foot)
                   and not has(s, i, strokes[1 - k][0]) and not has(s, i, strokes[1 - k][1])
                   for k, (i, (top, foot)) in enumerate(zip(pair, strokes, strict=True)))

    assert whole_strokes(segment_cell(img, PAD, 3, shear=0.5))
    assert not whole_strokes(segment_cell(img, PAD, 3))  # an upright cut cannot part them


def test_a_lead_in_stroke_does_not_become_a_piece_of_its_own():
    img = blank()
    zero(img, 100, 38)
    zero(img, 122, 38)  # two touching zeros
    cv2.line(img, (80, 50), (90, 46), 0, 2)  # a thin lead-in stroke into the first, as in "30"
    seg = segment_cell(img, PAD, 3)
    pair = next(h for h in seg.groups[0] if len(h) == 2)
    height = seg.boxes[seg.groups[0][0][0]][3]
    assert all(seg.boxes[i][2] >= 0.3 * height for i in pair)
    assert all(seg.boxes[i][3] >= 0.8 * height for i in pair)  # each piece holds a whole zero


def test_histogram_percentile_is_numpys_percentile():
    """The paper level comes from a histogram; it must be exactly NumPy's value, or cells near
    the ink threshold would read differently from before."""
    rng = np.random.default_rng(7)
    for k in range(3000):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 300))
        if k % 3 == 0:
            img = rng.integers(0, 256, (h, w))
        elif k % 3 == 1:
            img = np.clip(rng.normal(200, 40, (h, w)), 0, 255)
        else:
            img = rng.choice([0, 3, 254, 255], (h, w))
        img = img.astype(np.uint8)
        for q in (10, 50, 90, 99.9):
            assert percentile_u8(img, q) == float(np.percentile(img.astype(np.float32), q)), (h, w, q)


def test_row_opening_is_opencvs_opening():
    """Printed rules are found by an opening done on candidate rows only; it must match
    OpenCV's opening of the whole image, edges included (a run touching the border survives
    with fewer pixels there)."""
    from tasks.morphology import open_rows

    rng = np.random.default_rng(3)
    for k in range(1500):
        h, w = int(rng.integers(1, 120)), int(rng.integers(1, 300))
        img = ((rng.random((h, w)) < rng.uniform(0.02, 0.9)) * 255).astype(np.uint8)
        if k % 4 == 0:
            img[int(rng.integers(0, h)), int(rng.integers(0, w)):] = 255  # a rule to the edge
        length = int(rng.integers(1, max(2, 2 * w)))
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
        assert np.array_equal(open_rows(img, length), cv2.morphologyEx(img, cv2.MORPH_OPEN, kernel))


def test_column_opening_is_opencvs_opening():
    from tasks.morphology import open_columns

    rng = np.random.default_rng(4)
    for k in range(1500):
        h, w = int(rng.integers(1, 120)), int(rng.integers(1, 300))
        img = ((rng.random((h, w)) < rng.uniform(0.02, 0.9)) * 255).astype(np.uint8)
        if k % 4 == 0:
            img[int(rng.integers(0, h)):, int(rng.integers(0, w))] = 255  # a rule to the edge
        length = int(rng.integers(1, max(2, 2 * h)))
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1, length))
        assert np.array_equal(open_columns(img, length), cv2.morphologyEx(img, cv2.MORPH_OPEN, kernel))


def test_a_cell_given_in_float_is_segmented_as_its_8_bit_grey():
    img = with_rules(blank())
    one(img, 60, 20)
    zero(img, 110, 38)
    as_u8, as_float = segment_cell(img, PAD, 3), segment_cell(img.astype(np.float64) + 0.2, PAD, 3)
    assert as_float.kind == as_u8.kind == "digits" and as_float.boxes == as_u8.boxes
    assert all(np.array_equal(a, b) for a, b in zip(as_float.digits, as_u8.digits, strict=True))
    blank_float = segment_cell(blank().astype(np.float32), PAD, 3)
    assert (blank_float.kind, blank_float.reason) == ("empty", "no ink in the cell")


def faint_one_beside_a_zero() -> np.ndarray:
    """A bold 0 and, left of it, a thin 1 written lightly (ink strength ~0.29, under INK_LEVEL)
    with a few darker specks along it, as a dry pen leaves one."""
    img = blank()
    zero(img, 130, 38)
    cv2.line(img, (80, 20), (80, 56), 180, 2)
    for y in (24, 36, 48):
        img[y : y + 2, 80:82] = 120
    return img


def test_a_faint_stroke_broken_into_specks_is_joined_into_its_digit(monkeypatch):
    import tasks.segment as segment

    monkeypatch.setattr(segment, "INK_JOIN", None)
    alone = segment_cell(faint_one_beside_a_zero(), PAD, 3)
    assert len(alone.groups) == 1  # the 1's darker specks alone, dropped as specks
    monkeypatch.setattr(segment, "INK_JOIN", 0.25)
    joined = segment_cell(faint_one_beside_a_zero(), PAD, 3)
    assert len(joined.groups) == 2
    x, _, w, h = joined.boxes[joined.groups[0][0][0]]
    assert x <= 80 <= x + w and h >= 30  # the whole stroke, not a speck of it
    assert joined.boxes[joined.groups[1][0][0]] == alone.boxes[alone.groups[0][0][0]]


def test_faint_ink_around_a_whole_digit_is_not_added_to_it(monkeypatch):
    import tasks.segment as segment

    img = blank()
    cv2.ellipse(img, (100, 38), (13, 20), 0, 0, 360, 180, 8)  # a faint halo
    zero(img, 100, 38)
    got = {}
    for join in (None, 0.25):
        monkeypatch.setattr(segment, "INK_JOIN", join)
        seg = segment_cell(img, PAD, 3)
        got[join] = (seg.boxes, [d.tobytes() for d in seg.digits])
    assert got[None] == got[0.25] and len(got[None][0]) == 1


def test_cells_segmented_together_are_segmented_as_one_by_one():
    """The rules of many crops are found in shared OpenCV calls (crops of one width stacked,
    of one height side by side): each segmentation must be the one of its crop alone, for
    crops of several sizes, with rules, sub-box separators, a long stroke, empty and
    scribbled cells."""
    rng = np.random.default_rng(7)
    cells, digits, edges = [], [], []
    for k in range(14):
        h, w = (H, W) if k % 3 else (H + 6, W - 20)
        img = np.full((h, w), 255, np.uint8)
        if k % 4:
            cv2.line(img, (0, 4), (w - 1, 4 + k % 3), 0, 3)
            cv2.line(img, (k % 5, 0), (k % 5 + 1, h - 1), 0, 2)
            cv2.line(img, (w - 4, 0), (w - 4, h - 1), 0, 3)
        for _ in range(k % 4):
            x = int(rng.integers(PAD + 10, w - PAD - 30))
            (one if rng.random() < 0.5 else lambda im, x, y: zero(im, x + 10, y + 18))(img, x, 20)
            cv2.line(img, (x + 7, 2), (x + 7, 22), 0, 3)  # a stroke up through the top rule
        if k == 5:
            cv2.line(img, (PAD, 40), (w - PAD, 41), 0, 3)  # a stroke as long as a rule
        if k == 7:
            img[PAD : h - PAD, PAD : w - PAD] = 0  # scribbled over
        sub = [PAD + 66, PAD + 133] if k in (2, 9) else []
        for x in sub:
            for y in range(PAD, h - PAD, 6):
                cv2.line(img, (x, y), (x, y + 2), 0, 2)
        cells.append(img)
        digits.append(3)
        edges.append(sub)
    binaries = [np.where(c < 128, 255, 0).astype(np.uint8) for c in cells]
    masks = rule_lines_many(binaries, PAD, edges)
    assert sum(m.any() for m in masks) == 10  # the crops with printed rules
    for b, e, m in zip(binaries, edges, masks, strict=True):
        np.testing.assert_array_equal(m, rule_lines(b, PAD, e))
    before = [c.copy() for c in cells]
    together = segment_cells(cells, PAD, digits, edges)
    alone = [segment_cell(c, PAD, d, e) for c, d, e in zip(before, digits, edges, strict=True)]
    kinds = {s.kind for s in alone}
    assert {"digits", "empty", "unreadable"} <= kinds  # the set covers the cases
    for a, b in zip(alone, together, strict=True):
        fields = ("kind", "reason", "notes", "boxes", "groups")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert all(np.array_equal(x, y) for x, y in zip(a.digits, b.digits, strict=True))
    assert all(np.array_equal(c, b) for c, b in zip(cells, before, strict=True))  # crops untouched


def test_a_pair_is_also_cut_at_another_short_column_when_asked():
    mask = np.zeros((40, 60), np.uint8)
    mask[:, :20] = 1
    mask[15:25, 20] = 1  # a thin join, 10 px tall: the shortest column
    mask[:, 21:34] = 1
    mask[10:30, 34:38] = 1  # a thicker one, 20 px tall
    mask[:, 38:] = 1
    (first,) = _split_touching(mask, 2)
    assert [np.flatnonzero(p.any(axis=0))[[0, -1]].tolist() for p in first] == [[0, 19], [20, 59]]
    ways = _split_touching(mask, 2, alternatives=1)
    assert len(ways) == 2 and all((a == b).all() for a, b in zip(ways[0], first, strict=True))
    assert [np.flatnonzero(p.any(axis=0))[[0, -1]].tolist() for p in ways[1]] == [[0, 33], [34, 59]]
    for way in ways:  # each way parts the whole blob
        assert (sum(p.astype(int) for p in way) == mask).all()
    assert len(_split_touching(mask, 3, alternatives=1)) == 1  # only pairs get alternatives


def test_alternative_cuts_are_extra_hypotheses_with_their_cost():
    img = blank()
    zero(img, 100, 38)
    zero(img, 122, 38)  # two touching zeros
    plain = segment_cell(img, PAD, 3)
    more = segment_cell(img, PAD, 3, alternative_cuts=1)
    assert plain.costs == {}
    extra = [h for h in more.groups[0] if more.costs.get(tuple(h))]
    assert len(more.groups[0]) == len(plain.groups[0]) + 1 and len(extra) == 1 and len(extra[0]) == 2
    assert more.costs == {tuple(extra[0]): ALTERNATIVE_CUT_COST}
    assert [h for h in more.groups[0] if h is not extra[0]] == plain.groups[0]


def test_neighbouring_marks_are_also_read_as_one_digit_when_asked():
    img = blank()
    cv2.ellipse(img, (110, 38), (11, 18), 0, 105, 255, 0, 4)  # a "0" broken at top and bottom
    cv2.ellipse(img, (110, 38), (11, 18), 0, -75, 75, 0, 4)
    cv2.line(img, (150, 20), (150, 56), 0, 4)  # a "1" apart from it
    plain = segment_cell(img, PAD, 3)
    assert [len(g) for g in plain.groups] == [1, 1, 1]  # two halves and the 1, one way each
    more = segment_cell(img, PAD, 3, merge_pieces=True)
    assert len(more.groups) == 2 and len(more.groups[1]) == 1  # the 1 stands apart: read alone
    whole, *apart = more.groups[0]
    assert len(whole) == 1 and apart == [[0, 1]] and more.apart == {(0, 1)}
    x, _, w, _ = more.boxes[whole[0]]
    assert x <= 110 - 11 and x + w >= 110 + 11  # the whole 0
    assert more.costs == {tuple(whole): MERGE_COST}
    assert more.digits[whole[0]].sum() == pytest.approx(more.digits[0].sum() + more.digits[1].sum())


def test_a_short_last_mark_may_also_be_read_as_no_digit_when_asked():
    img = blank()
    cv2.putText(img, "12", (60, 56), cv2.FONT_HERSHEY_SIMPLEX, 1.3, 0, 3)
    cv2.line(img, (140, 36), (150, 36), 0, 3)  # a cheque's "=" after the amount
    cv2.line(img, (140, 43), (150, 43), 0, 3)
    plain = segment_cell(img, PAD, 4)
    assert all(h for g in plain.groups for h in g)
    more = segment_cell(img, PAD, 4, optional_end=True)
    assert more.groups[-1][-1] == [] and more.costs[()] == TRAIL_COST
    assert all(h for g in more.groups[:-1] for h in g)  # only the last mark
    assert more.groups[-1][:-1] == plain.groups[-1]
    tall = blank()  # a last mark as tall as the rest is a digit, no choice about it
    cv2.putText(tall, "121", (60, 56), cv2.FONT_HERSHEY_SIMPLEX, 1.3, 0, 3)
    assert all(h for g in segment_cell(tall, PAD, 4, optional_end=True).groups for h in g)
