"""Training the reused model: data preparation and the Keras fit with per-epoch reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from tasks.digit_data import DigitSet
from tasks.model import build_mnist_convnet, to_model_input

EpochHook = Callable[[int, dict[str, float]], None]


def subset(data: DigitSet, limit: int | None) -> DigitSet:
    if limit is None or limit >= len(data.y):
        return data
    return DigitSet(data.x[:limit], data.y[:limit], f"{data.name}[:{limit}]")


def fit_convnet(
    train: DigitSet,
    *,
    epochs: int,
    batch_size: int,
    validation_split: float,
    seed: int,
    on_epoch: EpochHook | None = None,
):
    """Train a fresh mnist_convnet as the Keras example does; returns (model, history)."""
    import keras

    model = build_mnist_convnet(seed=seed)
    callbacks = []
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(
                    epoch, {k: float(v) for k, v in (logs or {}).items()}
                )
            )
        )
    history = model.fit(
        to_model_input(train.x),
        np.asarray(train.y),
        batch_size=batch_size,
        epochs=epochs,
        validation_split=validation_split,
        callbacks=callbacks,
        # A live progress bar on a terminal, one line per epoch in logs and CI.
        verbose=1 if sys.stderr.isatty() else 2,
    )
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}
