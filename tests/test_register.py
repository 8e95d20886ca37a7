"""Registration on generated scans (whose true template->scan map is known) and on the real
reference scan, plus the scans that must be refused."""

import cv2
import numpy as np
import pytest

from tasks.register import (
    MATCH_TOL,
    _climb,
    _line_fit,
    _nearest_distance,
    estimate_skew,
    fit_axis,
    register,
    register_upright,
    vote,
)
from tasks.render import printed_form
from tasks.scan_effects import apply_matrix


def cell_centres(template) -> np.ndarray:
    return np.array([[c.box[0] + c.box[2] / 2, c.box[1] + c.box[3] / 2] for c in template.cells])


@pytest.mark.parametrize("angle, scale, shift", [(0.0, 1.0, (0, 0)), (2.5, 0.975, (18, -22)),
                                                 (-2.9, 1.025, (-25, 15)), (1.2, 1.0, (40, 30))])
def test_known_rotation_shift_and_scale_are_recovered(template, angle, scale, shift):
    page = printed_form(template)
    m = cv2.getRotationMatrix2D((850, 1400), angle, scale)
    m[:, 2] += shift
    scan = cv2.warpAffine(page, m, (page.shape[1], page.shape[0]), borderValue=255)
    a = register(scan, template)
    assert a.ok, a.reason
    pts = cell_centres(template)
    pred = apply_matrix(a.matrix, pts)
    assert np.abs(pred - apply_matrix(m, pts)).max() < 3.0
    assert a.quality > 0.8


@pytest.mark.parametrize("peak", [-3.93, -1.27, 0.0, 0.61, 2.48, 3.97])
def test_coarse_to_fine_search_finds_the_peak_a_full_grid_finds_with_fewer_scores(peak):
    calls = []

    def score(angle: float) -> float:  # a narrow peak on a broad hump, as rules on text give
        calls.append(angle)
        return 5 * np.exp(-((angle - peak) / 0.3) ** 2) + np.exp(-((angle - peak) / 3) ** 2)

    full = np.arange(-4.0, 4.001, 0.05)
    best_of_all = full[np.argmax([score(a) for a in full])]
    assert _climb(score, -4.0, 4.0, (0.5, 0.1, 0.05)) == pytest.approx(best_of_all)
    calls.clear()
    _climb(score, -4.0, 4.0, (0.5, 0.1, 0.05))
    assert len(calls) == len(set(calls)) <= 28  # each angle scored once; the full grid scores 161


@pytest.mark.parametrize("angle", [-3.1, -0.4, 0.0, 1.7])
def test_skew_of_turned_rules_is_found_to_the_last_step(angle):
    page = np.zeros((800, 1200), np.uint8)
    for y in range(100, 700, 60):
        page[y : y + 3, 100:1100] = 255
    m = cv2.getRotationMatrix2D((600, 400), angle, 1.0)
    turned = cv2.warpAffine(page, m, (1200, 800), flags=cv2.INTER_NEAREST)
    assert estimate_skew(turned) == pytest.approx(angle, abs=0.051)


def test_reference_scan_aligns_onto_its_own_template(template, reference_scan):
    scan, _ = reference_scan
    gray = cv2.imread(str(scan), cv2.IMREAD_GRAYSCALE)
    a = register(gray, template)
    assert a.ok and a.residual_px < 2
    pts = cell_centres(template)
    assert np.abs(apply_matrix(a.matrix, pts) - pts).max() < 3.0


@pytest.mark.parametrize("turn, code", [(180, cv2.ROTATE_180), (90, cv2.ROTATE_90_COUNTERCLOCKWISE),
                                        (270, cv2.ROTATE_90_CLOCKWISE)])
def test_turned_scans_are_turned_back(template, turn, code):
    page = printed_form(template)
    a, upright = register_upright(cv2.rotate(page, code), template)
    assert a.ok and upright.shape == page.shape
    assert any("turned" in n for n in a.notes)
    pts = cell_centres(template)
    assert np.abs(apply_matrix(a.matrix, pts) - pts).max() < 3.0


