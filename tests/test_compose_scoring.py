import numpy as np
import pytest

from tasks.compose import SPLIT_PENALTY, compose, contenders, contenders_of
from tasks.scoring import Scored, digit_pairs, score_cells
from tasks.segment import Segmentation


def onehot(digits, p=0.99):
    out = np.full((len(digits), 10), (1 - p) / 9, np.float32)
    for i, d in enumerate(digits):
        out[i, d] = p
    return out


def test_the_model_decides_whether_a_wide_blob_is_split():
    seg = Segmentation("digits", digits=[None] * 3, groups=[[[0], [1, 2]]])
    whole_is_clear = onehot([7, 1, 1], 0.99)
    whole_is_clear[1:, :] = 0.5 / 9
    whole_is_clear[1:, 1] = 0.5
    r = compose(seg, whole_is_clear, 3, 0.5)
    assert r.digits == "7" and r.chosen == [0]
    halves_are_clear = onehot([8, 0, 0], 0.4)
    halves_are_clear[1:] = onehot([0, 0], 0.99)
    r = compose(seg, halves_are_clear, 3, 0.5)
    assert r.digits == "00" and r.chosen == [1, 2] and "touching" in r.reason


def test_a_mark_much_wider_than_tall_is_read_as_touching_digits_unless_the_whole_is_certain():
    probs = onehot([2, 2, 1], 0.8)
    probs[0] = onehot([2], 0.9)[0]  # read whole it looks like a 2, a little surer than the halves
    wide = Segmentation("digits", digits=[None] * 3, groups=[[[0], [1, 2]]],
                        boxes=[(0, 0, 32, 20), (0, 0, 16, 20), (16, 0, 16, 20)])
    assert compose(wide, probs, 3, 0.5).digits == "21"  # "21" squeezed into one box
    narrow = Segmentation("digits", digits=[None] * 3, groups=[[[0], [1, 2]]],
                          boxes=[(0, 0, 18, 20), (0, 0, 9, 20), (9, 0, 9, 20)])
    assert compose(narrow, probs, 3, 0.5).digits == "2"
    certain = probs.copy()
    certain[0] = onehot([0], 0.999)[0]
    certain[1:] = onehot([2, 1], 0.3)
    assert compose(wide, certain, 3, 0.5).digits == "0"  # a wide 0 stays one digit


def test_a_pair_cut_at_another_column_pays_its_cost():
    """Two cuts of one blob into two digits: the second (not the shortest column) wins only
    when its digits read better by more than ALTERNATIVE_CUT_COST."""
    from tasks.segment import ALTERNATIVE_CUT_COST

    def seg(costs):
        return Segmentation("digits", digits=[None] * 5, groups=[[[0], [1, 2], [3, 4]]], costs=costs)

    probs = onehot([8, 3, 5, 3, 0], 0.9)
    probs[0] = onehot([8], 0.3)[0]
    p_other = float(np.exp(ALTERNATIVE_CUT_COST / 2)) * 0.9 / 1.01  # surer, not by enough
    probs[3:] = onehot([3, 0], min(0.999, p_other))
    assert compose(seg({}), probs, 3, 0.5).digits == "30"  # without the cost the other cut wins
    r = compose(seg({(3, 4): ALTERNATIVE_CUT_COST}), probs, 3, 0.5)
    assert r.digits == "35" and r.chosen == [1, 2]
    cands = dict(r.candidates)
    # the other reading's candidate pays the split penalty and the cut's cost
    assert cands[35] == pytest.approx(0.9 * 0.9, rel=1e-3)
    assert cands[30] == pytest.approx(p_other**2 * np.exp(-SPLIT_PENALTY - ALTERNATIVE_CUT_COST), rel=1e-3)
    probs[3:] = onehot([3, 0], 0.999)
    assert compose(seg({(3, 4): ALTERNATIVE_CUT_COST}), probs, 3, 0.5).digits == "30"


