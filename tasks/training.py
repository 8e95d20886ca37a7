"""Training the reused model: data preparation and the Keras fit with per-epoch reporting."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np

from tasks.augment import EpochStream, Recipe
from tasks.digit_data import DigitSet
from tasks.model import EXPECTED_PARAMS, build_mnist_convnet, to_model_input

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
    augment: Recipe | None = None,
):
    """Train a fresh mnist_convnet as the Keras example does; returns (model, history).

    With an augmentation recipe, every epoch trains on a freshly augmented copy of the
    training digits (drawn one epoch ahead in a background thread); the validation digits
    are the same held-out tail as without it, left as they are."""
    import keras

    model = build_mnist_convnet(seed=seed)
    if model.count_params() != EXPECTED_PARAMS:  # the architecture is fixed, augmented or not
        raise AssertionError(f"mnist_convnet has {model.count_params()} parameters")
    callbacks = []
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(
                    epoch, {k: float(v) for k, v in (logs or {}).items()}
                )
            )
        )
    if augment is not None:
        return model, _fit_augmented(
            model, train, augment, epochs=epochs, batch_size=batch_size,
            validation_split=validation_split, seed=seed, callbacks=callbacks,
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


def _fit_augmented(
    model, train: DigitSet, recipe: Recipe, *, epochs: int, batch_size: int,
    validation_split: float, seed: int, callbacks: list,
) -> dict[str, list[float]]:
    """One `fit` call per epoch, each on that epoch's augmented copy. The held-out tail is
    the one Keras' `validation_split` takes, so validation figures stay comparable."""
    split = math.ceil(len(train.y) * (1.0 - validation_split)) if validation_split else len(train.y)
    x_fit, y_fit = train.x[:split], np.asarray(train.y[:split])
    validation = None
    if split < len(train.y):
        validation = (to_model_input(train.x[split:]), np.asarray(train.y[split:]))
    history: dict[str, list[float]] = {}
    with EpochStream(x_fit, recipe, seed) as stream:
        for epoch in range(epochs):
            x_epoch = stream.get(epoch, prefetch=epoch + 1 < epochs)
            h = model.fit(
                to_model_input(x_epoch), y_fit, batch_size=batch_size, epochs=epoch + 1,
                initial_epoch=epoch, validation_data=validation, callbacks=callbacks,
                verbose=1 if sys.stderr.isatty() else 2,
            )
            for k, vs in h.history.items():
                history.setdefault(k, []).extend(float(v) for v in vs)
    return history
