import numpy as np

from tasks.model import EXPECTED_PARAMS, build_mnist_convnet, to_model_input


def test_architecture_is_exactly_mnist_convnet():
    model = build_mnist_convnet(seed=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]
    assert model.count_params() == EXPECTED_PARAMS == 34_826
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 34_826
    assert model.layers[0].filters == 32 and model.layers[2].filters == 64
    assert model.layers[5].rate == 0.5


def test_output_is_a_probability_per_class():
    model = build_mnist_convnet(seed=0)
    probs = np.asarray(model(to_model_input(np.zeros((3, 28, 28), np.uint8)), training=False))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_model_input_scales_uint8_to_unit_range():
    x = np.full((2, 28, 28), 255, np.uint8)
    out = to_model_input(x)
    assert out.shape == (2, 28, 28, 1) and out.dtype == np.float32
    assert out.max() == 1.0