def test_two_marks_read_apart_pay_no_split_penalty_and_read_as_one_pay_the_merge_cost():
    """A broken "0": its halves (images 0, 1) are two marks, not a split blob; read as one
    (image 2) it costs MERGE_COST."""
    from tasks.segment import MERGE_COST

    seg = Segmentation("digits", digits=[None] * 3, groups=[[[2], [0, 1]]], apart={(0, 1)},
                       costs={(2,): MERGE_COST})
    probs = onehot([1, 1, 0], 0.8)
    probs[2] = onehot([0], 0.9)[0]
    # 2 log 0.8 = -0.45 beats log 0.9 - 0.5 = -0.61; with a split penalty it would not (-0.80)
    r = compose(seg, probs, 3, 0.5)
    assert r.digits == "11" and r.reason is None  # nothing was split
    cands = dict(r.candidates)
    assert cands[11] == pytest.approx(0.8 * 0.8, rel=1e-3)
    assert cands[0] == pytest.approx(0.9 * np.exp(-MERGE_COST), rel=1e-3)
    probs[:2] = onehot([1, 1], 0.6)  # halves read worse: the whole 0 wins
    assert compose(seg, probs, 3, 0.5).digits == "0"


def test_a_short_last_mark_is_dropped_when_the_model_doubts_it_is_a_digit():
    from tasks.segment import TRAIL_COST

    seg = Segmentation("digits", digits=[None] * 2, groups=[[[0]], [[1], []]], costs={(): TRAIL_COST})
    probs = onehot([8, 2], 0.99)
    probs[1] = onehot([2], 0.6)[0]  # "=" read as a doubtful 2
    r = compose(seg, probs, 4, 0.5)
    assert r.digits == "8" and r.chosen == [0]
    assert dict(r.candidates)[82] == pytest.approx(0.99 * 0.6, rel=1e-3)  # still a candidate
    probs[1] = onehot([2], 0.95)[0]  # a clear digit stays
    assert compose(seg, probs, 4, 0.5).digits == "82"


def test_contenders_are_the_readings_still_in_play():
    # blob 1: read whole (image 0) or as two (1, 2); blob 2 only one way (image 3)
    seg = Segmentation("digits", digits=[None] * 4, groups=[[[0], [1, 2]], [[3]]],
                       boxes=[(0, 0, 18, 20), (0, 0, 9, 20), (9, 0, 9, 20), (20, 0, 9, 20)])
    top = np.array([0.9, 0.6, 0.6, 0.2])  # whole: log 0.9; split: 2 log 0.6 - 0.35, 1.27 behind
    assert contenders(seg, top, 2.0).tolist() == [True, True, True, True]
    assert contenders(seg, top, 1.0).tolist() == [True, False, False, True]  # the lone blob stays
    top[:3] = [0.5, 0.99, 0.99]  # now the split leads, by 0.32
    assert contenders(seg, top, 0.2).tolist() == [False, True, True, True]
    assert contenders(Segmentation("digits", digits=[None] * 2), top[:2], 0.0).all()
    # over a batch, each cell its own slice of the digits: here the second cell's split is behind
    lone = Segmentation("digits", digits=[None], groups=[[[0]]], boxes=[(0, 0, 9, 20)])
    top = np.array([0.3, 0.9, 0.6, 0.6, 0.2])
    assert contenders_of([lone, seg], top, 1.0).tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError, match="digit images"):
        contenders_of([lone, seg], top[:4], 1.0)


def test_number_is_rebuilt_from_its_digits():
    r = compose(Segmentation("digits", digits=[None] * 3), onehot([1, 3, 5]), 3, 0.9)
    assert (r.value, r.digits, r.status) == (135, "135", "ok")
    assert r.confidence == pytest.approx(0.99 ** 3, abs=1e-3)
    assert r.digit_probs[0][0] == (1, 0.99)


def test_zero_padded_reading_keeps_its_digits():
    r = compose(Segmentation("digits", digits=[None] * 3), onehot([0, 0, 4]), 3, 0.9)
    assert (r.value, r.digits) == (4, "004")


def test_low_confidence_goes_to_review_with_the_alternative():
    probs = onehot([7])
    probs[0] = 0.0
    probs[0, 7], probs[0, 1] = 0.55, 0.45
    r = compose(Segmentation("digits", digits=[None]), probs, 3, 0.9)
    assert r.status == "review" and "7 (0.55) or 1 (0.45)" in r.reason
    assert r.value == 7  # the best guess is kept for the reviewer


