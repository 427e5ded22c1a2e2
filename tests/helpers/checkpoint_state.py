"""A small model with BatchNorm, a loss-scaled RMSprop and an EMA: the training state that
runtime.checkpoint saves and restores (tests/runtime/test_checkpoint.py and the checkpoint
writer it kills, tests/helpers/programs/checkpoint_writer.py); `checkpoint_values` reads back
every value of a checkpoint, `assert_same_values` compares two runs' checkpoints."""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from utils.ema import ExponentialMovingAverage
from utils.optimizers import OptimizerConfig, build_optimizer


def bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def training_state(seed=0, ema_decay=0.9):
    model = bn_model(seed)
    opt = build_optimizer(
        OptimizerConfig(name="rmsprop"), 0.01, model.trainable_variables, loss_scaling=True
    )
    opt.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, ema_decay) if ema_decay else None
    return model, opt, ema


def one_step(model, opt, ema):
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = opt.scale_loss(tf.reduce_mean(model(x, training=True) ** 2))
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    if ema is not None:
        ema.update(opt.iterations)


def checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    """Every value of a training checkpoint (weights, optimizer slots, EMA, BN statistics,
    position, running metrics, random state), without the count of saves (a stop adds one)."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(prefix)
        if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))
    }


def assert_same_values(prefix: str, reference: str) -> int:
    """The checkpoint `prefix` holds exactly (bit for bit) the values of `reference`; returns
    how many numbers were compared."""
    ours, theirs = checkpoint_values(prefix), checkpoint_values(reference)
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    return sum(v.size for v in theirs.values())


# The one line main.py prints when a signal stopped training (runtime/preemption.py).
STOP_LINE = re.compile(
    r"main\.py: stopped by (SIG\w+|a signal to another worker) at epoch (\d+) step (\d+); "
    r"checkpoint (\S+); rerun the same command to resume"
)


def saved_position(prefix: str) -> tuple[int, int]:
    """(finished epochs, steps into the next epoch) recorded in a training checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    return (
        int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")),
        int(reader.get_tensor("progress/step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE")),
    )
