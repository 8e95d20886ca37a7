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


def fine_tune(base, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
              learning_rate: float, seed: int,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None):
    """A copy of `base` trained further on (x, y); `base` itself is left untouched."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    if model.count_params() != EXPECTED_PARAMS:
        raise AssertionError(f"fine-tuned model has {model.count_params()} parameters")
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=learning_rate), metrics=["accuracy"])
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: on_epoch(e, {k: float(v) for k, v in (logs or {}).items()})))
    history = model.fit(to_model_input(x), y, batch_size=batch_size, epochs=epochs,
                        callbacks=callbacks, shuffle=True, verbose=1 if sys.stderr.isatty() else 2)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}