def test_too_many_digits_goes_to_review():
    r = compose(Segmentation("digits", digits=[None] * 4), onehot([1, 2, 3, 4]), 3, 0.9)
    assert r.status == "review" and "4 marks" in r.reason


def test_empty_dash_and_unreadable():
    empty = compose(Segmentation("empty", reason="no ink in the cell"), np.zeros((0, 10)), 3, 0.9)
    assert empty.value is None and empty.status == "empty"
    dash = compose(Segmentation("dash"), np.zeros((0, 10)), 3, 0.9)
    assert (dash.value, dash.digits, dash.status) == (0, "-", "ok")
    bad = compose(Segmentation("unreadable", reason="scribbled over"), np.zeros((0, 10)), 3, 0.9)
    assert bad.status == "unreadable" and bad.reason == "scribbled over"


def test_digit_pairs_follow_the_paper():
    assert digit_pairs(135, "135") == [(1, 1), (3, 3), (5, 5)]
    assert digit_pairs(4, "004") == [(0, 0), (0, 0), (4, 4)]
    assert digit_pairs(135, "13") is None
    assert digit_pairs(0, "-") is None


def test_scores():
    cells = [
        Scored("a", 135, 135, "135", "ok"),
        Scored("b", 94, 84, "84", "review"),
        Scored("c", 0, None, "", "empty"),  # blank cell means none: right
        Scored("d", 7, None, "", "unreadable"),
    ]
    m = score_cells(cells)
    assert m["number_accuracy"] == 0.5
    assert m["number_accuracy_by_length"] == {"1": 0.5, "2": 0.0, "3": 1.0}
    assert m["accuracy_when_ok"] == 1.0
    assert m["review_share"] == 0.25
    assert m["digits_scored"] == 5 and m["digit_accuracy"] == pytest.approx(4 / 5)
    assert np.array(m["confusion_matrix"])[9, 8] == 1


def test_confusion_image_shades_by_count(tmp_path):
    from tasks.metrics import BLUES, confusion_image, save_confusion_png

    cm = np.zeros((10, 10), int)
    cm[np.arange(10), np.arange(10)] = 500
    cm[7, 1] = 20
    img = confusion_image(cm, "t", cell=40)
    assert img.shape == (40 + 400 + 52, 64 + 400 + 12, 3)

    def corner(i, j):  # a pixel of cell (i, j) away from its printed count
        return img[40 + i * 40 + 2, 64 + j * 40 + 2].astype(int)

    assert (corner(3, 3) == BLUES[1]).all()  # the largest count: darkest
    assert (corner(3, 4) == BLUES[0]).all()  # none: lightest
    assert corner(7, 1).sum() < corner(3, 4).sum() and corner(7, 1).sum() > corner(3, 3).sum()
    png = save_confusion_png(cm, tmp_path / "cm.png", "t")
    import cv2

    assert (cv2.imread(str(png)) == confusion_image(cm, "t")).all()  # lossless, as drawn


def test_hypothesis_scores_add_float32_as_numpy_does():
    from tasks.compose import SPLIT_PENALTY, WIDE_FROM, WIDE_PENALTY, _hypothesis_score

    rng = np.random.default_rng(3)
    boxes = [(0, 0, 12, 10)] * 9
    wide = [12 / 10 - WIDE_FROM] * 9
    seg = Segmentation("digits", groups=[[[0], [1, 2], [3, 4, 5]]], boxes=boxes)
    for _ in range(500):
        top = (rng.random(9) ** rng.integers(1, 30)).astype(np.float32)
        top[rng.integers(0, 9)] = 1.0
        top[rng.integers(0, 9)] = np.float32(1 - 2**-24)
        score = _hypothesis_score(seg, top)
        logp = np.log(np.clip(top, 1e-9, 1.0))
        for h in ([0], [1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 2, 3], [8, 0, 1]):
            width_cost = WIDE_PENALTY * sum(wide[i] for i in h)
            assert score(h) == float(logp[h].sum()) - SPLIT_PENALTY * (len(h) - 1) - width_cost
