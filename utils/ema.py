"""Exponential moving average of a model's weights, BatchNorm moving statistics included.

Keras' optimizer-level EMA (`use_ema=True`) averages trainable variables only, so evaluating
with it pairs averaged kernels with raw BatchNorm statistics. Here every floating-point model
variable is averaged (kernels, biases, BN gamma/beta *and* moving mean/variance), as
google/automl's EfficientNet does with `tf.train.ExponentialMovingAverage` over
`trainable_variables + moving_*`. Integer state (e.g. dropout seed counters) is not averaged.

The decay warms up as min(decay, (1 + t) / (10 + t)) where t is the optimizer update count,
so early, noisy weights are forgotten fast (TF's `ExponentialMovingAverage(num_updates=t)`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf


def averaged_variables(model: keras.Model) -> list:
    """The model variables the EMA tracks: every floating-point weight, in model order."""
    return [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]


def warmup_decay(decay: float, step):
    """min(decay, (1 + step) / (10 + step)) as a float32 tensor.

    Args:
      decay: the target decay (`--moving_average_decay`).
      step: the optimizer update count (tensor or int).

    Returns:
      The decay used for this update.
    """
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


class ExponentialMovingAverage(tf.Module):
    """Shadow copies of a model's floating-point variables.

    Create it under the distribution strategy's scope (the shadows then mirror like the
    model's variables). It is a `tf.Module`, so `tf.train.Checkpoint(ema=...)` saves the
    shadows; `update` is called in cross-replica context after each optimizer update.

    Args:
      model: a built Keras model.
      decay: target decay, e.g. 0.9999.
    """

    def __init__(self, model: keras.Model, decay: float) -> None:
        super().__init__(name="ema")
        self.decay = float(decay)
        # Not an attribute: tf.Module would track it and save the model's weights twice.
        model_variables = averaged_variables(model)
        self._model_variables = lambda: model_variables
        # Named after the model variable's path so a checkpoint reads like the model.
        self.shadows = [
            tf.Variable(
                tf.identity(_tf_var(v)), trainable=False, name=v.path.replace("/", "_") + "_ema"
            )
            for v in model_variables
        ]

    def update(self, step) -> None:
        """shadow <- d * shadow + (1 - d) * variable, d = warmup_decay(decay, step)."""
        d = warmup_decay(self.decay, step)
        for shadow, var in zip(self.shadows, self._model_variables(), strict=True):
            value = tf.cast(_tf_var(var), shadow.dtype)
            shadow.assign(d * shadow + (1.0 - d) * value)

    def copy_to_model(self) -> None:
        """Overwrite the model's variables with the averages (for export / inference)."""
        for shadow, var in zip(self.shadows, self._model_variables(), strict=True):
            _tf_var(var).assign(tf.cast(shadow, var.dtype))

    def swap(self) -> None:
        """Exchange model values and averages in place (no extra copy of the model kept)."""
        for shadow, var in zip(self.shadows, self._model_variables(), strict=True):
            model_var = _tf_var(var)
            current = tf.identity(model_var)
            model_var.assign(tf.cast(shadow, model_var.dtype))
            shadow.assign(tf.cast(current, shadow.dtype))

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; raw ones come back after."""
        self.swap()
        try:
            yield
        finally:
            self.swap()


def _tf_var(variable):
    """The tf.Variable behind a Keras variable (Keras 3 wraps it in `.value`)."""
    return variable.value if isinstance(variable, keras.Variable) else variable
