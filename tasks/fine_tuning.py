"""Fine-tuning the champion on weakly labelled telegram digits (the paper's future work).

The architecture and its 34,826 parameters stay as they are; only the weights move, with a
small step and MNIST digits mixed in so the model does not forget what it reused.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from tasks.model import EXPECTED_PARAMS, to_model_input


def training_mix(x_weak: np.ndarray, y_weak: np.ndarray, x_mnist: np.ndarray, y_mnist: np.ndarray,
                 mnist_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The weak digits plus `mnist_ratio` times as many MNIST training digits, shuffled."""
    rng = np.random.default_rng(seed)
    n_mnist = min(len(y_mnist), round(mnist_ratio * len(y_weak)))
    pick = rng.choice(len(y_mnist), n_mnist, replace=False) if n_mnist else np.zeros(0, int)
    x = np.concatenate([x_weak, x_mnist[pick]])
    y = np.concatenate([y_weak, y_mnist[pick]]).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


def squeezed_pairs(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` images of two digits of `x` (28x28 uint8, ink 255) written close together and
    squeezed to the width of one wide digit, each reframed as the reader reframes a blob. A
    model that reads such a pair as one sure digit makes the reader keep it whole (Danish val:
    a "52" read "2" at 0.99); trained towards the uniform distribution on them, the same 10
    outputs say "not one digit" instead."""
    import cv2

    from tasks.reframe import reframe

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    if n == 0 or len(x) < 2:
        return out[:0]
    for k in range(n):
        i, j = rng.choice(len(x), 2, replace=False)
        a, b = (_ink_only(x[t]) for t in (i, j))
        h = max(a.shape[0], b.shape[0])
        gap = int(rng.integers(-2, 2))  # touching, overlapping a little, or one pixel apart
        canvas = np.zeros((h, a.shape[1] + b.shape[1] + max(gap, 0)), np.uint8)
        canvas[:a.shape[0], :a.shape[1]] = a
        x0 = a.shape[1] + gap
        region = canvas[:b.shape[0], x0 : x0 + b.shape[1]]
        np.maximum(region, b[:, : region.shape[1]], out=region)
        # squeezed: written in the width of one wide digit (0.6-1.2 of the height)
        width = max(2, round(h * rng.uniform(0.6, 1.2)))
        if width < canvas.shape[1]:
            canvas = cv2.resize(canvas, (width, h), interpolation=cv2.INTER_AREA)
        out[k] = np.round(reframe(canvas, "mnist", ink="bright") * 255).astype(np.uint8)
    return out


def _ink_only(img: np.ndarray) -> np.ndarray:
    """The digit's ink bounding box (every non-zero pixel); a blank image as it is."""
    from tasks.digit_pools import crop_to_ink

    crop = crop_to_ink(img, threshold=1)
    return img if crop is None else crop


def with_pairs(x: np.ndarray, y: np.ndarray, pairs: np.ndarray, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) plus the pairs, shuffled, with soft targets: one-hot for the digits, uniform for
    the pairs."""
    rng = np.random.default_rng(seed)
    soft = np.zeros((len(y) + len(pairs), 10), np.float32)
    soft[np.arange(len(y)), y] = 1.0
    soft[len(y):] = 0.1
    xs = np.concatenate([x, pairs])
    order = rng.permutation(len(xs))
    return xs[order], soft[order]


def fine_tune(base, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
              learning_rate: float, seed: int,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None):
    """A copy of `base` trained further on (x, y); `base` itself is left untouched. `y` holds
    class numbers, or (n, 10) target distributions (`with_pairs`)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    if model.count_params() != EXPECTED_PARAMS:
        raise AssertionError(f"fine-tuned model has {model.count_params()} parameters")
    soft = y.ndim == 2
    model.compile(loss="categorical_crossentropy" if soft else "sparse_categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=learning_rate), metrics=["accuracy"])
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: on_epoch(e, {k: float(v) for k, v in (logs or {}).items()})))
    history = model.fit(to_model_input(x), y, batch_size=batch_size, epochs=epochs,
                        callbacks=callbacks, shuffle=True, verbose=1 if sys.stderr.isatty() else 2)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}
