"""The Winograd graph computes the reused model's function: the same probabilities as Keras up
to float rounding, on digits and on random weights that make any layout slip visible."""

import numpy as np
import pytest

from tasks.inference import OnnxModel, predict_proba
from tasks.model import build_mnist_convnet, to_model_input
from tasks.winograd import _BT, transformed_filters, winograd_onnx


def test_one_tile_by_the_transforms_is_the_direct_convolution():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(4, 4, 3))  # one 4x4 input tile, 3 channels
    k = rng.normal(size=(3, 3, 3, 5))  # Keras kernel (rows, cols, in, out)
    direct = np.array([[np.einsum("ijc,ijco->o", d[r:r + 3, c:c + 3], k) for c in range(2)]
                       for r in range(2)])
    u = transformed_filters(k).reshape(4, 4, 3, 5).astype(np.float64)
    v = np.einsum("ai,ijc,bj->abc", _BT, d, _BT)
    m = np.einsum("abc,abco->abo", v, u)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
    y = np.einsum("pa,abo,qb->pqo", at, m, at)
    np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def peaked_model():
    """The architecture with random weights, the dense layer scaled so that the softmax is
    sharp: a wrong tile, channel or flatten order then moves the probabilities far."""
    model = build_mnist_convnet(seed=3)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) if w.shape == (1600, 10) else w
                       for w in model.get_weights()])
    return model


def test_winograd_graph_gives_keras_probabilities(peaked_model, mnist_sample):
    x = to_model_input(np.concatenate([mnist_sample[0][:300],
                                       np.random.default_rng(0).integers(0, 256, (50, 28, 28), np.uint8)]))
    keras_probs = predict_proba(peaked_model, x, 128)
    assert keras_probs.max(axis=1).mean() > 0.6  # sharp enough to show a slip
    reader = OnnxModel(winograd_onnx(peaked_model.get_weights()), kind="winograd")
    probs = predict_proba(reader, x, 128)
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs, keras_probs, atol=2e-5)
    assert (probs.argmax(1) == keras_probs.argmax(1)).all()
    # the last row of pixels and column feed nothing that the pools keep
    edge = x.copy()
    edge[:, 26:, :] = 1.0
    edge[:, :, 26:] = 1.0
    np.testing.assert_array_equal(predict_proba(reader, edge, 128), probs)
    np.testing.assert_allclose(predict_proba(peaked_model, edge, 128), keras_probs, atol=2e-5)


def test_other_weights_are_refused():
    with pytest.raises(ValueError, match="not mnist_convnet weights"):
        winograd_onnx([np.zeros((3, 3, 1, 16))] + [np.zeros(1)] * 5)
