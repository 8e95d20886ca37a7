import numpy as np
import pytest

from tasks.reframe import reframe, reframe_many, to_ink_bright


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    total = img.sum()
    return float((yy * img).sum() / total), float((xx * img).sum() / total)


def ink_box(img: np.ndarray, floor: float = 0.05) -> tuple[int, int]:
    ys, xs = np.nonzero(img > floor)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize("method", ["mnist", "paper"])
def test_blank_image_gives_zeros(method):
    out = reframe(np.full((40, 30), 255, np.uint8), method, ink="dark")
    assert out.shape == (28, 28) and not out.any()
    assert not reframe(np.zeros((0, 0), np.uint8), method).any()


def test_tiny_blob_is_scaled_to_the_mnist_box_and_centred():
    img = np.zeros((50, 50), np.uint8)
    img[10:13, 30:33] = 255
    out = reframe(img, "mnist", ink="bright")
    h, w = ink_box(out)
    assert 19 <= h <= 22 and 19 <= w <= 22
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6
    assert out.max() == pytest.approx(1.0)


def test_wide_digit_keeps_aspect_ratio():
    img = np.zeros((40, 200), np.uint8)
    img[15:25, 10:190] = 255  # 10 x 180 bar
    out = reframe(img, "mnist", ink="bright")
    h, w = ink_box(out)
    assert 19 <= w <= 21
    assert h <= 3


def test_tall_digit_keeps_aspect_ratio():
    img = np.zeros((120, 30), np.uint8)
    img[5:115, 12:18] = 255  # a "1": 110 x 6
    out = reframe(img, "mnist", ink="bright")
    h, w = ink_box(out)
    assert 19 <= h <= 21
    assert w <= 3
    assert abs(centre_of_mass(out)[1] - 13.5) < 0.6


def test_mnist_digit_is_nearly_unchanged(mnist_sample):
    x, _ = mnist_sample
    diffs = [np.abs(reframe(img, "mnist", ink="bright") - img / 255.0).mean() for img in x[:100]]
    assert np.mean(diffs) < 0.08


def test_paper_method_adds_the_mnist_margin():
    img = np.full((20, 20), 255, np.uint8)
    out = reframe(img, "paper", ink="bright")
    assert out[4:24, 4:24].min() > 0.9
    assert out[:3].max() == 0 and out[:, :3].max() == 0 and out[25:].max() == 0


def test_paper_method_pads_to_square_before_resizing():
    img = np.full((10, 40), 255, np.uint8)
    out = reframe(img, "paper", ink="bright")
    h, w = ink_box(out, 0.5)
    assert w == pytest.approx(20, abs=1) and h == pytest.approx(5, abs=1)


def test_dark_ink_scan_and_bright_ink_array_agree():
    bright = np.zeros((30, 24), np.uint8)
    bright[5:25, 8:14] = 255
    dark = 255 - bright
    colour = np.dstack([dark, dark, dark])
    a = reframe(bright, "mnist", ink="bright")
    np.testing.assert_allclose(reframe(dark, "mnist", ink="dark"), a, atol=1e-6)
    np.testing.assert_allclose(reframe(colour, "mnist", ink="dark"), a, atol=1e-5)


def test_sixteen_bit_input_is_scaled():
    img = np.zeros((10, 10), np.uint16)
    img[2:8, 4:6] = 65535
    assert to_ink_bright(img, "bright").max() == pytest.approx(1.0)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown reframing"):
        reframe(np.full((5, 5), 200, np.uint8), "bogus", ink="bright")  # type: ignore[arg-type]


def test_batch_shape():
    batch = reframe_many([np.zeros((10, 10), np.uint8)] * 3, "mnist")
    assert batch.shape == (3, 28, 28, 1)
    assert reframe_many([], "mnist").shape == (0, 28, 28, 1)