def test_blank_page_and_another_form_are_refused(template):
    blank = np.full((2800, 1700), 248, np.uint8)
    a = register(blank, template)
    assert not a.ok and a.reason.startswith("blank page")
    other = np.full((2800, 1700), 255, np.uint8)
    for y in range(200, 2600, 140):  # a ruled sheet with the wrong spacing, no table columns
        cv2.line(other, (150, y), (1550, y), 0, 3)
    b, _ = register_upright(other, template)
    assert not b.ok and "form not recognised" in b.reason


def test_opened_profile_is_opencvs_opening_counted_per_row():
    """The run-based profile equals OpenCV's opening by a 1 x L rectangle, counted per row:
    odd and even L, runs touching the borders, rows shorter than L."""
    import cv2
    import numpy as np

    from tasks.register import opened_profile

    rng = np.random.default_rng(5)
    for trial in range(400):
        h, w, length = int(rng.integers(1, 30)), int(rng.integers(1, 90)), int(rng.integers(1, 100))
        mask = (rng.random((h, w)) < rng.choice([0.5, 0.9, 1.0])).astype(np.uint8) * 255
        if trial % 2:
            mask[:] = 0
            for _ in range(int(rng.integers(0, 5))):
                r, a = int(rng.integers(0, h)), int(rng.integers(0, w))
                mask[r, a : int(rng.integers(a, w + 1))] = 255
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
        expected = (cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel) > 0).sum(axis=1).astype(np.float64)
        assert np.array_equal(opened_profile(mask, length), expected), (h, w, length)


def test_registration_error_measures_cells_against_the_true_placement(shared_data, cifras_env, monkeypatch):
    """The figure that speed-ups of registration are judged by: cells within 3 px of where the
    generator put them, and a wrong truth is caught (the same scans against another seed's
    placements are far off)."""
    monkeypatch.setenv("CIFRAS_SHARED_DATA", str(shared_data))
    from flows import registration_error as re_mod
    from flows.registration_error import registration_error

    r = registration_error(count=3, seed=777, digits="usps:train")
    assert r["refused"] == 0 and r["scans"] == 3
    assert 0 < r["mean_worst_px"] <= r["max_worst_px"] < 3.0

    real = re_mod.render_scan
    monkeypatch.setattr(re_mod, "render_scan", lambda t, p, seed, i: (*real(t, p, seed, i)[:3],
                                                                      real(t, p, seed + 1, i)[3]))
    assert registration_error(count=3, seed=777, digits="usps:train")["mean_worst_px"] > 5


def _best_proposal(template_pos: np.ndarray, found: np.ndarray, scales: np.ndarray) -> tuple[float, float]:
    """The vote by brute force: every proposal of every scale scored, the most template rules
    within tolerance winning, then the least mean distance, then the first."""
    tol = MATCH_TOL * 1.5
    ordered = np.sort(found)
    best = (-1, 0.0, 1.0, 0.0)
    for s in scales:
        for o in sorted({float(v) for v in np.round(ordered[None, :] - s * template_pos[:, None]).ravel()}):
            near = _nearest_distance(ordered, s * template_pos + o)
            hits = near <= tol
            count, err = int(hits.sum()), float(near[hits].sum() / max(int(hits.sum()), 1))
            if (count, -err) > (best[0], -best[1]):
                best = (count, err, float(s), o)
    return best[2], best[3]


@pytest.mark.parametrize("seed", range(5))
def test_the_vote_picks_what_scoring_every_proposal_picks(seed):
    rng = np.random.default_rng(seed)
    template = np.sort(rng.choice(np.arange(20, 1200, 13.0), 30, replace=False))
    scale, offset = rng.uniform(0.95, 1.05), rng.uniform(-40, 40)
    kept = template[rng.random(len(template)) < 0.8]  # some rules are not found
    found = np.concatenate([scale * kept + offset + rng.normal(0, 0.7, len(kept)),
                            rng.uniform(0, 1300, 6)])  # and some ink is not a rule
    scales = np.arange(0.94, 1.0601, 0.004)
    assert vote(template, found, scales) == _best_proposal(template, found, scales)
    s, b, inliers, rms = fit_axis(template, found, scales)
    assert abs(s - scale) < 0.002 and abs(b - offset) < 1.5
    assert inliers >= len(kept) - 1 and rms < 1.5
    # the least-squares refit is NumPy's
    assert _line_fit(kept, 2 * kept + 3) == pytest.approx((2.0, 3.0), abs=1e-9)
