"""Property-based tests: the image stages and number composition never crash and always
give a status with a reason, whatever they are fed."""

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tasks.compose import compose
from tasks.decode import decode_scan
from tasks.reframe import reframe
from tasks.segment import Segmentation, segment_cell

STATUSES = {"ok", "review", "empty", "unreadable"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_decoding_any_bytes_gives_an_image_or_a_reason(data):
    d = decode_scan(data)
    assert (d.gray is not None) != (d.reason is not None)


@settings(max_examples=60, deadline=None)
@given(st.integers(100, 400), st.integers(100, 400), st.sampled_from([".png", ".jpg", ".tif"]),
       st.integers(0, 1000), st.floats(0.05, 1.0))
def test_truncated_real_images_never_crash(w, h, ext, seed, keep):
    img = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    data = cv2.imencode(ext, img)[1].tobytes()
    d = decode_scan(data[: max(1, int(len(data) * keep))])
    assert (d.gray is not None) != (d.reason is not None)


cells = arrays(np.uint8, st.tuples(st.integers(20, 90), st.integers(20, 240)),
               elements=st.integers(0, 255))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells, st.integers(1, 4))
def test_segmentation_of_any_cell_is_a_known_kind(cell, max_digits):
    seg = segment_cell(cell, pad=4, max_digits=max_digits)
    assert seg.kind in {"digits", "dash", "empty", "unreadable"}
    if seg.kind in ("empty", "unreadable"):
        assert seg.reason
    for group in seg.groups:
        for hypothesis in group:
            assert all(0 <= i < len(seg.digits) for i in hypothesis)


@settings(max_examples=200, deadline=None)
@given(cells)
def test_reframing_any_image_gives_a_model_input(img):
    for method in ("mnist", "paper"):
        out = reframe(img, method)  # type: ignore[arg-type]
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1.0 + 1e-6


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_composition_matches_its_digits(n, max_digits, seed, threshold):
    probs = np.random.default_rng(seed).dirichlet(np.ones(10), size=n).astype(np.float32)
    r = compose(Segmentation("digits", digits=[None] * n), probs, max_digits, threshold)
    assert r.status in STATUSES
    assert r.digits == "".join(str(int(d)) for d in probs.argmax(1))
    assert r.value == int(r.digits)
    assert 0 <= r.confidence <= 1
    if r.status == "review":
        assert r.reason
    if n > max_digits:
        assert r.status == "review"
    assert all(v < 10**max_digits for v, _ in r.candidates)
