"""A tiny model and data for training-step tests (no BatchNorm or dropout: those make a
micro-batch differ from the large batch on purpose, so exact-equivalence tests leave them out)."""

from __future__ import annotations

import keras
import numpy as np

from runtime.step import StepConfig, TrainMetrics, make_train_step
from utils.ema import ExponentialMovingAverage
from utils.optimizers import OptimizerConfig, build_optimizer

NUM_CLASSES = 5


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="head")(x))


def batch(n: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 4, 4, 3)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, n)]
    return images, labels


def build_trainer(
    dist=None,
    accum: int = 1,
    optimizer: str = "momentum",
    clip: float | None = None,
    loss_scaling: bool = False,
    lr: float = 0.1,
    l2: float = 1e-3,
    ema_decay: float = 0.0,
):
    """(model, optimizer, metrics, step, ema) built under the scope of `dist` (a Distribution)."""
    import contextlib

    scope = dist.strategy.scope() if dist is not None else contextlib.nullcontext()
    with scope:
        model = tiny_model()
        opt = build_optimizer(
            OptimizerConfig(name=optimizer, grad_clip_norm=clip),
            lr,
            model.trainable_variables,
            loss_scaling=loss_scaling,
        )
        opt.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, ema_decay) if ema_decay else None
    metrics = TrainMetrics()
    step = make_train_step(
        model,
        opt,
        dist=dist,
        config=StepConfig(grad_accum_steps=accum, label_smoothing=0.1, l2_weight_decay=l2),
        metrics=metrics,
        ema=ema,
    )
    return model, opt, metrics, step, ema
