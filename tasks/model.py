"""The reused digit model: exactly the Keras `mnist_convnet` example (34,826 parameters).

The architecture is fixed on purpose: cifras reuses the source paper's model and improves the
pipeline around it, so any change here breaks the premise and is refused by a test.
"""

from __future__ import annotations

import numpy as np

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
EXPECTED_PARAMS = 34_826


def build_mnist_convnet(seed: int | None = None):
    """Conv(32)-Pool-Conv(64)-Pool-Flatten-Dropout(0.5)-Dense(10), compiled as the example."""
    import keras
    from keras import layers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="digit"),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mnist_convnet",
    )
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"]
    )
    count = model.count_params()
    if count != EXPECTED_PARAMS:  # pragma: no cover - guards against edits above
        raise AssertionError(f"mnist_convnet has {count} parameters, expected {EXPECTED_PARAMS}")
    return model


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) with ink = 255, or float in [0, 1], to float32 (n, 28, 28, 1)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32, copy=False)
    if x.ndim == 3:
        x = x[..., None]
    return x
